"""Per-head statistics and head kinds (definitions: docs/statistics.md), vectorised over heads. Pure NumPy.

A is a layer's attention [n_head, n_seq, n_seq], rows are queries; t the token ids [n_seq]. Means are over query
rows. Statistics are reduced in float64 (the maps themselves stay float32). Undefined values are NaN here and
`null` in JSON.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import cast

import numpy as np

F32 = np.float32
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
        return {
            "layer": self.layer,
            "head": self.head,
            "kind": self.kind,
            "stats": dict(self.values),
            "support": support,
        }

    def unit_value(self, name: str) -> float | None:
        """Statistic `name` on a 0-1 scale (RELATIVE):

        entropy and mean_distance as fractions of their maximum for these rows (also by their RELATIVE names),
        the others as they are. None where undefined."""
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


def target_rows(ids: np.ndarray) -> dict[str, np.ndarray]:
    """Whether each row has any duplicate (D_i) or induction (I_i) target at all, in O(n_seq).

    [n_seq] -> {stat: [n_seq] bool}. D_i is non-empty when t_i first occurs before i - 1, I_i when it first occurs
    before i - 2 (the token before key j = m + 1 is t_m, and 1 <= j <= i - 2 means 0 <= m <= i - 3)."""
    ids = np.asarray(ids)
    i = np.arange(len(ids))
    _, first_at, inverse = np.unique(ids, return_index=True, return_inverse=True)
    first = first_at[inverse.reshape(-1)]  # [n_seq] the first position of each row's token
    return {"duplicate_token": first < i - 1, "induction": first < i - 2}


ROW_BLOCK = 128  # query rows reduced at a time when a whole map is given (layer_arrays)
TINY = np.finfo(np.float32).tiny
SCRATCH_BYTES = 16 * 1024 * 1024  # StatsAccumulator's float32 work arrays, each, per thread (a whole tile: TILE_BYTES)


@dataclass(frozen=True)
class LayerStats:
    """Every statistic of every head of one layer:

    arrays [n_head] (NaN where undefined), and the rows the token-pattern statistics average over (they depend on
    the token ids only, so they are the same for all heads)."""

    values: dict[str, np.ndarray]
    support: dict[str, int]
    n_rows: int  # query rows the means are over
    uniform_entropy: float  # mean over those rows of ln(i + 1)
    max_distance: float  # mean over those rows of i


class TokenMatches:
    """The (row, key) pairs of the duplicate-token and induction targets (D_i, I_i), for any rows and keys.

    Listed in time proportional to the pairs, not rows x keys: positions sorted by token, each row's earlier copies of
    its token found by binary search."""

    def __init__(self, ids: np.ndarray):
        n = len(ids)
        _, inverse = np.unique(ids, return_inverse=True)
        self.base = inverse.reshape(-1).astype(np.int64) * n  # each position's token, as the start of its key range
        self.keys = np.sort(self.base + np.arange(n))  # token-major, then position

    def pairs(self, name: str, a: int, b: int, lo: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows a..b-1, keys lo..:

        (row - a, key - lo) of every target of `name` (duplicate_token, induction), by row then key. D_i: keys
        lo <= j <= i - 2 with t_j = t_i. I_i: keys max(lo, 1) <= j <= i - 2 with t_{j-1} = t_i: copies at m = j
        - 1 with max(lo - 1, 0) <= m <= i - 3."""
        i = np.arange(a, b)
        if name == "duplicate_token":
            first, end, shift = lo, i - 1, 0
        else:
            first, end, shift = max(lo - 1, 0), i - 2, 1
        base = self.base[a:b]
        left = np.searchsorted(self.keys, base + first)
        right = np.searchsorted(self.keys, base + np.maximum(end, first))
        counts = right - left
        rows = np.repeat(np.arange(b - a), counts)
        starts = np.repeat(left - np.cumsum(counts) + counts, counts)  # each pair's range start, less its index
        found = self.keys[starts + np.arange(len(rows))] - base[rows]
        return rows, found + shift - lo


TILE_CACHE_TOKENS = 1024  # a text up to this long keeps its tiles for every layer (at most a few MiB)


class TextIndex:
    """What a text's statistics need of its token ids alone, the same in every layer (one per text, shared).

    Its duplicate/induction targets and matches, and, for a text of at most TILE_CACHE_TOKENS tokens, each block's
    _Tile once made: a census of short texts built them anew in every layer, about 5% of its time on GPT-2 small."""

    def __init__(self, ids: np.ndarray):
        self.ids = np.asarray(ids)
        self.targets = target_rows(self.ids)
        self.matches = TokenMatches(self.ids)
        self.keeps_tiles = len(self.ids) <= TILE_CACHE_TOKENS
        self.tiles: dict[tuple[int, int, int, int], _Tile] = {}


class StatsAccumulator:
    """Every statistic of every head of one layer, from the attention given tile by tile.

    A mhacli.engine.attention sink: head h, rows a..b-1 over keys lo..b-1 (the keys outside a sliding window are 0).
    Each tile's rows are reduced to one number per row and statistic (float32 products, float64 sums), then dropped:
    memory O(n_head x n_seq) besides the tile. Different blocks may arrive from different threads at once
    (`concurrent`): each thread has its own work arrays and writes only its rows. Rows before `first_row` are skipped
    (the second copy of a repeated sequence: mha census' `repeat` probe).
    """

    concurrent = True

    def __init__(self, n_head: int, ids: np.ndarray, first_row: int = 0, index: TextIndex | None = None):
        self.index = TextIndex(ids) if index is None else index
        self.ids = self.index.ids
        n_seq = len(self.ids)
        if not 0 <= first_row < n_seq:
            raise ValueError(f"first_row {first_row} outside 0..{n_seq - 1}")
        self.first_row, self.n_seq = first_row, n_seq
        n_rows = n_seq - first_row
        # per row: entropy, max_weight, sum_j A[i,j] (i - j), A[i,i], A[i,0], A[i,i-1], duplicate and induction sums
        self.per_row = {name: np.zeros((n_head, n_rows)) for name in (*STAT_NAMES, "distance")}
        self.targets = {name: has[first_row:] for name, has in self.index.targets.items()}
        self._local = threading.local()
        # the largest tile this text can hand over: a short text (one of a pack's hundred) needs no 16 MiB scratch
        self._scratch = min(SCRATCH_BYTES // 4, n_head * n_seq * n_seq)

    def add(self, h: int, a: int, b: int, lo: int, p: np.ndarray) -> None:
        """p [g, b - a, b - lo]:

        heads h..h+g-1, rows a..b-1 over keys lo..b-1, reduced a few rows at a time so the work arrays stay
        under SCRATCH_BYTES each, however long the rows."""
        step = max(1, SCRATCH_BYTES // (4 * p.shape[0] * max(1, b - lo)))
        for c in range(max(a, self.first_row), b, step):
            self._add(h, c, min(c + step, b), lo, p[:, c - a : min(c + step, b) - a])

    def _add(self, h: int, a: int, b_rows: int, lo: int, p: np.ndarray) -> None:
        """p [g, b_rows - a, keys lo..]: heads h..h+g-1, rows a..b_rows-1 (a >= first_row)."""
        b = lo + p.shape[2]  # the keys end at the block's last row + 1, for every chunk of its rows
        tile = self._tile(a, b_rows, lo, b)
        work = self._work(p.size)[: p.size].reshape(p.shape)
        heads, r = slice(h, h + p.shape[0]), slice(a - self.first_row, b_rows - self.first_row)
        out = self.per_row
        out["max_weight"][heads, r] = p.max(axis=2)  # the largest float32 weight, exactly
        np.add(p, TINY, out=work)  # 0 log 0 = 0: 0 x log(TINY); every weight above 1e-30 is left as it is
        np.log(work, out=work)
        work *= p
        out["entropy"][heads, r] = -_row_sums(work)
        np.multiply(p, tile.distance, out=work)  # A[i,j] (i - j): hidden keys have A = 0
        out["distance"][heads, r] = _row_sums(work)
        at, i = tile.at, tile.rows
        out["self"][heads, r] = p[:, at, i - lo]
        if lo == 0:
            out["first_token"][heads, r] = p[:, :, 0]
        prev = i - 1 - lo  # key i - 1 in the tile, where it is there (row 0 has none; a window of 1 hides it)
        seen = prev >= 0
        out["previous_token"][heads, r][:, seen] = p[:, at[seen], prev[seen]]
        for name, (rows, keys) in tile.pairs.items():
            if len(rows):
                weights = p[:, rows, keys]  # [g, pairs]
                out[name][heads, r] = [np.bincount(rows, weights=w, minlength=b_rows - a) for w in weights]

    def _tile(self, a: int, b_rows: int, lo: int, b: int) -> "_Tile":
        """What the rows a..b_rows-1 over keys lo..b-1 share across heads, made once per thread for a block.

        Their distances i - j, their duplicate and induction pairs; a short text's are kept for its other layers."""
        span = (a, b_rows, lo, b)
        tile = self.index.tiles.get(span) or getattr(self._local, "tile", None)
        if tile is None or tile.span != span:
            tile = self._local.tile = _Tile(a, b_rows, lo, b, self.index.matches)
            if self.index.keeps_tiles:
                self.index.tiles[span] = tile
        return tile

    def _work(self, size: int) -> np.ndarray:
        """This thread's float32 work array, at least `size` long, kept from tile to tile.

        New memory for every tile would page-fault its way in each time; a short text's is only as large as its
        whole map."""
        work = getattr(self._local, "work", None)
        if work is None or work.size < size:
            work = self._local.work = np.empty(max(size, self._scratch), dtype=F32)
        return work

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


def _row_sums(x: np.ndarray) -> np.ndarray:
    """[g, rows, keys] float32 -> [g, rows] float64 sums.

    einsum casts to float64 as it goes: faster than sum(dtype=)."""
    return np.einsum("hij->hi", x, dtype=np.float64)


class _Tile:
    """What every head's tile of rows a..b_rows-1 over keys lo..b-1 shares:

    the distances i - j (float32, exact integers), the rows' positions and the duplicate/induction pairs."""

    def __init__(self, a: int, b_rows: int, lo: int, b: int, matches: TokenMatches):
        self.span = (a, b_rows, lo, b)
        self.rows = np.arange(a, b_rows)
        self.at = np.arange(b_rows - a)
        self.distance = np.subtract.outer(self.rows.astype(F32), np.arange(lo, b, dtype=F32))
        self.pairs = {name: matches.pairs(name, a, b_rows, lo) for name in SUPPORTED_STATS}


def layer_arrays(attn: np.ndarray, ids: np.ndarray, first_row: int = 0) -> LayerStats:
    """[n_head, n_seq, n_seq], [n_seq] -> LayerStats over query rows first_row..n_seq-1, from a whole map:

    its lower triangle fed to a StatsAccumulator ROW_BLOCK rows at a time."""
    n_head, n_seq, _ = attn.shape
    acc = StatsAccumulator(n_head, ids, first_row)
    for a in range(first_row, n_seq, ROW_BLOCK):
        b = min(a + ROW_BLOCK, n_seq)
        acc.add(0, a, b, 0, attn[:, a:b, :b])
    return acc.result()


def stats_arrays(attn: np.ndarray, ids: np.ndarray, first_row: int = 0) -> dict[str, np.ndarray]:
    """[n_head, n_seq, n_seq], [n_seq] -> {stat: [n_head]}, NaN where undefined."""
    return layer_arrays(attn, ids, first_row).values


def uniform_entropy(n_seq: int) -> float:
    """Mean over rows of the entropy of uniform attention over the i + 1 visible keys."""
    return float(np.mean(np.log(np.arange(1, n_seq + 1))))


def rule_holds(values: dict[str, np.ndarray], support: dict[str, int], uniform: float) -> dict[str, np.ndarray]:
    """kind -> bool array:

    whether that kind's rule alone holds (its statistic at its threshold, with at least MIN_SUPPORT rows where the
    statistic needs support). NaN never holds. Arrays of any shape, broadcast; a `relative_entropy` array in
    `values` is used as it is (`uniform` is then unused)."""
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
    """A head's kind from its statistics (KIND_RULES).

    `support` defaults to enough rows for every statistic that is defined (one head classified on its own, as in the
    tests of the thresholds)."""
    arrays = {k: np.float64(np.nan if v is None else v) for k, v in values.items()}
    if support is None:
        support = {s: MIN_SUPPORT for s in SUPPORTED_STATS}
    holds = rule_holds(cast("dict[str, np.ndarray]", arrays), support, uniform_entropy(n_seq))  # scalars broadcast
    return KINDS[int(kinds_from_holds(holds))]


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
    """No row of the text supports a token-pattern kind:

    it is too short or too plain to tell induction or duplicate-token heads."""
    return all(support.get(s, 0) < MIN_SUPPORT for s in SUPPORTED_STATS)
