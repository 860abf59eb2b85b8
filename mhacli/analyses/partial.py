"""The parts of attention maps a view shows, computed without the whole map:

a window of rows and keys, one query's row, every query's strongest keys. Each is a mhacli.engine.attention sink that
keeps only its part of each tile as the kernel streams the layer, so a 32,768-token text costs the window, not n_seq^2.
Pure NumPy.

A PartialMap answers the indexing the views use on a whole map (`attn[i, j]`, `attn[i, :i + 1]`, `attn.shape`)
for the cells it holds, and `strongest(attn, i, k)` lists a row's strongest keys from either kind of map, in the
same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

F32 = np.float32


class Tee:
    """One sink feeding several; concurrent when all of them are."""

    def __init__(self, *sinks):
        self.sinks = sinks
        self.concurrent = all(getattr(s, "concurrent", False) for s in sinks)

    def add(self, h: int, a: int, b: int, lo: int, p: np.ndarray) -> None:
        for sink in self.sinks:
            sink.add(h, a, b, lo, p)


@dataclass(frozen=True)
class MapRequest:
    """What a view needs of each selected head's map:

    query rows `rows` (sorted) over keys `keys` (sorted), or, with `top`, the `top` strongest keys of every query
    row."""

    rows: tuple[int, ...] = ()
    keys: tuple[int, ...] = ()
    top: int | None = None

    def cells(self, n_seq: int) -> int:
        """float32 cells a head's part holds (the memory guard); `top` beyond the keys there are counts them all."""
        if self.top is not None:  # an int64 key and a float32 weight each: three float32 cells' worth
            return n_seq * min(self.top, n_seq) * 3
        return len(self.rows) * len(self.keys)


class PartialMap:
    """Some rows and keys of one head's [n_seq, n_seq] map; indexing outside them is an error, not a silent 0."""

    def __init__(
        self,
        n_seq: int,
        rows: Sequence[int] | np.ndarray,
        keys: Sequence[int] | np.ndarray,
        data: np.ndarray,
        top: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self.shape = (n_seq, n_seq)
        self.rows, self.keys = np.asarray(rows, dtype=np.int64), np.asarray(keys, dtype=np.int64)
        self.data, self.top_keys = data, top
        self._row_at = {int(r): n for n, r in enumerate(self.rows)}
        self._key_at = np.full(n_seq, -1, dtype=np.int64)
        self._key_at[self.keys] = np.arange(len(self.keys))

    def __getitem__(self, index):
        i, j = index
        if int(i) not in self._row_at:
            raise IndexError(f"query row {i} was not computed")
        row = self.data[self._row_at[int(i)]]
        if isinstance(j, (int, np.integer)):
            at = self._key_at[j]
            if at < 0:
                raise IndexError(f"key {j} of row {i} was not computed")
            return row[at]
        cols = np.arange(self.shape[1])[j]
        at = self._key_at[cols]
        if np.any(at < 0):
            raise IndexError(f"keys {cols} of row {i} were not all computed")
        return row[at]


class WindowSink:
    """Collects rows `rows` over keys `keys` of heads `heads` from the tiles:

    [len(heads), len(rows), len(keys)], every cell the kernel hides (masked, outside a window) left 0, as in a whole
    map."""

    concurrent = True

    def __init__(self, heads: Sequence[int], n_seq: int, rows: Sequence[int], keys: Sequence[int]):
        self.heads, self.n_seq = {h: n for n, h in enumerate(heads)}, n_seq
        self.rows, self.keys = np.asarray(rows, dtype=np.int64), np.asarray(keys, dtype=np.int64)
        self.data = np.zeros((len(heads), len(self.rows), len(self.keys)), dtype=F32)

    def add(self, h: int, a: int, b: int, lo: int, p: np.ndarray) -> None:
        r0, r1 = np.searchsorted(self.rows, [a, b])
        k0, k1 = np.searchsorted(self.keys, [lo, b])
        if r0 >= r1 or k0 >= k1:
            return
        rows, keys = self.rows[r0:r1] - a, self.keys[k0:k1] - lo
        for head, tile in enumerate(p, start=h):
            if head in self.heads:
                self.data[self.heads[head], r0:r1, k0:k1] = tile[rows][:, keys]

    def maps(self) -> list[PartialMap]:
        return [PartialMap(self.n_seq, self.rows, self.keys, self.data[n]) for n in range(len(self.heads))]


class TopSink:
    """The k strongest keys of every query row of heads `heads` (keys 0..i), as whole-map argsort order gives them:

    by weight, largest first, ties by the later key first."""

    concurrent = True

    def __init__(self, heads: Sequence[int], n_seq: int, k: int):
        k = max(1, min(k, n_seq))  # more keys than the text has: every key (a row never has more than n_seq)
        self.heads, self.k, self.n_seq = {h: n for n, h in enumerate(heads)}, k, n_seq
        self.keys = np.zeros((len(heads), n_seq, k), dtype=np.int64)
        self.weights = np.zeros((len(heads), n_seq, k), dtype=F32)

    def add(self, h: int, a: int, b: int, lo: int, p: np.ndarray) -> None:
        for head, tile in enumerate(p, start=h):
            if head in self.heads:
                self._add(self.heads[head], a, b, lo, tile)

    def _add(self, n: int, a: int, b: int, lo: int, p: np.ndarray) -> None:
        for r in range(b - a):
            i = a + r
            row = p[r, : i + 1 - lo]
            if lo:  # the keys before the window: weight 0, as a whole map's row holds them
                row = np.concatenate([np.zeros(lo, dtype=F32), row])
            keys = ranked(row, self.k)
            self.keys[n, i, : len(keys)] = keys
            self.weights[n, i, : len(keys)] = row[keys]

    def maps(self) -> list[PartialMap]:
        return [
            PartialMap(self.n_seq, (), (), np.zeros((0, 0), F32), (self.keys[n], self.weights[n]))
            for n in range(len(self.heads))
        ]


def ranked(row: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k largest entries of `row`, largest first, ties by the larger index first:

    the first k of np.argsort(row, kind="stable")[::-1], found in O(len(row)) (argpartition), the tie at the
    boundary settled exactly."""
    n = len(row)
    if n <= k:
        return np.argsort(row, kind="stable")[::-1]
    part = np.argpartition(row, n - k)[n - k :]
    edge = row[part].min()
    above = part[row[part] > edge]
    tied = np.flatnonzero(row == edge)[::-1][: k - len(above)]  # later keys first, as the reversed stable sort
    chosen = np.concatenate([above, tied])
    order = np.lexsort((-chosen, -row[chosen]))  # by weight, largest first; then by the later key
    return chosen[order]


def strongest(attn, i: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row i's k strongest keys among 0..i and their weights, from a whole map or a PartialMap's top keys."""
    top = getattr(attn, "top_keys", None)
    if top is not None:
        keys, weights = top
        n = min(k, i + 1, keys.shape[1])
        return keys[i, :n], weights[i, :n]
    keys = ranked(np.asarray(attn[i, : i + 1]), k)
    return keys, np.asarray(attn[i, keys])
