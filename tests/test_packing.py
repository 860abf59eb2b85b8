"""Packed forwards (mhacli.engine.segments): several texts in one forward, each as if it ran alone.

The reference is each text run on its own through the unpacked forward (itself checked against HF in test_arch.py and
test_parity.py): attention, residual streams and census statistics per text must agree, for learned positions
(GPT-2), rotary with grouped K/V heads (Llama GQA), a sliding window (Mistral) and a length-dependent rotary type
(dynamic NTK)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import MODELS, bos_tokenizer, build, build_model

ATTN_TOL = 1e-6  # packed vs alone, absolute, per attention weight
# Statistics (float64 sums of float32 weights): the packed forward's GEMMs have other shapes, so a weight may differ
# in its last float32 place (measured: at most 6e-8 absolute, 1.5e-6 relative on these models); bitwise equality
# (1e-9 relative) would need the same BLAS blocking, which no packing can keep.
STATS_RTOL = 1e-5
STATS_ATOL = 1e-7
CENSUS_ATOL = 1e-6  # a census' means and spreads over texts: a spread of 0 may become a few 1e-8 of float noise
LENGTHS = [1, 7, 30, 2, 19, 1, 12]  # mixed, including length 1


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    bos = bos_tokenizer(tmp_path_factory.mktemp("bos"))
    built = {"gpt2": build_model(tmp_path_factory.mktemp("gpt2"), tokenizer_dir, n_positions=64)}
    for n, name in enumerate(("llama_gqa", "mistral_window", "llama_rope_dynamic")):
        s = MODELS[name]
        built[name] = build(tmp_path_factory.mktemp(name), s["kind"], s["fields"], bos, seed=n + 1)
    return built


def load(directory: Path):
    from mhacli.io.weights import load_model

    return load_model(str(directory))


def texts(lengths=LENGTHS, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 50, size=n) for n in lengths]  # a small alphabet: repeats, so induction targets exist


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "mistral_window", "llama_rope_dynamic"])
def test_packed_attention_and_residuals_are_each_text_alone(models, name):
    from mhacli.engine.forward import forward
    from mhacli.engine.segments import Segments

    params = load(models[name])
    ts = texts()
    seg = Segments.of(ts)
    packed = list(forward(params, np.concatenate(ts), segments=seg))
    worst = 0.0
    for (s, e), ids in zip(seg.bounds, ts):
        alone = list(forward(params, ids))
        for p, a in zip(packed, alone):
            assert p.attention is not None and a.attention is not None
            block = p.attention[:, s:e, s:e]
            worst = max(worst, float(np.abs(block - a.attention).max()))
            assert not p.attention[:, s:e, :s].any() and not p.attention[:, s:e, e:].any()  # nothing across texts
            scale = max(1.0, float(np.abs(a.residual).max()))
            np.testing.assert_allclose(p.residual[s:e], a.residual, atol=1e-5 * scale, rtol=0)
    assert worst <= ATTN_TOL, worst


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "mistral_window"])
def test_pack_stats_are_each_text_alone(models, name):
    from mhacli.analyses.census import pack_stats, text_stats

    params = load(models[name])
    ts = texts(seed=5)
    first_rows = [0, 0, 10, 0, 3, 0, 0]
    got = pack_stats(params, list(zip(ts, first_rows)))
    for ids, first_row, g in zip(ts, first_rows, got):
        want = text_stats(params, ids, first_row)
        assert (g.support, g.n_rows) == (want.support, want.n_rows)
        np.testing.assert_array_equal(np.isnan(g.values), np.isnan(want.values))
        np.testing.assert_allclose(g.values, want.values, rtol=STATS_RTOL, atol=STATS_ATOL)


def test_a_text_longer_than_the_pack_runs_alone_and_neighbours_are_unchanged(models):
    from mhacli.analyses.census import text_stats
    from mhacli.analyses.parallel import Item, packs, remember, run_chunk
    from mhacli.io.weights import ModelFiles

    params = load(models["gpt2"])
    ts = texts([3, 40, 5, 1, 6])
    items = [Item(n, ids, 0) for n, ids in enumerate(ts)]
    assert [[i.seq for i in p] for p in packs(items, 16)] == [[0], [1], [2, 3, 4]]
    remember(params.files, params)
    assert isinstance(params.files, ModelFiles)
    out = dict(run_chunk(params.files, items, pack_tokens=16))
    for n, ids in enumerate(ts):
        np.testing.assert_allclose(out[n].values, text_stats(params, ids).values, rtol=STATS_RTOL, atol=STATS_ATOL)


def test_a_text_that_fails_in_its_pack_spoils_no_neighbour(models, monkeypatch):
    """NaN in one text's forward: that text fails by itself, its pack's neighbours get their own statistics."""
    from mhacli.analyses import parallel
    from mhacli.analyses.census import text_stats
    from mhacli.errors import NumericsError

    params = load(models["gpt2"])
    ts = texts([4, 6, 5])
    bad = 999  # a marker token: the forward of any sequence holding it fails
    ts[1] = np.concatenate([ts[1], [bad]])
    real = parallel.pack_stats, parallel.text_stats

    def guarded(run):
        def wrapped(p, *args):
            flat = np.concatenate([np.asarray(a[0] if isinstance(a, tuple) else a).ravel() for a in _ids(args)])
            if bad in flat:
                raise NumericsError("the forward pass produced NaN or Inf in layer 0, heads [1] (extreme weights?)")
            return run(p, *args)

        return wrapped

    def _ids(args):
        return [t[0] for t in args[0]] if isinstance(args[0], list) else [args[0]]

    monkeypatch.setattr(parallel, "pack_stats", guarded(real[0]))
    monkeypatch.setattr(parallel, "text_stats", guarded(real[1]))
    parallel.remember(params.files, params)
    items = [parallel.Item(n, ids, 0) for n, ids in enumerate(ts)]
    out = dict(parallel.run_chunk(params.files, items, pack_tokens=64))
    assert isinstance(out[1], str) and "NaN" in out[1]
    for n in (0, 2):
        np.testing.assert_allclose(out[n].values, text_stats(params, ts[n]).values, rtol=STATS_RTOL, atol=STATS_ATOL)


def _numbers(doc) -> list[float]:
    """Every number of a census document's heads, in order (None as NaN)."""
    out: list[float] = []

    def walk(x) -> None:
        if isinstance(x, dict):
            for k in sorted(x):
                walk(x[k])
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, bool) or x is None or isinstance(x, str):
            return
        elif isinstance(x, (int, float)):
            out.append(float(x))

    walk(doc["heads"])
    return out


def test_census_is_the_same_whatever_the_pack_size_and_executor(tmp_path):
    """Unpacked (--pack-tokens 1), packed in this process, on two workers and on Dask: the same kinds and numbers."""
    from helpers import parse_json, run_mha

    corpus = tmp_path / "corpus.txt"
    too_long = "word " * 3000  # past the bundled model's context: fails by its line number, alone
    lines = [
        "ROMEO: But, soft! what light",
        too_long,
        "O",
        "It is the east, and Juliet is the sun.",
        "Arise, fair sun",
    ] * 3
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ("census", "--texts", str(corpus), "--probe-count", "3", "-f", "json")
    env = {"MHA_NO_PROGRESS": "1"}
    alone = run_mha(*args, "-j", "1", "--pack-tokens", "1", env=env)
    assert alone.returncode == 0, alone.stderr
    want = parse_json(alone.stdout)
    runs = [("-j", "1", "--pack-tokens", "40"), ("-j", "1"), ("-j", "2", "--pack-tokens", "100")]
    try:
        from dask.distributed import LocalCluster
    except ImportError:
        cluster = None
    else:
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        runs.append(("--dask", cluster.scheduler_address, "--pack-tokens", "64"))
    try:
        for extra in runs:
            got = run_mha(*args, *extra, env=env)
            assert got.returncode == 0, (extra, got.stderr)
            for line in (2, 7, 12):
                assert f"line {line}:" in got.stderr.decode(), (extra, got.stderr)
            doc = parse_json(got.stdout)
            assert [h["kind"] for h in doc["heads"]] == [h["kind"] for h in want["heads"]], extra
            assert doc["sources"]["corpus"]["n_texts"] == want["sources"]["corpus"]["n_texts"] == 12
            assert doc["sources"]["corpus"]["failed"] == 3
            np.testing.assert_allclose(
                _numbers(doc), _numbers(want), rtol=STATS_RTOL, atol=CENSUS_ATOL, err_msg=str(extra)
            )
    finally:
        if cluster is not None:
            cluster.close()


def test_pack_tokens_below_one_is_refused():
    from helpers import run_mha

    result = run_mha("census", "--pack-tokens", "0")
    assert result.returncode == 2
    assert result.stderr.decode().strip() == "error: --pack-tokens 0 must be at least 1"
