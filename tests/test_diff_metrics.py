"""Per-head diff (mhacli.analyses.diff) in this process against references written from the README's definitions.

Issue 37 item 3 (mutation testing). Each metric is written here from its definition: `js` the Jensen-Shannon
divergence of each query row in bits (0.5 KL(p||m) + 0.5 KL(q||m), m the mixture), mean over rows; `tv` half the L1
distance of each row, mean over rows; `cosine` 1 - the cosine similarity of the flattened maps. The maps come from
HF's eager attentions (conftest.hf_outputs); the statistics deltas are B - A of the statistics of HF's maps; the
matching is checked against brute force; the summary against plain loops over synthetic per-text results.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from cached_models import model as cached_model
from helpers import hf_outputs

METRICS = ("js", "tv", "cosine")
IDS = np.random.default_rng(8).integers(1, 400, size=19)
IDS_2 = np.random.default_rng(9).integers(1, 400, size=11)


def js_ref(p: np.ndarray, q: np.ndarray) -> float:
    """[n, n] x [n, n] -> the mean over rows of the JS divergence in bits (0 log 0 = 0)."""
    rows = []
    for a, b in zip(p.astype(np.float64), q.astype(np.float64)):
        m = (a + b) / 2
        kl_a = sum(x * math.log2(x / y) for x, y in zip(a, m) if x > 0)
        kl_b = sum(x * math.log2(x / y) for x, y in zip(b, m) if x > 0)
        rows.append(0.5 * kl_a + 0.5 * kl_b)
    return float(np.mean(rows))


def tv_ref(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean([0.5 * sum(abs(float(x) - float(y)) for x, y in zip(a, b)) for a, b in zip(p, q)]))


def cosine_ref(p: np.ndarray, q: np.ndarray) -> float:
    a, b = [float(x) for x in p.ravel()], [float(x) for x in q.ravel()]
    dot = sum(x * y for x, y in zip(a, b))
    return 1.0 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


REF = {"js": js_ref, "tv": tv_ref, "cosine": cosine_ref}


def causal_maps(rng: np.random.Generator, n_map: int, n_seq: int, zeros: float = 0.4) -> np.ndarray:
    """[n_map, n_seq, n_seq] float32, causal and row-stochastic, some exact zeros inside the triangle."""
    x = rng.random((n_map, n_seq, n_seq)) ** 2
    x[rng.random(x.shape) < zeros] = 0.0
    x[:, np.arange(n_seq), np.arange(n_seq)] += 0.05
    x = np.tril(x)
    return (x / x.sum(axis=-1, keepdims=True)).astype(np.float32)


# --- metrics ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS)
def test_each_metric_equals_its_definition(metric):
    from mhacli.analyses.diff import METRIC_FNS, divergence

    rng = np.random.default_rng(len(metric))
    p, q = causal_maps(rng, 4, 9), causal_maps(rng, 4, 9)
    q[3] = p[3]  # identical maps: 0
    got = divergence(p, q, metric)
    assert got.shape == (4,) and got.dtype == np.float64
    for h in range(4):
        assert got[h] == pytest.approx(REF[metric](p[h], q[h]), abs=1e-12)
        assert METRIC_FNS[metric](p[h], q[h]) == pytest.approx(got[h], abs=1e-15)
    assert got[3] == pytest.approx(0.0, abs=1e-12) and got[:3].min() > 1e-3


def test_metric_extremes():
    """Disjoint rows: JS 1 bit and TV 1; orthogonal maps: cosine 1; a row against a uniform one."""
    from mhacli.analyses.diff import divergence

    p = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])
    q = np.array([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    assert divergence(p, q, "js")[0] == pytest.approx(2 / 3, abs=1e-15)
    assert divergence(p, q, "tv")[0] == pytest.approx(2 / 3, abs=1e-15)
    assert divergence(p[:, 1:], q[:, 1:], "cosine")[0] == pytest.approx(1.0, abs=1e-15)
    u = np.full((1, 1, 4), 0.25)
    one = np.array([[[1.0, 0.0, 0.0, 0.0]]])
    # JS(one-hot, uniform over 4) = H(m) - (H(p) + H(q)) / 2, m = (5/8, 1/8, 1/8, 1/8)
    h_m = -(5 / 8) * math.log2(5 / 8) - 3 * (1 / 8) * math.log2(1 / 8)
    assert divergence(one, u, "js")[0] == pytest.approx(h_m - 1.0, abs=1e-14)
    assert divergence(one, u, "tv")[0] == pytest.approx(0.75, abs=1e-15)
    assert divergence(one, u, "cosine")[0] == pytest.approx(1 - 0.25 / (1 * 0.5), abs=1e-15)


@pytest.mark.parametrize("metric", METRICS)
def test_divergence_matrix_at_any_block_equals_definitions(metric):
    from mhacli.analyses.diff import divergence_matrix

    rng = np.random.default_rng(3)
    a, b = causal_maps(rng, 5, 6), causal_maps(rng, 3, 6)
    ref = np.array([[REF[metric](a[i], b[j]) for j in range(3)] for i in range(5)])
    for max_elements in (1, 36, 2 * 36, 3 * 36, 7 * 36, 1 << 22):
        np.testing.assert_allclose(divergence_matrix(a, b, metric, max_elements=max_elements), ref, atol=1e-12)


def test_unknown_metric_is_refused():
    from mhacli.analyses.diff import check_metric, divergence, divergence_matrix
    from mhacli.errors import UsageError

    p = np.ones((1, 1, 1))
    for call in (lambda: check_metric("kl"), lambda: divergence(p, p, "kl"), lambda: divergence_matrix(p, p, "kl")):
        with pytest.raises(UsageError, match="^metric 'kl' is not one of: js, tv, cosine"):
            call()


# --- one text: both forwards against HF's attentions ------------------------------------------------------------


@pytest.fixture(scope="module")
def models() -> dict:
    return {
        "a": cached_model("diff_a", seed=0),
        "b": cached_model("diff_b", seed=1),
        "wide": cached_model("diff_wide", seed=2, n_layer=3, n_head=2),
    }


def load(directory):
    from mhacli.io.weights import load_model

    return load_model(str(directory))


def hf_stats(directory, ids) -> tuple[np.ndarray, list[str]]:
    """[n_stat, n_heads] (NaN where undefined) and kinds, of HF's own maps."""
    from mhacli.analyses.stats import STAT_NAMES, layer_stats

    attn, _ = hf_outputs(directory, ids)
    heads = [h for layer, a in enumerate(attn) for h in layer_stats(layer, a, np.asarray(ids))]
    values = np.array([[np.nan if h.values[s] is None else h.values[s] for h in heads] for s in STAT_NAMES])
    return values, [h.kind for h in heads]


@pytest.mark.parametrize("metric", METRICS)
def test_paired_text_diff_equals_hf_reference(models, metric):
    from mhacli.analyses.diff import compare_text

    got = compare_text(load(models["a"]), load(models["b"]), IDS, metric, "paired")
    attn_a, _ = hf_outputs(models["a"], IDS)
    attn_b, _ = hf_outputs(models["b"], IDS)
    ref = [REF[metric](pa[h], pb[h]) for pa, pb in zip(attn_a, attn_b) for h in range(pa.shape[0])]
    np.testing.assert_allclose(got.divergence, ref, atol=1e-5)
    for which, stats, kinds in (("a", got.stats_a, got.kinds_a), ("b", got.stats_b, got.kinds_b)):
        want, want_kinds = hf_stats(models[which], IDS)
        np.testing.assert_allclose(stats, want, atol=1e-4)
        assert kinds == want_kinds


@pytest.mark.parametrize("metric", METRICS)
def test_matched_text_diff_is_every_head_against_every_head(models, metric):
    from mhacli.analyses.diff import compare_text

    got = compare_text(load(models["a"]), load(models["wide"]), IDS, metric, "matched")
    all_a = np.concatenate(hf_outputs(models["a"], IDS)[0])
    all_b = np.concatenate(hf_outputs(models["wide"], IDS)[0])
    ref = np.array([[REF[metric](pa, pb) for pb in all_b] for pa in all_a])
    assert got.divergence.shape == (8, 6)
    np.testing.assert_allclose(got.divergence, ref, atol=1e-5)
    want_b, kinds_b = hf_stats(models["wide"], IDS)
    np.testing.assert_allclose(got.stats_b, want_b, atol=1e-4)
    assert got.kinds_b == kinds_b and got.kinds_a == hf_stats(models["a"], IDS)[1]


def test_a_model_against_itself_is_zero_in_both_modes(models):
    from mhacli.analyses.diff import compare_text

    a = load(models["a"])
    for metric in METRICS:
        paired = compare_text(a, a, IDS, metric, "paired").divergence
        assert np.abs(paired).max() < 1e-12
        matched = compare_text(a, a, IDS, metric, "matched").divergence
        assert np.abs(np.diag(matched)).max() < 1e-12 and matched.shape == (8, 8)


def test_paired_ablation_of_b_changes_only_that_head_and_later_layers(models):
    from mhacli.analyses.ablate import removal_edits
    from mhacli.analyses.diff import compare_text

    a = load(models["a"])
    for mode in ("paired", "matched"):
        got = compare_text(a, a, IDS, "tv", mode, removal_edits([(0, 2)])).divergence
        got = got if mode == "paired" else np.diag(got)
        assert np.abs(got[:4]).max() == 0.0  # layer 0's maps are computed before its outputs are edited
        assert got[4:].min() > 1e-4  # layer 1 reads the edited residual stream


def test_mode_and_shape_are_checked(models):
    from mhacli.analyses.diff import compare_text
    from mhacli.errors import UsageError

    a, wide = load(models["a"]), load(models["wide"])
    with pytest.raises(UsageError, match="MODEL_A has 2 layers x 4 heads, MODEL_B 3 x 2"):
        compare_text(a, wide, IDS, "js", "paired")
    with pytest.raises(UsageError, match="unknown mode 'both'; expected one of paired, matched"):
        compare_text(a, a, IDS, "js", "both")
    with pytest.raises(UsageError, match="^metric"):
        compare_text(a, a, IDS, "kl", "paired")


def test_paired_stream_yields_every_layer_in_order(models):
    from mhacli.analyses.diff import paired_stream

    a, b = load(models["a"]), load(models["b"])
    layers = [layer for layer, *_ in paired_stream(a, b, IDS, "js")]
    assert layers == [0, 1]
    stream = paired_stream(a, b, IDS, "js")
    next(stream)
    stream.close()  # an abandoned stream stops both forwards


def test_widen_pads_zero_columns_in_front():
    from mhacli.analyses.diff import _widen

    p = np.arange(12, dtype=np.float32).reshape(2, 2, 3) + 1
    assert _widen(p, 0) is p
    w = _widen(p, 2)
    assert w.shape == (2, 2, 5) and w.dtype == p.dtype
    assert np.array_equal(w[..., :2], np.zeros((2, 2, 2))) and np.array_equal(w[..., 2:], p)


# --- tokens ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, want",
    [
        ([1, 2, 3], [1, 2, 3], None),
        ([1, 2, 3], [1, 5, 3], 1),
        ([7], [8], 0),
        ([1, 2], [1, 2, 3], 2),
        ([1, 2, 3], [1], 1),
    ],
)
def test_first_difference(a, b, want):
    from mhacli.analyses.diff import first_difference

    assert first_difference(a, b) == want
    assert first_difference(np.array(a), np.array(b)) == want


def test_check_same_tokens_names_the_first_difference():
    from mhacli.analyses.diff import TokenizerMismatchError, check_same_tokens
    from mhacli.errors import UsageError

    def show(ids):
        return [f"t{i}" for i in ids]

    check_same_tokens([1, 2], [1, 2], show, show)
    with pytest.raises(TokenizerMismatchError) as err:
        check_same_tokens([1, 2, 3], [1, 4], show, show, where="line 2")
    assert isinstance(err.value, UsageError)
    assert str(err.value) == (
        "the two models' tokenizers disagree on line 2 at token 1: MODEL_A has 't2' (id 2), MODEL_B has 't4' (id 4); "
        "diff needs the same token ids for both"
    )
    with pytest.raises(TokenizerMismatchError, match="on the text at token 1: MODEL_A has 't2' .id 2., MODEL_B has "):
        check_same_tokens([1, 2], [1], show, show)
    with pytest.raises(TokenizerMismatchError, match="MODEL_A has the end of the text, MODEL_B has 't9' .id 9."):
        check_same_tokens([1], [1, 9], show, show)


# --- the summary over texts, against plain loops --------------------------------------------------------------


def text_diff(rng, na: int, nb: int, paired: bool, kinds_a: list[str], kinds_b: list[str]):
    from mhacli.analyses.diff import TextDiff
    from mhacli.analyses.stats import STAT_NAMES

    s = len(STAT_NAMES)
    stats_a, stats_b = rng.normal(size=(s, na)), rng.normal(size=(s, nb))
    stats_a[rng.random(stats_a.shape) < 0.2] = np.nan
    stats_b[rng.random(stats_b.shape) < 0.2] = np.nan
    div = rng.random(na) if paired else rng.random((na, nb))
    return TextDiff(div, stats_a, stats_b, kinds_a, kinds_b)


def mean_defined_ref(values: list[float]) -> float | None:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else None


def test_paired_summary_averages_texts_and_ranks(models):
    from mhacli.analyses.diff import DIFF_COLUMNS, summarise, table_row
    from mhacli.analyses.stats import STAT_NAMES

    rng = np.random.default_rng(0)
    kinds = [["broad", "sink", "self", "broad", "sink", "self"], ["sink", "sink", "self", "self", "broad", "self"]]
    kinds.append(["sink", "broad", "self", "self", "broad", "broad"])
    texts = [text_diff(rng, 6, 6, True, k, k[::-1]) for k in kinds]
    texts[1].stats_a[2, 4] = texts[0].stats_a[2, 4] = texts[2].stats_a[2, 4] = np.nan  # undefined on every text
    report = summarise(texts, "tv", "paired", (3, 2), (3, 2))
    assert (report.metric, report.mode, report.n_texts) == ("tv", "paired", 3)
    assert (report.shape_a, report.shape_b) == ((3, 2), (3, 2))
    assert report.nearest is None and report.unmatched_a == [] and report.unmatched_b == []
    divs = [r.divergence for r in report.heads]
    assert divs == sorted(divs, reverse=True)
    assert report.max_divergence == max(divs)
    assert report.above(divs[2]) == report.heads[:2]
    for r in report.heads:
        i = r.layer_a * 2 + r.head_a
        assert (r.layer_b, r.head_b) == (r.layer_a, r.head_a)
        assert r.divergence == pytest.approx(sum(t.divergence[i] for t in texts) / 3, abs=1e-15)
        column = [k[i] for k in kinds]
        assert r.kind_a == max(column, key=lambda k: (column.count(k), -column.index(k)))
        column_b = [k[::-1][i] for k in kinds]
        assert r.kind_b == max(column_b, key=lambda k: (column_b.count(k), -column_b.index(k)))
        for n, s in enumerate(STAT_NAMES):
            want = mean_defined_ref([t.stats_b[n, i] - t.stats_a[n, i] for t in texts])
            assert (r.stat_deltas[s] is None) == (want is None)
            if want is not None:
                assert r.stat_deltas[s] == pytest.approx(want, abs=1e-12)
        assert table_row(r) == [
            r.layer_a, r.head_a, r.layer_b, r.head_b, r.divergence, r.kind_a, r.kind_b,
            *(r.stat_deltas[s] for s in STAT_NAMES),
        ]  # fmt: skip
    assert next(r for r in report.heads if (r.layer_a, r.head_a) == (2, 0)).stat_deltas[STAT_NAMES[2]] is None
    assert list(DIFF_COLUMNS) == ["layer_a", "head_a", "layer_b", "head_b", "divergence", "kind_a", "kind_b"] + [
        f"delta_{s}" for s in STAT_NAMES
    ]
    doc = report.to_dict()
    assert set(doc) == {"metric", "mode", "n_texts", "shape_a", "shape_b", "heads"}
    assert doc["shape_a"] == {"n_layer": 3, "n_head": 2} and doc["n_texts"] == 3
    assert doc["heads"][0] == {
        "layer_a": report.heads[0].layer_a, "head_a": report.heads[0].head_a, "layer_b": report.heads[0].layer_b,
        "head_b": report.heads[0].head_b, "divergence": divs[0], "kind_a": report.heads[0].kind_a,
        "kind_b": report.heads[0].kind_b, "stat_deltas": report.heads[0].stat_deltas,
        # no K/V layout given: each head reads its own K/V head
        "kv_head_a": report.heads[0].head_a, "kv_head_b": report.heads[0].head_b,
    }  # fmt: skip


@pytest.mark.parametrize("na, nb, shape_a, shape_b", [(6, 4, (3, 2), (2, 2)), (4, 6, (2, 2), (2, 3))])
def test_matched_summary_is_the_optimal_matching_and_nearest(na, nb, shape_a, shape_b):
    from mhacli.analyses.diff import summarise
    from mhacli.analyses.stats import STAT_NAMES

    rng = np.random.default_rng(na)
    texts = [text_diff(rng, na, nb, False, ["broad"] * na, ["sink"] * nb) for _ in range(2)]
    report = summarise(texts, "js", "matched", shape_a, shape_b)
    mean = (texts[0].divergence + texts[1].divergence) / 2
    k = min(na, nb)
    if na >= nb:
        best = min(itertools.permutations(range(na), nb), key=lambda p: sum(mean[i, j] for j, i in enumerate(p)))
        pairs = {(i, j) for j, i in enumerate(best)}
    else:
        best = min(itertools.permutations(range(nb), na), key=lambda p: sum(mean[i, j] for i, j in enumerate(p)))
        pairs = {(i, j) for i, j in enumerate(best)}
    flat = {(r.layer_a * shape_a[1] + r.head_a, r.layer_b * shape_b[1] + r.head_b): r for r in report.heads}
    assert set(flat) == pairs and len(report.heads) == k
    for (i, j), r in flat.items():
        assert r.divergence == pytest.approx(mean[i, j], abs=1e-15)
        assert (r.kind_a, r.kind_b) == ("broad", "sink")
        for n, s in enumerate(STAT_NAMES):
            want = mean_defined_ref([t.stats_b[n, j] - t.stats_a[n, i] for t in texts])
            assert r.stat_deltas[s] == (None if want is None else pytest.approx(want, abs=1e-12))
    order = [(-r.divergence, r.layer_b, r.head_b) for r in report.heads]
    assert order == sorted(order)
    assert report.unmatched_a == [divmod(i, shape_a[1]) for i in range(na) if i not in {i for i, _ in pairs}]
    assert report.unmatched_b == [divmod(j, shape_b[1]) for j in range(nb) if j not in {j for _, j in pairs}]
    assert len(report.nearest) == nb
    for j, near in enumerate(report.nearest):
        i = min(range(na), key=lambda i: (mean[i, j], i))
        assert (near.layer_b, near.head_b) == divmod(j, shape_b[1])
        assert (near.layer_a, near.head_a) == divmod(i, shape_a[1])
        assert near.divergence == pytest.approx(mean[i, j], abs=1e-15)
    doc = report.to_dict()
    assert doc["nearest"][0] == {
        "layer_b": 0, "head_b": 0, "layer_a": report.nearest[0].layer_a, "head_a": report.nearest[0].head_a,
        "divergence": report.nearest[0].divergence, "kv_head_a": report.nearest[0].head_a, "kv_head_b": 0,
    }  # fmt: skip
    assert doc["unmatched_a"] == [{"layer": a, "head": b} for a, b in report.unmatched_a]
    assert doc["unmatched_b"] == [{"layer": a, "head": b} for a, b in report.unmatched_b]
    assert doc["shape_b"] == {"n_layer": shape_b[0], "n_head": shape_b[1]}


def test_summary_of_no_text_is_refused():
    from mhacli.analyses.diff import summarise
    from mhacli.errors import UsageError

    with pytest.raises(UsageError) as err:
        summarise([], "js", "paired", (1, 1), (1, 1))
    assert str(err.value) == "nothing to compare: no texts"


def test_empty_report_max_divergence_is_zero():
    from mhacli.analyses.diff import DiffReport

    report = DiffReport("js", "paired", 1, (0, 0), (0, 0), [], None, [], [])
    assert report.max_divergence == 0.0 and report.above(0.0) == []


def test_an_error_in_either_forward_reaches_the_caller(models):
    """A forward that fails in its thread (a token id past the vocabulary) is raised here, not a hang."""
    import threading

    from mhacli.analyses.diff import compare_text

    a = load(models["a"])
    bad = np.array([1, 2, 10_000, 3])
    before = threading.active_count()
    with pytest.raises(Exception) as err:
        compare_text(a, a, bad, "js", "paired")
    assert not isinstance(err.value, RuntimeError) or "out of step" not in str(err.value)
    assert threading.active_count() == before  # both threads ended
