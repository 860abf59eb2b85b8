"""Per-head statistics and head kinds (definitions: docs/statistics.md), vectorised over heads. Pure NumPy.

A is a layer's attention [n_head, n_seq, n_seq], rows are queries; t the token ids [n_seq]. Means are over query
rows. Statistics are reduced in float64 (the maps themselves stay float32). Undefined values are NaN here and
`null` in JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STAT_NAMES = (
    "entropy", "max_weight", "mean_distance", "first_token", "self", "previous_token", "duplicate_token", "induction",
)  # fmt: skip

# Head kinds, tried in this order; the first whose statistic reaches its threshold wins. One place, documented in
# the README. `broad` compares entropy with the entropy of uniform attention over the visible keys.
KIND_RULES: tuple[tuple[str, str, float], ...] = (
    ("induction", "induction", 0.4),
    ("previous-token", "previous_token", 0.5),
    ("duplicate-token", "duplicate_token", 0.5),
    ("self", "self", 0.5),
    ("sink", "first_token", 0.5),
    ("broad", "relative_entropy", 0.75),
)
KINDS = tuple(k for k, _, _ in KIND_RULES) + ("mixed",)
# The statistic that speaks for each kind (`mha stats --stat auto`): the one its rule tests, else the closest.
KIND_STAT = {kind: stat for kind, stat, _ in KIND_RULES if stat in STAT_NAMES} | {"broad": "entropy", "mixed": "max_weight"}


@dataclass(frozen=True)
class HeadStats:
    layer: int
    head: int
    kind: str
    values: dict[str, float | None]  # STAT_NAMES -> value, None where undefined

    def to_dict(self) -> dict:
        return {"layer": self.layer, "head": self.head, "kind": self.kind, "stats": dict(self.values)}


def duplicate_mask(ids: np.ndarray) -> np.ndarray:
    """[n_seq] -> [q_pos, k_pos] bool: key j < i holds the same token as query i."""
    same = ids[:, None] == ids[None, :]
    return np.tril(same, k=-1)


def induction_mask(ids: np.ndarray) -> np.ndarray:
    """[n_seq] -> [q_pos, k_pos] bool: 1 <= j <= i and the token before key j equals query i's token."""
    n = len(ids)
    mask = np.zeros((n, n), dtype=bool)
    if n > 1:
        mask[:, 1:] = ids[:, None] == ids[None, :-1]
    return np.tril(mask)


def _masked_row_mean(attn: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[n_head, n_seq, n_seq], [n_seq, n_seq] -> [n_head]: mean over rows with any mask entry of the masked sum.

    The masks are sparse (repeated tokens), so only their entries are gathered.
    """
    n_head, n_seq, _ = attn.shape
    rows = mask.any(axis=1)
    if not rows.any():
        return np.full(n_head, np.nan)
    ii, jj = np.nonzero(mask)
    vals = attn[:, ii, jj].astype(np.float64)  # [n_head, n_entries]
    sums = np.stack([np.bincount(ii, weights=v, minlength=n_seq) for v in vals])  # [n_head, n_seq]
    return sums[:, rows].mean(axis=1)


ROW_BLOCK = 128  # query rows reduced at a time, over the keys they can see (the lower triangle only)


def stats_arrays(attn: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    """[n_head, n_seq, n_seq], [n_seq] -> {stat: [n_head]}, NaN where undefined.

    Row sums are reduced in float64, one block of query rows at a time over the keys 0..last row of the block,
    so the float64 working copy stays small and the masked upper triangle is not read.
    """
    n_head, n_seq, _ = attn.shape
    ids = np.asarray(ids)
    entropy = np.empty((n_head, n_seq))
    max_weight = np.empty((n_head, n_seq))
    distance = np.empty((n_head, n_seq))  # sum_j A[i,j] (i - j)
    positions = np.arange(n_seq, dtype=np.float64)
    for a in range(0, n_seq, ROW_BLOCK):
        b = min(a + ROW_BLOCK, n_seq)
        block = attn[:, a:b, :b].astype(np.float64)  # [n_head, rows, keys 0..b-1]
        log = np.zeros_like(block)
        np.log(block, out=log, where=block > 0)  # 0 log 0 = 0
        entropy[:, a:b] = -np.einsum("hij,hij->hi", block, log)
        max_weight[:, a:b] = block.max(axis=-1)
        distance[:, a:b] = positions[a:b] * block.sum(axis=-1) - block @ positions[:b]
    out = {
        "entropy": entropy.mean(axis=-1),
        "max_weight": max_weight.mean(axis=-1),
        "mean_distance": distance.mean(axis=-1),
        "self": np.diagonal(attn, axis1=1, axis2=2).astype(np.float64).mean(axis=-1),
    }
    if n_seq > 1:
        out["first_token"] = attn[:, 1:, 0].astype(np.float64).mean(axis=-1)
        out["previous_token"] = np.diagonal(attn, offset=-1, axis1=1, axis2=2).astype(np.float64).mean(axis=-1)
    else:
        out["first_token"] = out["previous_token"] = np.full(n_head, np.nan)
    out["duplicate_token"] = _masked_row_mean(attn, duplicate_mask(ids))
    out["induction"] = _masked_row_mean(attn, induction_mask(ids))
    return {name: out[name] for name in STAT_NAMES}


def uniform_entropy(n_seq: int) -> float:
    """Mean over rows of the entropy of uniform attention over the i + 1 visible keys."""
    return float(np.mean(np.log(np.arange(1, n_seq + 1))))


def classify(values: dict[str, float | None], n_seq: int) -> str:
    """A head's kind from its statistics (KIND_RULES)."""
    uniform = uniform_entropy(n_seq)
    derived = dict(values, relative_entropy=(values["entropy"] / uniform) if uniform > 0 else None)
    for kind, stat, threshold in KIND_RULES:
        v = derived.get(stat)
        if v is not None and v >= threshold:
            return kind
    return "mixed"


def layer_stats(layer: int, attn: np.ndarray, ids: np.ndarray) -> list[HeadStats]:
    """Statistics and kind of every head of one layer."""
    arrays = stats_arrays(attn, ids)
    result = []
    for head in range(attn.shape[0]):
        values = {k: (None if math.isnan(v[head]) else float(v[head])) for k, v in arrays.items()}
        result.append(HeadStats(layer, head, classify(values, attn.shape[1]), values))
    return result
