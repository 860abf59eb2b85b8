"""Streamed attention: results from attention handed over block by block equal those from the whole map.

Statistics, divergences and losses agree within 1e-9, and with HF's attention where HF runs; the threads of a
streamed diff end with it.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from helpers import ATTN_ATOL, MODELS, bos_tokenizer, build, build_model, hf_outputs

from mhacli.analyses.diff import divergence, paired_stream
from mhacli.analyses.heads import analyse
from mhacli.analyses.stats import STAT_NAMES, StatsAccumulator, layer_arrays
from mhacli.engine.attention import causal_attention
from mhacli.engine.forward import forward
from mhacli.io.weights import load_model

EXACT = 1e-9  # streamed against whole-map statistics: the same float32 weights, float64 sums in another order


def random_qkv(seed: int, n_head: int, n_kv: int, n_seq: int, d: int = 16):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((n_head, n_seq, d)) * 1.5).astype(np.float32)
    k = (rng.standard_normal((n_kv, n_seq, d)) * 1.5).astype(np.float32)
    v = rng.standard_normal((n_kv, n_seq, d)).astype(np.float32)
    return q, k, v


def assert_same_stats(streamed, whole, tol=EXACT):
    assert streamed.support == whole.support
    for name in STAT_NAMES:
        a, b = streamed.values[name], whole.values[name]
        assert np.array_equal(np.isnan(a), np.isnan(b)), name
        ok = ~np.isnan(a)
        err = float(np.abs(a[ok] - b[ok]).max()) if ok.any() else 0.0
        assert err <= tol, f"{name}: streamed vs whole map differ by {err:.3e}"


@pytest.mark.parametrize("n_seq", [1, 2, 7, 129, 300, 2048])
@pytest.mark.parametrize("n_head,n_kv", [(4, 4), (8, 2)])
@pytest.mark.parametrize("window", [None, 1, 50, 5000])
@pytest.mark.parametrize("block", [16, 100, None])
def test_streamed_statistics_equal_the_whole_map(n_seq, n_head, n_kv, window, block):
    if n_seq == 2048 and (block == 16 or n_head == 8):
        pytest.skip("2,048 tokens: one block size and head layout are enough")
    q, k, v = random_qkv(n_seq, n_head, n_kv, n_seq)
    ids = np.random.default_rng(n_seq + 1).integers(0, 12, size=n_seq)  # a small vocabulary: many repeats
    _, probs = causal_attention(q, k, v, 0.3, window=window, block=block)
    for first_row in sorted({0, n_seq // 2, n_seq - 1}):
        acc = StatsAccumulator(n_head, ids, first_row)
        z, none = causal_attention(q, k, v, 0.3, window=window, block=block, sink=acc)
        assert none is None
        assert_same_stats(acc.result(), layer_arrays(probs, ids, first_row))


def test_a_block_split_into_scratch_sized_chunks_gives_the_same_statistics(monkeypatch):
    """The accumulator reduces a long block a few rows at a time (SCRATCH_BYTES); the chunking changes nothing."""
    import mhacli.analyses.stats as stats

    q, k, v = random_qkv(3, 4, 4, 500)
    ids = np.random.default_rng(4).integers(0, 20, size=500)
    _, probs = causal_attention(q, k, v, 0.3)
    whole = layer_arrays(probs, ids)
    monkeypatch.setattr(stats, "SCRATCH_BYTES", 8 * 4 * 500 * 3)  # 3 rows at a time
    acc = StatsAccumulator(4, ids)
    causal_attention(q, k, v, 0.3, sink=acc)
    assert_same_stats(acc.result(), whole)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir):
    bos = bos_tokenizer(tmp_path_factory.mktemp("bos"))
    out = {
        "gpt2": build_model(tmp_path_factory.mktemp("gpt2"), tokenizer_dir, n_positions=2048),
        "gpt2_b": build_model(tmp_path_factory.mktemp("gpt2b"), tokenizer_dir, seed=1, n_positions=2048),
    }
    for name in ("llama_gqa", "mistral_window", "olmo3"):
        fields = MODELS[name]["fields"] | {"max_position_embeddings": 2048}
        out[name] = build(tmp_path_factory.mktemp(name), MODELS[name]["kind"], fields, bos)
    return out


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "mistral_window", "olmo3"])
@pytest.mark.parametrize("n_seq", [40, 700])
def test_stats_without_maps_equal_stats_of_the_maps_and_of_hf(models, name, n_seq):
    """`mha stats` (no maps: streamed) against `mha inspect` (maps kept) on the same model and ids.

    And against statistics of HF eager's own attention; windows (mistral, olmo3: WINDOW keys) far shorter than the
    text.
    """
    ckpt = load_model(str(models[name]), cache=True)
    ids = np.random.default_rng(n_seq).integers(1, 60, size=n_seq)  # repeats: duplicate and induction rows
    streamed = list(analyse(ckpt, ids, keep_maps=False))
    kept = list(analyse(ckpt, ids, keep_maps=True))
    assert [(v.layer, v.head) for v in streamed] == [(v.layer, v.head) for v in kept]
    for s, k in zip(streamed, kept):
        assert s.stats.kind == k.stats.kind and s.stats.support == k.stats.support
        for stat in STAT_NAMES:
            a, b = s.stats.values[stat], k.stats.values[stat]
            assert (a is None) == (b is None)
            if a is not None:
                assert abs(a - b) <= EXACT, f"L{s.layer}H{s.head} {stat}: {a!r} vs {b!r}"
    if n_seq > 100:
        return  # HF's eager maps: the short text is enough
    hf_attn, _ = hf_outputs(models[name], ids)
    for layer, maps in enumerate(hf_attn):
        hf_stats = layer_arrays(maps.astype(np.float32), ids)
        ours = [v for v in streamed if v.layer == layer]
        for stat in ("first_token", "previous_token", "self", "max_weight", "induction", "duplicate_token"):
            got = np.array([np.nan if v.stats.values[stat] is None else v.stats.values[stat] for v in ours])
            assert np.allclose(got, hf_stats.values[stat], atol=ATTN_ATOL, equal_nan=True), (layer, stat)


@pytest.mark.parametrize("metric", ["js", "tv", "cosine"])
def test_streamed_diff_equals_the_whole_map_divergence(models, metric):
    a = load_model(str(models["gpt2"]), cache=True)
    b = load_model(str(models["gpt2_b"]), cache=True)
    ids = np.random.default_rng(5).integers(1, 300, size=600)
    maps_a = [t.attention for t in forward(a, ids)]
    maps_b = [t.attention for t in forward(b, ids)]
    layers = list(paired_stream(a, b, ids, metric))
    assert [layer for layer, *_ in layers] == list(range(a.config.n_layer))
    for layer, div, stats_a, stats_b in layers:
        want = divergence(maps_a[layer], maps_b[layer], metric)
        assert np.abs(div - want).max() <= EXACT, (layer, div, want)
        assert_same_stats(stats_a, layer_arrays(maps_a[layer], ids))
        assert_same_stats(stats_b, layer_arrays(maps_b[layer], ids))
    same = list(paired_stream(a, a, ids, metric))
    assert all(np.abs(div).max() <= EXACT for _, div, _, _ in same), "a model against itself: 0"


def test_a_streamed_diff_left_early_ends_its_threads(models):
    a = load_model(str(models["gpt2"]), cache=True)
    ids = np.arange(1, 400)
    stream = paired_stream(a, a, ids, "js")
    next(stream)
    stream.close()  # the reader went away after the first layer
    deadline = time.monotonic() + 10
    while any(t.name == "mha-diff" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name == "mha-diff"]


def test_an_error_in_one_forward_reaches_the_reader(models, monkeypatch):
    """A model that fails mid-way (here: NaN weights in layer 1 of B) raises its own error from the stream."""
    from mhacli.errors import NumericsError

    a = load_model(str(models["gpt2"]), cache=True)
    b = load_model(str(models["gpt2_b"]), cache=True)
    intact = b.layer
    weights = intact(1)
    broken = dict(weights, **{"attn.c_attn.weight": np.full_like(weights["attn.c_attn.weight"], np.nan)})
    monkeypatch.setattr(b, "layer", lambda layer: broken if layer == 1 else intact(layer))
    with pytest.raises(NumericsError, match="layer 1"):
        list(paired_stream(a, b, np.arange(1, 50), "js"))
