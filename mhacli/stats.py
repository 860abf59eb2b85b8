"""Per-head statistics and head kinds (definitions: docs/statistics.md), vectorised over heads. Pure NumPy.

A is a layer's attention [n_head, n_seq, n_seq], rows are queries; t the token ids [n_seq]. Means are over query
rows. Statistics are reduced in float64 (the maps themselves stay float32). Undefined values are NaN here and
`null` in JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
KIND_STAT = {kind: stat for kind, stat, _ in KIND_RULES} | {"mixed": "max_weight"}
# Every statistic on a 0-1 scale (the terminal grid, kind scores): the fractions of attention as they are; entropy
# over the entropy of uniform attention on the same rows (its maximum), mean_distance over the mean of i (its
# maximum: every row all on key 0).
RELATIVE = {"entropy": "relative_entropy", "mean_distance": "relative_distance"}
# The token-pattern statistics average over the rows that have a target; a kind decided from them needs this many.
SUPPORTED_STATS = ("duplicate_token", "induction")
MIN_SUPPORT = 4


@dataclass(frozen=True)
class HeadStats:
    layer: int
    head: int
    kind: str
    values: dict[str, float | None]  # STAT_NAMES -> value, None where undefined
    support: dict[str, int] = field(default_factory=dict)  # SUPPORTED_STATS -> rows each mean is over
    uniform_entropy: float = math.nan  # mean over the rows of ln(i + 1): the largest possible entropy
    max_distance: float = math.nan  # mean over the rows of i: the largest possible mean_distance

    def to_dict(self) -> dict:
        support = {name: int(self.support.get(name, 0)) for name in SUPPORTED_STATS}
        return {"layer": self.layer, "head": self.head, "kind": self.kind, "stats": dict(self.values), "support": support}

    def unit_value(self, name: str) -> float | None:
        """Statistic `name` on a 0-1 scale (RELATIVE): entropy and mean_distance as fractions of their maximum
        for these rows (also by their RELATIVE names), the others as they are. None where undefined."""
        name = {v: k for k, v in RELATIVE.items()}.get(name, name)
        value = self.values[name]
        if value is None or name not in RELATIVE:
            return value
        top = self.uniform_entropy if name == "entropy" else self.max_distance
        return value / top if top > 0 else None  # nan > 0 is False: unknown scale, undefined

    @property
    def score(self) -> float | None:
        """The statistic that speaks for the head's kind (KIND_STAT), 0-1: `broad` by its relative entropy."""
        return self.unit_value(KIND_STAT[self.kind])

    @property
    def kind_support(self) -> int | None:
        """The rows behind the kind, for the kinds that need support (induction, duplicate-token); else None."""
        stat = KIND_STAT[self.kind]
        return int(self.support.get(stat, 0)) if stat in SUPPORTED_STATS else None


def duplicate_mask(ids: np.ndarray) -> np.ndarray:
    """[n_seq] -> [q_pos, k_pos] bool, D_i: key j < i - 1 holds the same token as query i."""
    same = ids[:, None] == ids[None, :]
    return np.tril(same, k=-2)


def induction_mask(ids: np.ndarray) -> np.ndarray:
    """[n_seq] -> [q_pos, k_pos] bool, I_i: 1 <= j <= i - 2 and the token before key j equals query i's token."""
    n = len(ids)
    mask = np.zeros((n, n), dtype=bool)
    if n > 1:
        mask[:, 1:] = ids[:, None] == ids[None, :-1]
    return np.tril(mask, k=-2)


def _masked_row_mean(attn: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """[n_head, rows, n_seq], [rows, n_seq] -> ([n_head] mean over rows with any mask entry of the masked sum,
    the number of those rows). NaN and 0 when no row qualifies.

    The masks are sparse (repeated tokens), so only their entries are gathered.
    """
    n_head, n_rows, _ = attn.shape
    rows = mask.any(axis=1)
    support = int(rows.sum())
    if not support:
        return np.full(n_head, np.nan), 0
    ii, jj = np.nonzero(mask)
    vals = attn[:, ii, jj].astype(np.float64)  # [n_head, n_entries]
    sums = np.stack([np.bincount(ii, weights=v, minlength=n_rows) for v in vals])  # [n_head, rows]
    return sums[:, rows].mean(axis=1), support


ROW_BLOCK = 128  # query rows reduced at a time, over the keys they can see (the lower triangle only)


@dataclass(frozen=True)
class LayerStats:
    """Every statistic of every head of one layer: arrays [n_head] (NaN where undefined), and the rows the
    token-pattern statistics average over (they depend on the token ids only, so they are the same for all heads)."""

    values: dict[str, np.ndarray]
    support: dict[str, int]
    n_rows: int  # query rows the means are over
    uniform_entropy: float  # mean over those rows of ln(i + 1)
    max_distance: float  # mean over those rows of i


def layer_arrays(attn: np.ndarray, ids: np.ndarray, first_row: int = 0) -> LayerStats:
    """[n_head, n_seq, n_seq], [n_seq] -> LayerStats over query rows first_row..n_seq-1.

    Row sums are reduced in float64, one block of query rows at a time over the keys 0..last row of the block,
    so the float64 working copy stays small and the masked upper triangle is not read. `first_row` > 0 restricts
    every mean to the later rows (the second copy of a repeated sequence: mha census' `repeat` probe).
    """
    n_head, n_seq, _ = attn.shape
    ids = np.asarray(ids)
    if not 0 <= first_row < n_seq:
        raise ValueError(f"first_row {first_row} outside 0..{n_seq - 1}")
    n_rows = n_seq - first_row
    entropy = np.empty((n_head, n_rows))
    max_weight = np.empty((n_head, n_rows))
    distance = np.empty((n_head, n_rows))  # sum_j A[i,j] (i - j)
    positions = np.arange(n_seq, dtype=np.float64)
    for a in range(first_row, n_seq, ROW_BLOCK):
        b = min(a + ROW_BLOCK, n_seq)
        block = attn[:, a:b, :b].astype(np.float64)  # [n_head, rows, keys 0..b-1]
        log = np.zeros_like(block)
        np.log(block, out=log, where=block > 0)  # 0 log 0 = 0
        r = slice(a - first_row, b - first_row)
        entropy[:, r] = -np.einsum("hij,hij->hi", block, log)
        max_weight[:, r] = block.max(axis=-1)
        distance[:, r] = positions[a:b] * block.sum(axis=-1) - block @ positions[:b]
    diag = np.diagonal(attn, axis1=1, axis2=2)[:, first_row:]
    out = {
        "entropy": entropy.mean(axis=-1),
        "max_weight": max_weight.mean(axis=-1),
        "mean_distance": distance.mean(axis=-1),
        "self": diag.astype(np.float64).mean(axis=-1),
    }
    lo = max(first_row, 1)  # first_token and previous_token: rows i >= 1
    if lo < n_seq:
        out["first_token"] = attn[:, lo:, 0].astype(np.float64).mean(axis=-1)
        out["previous_token"] = np.diagonal(attn, offset=-1, axis1=1, axis2=2)[:, lo - 1 :].astype(np.float64).mean(axis=-1)
    else:
        out["first_token"] = out["previous_token"] = np.full(n_head, np.nan)
    rows = attn[:, first_row:, :]
    out["duplicate_token"], dup_rows = _masked_row_mean(rows, duplicate_mask(ids)[first_row:])
    out["induction"], ind_rows = _masked_row_mean(rows, induction_mask(ids)[first_row:])
    uniform = float(np.mean(np.log(np.arange(first_row + 1, n_seq + 1))))
    support = {"duplicate_token": dup_rows, "induction": ind_rows}
    return LayerStats({name: out[name] for name in STAT_NAMES}, support, n_rows, uniform, (first_row + n_seq - 1) / 2)


def stats_arrays(attn: np.ndarray, ids: np.ndarray, first_row: int = 0) -> dict[str, np.ndarray]:
    """[n_head, n_seq, n_seq], [n_seq] -> {stat: [n_head]}, NaN where undefined."""
    return layer_arrays(attn, ids, first_row).values


def uniform_entropy(n_seq: int) -> float:
    """Mean over rows of the entropy of uniform attention over the i + 1 visible keys."""
    return float(np.mean(np.log(np.arange(1, n_seq + 1))))


def rule_holds(values: dict[str, np.ndarray], support: dict[str, int], uniform: float) -> dict[str, np.ndarray]:
    """kind -> bool array: whether that kind's rule alone holds (its statistic at its threshold, with at least
    MIN_SUPPORT rows where the statistic needs support). NaN never holds. Arrays of any shape, broadcast; a
    `relative_entropy` array in `values` is used as it is (`uniform` is then unused)."""
    derived = dict(values)
    if "relative_entropy" not in derived:  # entropy over the entropy of uniform attention on the same rows
        entropy = np.asarray(values["entropy"], dtype=np.float64)
        derived["relative_entropy"] = entropy / uniform if uniform > 0 else np.full_like(entropy, np.nan)
    holds = {}
    with np.errstate(invalid="ignore"):
        for kind, stat, threshold in KIND_RULES:
            ok = np.asarray(derived[stat]) >= threshold
            if stat in SUPPORTED_STATS:
                ok = ok & (np.asarray(support[stat]) >= MIN_SUPPORT)
            holds[kind] = ok
    return holds


def kinds_from_holds(holds: dict[str, np.ndarray]) -> np.ndarray:
    """The first rule that holds (KIND_RULES order), else `mixed`: an array of indices into KINDS."""
    shape = np.shape(next(iter(holds.values())))
    kinds = np.full(shape, KINDS.index("mixed"))
    for kind, _, _ in reversed(KIND_RULES):
        kinds = np.where(holds[kind], KINDS.index(kind), kinds)
    return kinds


def classify(values: dict[str, float | None], n_seq: int, support: dict[str, int] | None = None) -> str:
    """A head's kind from its statistics (KIND_RULES). `support` defaults to enough rows for every statistic
    that is defined (one head classified on its own, as in the tests of the thresholds)."""
    arrays = {k: np.float64(np.nan if v is None else v) for k, v in values.items()}
    if support is None:
        support = {s: MIN_SUPPORT for s in SUPPORTED_STATS}
    return KINDS[int(kinds_from_holds(rule_holds(arrays, support, uniform_entropy(n_seq))))]


def layer_stats(layer: int, attn: np.ndarray, ids: np.ndarray) -> list[HeadStats]:
    """Statistics and kind of every head of one layer."""
    ls = layer_arrays(attn, ids)
    kinds = kinds_from_holds(rule_holds(ls.values, ls.support, ls.uniform_entropy))
    result = []
    for head in range(attn.shape[0]):
        values = {k: (None if math.isnan(v[head]) else float(v[head])) for k, v in ls.values.items()}
        kind = KINDS[int(kinds[head])]
        result.append(HeadStats(layer, head, kind, values, dict(ls.support), ls.uniform_entropy, ls.max_distance))
    return result


TOO_PLAIN = (
    f"this text is too short or too plain to tell induction or duplicate-token heads (fewer than {MIN_SUPPORT} rows "
    "with an earlier copy of their token); `mha census` classifies heads over probes and a corpus"
)


def undecidable(support: dict[str, int]) -> bool:
    """No row of the text supports a token-pattern kind: it is too short or too plain to tell induction or
    duplicate-token heads."""
    return all(support.get(s, 0) < MIN_SUPPORT for s in SUPPORTED_STATS)
