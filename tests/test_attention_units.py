"""The attention kernel's bookkeeping against its documented contract (mhacli/engine/attention.py).

How many threads share a layer (`threads_for`, also read by the memory estimate of mhacli.analyses.heads), how
many rows a block holds (`block_rows`), which keys each block sees (`blocks`), BLAS held to one thread while the
blocks are shared (`one_blas_thread`), a sink that is not concurrent getting its blocks in order from one thread,
and the head groups a sink is handed. Each expected value is written from the module's docstrings, not read from it.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from mhacli.engine.attention import (
    BLOCK,
    MIN_BLOCK,
    MIN_PARALLEL_CELLS,
    TILE_BYTES,
    block_rows,
    blocks,
    causal_attention,
    one_blas_thread,
    threads_for,
    visible,
)

CPUS = len(os.sched_getaffinity(0))
BIG = [(a, a + 128, 0) for a in range(0, 8 * 128, 128)]  # 8 blocks, far more visible cells than MIN_PARALLEL_CELLS


@pytest.mark.parametrize(
    "limit,want",
    [
        ("3", 3),  # MHA_THREADS overrides the CPU count
        ("1", 1),
        ("20", 8),  # ... but never more threads than blocks
        ("0", min(CPUS, 8)),  # not a positive integer: the CPUs this process may use
        ("x", min(CPUS, 8)),
        ("", min(CPUS, 8)),
    ],
)
def test_threads_follow_mha_threads_and_the_cpus(monkeypatch, limit, want):
    monkeypatch.setenv("MHA_THREADS", limit)
    assert threads_for(BIG, 32) == want


def test_threads_without_mha_threads_are_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.delenv("MHA_THREADS", raising=False)
    assert threads_for(BIG, 32) == min(CPUS, 8)
    monkeypatch.setenv("mha_threads", "3")  # the variable's name is upper case
    assert threads_for(BIG, 32) == min(CPUS, 8)


@pytest.mark.parametrize("n_head", [1, 4])
def test_a_layer_under_min_parallel_cells_gets_one_thread(monkeypatch, n_head):
    """cells = n_head x visible (row, key) cells of every block; one thread below MIN_PARALLEL_CELLS, shared at it."""
    monkeypatch.setenv("MHA_THREADS", "4")
    keys = MIN_PARALLEL_CELLS // (n_head * 2 * 16)  # two blocks of 16 rows over `keys` keys: exactly at the limit
    todo = [(0, 16, 16 - keys), (16, 32, 32 - keys)]
    assert n_head * sum((b - a) * (b - lo) for a, b, lo in todo) == MIN_PARALLEL_CELLS
    assert threads_for(todo, n_head) == 2
    smaller = [(0, 16, 16 - keys), (16, 32, 33 - keys)]  # one cell fewer per row
    assert threads_for(smaller, n_head) == 1


def test_block_rows_keep_one_heads_tile_under_tile_bytes():
    """BLOCK rows for texts up to TILE_BYTES / (4 BLOCK) keys; fewer beyond, never under MIN_BLOCK."""
    limit = TILE_BYTES // (4 * BLOCK)  # 32,768 keys
    assert block_rows(1) == block_rows(limit) == BLOCK
    assert block_rows(limit + 1) == BLOCK - 1  # the first length whose 128-row tile would pass TILE_BYTES
    assert block_rows(2 * limit) == BLOCK // 2
    assert 4 * block_rows(3 * limit) * 3 * limit <= TILE_BYTES < 4 * (block_rows(3 * limit) + 1) * 3 * limit
    assert block_rows(10**8) == MIN_BLOCK
    # a sliding window: a block sees at most window + BLOCK keys, whatever the text's length
    assert block_rows(10**8, window=1000) == BLOCK
    assert block_rows(10**8, window=limit - BLOCK) == BLOCK
    assert block_rows(10**8, window=limit - BLOCK + 1) == BLOCK - 1
    assert block_rows(500, window=10**6) == BLOCK  # a window longer than the text: the text's keys
    assert block_rows(0) == BLOCK


@pytest.mark.parametrize("n_seq,rows,window", [(1, 16, None), (300, 128, None), (256, 64, None), (300, 64, 50),
                                               (100, 16, 1), (40, 16, 500), (10, 3, 4)])  # fmt: skip
def test_blocks_tile_the_rows_and_see_exactly_the_visible_keys(n_seq, rows, window):
    """Rows a..b-1 of each block cover the text once; lo..b-1 is the smallest key range holding every visible key."""
    todo = blocks(n_seq, rows, window)
    assert [a for a, _, _ in todo] == list(range(0, n_seq, rows))
    assert [b for _, b, _ in todo] == [min(a + rows, n_seq) for a, _, _ in todo]
    whole = visible(0, n_seq, 0, n_seq, window)
    for a, b, lo in todo:
        seen = np.flatnonzero(whole[a:b].any(axis=0))
        assert lo == seen[0] and b - 1 == seen[-1], (a, b, lo)


@pytest.mark.parametrize("window", [None, 1, 3, 10])
def test_visible_is_the_causal_mask_and_the_window(window):
    """Key j is visible to query i when j <= i and j > i - window, in any sub-rectangle of the map."""
    n = 12
    for q_lo, q_hi, k_lo, k_hi in [(0, n, 0, n), (4, 9, 2, 11), (5, 6, 0, 6)]:
        got = visible(q_lo, q_hi, k_lo, k_hi, window)
        want = [[j <= i and (window is None or j > i - window) for j in range(k_lo, k_hi)] for i in range(q_lo, q_hi)]
        assert got.tolist() == want


def blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_one_blas_thread_holds_blas_to_one_thread_and_gives_it_back():
    pytest.importorskip("threadpoolctl", reason="a dependency of mhacli")
    from threadpoolctl import threadpool_limits

    if not blas_threads():
        pytest.skip("no BLAS library that threadpoolctl can see")
    with threadpool_limits(limits=3, user_api="blas"):
        assert set(blas_threads()) == {3}
        with one_blas_thread():
            assert set(blas_threads()) == {1}
        assert set(blas_threads()) == {3}


def test_one_blas_thread_leaves_other_thread_pools_alone():
    """Only BLAS: an OpenMP pool in the same process (torch's, here) keeps its threads."""
    pytest.importorskip("threadpoolctl", reason="a dependency of mhacli")
    pytest.importorskip("torch", reason="the test extra installs torch; its OpenMP runtime is the other pool here")
    from threadpoolctl import threadpool_info, threadpool_limits

    def openmp() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "openmp"]

    if not openmp():
        pytest.skip("no OpenMP runtime loaded")
    with threadpool_limits(limits=3):
        with one_blas_thread():
            assert set(openmp()) == {3}


class Recorder:
    """A sink recording each call (h, a, b, lo, group size) and the thread that made it."""

    def __init__(self, concurrent: bool):
        self.concurrent = concurrent
        self.calls: list[tuple[int, int, int, int, int]] = []
        self.threads: set[int] = set()
        self.names: set[str] = set()
        self.lock = threading.Lock()

    def add(self, h, a, b, lo, p):
        with self.lock:
            self.calls.append((h, a, b, lo, len(p)))
            self.threads.add(threading.get_ident())
            self.names.add(threading.current_thread().name)


def qkv(n_head, n_kv, n_seq, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n_head, n_seq, d)).astype(np.float32),
        rng.standard_normal((n_kv, n_seq, d)).astype(np.float32),
        rng.standard_normal((n_kv, n_seq, d)).astype(np.float32),
    )


def test_a_sink_that_is_not_concurrent_gets_every_block_in_order_from_one_thread():
    """Whatever `threads` asks for: rows in order, heads 0..n_head-1 within each block."""
    q, k, v = qkv(4, 2, 2000)
    sink = Recorder(concurrent=False)
    causal_attention(q, k, v, 0.3, block=16, sink=sink, threads=4)
    assert len(sink.threads) == 1
    assert [(a, b) for _, a, b, _, _ in sink.calls] == [(a, min(a + 16, 2000)) for a in range(0, 2000, 16)]
    assert all(h == 0 and g == 4 for h, _, _, _, g in sink.calls)


class FirstBlocks(Recorder):
    """A concurrent sink holding each thread's first call until every thread has made one.

    No thread can take a second block before all have taken their first: the first calls of the threads are exactly
    the first blocks taken, whatever the machine's load.
    """

    def __init__(self, threads: int):
        super().__init__(concurrent=True)
        self.barrier = threading.Barrier(threads, timeout=30)  # fewer threads than asked: fails, not hangs
        self.first: dict[int, tuple[int, int, int]] = {}

    def add(self, h, a, b, lo, p):
        me = threading.get_ident()
        if me not in self.first:
            self.first[me] = (a, b, lo)
            self.barrier.wait()
        super().add(h, a, b, lo, p)


@pytest.mark.parametrize("n_seq,window,threads", [(4000, None, 3), (4008, None, 3), (4008, 50, 3), (2000, None, 2)])
def test_a_concurrent_sink_is_shared_by_the_threads_asked_for_largest_blocks_first(n_seq, window, threads):
    """Threads take the blocks with the most visible cells first, so the last to finish are small.

    With a window the ragged last block is the smallest: never among the first. The threads are named `mha-attn`
    (a thread left behind can be told apart, as test_streaming does for the paired stream's)."""
    q, k, v = qkv(2, 2, n_seq)
    sink = FirstBlocks(threads)
    z_shared, _ = causal_attention(q, k, v, 0.3, window=window, block=16, sink=sink, threads=threads)
    assert len(sink.first) == threads and len(sink.threads) == threads
    assert all(name.startswith("mha-attn") for name in sink.names), sink.names
    assert sorted(a for _, a, _, _, _ in sink.calls) == list(range(0, n_seq, 16))
    size = [(b - a) * (b - lo) for a, b, lo in blocks(n_seq, 16, window)]
    firsts = sorted((b - a) * (b - lo) for a, b, lo in sink.first.values())
    assert firsts == sorted(size)[-threads:], "the largest blocks go first"
    alone = Recorder(concurrent=True)
    z_alone, _ = causal_attention(q, k, v, 0.3, window=window, block=16, sink=alone, threads=1)
    assert [a for _, a, _, _, _ in alone.calls] == list(range(0, n_seq, 16)), "one thread takes them in order"
    assert len(alone.threads) == 1 and np.array_equal(z_shared, z_alone)


class Plain:
    """A sink that says nothing about threads (no `concurrent` attribute): it must get one thread."""

    def __init__(self):
        self.threads: set[int] = set()
        self.rows: list[int] = []

    def add(self, h, a, b, lo, p):
        self.threads.add(threading.get_ident())
        self.rows.append(a)


def test_a_sink_without_the_concurrent_attribute_is_not_shared():
    q, k, v = qkv(2, 2, 3000)
    sink = Plain()
    causal_attention(q, k, v, 0.3, block=16, sink=sink, threads=3)
    assert len(sink.threads) == 1 and sink.rows == list(range(0, 3000, 16))


class Fixed(Recorder):
    fixed_rows = 24


@pytest.mark.parametrize("window", [None, 30])
def test_a_sink_may_fix_the_block_rows(window):
    """`fixed_rows` (two models' blocks paired row for row in diff) decides the blocks unless `block` is given."""
    q, k, v = qkv(3, 3, 100)
    sink = Fixed(concurrent=False)
    z, _ = causal_attention(q, k, v, 0.3, window=window, sink=sink)
    assert [(a, b, lo) for _, a, b, lo, _ in sink.calls] == blocks(100, 24, window)
    z_ref, _ = causal_attention(q, k, v, 0.3, window=window)
    assert np.abs(z - z_ref).max() < 1e-6
    given = Fixed(concurrent=False)
    causal_attention(q, k, v, 0.3, window=window, block=10, sink=given)
    assert [(a, b, lo) for _, a, b, lo, _ in given.calls] == blocks(100, 10, window)


def test_a_windowed_layer_computes_only_the_keys_inside_the_window():
    """Each tile spans keys lo..b-1 with lo = a - window + 1: the keys before the window are never computed."""
    q, k, v = qkv(1, 1, 700)
    sink = Recorder(concurrent=False)
    causal_attention(q, k, v, 0.3, window=100, block=64, sink=sink)
    assert [(a, b, lo) for _, a, b, lo, _ in sink.calls] == [
        (a, min(a + 64, 700), max(0, a - 99)) for a in range(0, 700, 64)
    ]


def test_a_long_windowed_text_keeps_full_blocks():
    """Past 32,768 tokens a block without a window shrinks (its tile would pass TILE_BYTES).

    With a window of 100 keys a tile is at most 228 keys wide, so the block keeps BLOCK rows."""
    n_seq = TILE_BYTES // (4 * BLOCK) + 600
    assert block_rows(n_seq) < BLOCK
    q, k, v = qkv(1, 1, n_seq, d=2)
    sink = Recorder(concurrent=False)
    causal_attention(q, k, v, 0.3, window=100, sink=sink)
    assert [(a, b, lo) for _, a, b, lo, _ in sink.calls] == blocks(n_seq, BLOCK, 100)


@pytest.mark.parametrize("n_seq,n_head,window", [(100, 6, None), (3000, 8, None), (1100, 32, None), (3000, 8, 1000)])
def test_heads_go_to_the_sink_in_groups_whose_tiles_fit_tile_bytes(n_seq, n_head, window):
    """Each call hands heads h..h+g-1 of one block: g as many as TILE_BYTES holds at the widest block (1 at least).

    With a window the widest block spans window + rows - 1 keys, not the text."""
    q, k, v = qkv(n_head, n_head // 2, n_seq)
    rows = block_rows(n_seq, window)
    widest = n_seq if window is None else window + rows - 1
    group = max(1, min(n_head, TILE_BYTES // (4 * rows * widest)))
    sink = Recorder(concurrent=False)
    causal_attention(q, k, v, 0.3, window=window, sink=sink)
    for a in range(0, n_seq, rows):
        calls = [(h, g) for h, a2, _, _, g in sink.calls if a2 == a]
        want = [(h, min(group, n_head - h)) for h in range(0, n_head, group)]
        assert calls == want, a


def test_an_empty_text_gives_empty_outputs():
    q, k, v = qkv(3, 3, 0)
    z, probs = causal_attention(q, k, v, 0.3)
    assert z.shape == (3, 0, 8) and probs is not None and probs.shape == (3, 0, 0)
    sink = Recorder(concurrent=True)
    z, none = causal_attention(q, k, v, 0.3, window=4, sink=sink)
    assert z.shape == (3, 0, 8) and none is None and sink.calls == []
