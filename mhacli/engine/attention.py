"""Causal scaled dot-product attention, the hot loop of every forward pass. Pure NumPy, float32.

Query rows are taken in blocks, and each block head by head: one head's scores for the block against the keys it
can see (keys 0..b-1, or only those inside a sliding window), the masked entries set to -inf, the softmax in place,
the value product over those keys only, then the tile of probabilities [rows, keys] goes to a `sink` while it is
still in cache. The masked upper half is never computed. A block is BLOCK rows, fewer only where a tile would pass
TILE_BYTES (texts over 32,768 tokens). The default sink writes the tiles into the whole map [n_head, n_seq, n_seq]
(every hidden entry exactly 0); other sinks reduce them (statistics, divergences) and let them go: then memory is
O(rows x n_seq) per thread, not O(n_head x n_seq^2), and a 32,768-token text needs no map at all. The block rows
depend on the text's length and window only, never on the sink: a kept map and a streamed one hold the same
float32 numbers, so statistics of one equal those of the other.

Blocks are independent: with a sink that says so (`concurrent = True`: it writes only the rows it is given), they are
shared among threads, each taking the next, largest first (NumPy releases the GIL in its kernels), BLAS held to one
thread inside them so the threads do not fight over the cores. A sink without it gets the blocks in order, heads
0..n_head-1 within each.

The 1/sqrt(d_head) scale is folded into q. Grouped K/V heads (MQA/GQA) are read in place, never repeated in
memory: query head h reads K/V head h // (n_head // n_kv_head), as HF's repeat_kv does.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Protocol, cast

import numpy as np

from mhacli.engine.segments import current

F32 = np.float32
BLOCK = 128  # query rows per block, at most
MIN_BLOCK = 16  # ... and at least
# One head's float32 tile [rows, keys] stays under this where MIN_BLOCK allows. Measured on 2 cores (T = 8,192 and
# 32,768, statistics streamed): tiles of 128 rows beat L2-sized ones of 16-32 rows by 1.3-1.5x: each tile reads
# all its keys' K and V rows, so fewer rows per tile means more passes over K and V.
TILE_BYTES = 16 * 1024 * 1024
MIN_PARALLEL_CELLS = 1 << 20  # fewer visible (row, key) cells than this in all heads: one thread (the pool costs more)


class Sink(Protocol):
    """Takes a layer's attention tile by tile:

    heads h..h+g-1, rows a..b-1 over keys lo..b-1 (g heads at once where their tiles are small: short texts; one
    where a tile is large). `p` is the kernel's scratch, valid only during the call: a sink that keeps it copies it.
    Optional attributes: `concurrent` (default False), True when the sink may be called from several threads at once
    for different blocks; `fixed_rows`, the block rows it needs (two models' blocks paired row for row)."""

    def add(self, h: int, a: int, b: int, lo: int, p: np.ndarray) -> None:  # p [g, b - a, b - lo] float32
        ...


class Discard:
    """A sink that drops every tile: the layer's output without its map (layers nobody looks at, a loss)."""

    concurrent = True

    def add(self, h: int, a: int, b: int, lo: int, p: np.ndarray) -> None:
        pass


DISCARD = Discard()


class KeepMap:
    """The default sink: every tile into the whole map [n_head, n_seq, n_seq], hidden entries left 0."""

    concurrent = True

    def __init__(self, n_head: int, n_seq: int):
        self.probs = np.zeros((n_head, n_seq, n_seq), dtype=F32)

    def add(self, h: int, a: int, b: int, lo: int, p: np.ndarray) -> None:
        self.probs[h : h + len(p), a:b, lo:b] = p


def visible(q_lo: int, q_hi: int, k_lo: int, k_hi: int, window: int | None) -> np.ndarray:
    """[q_hi - q_lo, k_hi - k_lo] bool: key j is visible to query i when j <= i and (no window or j > i - window)."""
    i = np.arange(q_lo, q_hi)[:, None]
    j = np.arange(k_lo, k_hi)[None, :]
    mask = j <= i
    if window is not None:
        mask &= j > i - window
    return mask


def block_rows(n_seq: int, window: int | None = None) -> int:
    """Query rows per block: BLOCK, fewer for long texts so one head's tile stays under TILE_BYTES (MIN_BLOCK at least).

    A function of the text's length and the window only: kept and streamed maps use the same blocks."""
    keys = n_seq if window is None else min(n_seq, window + BLOCK)
    return int(max(MIN_BLOCK, min(BLOCK, TILE_BYTES // (4 * max(1, keys)))))


def blocks(n_seq: int, rows: int, window: int | None, starts: np.ndarray | None = None) -> list[tuple[int, int, int]]:
    """(a, b, lo) of every row block: rows a..b-1 see keys lo..b-1.

    lo > 0 only inside a sliding window, or in a pack (`starts`: each row's text start), where no key before the
    block's first text is computed."""
    todo = [(a, min(a + rows, n_seq), 0 if window is None else max(0, a - window + 1)) for a in range(0, n_seq, rows)]
    if starts is None:
        return todo
    return [(a, b, max(lo, int(starts[a]))) for a, b, lo in todo]


def threads_for(todo: list[tuple[int, int, int]], n_head: int) -> int:
    """Threads for a layer's blocks:

    the CPUs this process may use (MHA_THREADS overrides), one when the layer is too small to be worth sharing
    (under MIN_PARALLEL_CELLS visible cells in all its heads)."""
    limit = os.environ.get("MHA_THREADS", "")
    cpus = int(limit) if limit.isdigit() and int(limit) > 0 else len(os.sched_getaffinity(0))
    cells = n_head * sum((b - a) * (b - lo) for a, b, lo in todo)
    return 1 if cells < MIN_PARALLEL_CELLS else max(1, min(cpus, len(todo)))


def causal_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float,
    *,
    window: int | None = None,
    block: int | None = None,
    sink: Sink | None = None,
    threads: int | None = None,
    softcap: float | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """q [n_head, n_seq, d_head], k/v [n_kv_head, n_seq, d_head] -> (z [n_head, n_seq, d_v], probs).

    probs [n_head, n_seq, n_seq]: rows sum to 1 over the visible keys (j <= i, and j > i - window with a sliding
    window), every hidden entry exactly 0. With a `sink`, each tile goes to sink.add instead and probs is None.
    `threads`: how many threads share the blocks (default threads_for; 1 for a sink that is not concurrent).
    `softcap` (Gemma 2): the scaled scores s are capped to softcap * tanh(s / softcap) before the mask and softmax.

    A batch of variants (q [B, n_head, ...], k/v [B, n_kv_head, ...], ablation's stacked models) is folded into
    the heads: folded query head b * n_head + h reads K/V head b * n_kv_head + h // group, its own variant's, and
    the sink (which must take folded heads: DISCARD) sees B * n_head heads; z comes back [B, n_head, n_seq, d_v].
    """
    if q.ndim == 4:
        z, probs = causal_attention(
            q.reshape(-1, *q.shape[-2:]), k.reshape(-1, *k.shape[-2:]), v.reshape(-1, *v.shape[-2:]), scale,
            window=window, block=block, sink=sink, threads=threads, softcap=softcap,
        )  # fmt: skip
        return z.reshape(*q.shape[:-1], z.shape[-1]), (None if probs is None else probs.reshape(*q.shape[:-1], -1))
    n_head, n_seq, _ = q.shape
    keep = KeepMap(n_head, n_seq) if sink is None else None
    target: Sink = keep if keep is not None else cast(Sink, sink)  # one of the two is given
    rows = block or getattr(target, "fixed_rows", None) or block_rows(n_seq, window)  # a sink may fix them
    seg = current(n_seq)  # a pack (mhacli.engine.segments): no key before the query's own text
    starts = None if seg is None else seg.starts
    todo = blocks(n_seq, rows, window, starts)
    workers = threads or threads_for(todo, n_head)
    if not getattr(target, "concurrent", False):
        workers = 1
    qs = q * F32(scale)  # [n_head, n_seq, d_head]
    z = np.empty((n_head, n_seq, v.shape[-1]), dtype=F32)
    stop, lock = threading.Event(), threading.Lock()
    # One thread takes the blocks in order (a sink that is not concurrent gets them as the rows go); several take
    # the largest first, so the last ones to finish are small.
    order = todo if workers == 1 else sorted(todo, key=lambda blk: (blk[1] - blk[0]) * (blk[1] - blk[2]), reverse=True)
    queue = iter(order)
    widest = max((b - lo for _, b, lo in todo), default=1)
    group = max(1, min(n_head, TILE_BYTES // (4 * rows * widest)))  # heads handed to the sink at once

    def work() -> None:
        """Take the next block until none is left (or another thread failed)."""
        tile = np.empty(group * rows * widest, dtype=F32)  # reused by every tile of this thread
        try:
            while not stop.is_set():
                with lock:
                    a, b, lo = next(queue, (-1, -1, -1))
                if a < 0:
                    return
                _block(qs, k, v, a, b, lo, window, tile, z, target, group, softcap, starts)
        except BaseException:
            stop.set()  # the other threads stop at their next block
            raise

    if workers == 1:
        work()
    else:
        with one_blas_thread(), ThreadPoolExecutor(workers, thread_name_prefix="mha-attn") as pool:
            try:
                for done in [pool.submit(work) for _ in range(workers)]:
                    done.result()
            finally:
                stop.set()  # Ctrl-C in the waiting thread: the workers stop at their next block
    return z, (keep.probs if keep is not None else None)


def _block(
    qs: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    a: int,
    b: int,
    lo: int,
    window: int | None,
    tile: np.ndarray,
    z: np.ndarray,
    sink: Sink,
    group: int,
    softcap: float | None = None,
    starts: np.ndarray | None = None,
) -> None:
    """Rows a..b-1 over keys lo..b-1, head by head:

    softmax in place in `tile`, the value product; `group` heads' tiles at a time to the sink. In a pack (`starts`)
    the keys before a row's text start are hidden too."""
    n_head, shared = qs.shape[0], qs.shape[0] // k.shape[0]
    hidden = ~visible(a, b, lo, b, window)  # [rows, keys]: the same for every head
    if starts is not None:
        hidden |= np.arange(lo, b)[None, :] < starts[a:b, None]
    masked = bool(hidden.any())
    for h0 in range(0, n_head, group):
        h1 = min(n_head, h0 + group)
        s = tile[: (h1 - h0) * (b - a) * (b - lo)].reshape(-1, b - a, b - lo)  # scores, then probabilities, in place
        # the group's heads at once (a BLAS product per head, one Python call): their K/V heads, a copy only with GQA
        kv = slice(h0, h1) if shared == 1 else np.arange(h0, h1) // shared
        np.matmul(qs[h0:h1, a:b], k[kv, lo:b].transpose(0, 2, 1), out=s)
        if softcap is not None:  # as HF's eager attention: s / cap, tanh, * cap, then the mask
            s /= F32(softcap)
            np.tanh(s, out=s)
            s *= F32(softcap)
        if masked:
            np.copyto(s, -np.inf, where=hidden)
        s -= s.max(axis=2, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=2, keepdims=True)
        np.matmul(s, v[kv, lo:b], out=z[h0:h1, a:b])  # only the visible keys' values
        sink.add(h0, a, b, lo, s)


def one_blas_thread():
    """BLAS held to one thread while our threads share the blocks (threadpoolctl), where it can be."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a dependency; without it the threads still work, only slower
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
