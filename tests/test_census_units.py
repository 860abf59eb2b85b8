"""The census' parts in this process: probes, one text's statistics, the fold over texts and the verdicts.

Every expected value comes from docs/census.md and docs/statistics.md: a loop reference over HF's attention for
one text's statistics, NumPy's nan-aware mean and standard deviation for the fold, counts made by hand for the
kinds and the confidence, and the bundled model's induction head (L1H2, measured 0.84-0.89 on short repeats, the
other heads under 0.3) run through `mha census` with 3 and 4 rows of support per text.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from helpers import SAMPLE, hf_outputs, parse_json

from mhacli.analyses.census import (
    EVIDENCE,
    KINDS,
    SOURCES,
    TALLIED,
    ProbeSpec,
    Tally,
    TextStats,
    probe,
    text_kinds,
    text_stats,
    verdicts,
)

ORDINARY = np.arange(100, 160, dtype=np.int64)
PREFIX = 7


def loop_stats(A: np.ndarray, t: list[int], first_row: int) -> tuple[dict[str, float], dict[str, int]]:
    """docs/statistics.md written as loops over the rows first_row.. of one head, plus relative_entropy."""
    rows = range(first_row, len(t))
    later = [i for i in rows if i >= 1]
    nan = math.nan
    out = {
        "entropy": sum(-sum(A[i, j] * math.log(A[i, j]) for j in range(i + 1) if A[i, j] > 0) for i in rows)
        / len(rows),
        "max_weight": sum(max(A[i, : i + 1]) for i in rows) / len(rows),
        "mean_distance": sum(sum(A[i, j] * (i - j) for j in range(i + 1)) for i in rows) / len(rows),
        "first_token": sum(A[i, 0] for i in later) / len(later) if later else nan,
        "self": sum(A[i, i] for i in rows) / len(rows),
        "previous_token": sum(A[i, i - 1] for i in later) / len(later) if later else nan,
    }
    support = {}
    for name, targets in (
        ("duplicate_token", lambda i: [j for j in range(i - 1) if t[j] == t[i]]),
        ("induction", lambda i: [j for j in range(1, i - 1) if t[j - 1] == t[i]]),
    ):
        sums = [sum(A[i, j] for j in targets(i)) for i in rows if targets(i)]
        out[name] = sum(sums) / len(sums) if sums else nan
        support[name] = len(sums)
    uniform = sum(math.log(i + 1) for i in rows) / len(rows)
    out["relative_entropy"] = out["entropy"] / uniform if uniform > 0 else nan
    return out, support


# HF's attention is within 1e-5 of ours per cell (ATTN_ATOL); a statistic sums up to n_seq cells (times i - j for
# the distance)
TOLERANCE = {"mean_distance": 2e-3, "entropy": 1e-3, "relative_entropy": 1e-3}


@pytest.mark.parametrize(
    "ids,first_row",
    [
        ([2047, 5, 9, 300, 5, 9, 300, 41, 5], 0),  # duplicates and induction targets, read on every row
        ([2047, 11, 12, 13, 14, 11, 12, 13, 14], 5),  # a repeat probe read on its second copy
        ([2047, 3], 0),  # two rows: uniform entropy ln(2) / 2
        ([2047, 3, 4], 2),  # one row read
        ([2047], 0),  # one token: no scale for the entropy, relative_entropy undefined
    ],
)
def test_one_texts_statistics_are_the_loop_definitions_on_hf_attention(ids, first_row):
    from mhacli.io.weights import load_model

    ckpt = load_model(str(SAMPLE))
    with warnings.catch_warnings():  # a 1-token text has no entropy scale: null, not 0/0 with a warning
        warnings.simplefilter("error")
        result = text_stats(ckpt, np.asarray(ids), first_row)
    attentions, _ = hf_outputs(SAMPLE, ids)
    n_layer, n_head = ckpt.config.n_layer, ckpt.config.n_head
    assert result.values.shape == (len(TALLIED), n_layer, n_head)
    assert result.n_rows == len(ids) - first_row
    for layer in range(n_layer):
        for head in range(n_head):
            ref, support = loop_stats(attentions[layer][head].astype(np.float64), ids, first_row)
            assert result.support == (support["duplicate_token"], support["induction"])
            for k, name in enumerate(TALLIED):
                got, want = result.values[k, layer, head], ref[name]
                if math.isnan(want):
                    assert math.isnan(got), (layer, head, name)
                else:
                    assert got == pytest.approx(want, abs=TOLERANCE.get(name, 1e-4)), (layer, head, name)


def test_one_text_is_read_on_every_row_unless_told():
    from mhacli.io.weights import load_model

    ids = np.array([2047, 5, 9, 5], dtype=np.int64)
    whole = text_stats(load_model(str(SAMPLE)), ids)
    assert whole.n_rows == 4 and whole.support == (1, 0)  # row 3: an earlier 5 at 1 < 3 - 1
    np.testing.assert_array_equal(whole.values, text_stats(load_model(str(SAMPLE)), ids, 0).values)


@pytest.mark.parametrize("prefix", [PREFIX, None])
def test_a_repeat_probe_is_prefix_and_a_sequence_twice_read_on_the_second_copy(prefix):
    spec = ProbeSpec(repeat_length=6)
    ids, first_row = probe("repeat", 3, spec, ORDINARY, prefix)
    head = [] if prefix is None else [prefix]
    assert ids.dtype == np.int64
    assert len(ids) == spec.n_tokens("repeat", prefix) == len(head) + 12
    assert ids[: len(head)].tolist() == head
    s = ids[len(head) :].tolist()
    assert s[:6] == s[6:] and len(set(s[:6])) == 6 and set(s) <= set(ORDINARY.tolist())
    assert first_row == len(head) + 6


@pytest.mark.parametrize("prefix", [PREFIX, None])
def test_a_random_probe_is_prefix_and_distinct_ordinary_tokens(prefix):
    spec = ProbeSpec(random_length=30)
    ids, first_row = probe("random", 0, spec, ORDINARY, prefix)
    head = [] if prefix is None else [prefix]
    assert len(ids) == spec.n_tokens("random", prefix) == 30 and first_row == 0
    assert ids[: len(head)].tolist() == head
    rest = ids[len(head) :].tolist()
    assert len(set(rest)) == len(rest) and set(rest) <= set(ORDINARY.tolist())


def test_probes_repeat_tokens_only_when_the_vocabulary_is_too_small():
    few = np.arange(3, 8, dtype=np.int64)  # 5 ordinary tokens
    ids, _ = probe("random", 0, ProbeSpec(random_length=12), few, None)
    assert len(ids) == 12 and set(ids.tolist()) <= set(few.tolist())
    ids, _ = probe("repeat", 0, ProbeSpec(repeat_length=8), few, None)
    assert len(ids) == 16 and ids[:8].tolist() == ids[8:].tolist() and set(ids.tolist()) <= set(few.tolist())
    exact, _ = probe("random", 0, ProbeSpec(random_length=5), few, None)
    assert sorted(exact.tolist()) == few.tolist()  # as many tokens as the vocabulary: each once
    for k in range(5):
        ids, _ = probe("repeat", k, ProbeSpec(repeat_length=5), few, None)
        assert sorted(ids[:5].tolist()) == few.tolist() and ids[5:].tolist() == ids[:5].tolist()
        ids, _ = probe("repeat", k, ProbeSpec(repeat_length=4), few, PREFIX)
        assert len(set(ids[1:5].tolist())) == 4


def test_each_probe_has_its_own_seeded_generator():
    """docs/census.md: probe k of source S from numpy.random.default_rng([seed, S, k]), whatever else was drawn."""
    spec = ProbeSpec(random_length=20, repeat_length=20)
    later = probe("random", 5, spec, ORDINARY, None)[0]
    for k in range(5):
        probe("random", k, spec, ORDINARY, None)
    assert probe("random", 5, spec, ORDINARY, None)[0].tolist() == later.tolist()
    others = [
        probe("random", 4, spec, ORDINARY, None)[0],
        probe("random", 5, ProbeSpec(random_length=20, seed=1), ORDINARY, None)[0],
        probe("repeat", 5, spec, ORDINARY, None)[0][:20],
    ]
    for other in others:
        assert other.tolist() != later.tolist()
    rng = np.random.default_rng([0, SOURCES.index("random"), 5])
    assert later.tolist() == rng.choice(ORDINARY, 20, replace=False).tolist()


def test_an_unknown_probe_is_an_error():
    with pytest.raises(ValueError, match="not a probe: corpus"):
        probe("corpus", 0, ProbeSpec(), ORDINARY, None)


def test_a_probes_length_with_and_without_prefix():
    spec = ProbeSpec(repeat_length=7, random_length=33)
    assert spec.n_tokens("repeat", 0) == 15 and spec.n_tokens("repeat", None) == 14
    assert spec.n_tokens("random", 0) == spec.n_tokens("random", None) == 33
    assert ProbeSpec() == ProbeSpec(count=20, repeat_length=20, random_length=64, seed=0)  # docs/census.md


def test_the_fold_is_the_nan_aware_mean_and_population_spread():
    """Welford's running mean and spread equal numpy's over the texts where each statistic is defined."""
    rng = np.random.default_rng(3)
    shape = (len(TALLIED), 2, 3)
    texts = [rng.normal(size=shape) * 5 + 1 for _ in range(7)]
    for k, x in enumerate(texts):
        x[rng.random(shape) < 0.3] = np.nan
        x[0, 1, 2] = np.nan if k < 6 else 2.5  # defined on one text only: spread 0
        x[1, 0, 0] = np.nan  # never defined
    tally = Tally((2, 3))
    for k, x in enumerate(texts):
        tally.add(TextStats(x, (k, 2 * k), 10), n_tokens=10 + k)
    stack = np.stack(texts)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        want_mean, want_std = np.nanmean(stack, axis=0), np.nanstd(stack, axis=0)
    np.testing.assert_allclose(tally.means(), want_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tally.stds(), want_std, rtol=1e-10, atol=1e-12)
    assert tally.stds()[0, 1, 2] == 0.0 and math.isnan(tally.means()[1, 0, 0]) and math.isnan(tally.stds()[1, 0, 0])
    assert tally.count.tolist() == (~np.isnan(stack)).sum(axis=0).tolist()
    assert tally.n_texts == 7 and tally.n_tokens == sum(10 + k for k in range(7))
    assert tally.support.tolist() == [sum(range(7)), 2 * sum(range(7))]


def test_a_statistic_no_text_defines_is_null_without_a_warning():
    """A warning would reach the user's terminal (stderr) in the middle of the census' output."""
    x = np.full((len(TALLIED), 1, 1), np.nan)
    tally = Tally((1, 1))
    tally.add(TextStats(x, (0, 0), 1), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(tally.means()).all() and np.isnan(tally.stds()).all()


NEUTRAL = {  # every statistic under its rule's threshold: the text is mixed
    "entropy": 0.0,
    "max_weight": 0.3,
    "mean_distance": 2.0,
    "first_token": 0.1,
    "self": 0.1,
    "previous_token": 0.1,
    "duplicate_token": 0.1,
    "induction": 0.1,
    "relative_entropy": 0.1,
}


def one_text(heads: list[dict[str, float]], support: int = 4) -> TextStats:
    """A text of a 1-layer model, one dict of statistics per head (NEUTRAL where not given)."""
    values = np.array([[[(NEUTRAL | h)[name] for h in heads]] for name in TALLIED], dtype=np.float64)
    return TextStats(values, (support, support), 10)


def test_the_fold_counts_where_each_rule_holds_and_each_texts_kind():
    """The fold counts, per head and kind, the texts where the rule holds and the texts of that kind.

    Head 0: text 1 induction and previous-token both hold (induction decides), text 2 previous-token, text 3 none
    (mixed); head 1 mixed on every text.
    """
    texts = [
        one_text([{"induction": 0.9, "previous_token": 0.9}, {}]),
        one_text([{"previous_token": 0.9}, {}]),
        one_text([{}, {}]),
    ]
    tally = Tally((1, 2))
    for t in texts:
        tally.add(t, 10)
    holds = {kind: tally.holds[KINDS.index(kind), 0].tolist() for kind in KINDS}
    decided = {kind: tally.decided[KINDS.index(kind), 0].tolist() for kind in KINDS}
    assert holds == {k: [0, 0] for k in KINDS} | {"induction": [1, 0], "previous-token": [2, 0], "mixed": [1, 3]}
    assert decided == {k: [0, 0] for k in KINDS} | {"induction": [1, 0], "previous-token": [1, 0], "mixed": [1, 3]}


def test_a_texts_kinds_follow_the_rules_and_its_own_support():
    t = one_text([{"induction": 0.9, "self": 0.9}, {"duplicate_token": 0.9}, {"relative_entropy": 0.75}])
    holds, kinds = text_kinds(t.values, t.support)
    assert [KINDS[k] for k in kinds[0]] == ["induction", "duplicate-token", "broad"]
    assert holds["self"][0].tolist() == [True, False, False]
    short = one_text([{"induction": 0.9, "self": 0.9}, {"duplicate_token": 0.9}, {}], support=3)
    assert [KINDS[k] for k in text_kinds(short.values, short.support)[1][0]] == ["self", "mixed", "mixed"]


def fold(texts: list[TextStats]) -> Tally:
    tally = Tally((1, len(texts[0].values[0, 0])))
    for t in texts:
        tally.add(t, 10)
    return tally


def test_confidence_on_a_hand_computed_case():
    """Confidence is the share of the evidence source's texts on which the kind's rule holds.

    Random probe, 5 texts of one head: self 0.9, 0.6, 0.2, 0.55, 0.1. Mean 0.47: under 0.5, so not self; the
    head is mixed (max_weight 0.3 on every text), and mixed is the kind of texts 3 and 5 only: confidence 2/5.
    With a sixth text at self 0.9 the mean is 0.541...: self, and its rule holds on 4 of 6 texts.
    """
    selfs = [0.9, 0.6, 0.2, 0.55, 0.1]
    (v,) = verdicts({"random": fold([one_text([{"self": x}]) for x in selfs])})
    assert (v.kind, v.source, v.statistic, v.mean) == ("mixed", "random", "max_weight", pytest.approx(0.3))
    assert v.confidence == pytest.approx(2 / 5)
    (w,) = verdicts({"random": fold([one_text([{"self": x}]) for x in selfs + [0.9]])})
    assert (w.kind, w.source, w.statistic) == ("self", "random", "self")
    assert w.mean == pytest.approx(sum(selfs + [0.9]) / 6) and w.confidence == pytest.approx(4 / 6)
    assert (w.layer, w.head) == (0, 0)


@pytest.mark.parametrize("kind,stat", [("sink", "first_token"), ("self", "self"), ("previous-token", "previous_token")])
def test_each_kind_is_judged_on_the_first_source_of_its_evidence_list_that_ran(kind, stat):
    """docs/census.md's table: the kind's statistic is over threshold only in the source that must decide."""
    order = EVIDENCE[kind]
    for n in range(len(order)):
        ran = order[n:]
        tallies = {s: fold([one_text([{stat: 0.9 if s == ran[0] else 0.1}])]) for s in ran}
        (v,) = verdicts(tallies)
        assert (v.kind, v.source, v.mean) == (kind, ran[0], pytest.approx(0.9))
        swapped = {s: fold([one_text([{stat: 0.1 if s == ran[0] else 0.9}])]) for s in ran}
        (w,) = verdicts(swapped)
        assert (w.kind, w.source) == ("mixed", next(s for s in ("corpus", "random", "repeat") if s in ran))


def test_token_pattern_kinds_have_no_evidence_from_the_random_probe():
    (v,) = verdicts({"random": fold([one_text([{"induction": 0.9, "duplicate_token": 0.9}])])})
    assert v.kind == "mixed" and v.source == "random"


def test_a_head_is_judged_per_layer_and_head_and_sources_without_texts_are_ignored():
    heads = [[{}, {"self": 0.8}], [{"first_token": 0.7}, {}]]
    values = np.array([[[(NEUTRAL | h)[name] for h in row] for row in heads] for name in TALLIED])
    tally = Tally((2, 2))
    tally.add(TextStats(values, (4, 4), 10), 10)
    out = verdicts({"corpus": tally, "random": Tally((2, 2))})
    assert [(v.layer, v.head, v.kind, v.source) for v in out] == [
        (0, 0, "mixed", "corpus"),
        (0, 1, "self", "corpus"),
        (1, 0, "sink", "corpus"),
        (1, 1, "mixed", "corpus"),
    ]
    assert verdicts({}) == [] and verdicts({"repeat": Tally((2, 2))}) == []


def test_an_undefined_statistic_decides_nothing_and_mixed_reports_null():
    nan = math.nan
    t = one_text([{"max_weight": nan, "induction": nan, "duplicate_token": nan}])
    (v,) = verdicts({"repeat": fold([t])})
    assert v.kind == "mixed" and v.mean is None and v.confidence == 1.0


def census(mha, *args: str) -> dict:
    result = mha("census", "-m", "sample", "--probes", "repeat", "-j", "1", "-f", "json", *args)
    assert result.returncode == 0, result.stderr
    return parse_json(result.stdout)


@pytest.mark.parametrize(
    "length,count,kind,confidence",
    [(3, 1, "not induction", None), (4, 1, "induction", 1.0), (3, 2, "induction", 0.0), (4, 2, "induction", 1.0)],
)
def test_min_support_and_confidence_through_the_census(mha, length, count, kind, confidence):
    """MIN_SUPPORT at 3 and 4 rows, per text and in total, on the bundled model's induction head.

    A repeat probe of N tokens has N rows of induction support. The kind needs 4 rows in total over the texts,
    the confidence counts the texts with 4 rows of their own: 2 texts of 3 rows make an induction head whose rule
    holds on none of them (confidence 0).
    """
    doc = census(mha, "--repeat-length", str(length), "--probe-count", str(count))
    heads = {(h["layer"], h["head"]): h for h in doc["heads"]}
    ind = heads[(1, 2)]
    assert ind["by_source"]["repeat"]["support"] == {"duplicate_token": length * count, "induction": length * count}
    assert doc["min_support"] == 4
    if kind == "not induction":
        assert all(h["kind"] not in ("induction", "duplicate-token") for h in doc["heads"])
    else:
        assert ind["kind"] == "induction" and ind["evidence"]["source"] == "repeat"
        assert ind["confidence"] == confidence
        assert ind["evidence"]["mean"] == pytest.approx(ind["by_source"]["repeat"]["mean"]["induction"])
        assert [h["kind"] for h in doc["heads"]].count("induction") == 1
