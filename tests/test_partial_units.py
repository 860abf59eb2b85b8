"""mhacli.analyses.partial's sinks fed tiles directly, against the whole map they come from.

A window of rows and keys must hold exactly those cells of the whole map (0 where the kernel hides them), the top
keys of every row must be the first k of the reversed stable argsort of its whole-map row, and a PartialMap must
answer the indexing the views use for the cells it holds and refuse the others.
"""

from __future__ import annotations

import numpy as np
import pytest

from mhacli.analyses.partial import MapRequest, PartialMap, Tee, TopSink, WindowSink, ranked, strongest


def causal_map(seed: int, n_head: int, n: int, window: int | None, levels: int | None = None) -> np.ndarray:
    """Random rows over the visible keys; with `levels`, weights from a few values so that ties are common."""
    rng = np.random.default_rng(seed)
    w = rng.integers(1, levels + 1, size=(n_head, n, n)).astype(np.float32) if levels else rng.random((n_head, n, n))
    i, j = np.indices((n, n))
    w[:, (j > i) | ((i - j >= window) if window else False)] = 0
    return (w / w.sum(axis=-1, keepdims=True)).astype(np.float32)


def tiles(A: np.ndarray, window: int | None, rows: int, heads: int):
    """The kernel's tiles: heads h..h+heads-1, rows a..b-1 over keys lo..b-1."""
    n_head, n, _ = A.shape
    for a in range(0, n, rows):
        b = min(a + rows, n)
        lo = max(0, a - window + 1) if window else 0
        for h in range(0, n_head, heads):
            yield h, a, b, lo, A[h : h + heads, a:b, lo:b]


@pytest.mark.parametrize("window,rows,heads", [(None, 5, 4), (None, 3, 1), (4, 5, 2), (1, 7, 3), (9, 20, 4)])
def test_a_window_sink_holds_exactly_those_cells_of_the_whole_map(window, rows, heads):
    A = causal_map(1, 4, 20, window)
    chosen, want_rows, want_keys = [1, 3], [0, 4, 5, 13, 19], [0, 2, 3, 12, 18, 19]
    sink = WindowSink(chosen, 20, want_rows, want_keys)
    for tile in tiles(A, window, rows, heads):
        sink.add(*tile)
    maps = sink.maps()
    assert len(maps) == 2
    assert sink.data.dtype == np.float32  # the float32 cells MapRequest.cells counts for the memory guard
    for n, h in enumerate(chosen):
        np.testing.assert_array_equal(sink.data[n], A[h][np.ix_(want_rows, want_keys)])
        m = maps[n]
        assert m.shape == (20, 20)
        for i in want_rows:
            for j in want_keys:
                assert m[i, j] == A[h, i, j]


def test_a_window_sink_ignores_tiles_outside_its_rows_and_keys():
    sink = WindowSink([0], 10, [8, 9], [1])
    sink.add(0, 0, 8, 0, np.ones((1, 8, 8), np.float32))  # rows 0..7: none of them
    sink.add(0, 8, 10, 2, np.ones((1, 2, 8), np.float32))  # keys 2..9: not key 1
    assert not sink.data.any()
    sink.add(0, 8, 10, 0, np.full((1, 2, 10), 0.5, np.float32))
    assert sink.data.tolist() == [[[0.5], [0.5]]]


@pytest.mark.parametrize("window,k", [(None, 3), (None, 1), (6, 4), (2, 5), (None, 25)])
@pytest.mark.parametrize("levels", [None, 3])
def test_the_top_sink_holds_each_rows_strongest_keys_as_argsort_orders_them(window, k, levels):
    A = causal_map(2, 3, 20, window, levels)
    chosen = [0, 2]
    sink = TopSink(chosen, 20, k)
    for tile in tiles(A, window, 6, 2):
        sink.add(*tile)
    for n, h in enumerate(chosen):
        m = sink.maps()[n]
        for i in range(20):
            want = np.argsort(A[h, i, : i + 1], kind="stable")[::-1][:k]
            keys, weights = strongest(m, i, k)
            assert keys.tolist() == want.tolist(), (h, i)
            np.testing.assert_array_equal(weights, A[h, i, want])
            assert strongest(m, i, 2)[0].tolist() == want[:2].tolist()  # fewer than the sink keeps


def test_strongest_on_a_whole_map_is_the_reversed_stable_argsort():
    A = causal_map(3, 1, 12, None, levels=2)[0]
    for i in range(12):
        for k in (1, 3, 12, 20):
            keys, weights = strongest(A, i, k)
            want = np.argsort(A[i, : i + 1], kind="stable")[::-1][:k]
            assert keys.tolist() == want.tolist() and weights.tolist() == A[i, want].tolist()


@pytest.mark.parametrize("seed", range(20))
def test_ranked_is_the_head_of_the_reversed_stable_argsort(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    row = rng.integers(0, int(rng.integers(1, 5)), size=n).astype(np.float32)  # many ties
    for k in (1, 2, n - 1, n, n + 3):
        if k >= 1:
            assert ranked(row, k).tolist() == np.argsort(row, kind="stable")[::-1][:k].tolist(), (row, k)


def test_a_partial_map_answers_for_its_cells_and_refuses_the_others():
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    m = PartialMap(8, [2, 5], [0, 1, 4], data)
    assert m.shape == (8, 8) and m.top_keys is None
    assert m[5, 4] == 5 and m[np.int64(2), np.int64(1)] == 1
    assert m[5, :2].tolist() == [3, 4] and m[2, [4, 0]].tolist() == [2, 0]
    with pytest.raises(IndexError, match="query row 3 was not computed"):
        m[3, 0]
    with pytest.raises(IndexError, match="key 2 of row 5 was not computed"):
        m[5, 2]
    with pytest.raises(IndexError, match=r"keys \[0 1 2\] of row 2 were not all computed"):
        m[2, :3]


def test_a_tee_feeds_every_sink_and_is_concurrent_only_when_all_are():
    class Recorder:
        def __init__(self, concurrent=None):
            self.got = []
            if concurrent is not None:
                self.concurrent = concurrent

        def add(self, *args):
            self.got.append(args)

    a, b = Recorder(True), Recorder(True)
    tee = Tee(a, b)
    assert tee.concurrent is True and tee.sinks == (a, b)
    tee.add(1, 2, 3, 0, "p")
    assert a.got == b.got == [(1, 2, 3, 0, "p")]
    assert Tee(Recorder(True), Recorder(False)).concurrent is False
    assert Tee(Recorder(True), Recorder()).concurrent is False  # a sink that does not say is not concurrent
    assert Tee(WindowSink([0], 2, [0], [0]), TopSink([0], 2, 1)).concurrent is True


def test_a_request_counts_the_float32_cells_a_head_keeps():
    assert MapRequest(rows=(1, 2, 3), keys=(0, 5)).cells(100) == 6
    assert MapRequest(top=4).cells(100) == 100 * 4 * 3  # an int64 key and a float32 weight per cell
    assert MapRequest().cells(100) == 0
