"""The kind rules, pinned from their documentation, not from the code.

Each rule is tried with its statistic exactly at its threshold and one float64 step below it, alone and together
with every other rule (the first in the documented order wins), with the support of the token-pattern kinds at 3
and 4 rows, through every path that decides a kind: one head (`classify`), a layer's statistics (`head_stats`),
a whole attention map crafted by hand (`layer_stats`), one census text (`text_kinds`) and a census' verdicts over
many texts (`verdicts`, with its confidence computed here by hand).

The expected values come from docs/statistics.md ("Head kinds") and the contract's census section, written out
below: a change to KIND_RULES, MIN_SUPPORT, the order or the comparison fails here.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mhacli.analyses.census import TALLIED, Tally, TextStats, text_kinds, verdicts
from mhacli.analyses.stats import LayerStats, classify, head_stats, layer_stats

# docs/statistics.md, in its order: kind, statistic, threshold, needs support (rows)
DOCUMENTED = [
    ("induction", "induction", 0.4, True),
    ("previous-token", "previous_token", 0.5, False),
    ("duplicate-token", "duplicate_token", 0.5, True),
    ("self", "self", 0.5, False),
    ("sink", "first_token", 0.5, False),
    ("broad", "relative_entropy", 0.75, False),
]
SUPPORT_ROWS = 4  # "over at least 4 rows"
N_SEQ = 10
UNIFORM = float(np.mean(np.log(np.arange(1, N_SEQ + 1))))  # entropy of uniform attention, mean over rows


def below(x: float) -> float:
    return float(np.nextafter(x, -math.inf))


def neutral() -> dict[str, float | None]:
    """Statistics under every threshold: no rule holds (entropy 0: one key per row)."""
    return {
        "entropy": 0.0,
        "max_weight": 0.3,
        "mean_distance": 2.0,
        "first_token": 0.1,
        "self": 0.1,
        "previous_token": 0.1,
        "duplicate_token": 0.1,
        "induction": 0.1,
    }


def with_stat(values: dict, stat: str, value: float) -> dict:
    """`values` with `stat` set; relative_entropy (entropy / UNIFORM) given as it is, entropy beside it."""
    if stat == "relative_entropy":
        return values | {"relative_entropy": value, "entropy": value * UNIFORM}
    return values | {stat: value}


def enough(rows: int = SUPPORT_ROWS) -> dict[str, int]:
    return {"duplicate_token": rows, "induction": rows}


@pytest.mark.parametrize("kind,stat,threshold,supported", DOCUMENTED)
def test_each_rule_holds_at_its_threshold_and_not_one_step_below(kind, stat, threshold, supported):
    at = with_stat(neutral(), stat, threshold)
    assert classify(at, N_SEQ, enough()) == kind
    assert classify(with_stat(neutral(), stat, below(threshold)), N_SEQ, enough()) == "mixed"
    assert classify(neutral(), N_SEQ, enough()) == "mixed"


@pytest.mark.parametrize("kind,stat,threshold,supported", [r for r in DOCUMENTED if r[3]])
def test_token_pattern_kinds_need_four_rows(kind, stat, threshold, supported):
    at = with_stat(neutral(), stat, 0.99)
    assert classify(at, N_SEQ, enough(SUPPORT_ROWS)) == kind
    assert classify(at, N_SEQ, enough(SUPPORT_ROWS - 1)) == "mixed"
    assert classify(at, N_SEQ, enough(0)) == "mixed"


@pytest.mark.parametrize("kind,stat,threshold,supported", [r for r in DOCUMENTED if not r[3]])
def test_other_kinds_need_no_support(kind, stat, threshold, supported):
    assert classify(with_stat(neutral(), stat, 0.99), N_SEQ, enough(0)) == kind


@pytest.mark.parametrize("first,second", list(itertools.combinations(range(len(DOCUMENTED)), 2)))
def test_the_first_documented_rule_wins(first, second):
    values = neutral()
    for _, stat, threshold, _ in (DOCUMENTED[first], DOCUMENTED[second]):
        values = with_stat(values, stat, max(threshold, 0.8) if stat == "relative_entropy" else threshold)
    assert classify(values, N_SEQ, enough()) == DOCUMENTED[first][0]
    # the earlier rule short of its support: the later one decides
    if DOCUMENTED[first][3]:
        assert classify(values, N_SEQ, enough(SUPPORT_ROWS - 1)) == (
            DOCUMENTED[second][0] if not DOCUMENTED[second][3] else "mixed"
        )


def test_a_null_statistic_never_holds():
    values = neutral() | {"induction": None, "duplicate_token": None}
    assert classify(values, N_SEQ, enough()) == "mixed"
    assert classify(values | {"self": 0.6}, N_SEQ, enough()) == "self"


def test_head_stats_decide_each_head_of_a_layer_by_the_same_rules():
    """One layer of len(DOCUMENTED) + 1 heads, head k at rule k's threshold, the last neutral."""
    # entropy / UNIFORM may round under 0.75 exactly: broad a little over its threshold here
    heads = [with_stat(neutral(), s, t + (0.01 if s == "relative_entropy" else 0)) for _, s, t, _ in DOCUMENTED]
    heads.append(neutral())
    arrays = {name: np.array([h[name] for h in heads], dtype=np.float64) for name in neutral()}
    ls = LayerStats(arrays, enough(), N_SEQ, UNIFORM, 4.5)
    got = [s.kind for s in head_stats(3, ls)]
    assert got == [kind for kind, *_ in DOCUMENTED] + ["mixed"]
    ls_short = LayerStats(arrays, enough(SUPPORT_ROWS - 1), N_SEQ, UNIFORM, 4.5)
    short = [s.kind for s in head_stats(3, ls_short)]
    assert short == [("mixed" if supported else kind) for kind, _, _, supported in DOCUMENTED] + ["mixed"]


def duplicate_map(ids: list[int]) -> np.ndarray:
    """One head [1, n, n] that attends to earlier copies of the current token.

    A row whose token occurred before position i - 1 puts all its weight on that copy, every other row on itself.
    """
    n = len(ids)
    a = np.zeros((1, n, n), dtype=np.float32)
    for i, t in enumerate(ids):
        earlier = [j for j in range(i - 1) if ids[j] == t]
        a[0, i, earlier[0] if earlier else i] = 1.0
    return a


@pytest.mark.parametrize("rows", [3, 4])
def test_min_support_on_a_crafted_map(rows):
    """A perfect duplicate-token head is one from 4 qualifying rows on.

    Below that the next rule that holds decides (self: the other rows attend to themselves).
    """
    ids = [10, 11, 12, 13, 14, 15, 16, 17] + [11, 13, 15, 17][:rows]
    (s,) = layer_stats(0, duplicate_map(ids), np.array(ids))
    assert s.support["duplicate_token"] == rows
    assert s.values["duplicate_token"] == pytest.approx(1.0)
    assert s.values["self"] == pytest.approx(8 / len(ids))
    assert s.kind == ("duplicate-token" if rows >= SUPPORT_ROWS else "self")


def text(values: dict[str, float], support: int = SUPPORT_ROWS, n_rows: int = N_SEQ) -> TextStats:
    """One census text of a 1-layer, 1-head model."""
    full = with_stat(neutral(), "relative_entropy", 0.0) | values
    column = np.array([full[name] for name in TALLIED], dtype=np.float64).reshape(len(TALLIED), 1, 1)
    return TextStats(column, (support, support), n_rows)


@pytest.mark.parametrize("kind,stat,threshold,supported", DOCUMENTED)
def test_one_census_text_decides_as_one_head_does(kind, stat, threshold, supported):
    values = with_stat(with_stat(neutral(), "relative_entropy", 0.0), stat, threshold)
    t = text(values)
    holds, kinds = text_kinds(t.values, t.support)
    assert bool(holds[kind][0, 0])
    assert int(kinds[0, 0]) == [k for k, *_ in DOCUMENTED].index(kind)
    if supported:
        short = text(values, support=SUPPORT_ROWS - 1)
        assert not bool(text_kinds(short.values, short.support)[0][kind][0, 0])


def fold(texts: list[TextStats]) -> Tally:
    tally = Tally((1, 1))
    for t in texts:
        tally.add(t, N_SEQ)
    return tally


def test_census_confidence_is_the_share_of_texts_where_the_rule_holds():
    """Confidence counts the texts on which the head's rule holds.

    Repeat probe, 4 texts: induction 0.9, 0.9, 0.9 and 0.1. Mean 0.7 >= 0.4: induction; the rule holds on 3 of the
    4 texts: confidence 0.75; the evidence is the mean, 0.7.
    """
    texts = [text({"induction": x}) for x in (0.9, 0.9, 0.9, 0.1)]
    (v,) = verdicts({"repeat": fold(texts)})
    assert (v.kind, v.source, v.statistic) == ("induction", "repeat", "induction")
    assert v.confidence == pytest.approx(0.75)
    assert v.mean == pytest.approx(0.7)


def test_census_kind_uses_the_mean_and_the_total_support():
    """The census' kind is decided on the mean over texts and the support summed over them.

    Two texts of 2 supporting rows each: 4 rows in total, enough; the mean 0.45 decides though one text alone (0.3)
    is under the threshold. One text of 3 rows: not enough, whatever the value.
    """
    two = [text({"induction": 0.6}, support=2), text({"induction": 0.3}, support=2)]
    (v,) = verdicts({"repeat": fold(two)})
    assert v.kind == "induction" and v.mean == pytest.approx(0.45)
    assert v.confidence == pytest.approx(0.0)  # neither text has 4 rows of its own: the rule held on none
    (short,) = verdicts({"repeat": fold([text({"induction": 0.9}, support=3)])})
    assert short.kind == "mixed"


def test_census_order_and_evidence_sources():
    """Each kind is judged on its own evidence source, in the documented order.

    previous-token comes before duplicate-token and is judged on the random probe; a head over both thresholds in
    its sources is previous-token; with the random probe's previous_token under 0.5 it is duplicate-token (judged
    on repeat).
    """
    repeat = fold([text({"previous_token": 0.6, "duplicate_token": 0.7})])
    random_hi = fold([text({"previous_token": 0.6})])
    random_lo = fold([text({"previous_token": 0.2})])
    (a,) = verdicts({"repeat": repeat, "random": random_hi})
    assert (a.kind, a.source) == ("previous-token", "random")
    (b,) = verdicts({"repeat": repeat, "random": random_lo})
    assert (b.kind, b.source) == ("duplicate-token", "repeat")
    assert b.confidence == pytest.approx(1.0)


def test_census_mixed_reports_max_weight_and_its_share():
    (v,) = verdicts({"random": fold([text({}), text({"self": 0.8})])})
    assert v.kind == "mixed" and v.statistic == "max_weight"
    assert v.mean == pytest.approx(0.3)
    assert v.confidence == pytest.approx(0.5)  # one of the two texts is mixed on its own


@pytest.mark.parametrize("kind,stat,threshold,supported", DOCUMENTED)
def test_census_verdict_at_the_threshold_and_one_step_below(kind, stat, threshold, supported):
    """Every source holds the same one text: its mean is the value itself, so the comparison is the rule's own."""
    base = with_stat(neutral(), "relative_entropy", 0.0)
    at = fold([text(with_stat(base, stat, threshold))])
    (v,) = verdicts({"repeat": at, "random": at, "corpus": at})
    assert (v.kind, v.statistic, v.mean, v.confidence) == (kind, stat, threshold, 1.0)
    under = fold([text(with_stat(base, stat, below(threshold)))])
    (w,) = verdicts({"repeat": under, "random": under, "corpus": under})
    assert w.kind == "mixed"
    if supported:
        short = fold([text(with_stat(base, stat, threshold), support=SUPPORT_ROWS - 1)])
        (s,) = verdicts({"repeat": short, "random": short, "corpus": short})
        assert s.kind == "mixed"
