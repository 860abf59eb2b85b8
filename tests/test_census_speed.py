"""What the census skips and shares to run faster changes none of its numbers (issue 34, one process).

The last layer runs its attention only (forward's attention_only_last: its output projection and MLP feed nothing the
statistics read), and each text's token index (TextIndex: matches, targets, tiles) is made once for all layers. The
reference is independent of both: every layer's whole map from the plain forward (itself checked against HF in
test_parity.py), reduced by stats.layer_arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import MODELS, bos_tokenizer, build, build_model, causal

NAMES = ["gpt2", "llama_gqa", "mistral_window", "bigcode_mqa", "olmo2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    bos = bos_tokenizer(tmp_path_factory.mktemp("bos"))
    built = {"gpt2": build_model(tmp_path_factory.mktemp("gpt2"), tokenizer_dir, n_positions=64)}
    for n, name in enumerate(NAMES[1:]):
        s = MODELS[name]
        built[name] = build(tmp_path_factory.mktemp(name), s["kind"], s["fields"], bos, seed=n + 1)
    return built


def load(directory: Path):
    from mhacli.io.weights import load_model

    return load_model(str(directory))


def ids_of(n: int, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 40, size=n)  # a small alphabet: induction targets exist


@pytest.mark.parametrize("name", NAMES)
def test_census_statistics_are_the_full_forwards_maps_reduced(models, name):
    from mhacli.analyses.census import TALLIED, pack_stats
    from mhacli.analyses.stats import layer_arrays
    from mhacli.engine.forward import forward

    params = load(models[name])
    texts = [(ids_of(n, seed=n), first) for n, first in ((33, 0), (1, 0), (20, 9), (12, 0))]
    got = pack_stats(params, texts)
    for (ids, first), g in zip(texts, got):
        for trace in forward(params, ids):  # every map kept, every layer whole
            assert trace.attention is not None
            want = layer_arrays(trace.attention, ids, first)
            for k, stat in enumerate(TALLIED[:-1]):
                np.testing.assert_allclose(g.values[k, trace.layer], want.values[stat], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("name", "module", "mlp"), [("gpt2", "gpt2", "gpt2_mlp"), ("llama_gqa", "llama", "swiglu")])
def test_attention_only_last_skips_the_last_mlp_and_keeps_its_heads(models, name, module, mlp, monkeypatch):
    import importlib

    from mhacli.analyses.stats import StatsAccumulator
    from mhacli.engine.forward import forward

    params = load(models[name])
    ids = ids_of(25)
    n_layer, n_head = params.config.n_layer, params.config.n_head
    full = list(forward(params, ids))
    arch = importlib.import_module(f"mhacli.engine.arch.{module}")
    real, calls = getattr(arch, mlp), []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(arch, mlp, counted)
    accs = {}

    def sinks(layer):
        accs[layer] = StatsAccumulator(n_head, ids)
        return accs[layer]

    short = list(forward(params, ids, sinks=sinks, attention_only_last=True))
    assert len(calls) == n_layer - 1  # every layer's MLP but the last
    assert [t.layer for t in short] == list(range(n_layer))
    np.testing.assert_allclose(short[-1].z, full[-1].z, rtol=1e-5, atol=1e-6)  # the last heads' outputs
    np.testing.assert_array_equal(short[-1].residual, short[-2].residual)  # the stream entering the last layer
    assert short[-1].attention is None
    last = accs[n_layer - 1].result()
    assert full[-1].attention is not None
    np.testing.assert_allclose(
        last.values["entropy"],
        -np.sum(full[-1].attention * np.log(full[-1].attention + 1e-38), axis=-1).mean(axis=-1),
        rtol=1e-5,
        atol=1e-6,
    )


def test_attention_only_last_needs_a_sink_and_no_edit_there(models):
    from mhacli.engine.forward import forward

    params = load(models["gpt2"])
    with pytest.raises(ValueError, match="sink"):
        list(forward(params, ids_of(5), attention_only_last=True))
    last = params.config.n_layer - 1
    with pytest.raises(ValueError, match="edit"):
        list(forward(params, ids_of(5), sinks=lambda layer: None, edits={last: lambda z: z}, attention_only_last=True))


def feed(acc, attn: np.ndarray) -> None:
    """A whole map [n_head, n, n] into a sink, 128 rows at a time (as the kernel's blocks hand it over)."""
    n = attn.shape[-1]
    for a in range(0, n, 128):
        acc.add(0, a, min(a + 128, n), 0, attn[:, a : min(a + 128, n), : min(a + 128, n)])


@pytest.mark.parametrize("n", [1, 40, 300])
def test_a_text_index_serves_every_layer_as_fresh_accumulators_would(n):
    from mhacli.analyses.stats import StatsAccumulator, TextIndex

    rng = np.random.default_rng(n)
    ids = rng.integers(0, 9, size=n)
    index = TextIndex(ids)
    for layer in range(3):
        attn = causal(rng, 4, n)
        shared, fresh = StatsAccumulator(4, ids, 0, index), StatsAccumulator(4, ids)
        feed(shared, attn)
        feed(fresh, attn)
        a, b = shared.result(), fresh.result()
        assert a.support == b.support
        for stat in a.values:
            np.testing.assert_array_equal(a.values[stat], b.values[stat])
        if layer == 0:
            kept = dict(index.tiles)
    assert kept and all(index.tiles[span] is tile for span, tile in kept.items())  # made once, reused after


def test_a_long_text_keeps_no_tiles():
    from mhacli.analyses.stats import TILE_CACHE_TOKENS, StatsAccumulator, TextIndex

    rng = np.random.default_rng(0)
    n = TILE_CACHE_TOKENS + 1
    ids = rng.integers(0, 9, size=n)
    index = TextIndex(ids)
    acc = StatsAccumulator(1, ids, 0, index)
    feed(acc, causal(rng, 1, n))
    assert index.tiles == {}  # a 32k-token text's tiles would be gigabytes over its blocks
    short = TextIndex(ids[:TILE_CACHE_TOKENS])
    feed(StatsAccumulator(1, ids[:TILE_CACHE_TOKENS], 0, short), causal(rng, 1, TILE_CACHE_TOKENS))
    assert len(short.tiles) == TILE_CACHE_TOKENS // 128
