"""The forward's attention kernel (row blocks, folded scale, grouped K/V read in place) against torch eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import ATTN_ATOL  # the engine tolerance, here on sharp random logits (|s| up to ~30)

from mhacli.engine.attention import causal_attention


def reference(q, k, v, scale, window):
    """HF's eager attention: repeat_kv, (q @ k^T) * scale, additive mask of finfo.min, softmax, @ v."""
    n_head, n_seq, _ = q.shape
    group = n_head // k.shape[0]
    qt, kt, vt = (torch.from_numpy(a) for a in (q, k, v))
    kt, vt = kt.repeat_interleave(group, 0), vt.repeat_interleave(group, 0)
    s = (qt @ kt.transpose(1, 2)) * scale
    i, j = torch.arange(n_seq)[:, None], torch.arange(n_seq)[None, :]
    visible = (j <= i) if window is None else (j <= i) & (j > i - window)
    s = s + torch.where(visible, 0.0, torch.finfo(torch.float32).min)
    p = torch.softmax(s, dim=-1)
    return (p @ vt).numpy(), p.numpy(), visible.numpy()


@pytest.mark.parametrize(
    "n_head,n_kv,n_seq,d,window,block",
    [
        (4, 4, 1, 8, None, 128),
        (4, 4, 7, 8, None, 128),
        (12, 12, 300, 64, None, 128),  # several blocks, a ragged last one
        (8, 2, 257, 16, None, 64),  # GQA
        (8, 1, 200, 16, None, 32),  # MQA
        (4, 2, 300, 32, 50, 64),  # sliding window across block edges
        (4, 4, 100, 16, 1, 16),  # a window of one key: attention to itself only
        (4, 4, 100, 16, 500, 16),  # a window longer than the text
    ],
)
def test_matches_torch_eager(n_head, n_kv, n_seq, d, window, block):
    rng = np.random.default_rng(n_seq)
    q = (rng.standard_normal((n_head, n_seq, d)) * 2).astype(np.float32)
    k = (rng.standard_normal((n_kv, n_seq, d)) * 2).astype(np.float32)
    v = rng.standard_normal((n_kv, n_seq, d)).astype(np.float32)
    z, probs = causal_attention(q, k, v, d**-0.5, window=window, block=block)
    z_ref, p_ref, visible = reference(q, k, v, d**-0.5, window)
    assert probs.dtype == np.float32 and z.dtype == np.float32
    assert np.abs(probs - p_ref).max() < ATTN_ATOL
    assert np.abs(z - z_ref).max() < 10 * ATTN_ATOL
    assert (probs[:, ~visible] == 0).all(), "hidden keys must get exactly 0"
    assert np.abs(probs.sum(axis=-1) - 1).max() < 1e-6


@pytest.mark.parametrize("window", [None, 3])
def test_large_logits_of_both_signs_match_torch_eager(window):
    """Scores of +-120 in different rows of one block: each row's softmax is shifted by its own maximum.

    Shifted by nothing, or by the block's maximum, exp overflows in one row and underflows to 0 / 0 in the other.
    """
    rng = np.random.default_rng(3)
    n_seq, d = 40, 8
    u = np.full(d, d**-0.5, dtype=np.float32)
    k = (u + 0.01 * rng.standard_normal((1, n_seq, d))).astype(np.float32)
    v = rng.standard_normal((1, n_seq, d)).astype(np.float32)
    sign = np.where(np.arange(n_seq) % 2 == 0, 1.0, -1.0)[:, None]
    q = np.stack([120 * sign * u, -120 * sign * u]).astype(np.float32)  # two heads sharing one K/V head
    z, probs = causal_attention(q, k, v, 1.0, window=window, block=16)
    z_ref, p_ref, _ = reference(q, k, v, 1.0, window)
    assert np.isfinite(probs).all() and np.isfinite(z).all()
    assert np.abs(probs - p_ref).max() < ATTN_ATOL
    assert np.abs(z - z_ref).max() < 10 * ATTN_ATOL


def test_block_size_changes_the_numbers_only_by_float32_rounding():
    """Another block shape may round a score differently, by an ulp or so, and nothing more.

    Each block's scores are their own matmul, so the kernel's BLAS decides the rounding.
    """
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((4, 150, 16)).astype(np.float32) for _ in range(3))
    results = [causal_attention(q, k, v, 0.25, block=b) for b in (1, 7, 64, 150, 1000)]
    for z, p in results[1:]:
        assert np.abs(p - results[0][1]).max() < ATTN_ATOL and np.abs(z - results[0][0]).max() < 10 * ATTN_ATOL


class Keep:
    """A sink that keeps every tile it is given (in the order given: it is not concurrent), as whole blocks."""

    def __init__(self):
        self.blocks, self.heads = [], []

    def add(self, h, a, b, lo, p):
        if h == 0:
            self.blocks.append((a, b, lo, []))
        assert self.blocks[-1][:3] == (a, b, lo), "a block's heads arrive together"
        self.blocks[-1][3].extend(p.copy())
        self.heads.extend(range(h, h + len(p)))


@pytest.mark.parametrize("n_head,n_kv,n_seq,window,block", [
    (4, 4, 1, None, 16), (4, 4, 150, None, 64), (8, 2, 257, None, 32), (4, 4, 300, 50, 64), (4, 4, 100, 1, 16),
    (4, 4, 100, 500, 16),
])  # fmt: skip
def test_a_sink_gets_exactly_the_blocks_of_the_kept_map(n_head, n_kv, n_seq, window, block):
    """Streamed and kept attention are the same computation.

    Every block a sink gets equals (bit for bit) that block of the kept map, the blocks tile the visible part of every
    row, and z is identical.
    """
    rng = np.random.default_rng(n_seq)
    q = rng.standard_normal((n_head, n_seq, 16)).astype(np.float32)
    k, v = (rng.standard_normal((n_kv, n_seq, 16)).astype(np.float32) for _ in range(2))
    z_kept, probs = causal_attention(q, k, v, 0.25, window=window, block=block)
    sink = Keep()
    z_streamed, none = causal_attention(q, k, v, 0.25, window=window, block=block, sink=sink)
    assert none is None and np.array_equal(z_kept, z_streamed)
    covered = np.zeros((n_seq, n_seq), dtype=bool)
    assert sink.heads == list(range(n_head)) * len(sink.blocks)
    for a, b, lo, tiles in sink.blocks:
        p = np.stack(tiles)
        assert p.shape == (n_head, b - a, b - lo)
        assert np.array_equal(p, probs[:, a:b, lo:b])
        covered[a:b, lo:b] = True
    assert [blk[0] for blk in sink.blocks] == list(range(0, n_seq, block))
    assert (probs[:, ~covered] == 0).all(), "outside the blocks every weight is 0 (masked)"


@pytest.mark.parametrize("window", [None, 40])
def test_blocks_shared_among_threads_give_the_same_bits(window):
    """Threads take whole blocks (a concurrent sink writes only its rows).

    The map, z and the statistics are the same bits with 1, 2 or 3 threads.
    """
    from mhacli.analyses.stats import StatsAccumulator

    rng = np.random.default_rng(7)
    q = rng.standard_normal((4, 300, 16)).astype(np.float32)
    k, v = (rng.standard_normal((2, 300, 16)).astype(np.float32) for _ in range(2))
    ids = rng.integers(0, 9, size=300)
    runs = []
    for threads in (1, 2, 3):
        z, probs = causal_attention(q, k, v, 0.25, window=window, block=16, threads=threads)
        acc = StatsAccumulator(4, ids)
        z_streamed, _ = causal_attention(q, k, v, 0.25, window=window, block=16, sink=acc, threads=threads)
        runs.append((z, probs, z_streamed, acc.result().values))
    for z, probs, z_streamed, values in runs[1:]:
        assert np.array_equal(z, runs[0][0]) and np.array_equal(probs, runs[0][1])
        assert np.array_equal(z_streamed, runs[0][2])
        for name, got in values.items():
            assert np.array_equal(got, runs[0][3][name], equal_nan=True), name


def test_an_error_in_one_thread_stops_the_layer():
    """A sink that fails in one thread.

    The error reaches the caller, and the other thread stops at its next block instead of finishing the layer.
    """
    import threading

    class Failing:
        concurrent = True

        def __init__(self):
            self.calls, self.lock = [], threading.Lock()

        def add(self, h, a, b, lo, p):
            with self.lock:
                self.calls.append(a)
            if a == 3968:  # the second block taken (the largest go first)
                raise RuntimeError("boom")

    rng = np.random.default_rng(8)
    q, k, v = (rng.standard_normal((2, 4000, 8)).astype(np.float32) for _ in range(3))
    sink = Failing()
    with pytest.raises(RuntimeError, match="boom"):
        causal_attention(q, k, v, 0.3, block=16, sink=sink, threads=2)
    assert len(set(sink.calls)) < 4000 // 16, "the layer stopped early"
