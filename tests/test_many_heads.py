"""Many heads over a long text: the streamed sinks against a dense reference written here.

At 32 heads x 1,100 tokens a block's tiles exceed the kernel's TILE_BYTES, so it hands them to the sink in head
groups (29 + 3 here) and a sink must place each group at its offset; the text spans several row blocks, and with
two threads they arrive out of order. Statistics (StatsAccumulator), a window of rows and keys (WindowSink) and the
strongest keys (TopSink) must equal what the whole map gives, computed here with a plain softmax over masked scores
(issue 37 item 5). MHA and GQA (4 query heads per K/V head), with and without a sliding window.
"""

from __future__ import annotations

import numpy as np
import pytest

from mhacli.analyses.partial import TopSink, WindowSink
from mhacli.analyses.stats import STAT_NAMES, StatsAccumulator, layer_arrays
from mhacli.engine.attention import BLOCK, TILE_BYTES, block_rows, causal_attention

N_HEAD, N_SEQ, D_HEAD = 32, 1100, 8
TOL = 1e-6
Z_TOL = 1e-5  # z: float32 sums over up to 1,100 keys, against a float32 product of the reference
SCALE = 0.35


def dense_reference(q, k, v, window):
    """[n_head, n_seq, n_seq] float32: softmax over the visible keys of each query, hidden entries 0."""
    n_head, n_seq, _ = q.shape
    shared = n_head // k.shape[0]
    i = np.arange(n_seq)[:, None]
    j = np.arange(n_seq)[None, :]
    visible = (j <= i) if window is None else (j <= i) & (j > i - window)
    out = np.empty((n_head, n_seq, n_seq), dtype=np.float32)
    for h in range(n_head):
        s = (q[h].astype(np.float64) * SCALE) @ k[h // shared].astype(np.float64).T
        s = np.where(visible, s, -np.inf)
        s = np.exp(s - s.max(axis=1, keepdims=True))
        out[h] = s / s.sum(axis=1, keepdims=True)
    return out


@pytest.fixture(scope="module", params=[(32, None), (8, None), (8, 300)], ids=["mha", "gqa", "gqa-window"])
def case(request):
    n_kv, window = request.param
    rng = np.random.default_rng(n_kv + (window or 0))
    q = (rng.standard_normal((N_HEAD, N_SEQ, D_HEAD)) * 1.2).astype(np.float32)
    k = (rng.standard_normal((n_kv, N_SEQ, D_HEAD)) * 1.2).astype(np.float32)
    v = rng.standard_normal((n_kv, N_SEQ, D_HEAD)).astype(np.float32)
    ids = rng.integers(0, 40, size=N_SEQ)  # a small vocabulary: duplicate and induction rows everywhere
    return q, k, v, ids, window, dense_reference(q, k, v, window)


def test_the_case_really_splits_heads_and_rows():
    """The premise: tiles are handed over in more than one head group, and the text spans several blocks."""
    rows = block_rows(N_SEQ)
    group = TILE_BYTES // (4 * rows * N_SEQ)
    assert 1 <= group < N_HEAD and N_HEAD % group != 0
    assert N_SEQ > 4 * min(rows, BLOCK)


@pytest.mark.parametrize("threads", [1, 2])
def test_streamed_statistics_equal_the_dense_map(case, threads):
    q, k, v, ids, window, ref = case
    acc = StatsAccumulator(N_HEAD, ids)
    z, none = causal_attention(q, k, v, SCALE, window=window, sink=acc, threads=threads)
    assert none is None
    got, want = acc.result(), layer_arrays(ref, ids)
    assert got.support == want.support and got.support["induction"] > 100
    for name in STAT_NAMES:
        a, b = got.values[name], want.values[name]
        err = np.abs(a - b) / (1 + np.abs(b))
        worst = int(np.argmax(err))
        assert float(err.max()) <= TOL, f"{name}: head {worst} differs by {float(err.max()):.3e}"
    shared = N_HEAD // k.shape[0]
    z_ref = np.stack([ref[h] @ v[h // shared] for h in range(N_HEAD)])
    assert float(np.abs(z - z_ref).max()) <= Z_TOL


@pytest.mark.parametrize("threads", [1, 2])
def test_a_window_of_rows_and_keys_of_chosen_heads_equals_the_dense_map(case, threads):
    q, k, v, ids, window, ref = case
    heads = [0, 3, 28, 29, 31]  # both sides of the group boundary (29), first and last
    rows = [0, 5, 127, 128, 600, *range(N_SEQ - 30, N_SEQ)]
    keys = [0, 1, 126, 127, 128, 599, 600, *range(N_SEQ - 60, N_SEQ)]
    sink = WindowSink(heads, N_SEQ, rows, keys)
    causal_attention(q, k, v, SCALE, window=window, sink=sink, threads=threads)
    for n, part in enumerate(sink.maps()):
        want = ref[heads[n]][np.ix_(rows, keys)]
        err = float(np.abs(part.data - want).max())
        assert err <= TOL, f"head {heads[n]}: window differs by {err:.3e}"
        assert part[N_SEQ - 1, N_SEQ - 1] == pytest.approx(ref[heads[n], N_SEQ - 1, N_SEQ - 1], abs=TOL)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_strongest_keys_of_chosen_heads_equal_the_dense_map(case, threads):
    q, k, v, ids, window, ref = case
    heads, top = [1, 28, 29, 30], 4
    sink = TopSink(heads, N_SEQ, top)
    causal_attention(q, k, v, SCALE, window=window, sink=sink, threads=threads)
    for n, part in enumerate(sink.maps()):
        keys, weights = part.top_keys
        for i in (0, 1, 2, 3, 130, 700, N_SEQ - 1):
            row = ref[heads[n], i, : i + 1]
            want = np.argsort(row, kind="stable")[::-1][:top]
            got = keys[i, : len(want)]
            assert np.allclose(row[got], row[want], atol=TOL), f"head {heads[n]} row {i}: {got} vs {want}"
            assert np.allclose(weights[i, : len(want)], row[want], atol=TOL)
