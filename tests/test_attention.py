"""The forward's attention kernel (row blocks, folded scale, grouped K/V read in place) against torch eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ATTN_ATOL  # the engine tolerance, here on sharp random logits (|s| up to ~30)
from mhacli.attention import causal_attention


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


def test_block_size_does_not_change_the_numbers():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((4, 150, 16)).astype(np.float32) for _ in range(3))
    results = [causal_attention(q, k, v, 0.25, block=b) for b in (1, 7, 64, 150, 1000)]
    for z, p in results[1:]:
        assert np.abs(p - results[0][1]).max() < 1e-7 and np.abs(z - results[0][0]).max() < 1e-6
