"""Causal scaled dot-product attention, the hot loop of every forward pass. Pure NumPy, float32.

One head at a time, so every pass over the scores stays in cache-sized [n_seq, n_seq] pieces and writes straight
into the output map (no [n_head, n_seq, n_seq] temporaries). The 1/sqrt(d_head) scale is folded into q
(n_seq x d_head multiplies instead of n_seq x n_seq). The softmax passes run over row blocks and only over the keys
each block can see, so the masked upper half is never exponentiated (it is set to exactly 0), and each block's
weighted sum of values reads only those keys' values. Grouped K/V heads
(MQA/GQA) are read in place, never repeated in memory: query head h reads K/V head h // (n_head // n_kv_head), as
HF's repeat_kv does.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
BLOCK = 128  # query rows per softmax block


def visible(q_lo: int, q_hi: int, k_lo: int, k_hi: int, window: int | None) -> np.ndarray:
    """[q_hi - q_lo, k_hi - k_lo] bool: key j is visible to query i when j <= i and (no window or j > i - window)."""
    i = np.arange(q_lo, q_hi)[:, None]
    j = np.arange(k_lo, k_hi)[None, :]
    mask = j <= i
    if window is not None:
        mask &= j > i - window
    return mask


def causal_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, *, window: int | None = None, block: int = BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """q [n_head, n_seq, d_head], k/v [n_kv_head, n_seq, d_head] -> (z [n_head, n_seq, d_v], probs [n_head, n_seq, n_seq]).

    probs rows sum to 1 over the visible keys (j <= i, and j > i - window with a sliding window); every hidden
    entry is exactly 0.
    """
    n_head, n_seq, _ = q.shape
    group = n_head // k.shape[0]
    qs = q * F32(scale)  # [n_head, n_seq, d_head]
    probs = np.empty((n_head, n_seq, n_seq), dtype=F32)
    z = np.empty((n_head, n_seq, v.shape[-1]), dtype=F32)
    # (row block, visible key range, mask of the hidden entries inside that range): the same for every head
    blocks = []
    for a in range(0, n_seq, block):
        b = min(a + block, n_seq)
        lo = 0 if window is None else max(0, a - window + 1)
        blocks.append((a, b, lo, ~visible(a, b, lo, b, window)))
    for h in range(n_head):
        kv = h // group
        s = probs[h]  # [n_seq, n_seq], written in place
        np.matmul(qs[h], k[kv].T, out=s)
        for a, b, lo, hidden in blocks:
            rows = s[a:b, lo:b]
            np.copyto(rows, -np.inf, where=hidden)
            rows -= rows.max(axis=1, keepdims=True)
            np.exp(rows, out=rows)
            rows /= rows.sum(axis=1, keepdims=True)
            s[a:b, b:] = 0.0
            s[a:b, :lo] = 0.0
            np.matmul(rows, v[kv][lo:b], out=z[h][a:b])  # only the visible keys' values
    return z, probs
