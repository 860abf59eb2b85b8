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


def duplicate_mask(ids: np.ndarray, rows: slice = slice(None), keys: slice = slice(None)) -> np.ndarray:
    """[n_seq] -> [q_pos, k_pos] bool (those rows and keys), D_i: key j < i - 1 holds the same token as query i."""
    i, j = _positions(len(ids), rows, keys)
    return (ids[i] == ids[j]) & (j < i - 1)


def induction_mask(ids: np.ndarray, rows: slice = slice(None), keys: slice = slice(None)) -> np.ndarray:
    """[n_seq] -> [q_pos, k_pos] bool (those rows and keys), I_i: 1 <= j <= i - 2 and the token before key j equals
    query i's token."""
    i, j = _positions(len(ids), rows, keys)
    return (ids[i] == ids[np.maximum(j - 1, 0)]) & (j >= 1) & (j <= i - 2)


def _positions(n: int, rows: slice, keys: slice) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n)[rows][:, None], np.arange(n)[keys][None, :]


def target_rows(ids: np.ndarray) -> dict[str, np.ndarray]:
    """[n_seq] -> {stat: [n_seq] bool}: whether row i has any duplicate (D_i) or induction (I_i) target at all, in
    O(n_seq): D_i is non-empty when t_i first occurs before i - 1, I_i when it first occurs before i - 2 (the
    token before key j = m + 1 is t_m, and 1 <= j <= i - 2 means 0 <= m <= i - 3)."""
    ids = np.asarray(ids)
    i = np.arange(len(ids))
    _, first_at, inverse = np.unique(ids, return_index=True, return_inverse=True)
    first = first_at[inverse.reshape(-1)]  # [n_seq] the first position of each row's token
    return {"duplicate_token": first < i - 1, "induction": first < i - 2}


ROW_BLOCK = 128  # query rows reduced at a time when a whole map is given (layer_arrays)
TINY = np.finfo(np.float64).tiny
SCRATCH_BYTES = 8 * 1024 * 1024  # each float64 work array of StatsAccumulator


@dataclass(frozen=True)
class LayerStats:
    """Every statistic of every head of one layer: arrays [n_head] (NaN where undefined), and the rows the
    token-pattern statistics average over (they depend on the token ids only, so they are the same for all heads)."""

    values: dict[str, np.ndarray]
    support: dict[str, int]
    n_rows: int  # query rows the means are over
    uniform_entropy: float  # mean over those rows of ln(i + 1)
    max_distance: float  # mean over those rows of i


class StatsAccumulator:
    """Every statistic of every head of one layer, from the attention given block by block (a mhacli.attention
    sink): rows a..b-1 over keys lo..b-1 (the keys outside a sliding window are 0). Each block's rows are reduced
    in float64 to one number per row and statistic, then dropped: memory O(n_head x n_seq) besides the block.
    Rows before `first_row` are skipped (the second copy of a repeated sequence: mha census' `repeat` probe).
    """

    def __init__(self, n_head: int, ids: np.ndarray, first_row: int = 0):
        self.ids = np.asarray(ids)
        n_seq = len(self.ids)
        if not 0 <= first_row < n_seq:
            raise ValueError(f"first_row {first_row} outside 0..{n_seq - 1}")
        self.first_row, self.n_seq = first_row, n_seq
        n_rows = n_seq - first_row
        # per row: entropy, max_weight, sum_j A[i,j] (i - j), A[i,i], A[i,0], A[i,i-1], duplicate and induction sums
        self.per_row = {name: np.zeros((n_head, n_rows)) for name in (*STAT_NAMES, "distance")}
        self.targets = {name: has[first_row:] for name, has in target_rows(self.ids).items()}
        self._buffers: dict[str, np.ndarray] = {}
        self._positions: np.ndarray | None = None

    def add(self, a: int, b: int, lo: int, p: np.ndarray) -> None:
        """p [n_head, b - a, b - lo]: rows a..b-1 over keys lo..b-1, reduced a few rows at a time so the float64
        work arrays stay under SCRATCH_BYTES each, however long the rows."""
        step = max(1, SCRATCH_BYTES // (8 * p.shape[0] * max(1, b - lo)))
        for c in range(max(a, self.first_row), b, step):
            self._add(c, min(c + step, b), lo, p[:, c - a : min(c + step, b) - a])

    def _add(self, a0: int, b_rows: int, lo: int, p: np.ndarray) -> None:
        """p [n_head, b_rows - a0, keys lo..]: rows a0..b_rows-1 (a0 >= first_row)."""
        b = lo + p.shape[2]  # the keys end at the block's last row + 1, for every chunk of its rows
        shape = (p.shape[0], b_rows - a0, b - lo)
        block = self._scratch("block", shape)  # [n_head, rows, keys lo..b-1] float64, reused from block to block
        np.copyto(block, p)
        log = self._scratch("log", shape)
        np.maximum(block, TINY, out=log)  # 0 log 0 = 0: 0 x log(TINY) is exactly 0, and no p > 0 is below TINY
        np.log(log, out=log)
        r = slice(a0 - self.first_row, b_rows - self.first_row)
        i = np.arange(a0, b_rows)  # the rows' positions
        at = np.arange(b_rows - a0)  # the rows' indices in the block
        out = self.per_row
        out["entropy"][:, r] = -np.einsum("hij,hij->hi", block, log)
        out["max_weight"][:, r] = p.max(axis=-1)  # the largest float32 weight, exactly
        sums = block @ self._ones_and_positions(lo, b)  # [n_head, rows, 2]: sum_j A[i,j] and sum_j A[i,j] j in one pass
        out["distance"][:, r] = i * sums[..., 0] - sums[..., 1]
        out["self"][:, r] = p[:, at, i - lo]
        if lo == 0:
            out["first_token"][:, r] = p[:, :, 0]
        prev = i - 1 - lo  # key i - 1 in the block, where it is there (row 0 has none; a window of 1 hides it)
        seen = prev >= 0
        out["previous_token"][:, r][:, seen] = p[:, at[seen], prev[seen]]
        for name, mask in (("duplicate_token", duplicate_mask), ("induction", induction_mask)):
            ii, jj = np.nonzero(mask(self.ids, slice(a0, b_rows), slice(lo, b)))  # sparse: repeated tokens only
            if len(ii):
                sums = np.stack([np.bincount(ii, weights=h, minlength=b_rows - a0) for h in block[:, ii, jj]])
                out[name][:, r] = sums

    def _ones_and_positions(self, lo: int, b: int) -> np.ndarray:
        """[b - lo, 2] float64: a column of ones and the key positions lo..b-1."""
        if self._positions is None or self._positions.shape[0] < b:
            self._positions = np.stack([np.ones(self.n_seq), np.arange(self.n_seq, dtype=np.float64)], axis=1)
        return self._positions[lo:b]

    def _scratch(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float64 work array of this shape, kept between blocks (new memory for every block would page-fault
        its way in each time)."""
        size = math.prod(shape)
        flat = self._buffers.get(name)
        if flat is None or flat.size < size:
            flat = self._buffers[name] = np.empty(size)
        return flat[:size].reshape(shape)

    def result(self) -> LayerStats:
        first_row, n_seq, out = self.first_row, self.n_seq, self.per_row
        n_head = out["entropy"].shape[0]
        values = {
            "entropy": out["entropy"].mean(axis=-1),
            "max_weight": out["max_weight"].mean(axis=-1),
            "mean_distance": out["distance"].mean(axis=-1),
            "self": out["self"].mean(axis=-1),
        }
        lo = max(first_row, 1) - first_row  # first_token and previous_token: rows i >= 1
        for name in ("first_token", "previous_token"):
            values[name] = out[name][:, lo:].mean(axis=-1) if lo < n_seq - first_row else np.full(n_head, np.nan)
        support = {}
        for name in SUPPORTED_STATS:
            has = self.targets[name]
            support[name] = int(has.sum())
            values[name] = out[name][:, has].mean(axis=-1) if support[name] else np.full(n_head, np.nan)
        uniform = float(np.mean(np.log(np.arange(first_row + 1, n_seq + 1))))
        ordered = {name: values[name] for name in STAT_NAMES}
        return LayerStats(ordered, support, n_seq - first_row, uniform, (first_row + n_seq - 1) / 2)


def layer_arrays(attn: np.ndarray, ids: np.ndarray, first_row: int = 0) -> LayerStats:
    """[n_head, n_seq, n_seq], [n_seq] -> LayerStats over query rows first_row..n_seq-1, from a whole map: its
    lower triangle fed to a StatsAccumulator ROW_BLOCK rows at a time."""
    n_head, n_seq, _ = attn.shape
    acc = StatsAccumulator(n_head, ids, first_row)
    for a in range(first_row, n_seq, ROW_BLOCK):
        b = min(a + ROW_BLOCK, n_seq)
        acc.add(a, b, 0, attn[:, a:b, :b])
    return acc.result()


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
    """Statistics and kind of every head of one layer, from its whole map."""
    return head_stats(layer, layer_arrays(attn, ids))


def head_stats(layer: int, ls: LayerStats) -> list[HeadStats]:
    """Statistics and kind of every head of one layer, from its LayerStats (a whole map's or a stream's)."""
    kinds = kinds_from_holds(rule_holds(ls.values, ls.support, ls.uniform_entropy))
    result = []
    for head in range(len(kinds)):
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
