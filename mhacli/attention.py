"""Causal scaled dot-product attention, the hot loop of every forward pass. Pure NumPy, float32.

Query rows are taken in blocks; for each block and head: the scores against the keys the block can see (keys
0..b-1, or only those inside a sliding window), the masked entries set to -inf, the softmax in place, the value
product over those keys only. The masked upper half is never computed. A block's probabilities
[n_head, rows, keys] then go either into the whole map [n_head, n_seq, n_seq] (every hidden entry exactly 0), or
to a `sink` that reduces them (statistics, divergences) and lets them go: then memory is O(n_head x rows x n_seq),
not O(n_head x n_seq^2), and a 32,768-token text needs no map at all. Both ways compute the same float32 numbers
(the same block shapes, the same operations), so statistics from a kept map equal streamed ones.

The 1/sqrt(d_head) scale is folded into q. Grouped K/V heads (MQA/GQA) are read in place, never repeated in
memory: query head h reads K/V head h // (n_head // n_kv_head), as HF's repeat_kv does.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

F32 = np.float32
BLOCK = 128  # query rows per block, at most
MIN_BLOCK = 16  # ... and at least
BLOCK_BYTES = 32 * 1024 * 1024  # a block's float32 scores [n_head, rows, keys] stay under this (long texts)


class Sink(Protocol):
    """Takes a layer's attention block by block: rows a..b-1 of every head over keys lo..b-1."""

    def add(self, a: int, b: int, lo: int, p: np.ndarray) -> None:  # p [n_head, b - a, b - lo] float32
        ...


class Discard:
    """A sink that drops every block: the layer's output without its map (layers nobody looks at, a loss)."""

    def add(self, a: int, b: int, lo: int, p: np.ndarray) -> None:
        pass


DISCARD = Discard()


def visible(q_lo: int, q_hi: int, k_lo: int, k_hi: int, window: int | None) -> np.ndarray:
    """[q_hi - q_lo, k_hi - k_lo] bool: key j is visible to query i when j <= i and (no window or j > i - window)."""
    i = np.arange(q_lo, q_hi)[:, None]
    j = np.arange(k_lo, k_hi)[None, :]
    mask = j <= i
    if window is not None:
        mask &= j > i - window
    return mask


def block_rows(n_head: int, n_seq: int, window: int | None = None) -> int:
    """Query rows per block: BLOCK, fewer for long texts so one block's scores stay under BLOCK_BYTES."""
    keys = n_seq if window is None else min(n_seq, window + BLOCK)
    return int(max(MIN_BLOCK, min(BLOCK, BLOCK_BYTES // (4 * n_head * max(1, keys)))))


def blocks(n_seq: int, rows: int, window: int | None) -> list[tuple[int, int, int]]:
    """(a, b, lo) of every row block: rows a..b-1 see keys lo..b-1 (lo > 0 only inside a sliding window)."""
    return [(a, min(a + rows, n_seq), 0 if window is None else max(0, a - window + 1)) for a in range(0, n_seq, rows)]


def causal_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, *, window: int | None = None,
    block: int | None = None, sink: Sink | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """q [n_head, n_seq, d_head], k/v [n_kv_head, n_seq, d_head] -> (z [n_head, n_seq, d_v], probs).

    probs [n_head, n_seq, n_seq]: rows sum to 1 over the visible keys (j <= i, and j > i - window with a sliding
    window), every hidden entry exactly 0. With a `sink`, each block goes to sink.add instead and probs is None.
    """
    n_head, n_seq, _ = q.shape
    group = n_head // k.shape[0]
    qs = q * F32(scale)  # [n_head, n_seq, d_head]
    rows = block or getattr(sink, "fixed_rows", None) or block_rows(n_head, n_seq, window)  # a sink may fix them
    probs = None if sink is not None else np.zeros((n_head, n_seq, n_seq), dtype=F32)
    z = np.empty((n_head, n_seq, v.shape[-1]), dtype=F32)
    for a, b, lo in blocks(n_seq, rows, window):
        hidden = ~visible(a, b, lo, b, window)  # [rows, keys]: the same for every head
        masked = bool(hidden.any())
        p = np.empty((n_head, b - a, b - lo), dtype=F32)
        for h in range(n_head):
            kv = h // group
            s = p[h]  # [rows, keys], in place from scores to probabilities
            np.matmul(qs[h, a:b], k[kv, lo:b].T, out=s)
            if masked:
                np.copyto(s, -np.inf, where=hidden)
            s -= s.max(axis=1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=1, keepdims=True)
            np.matmul(s, v[kv, lo:b], out=z[h, a:b])  # only the visible keys' values
        if sink is not None:
            sink.add(a, b, lo, p)
        else:
            probs[:, a:b, lo:b] = p
    return z, probs
