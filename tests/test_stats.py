"""Statistics against a direct, loop-based implementation of docs/statistics.md's definitions, plus properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import reference_stats
from hypothesis import given, settings
from hypothesis import strategies as st

from mhacli.analyses.stats import (
    KIND_RULES,
    MIN_SUPPORT,
    STAT_NAMES,
    TokenMatches,
    classify,
    layer_arrays,
    layer_stats,
    stats_arrays,
)

# Entropy and mean_distance sum float32 products (p log p: a maximum, a log and a product, each within an ulp;
# p (i - j): one product) in float64: each term is within 3 (resp. 1) float32 ulps of its exact value, so the sum is
# within that share of the sum of |terms| -- which is the statistic itself, every term having one sign. The other
# statistics are sums of float32 weights as they are.
PRODUCT_ERROR = {"entropy": 3 * float(np.finfo(np.float32).eps), "mean_distance": float(np.finfo(np.float32).eps)}


def random_causal(rng: np.random.Generator, n_head: int, n: int, sharpness: float = 3.0) -> np.ndarray:
    logits = rng.normal(size=(n_head, n, n)) * sharpness
    logits[:, np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]] = -np.inf
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def assert_matches_reference(A: np.ndarray, t: list[int], first_row: int = 0) -> None:
    result = layer_arrays(A, np.asarray(t), first_row)
    for h in range(A.shape[0]):
        ref, support = reference_stats(A[h].astype(np.float64), t, first_row)
        assert result.support == support
        for name, expected in ref.items():
            got = result.values[name][h]
            if expected is None:
                assert math.isnan(got), name
            else:
                assert abs(got - expected) < 1e-9 + PRODUCT_ERROR.get(name, 0) * abs(expected), (name, got, expected)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 24),
    n_head=st.integers(1, 4),
    vocab=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    sharpness=st.floats(0.0, 20.0),
)
def test_vectorised_stats_match_the_loop_definitions(n, n_head, vocab, seed, sharpness):
    """Small vocabularies make adjacent repeats (t_i = t_{i-1}, t_i = t_{i-2}) common.

    The cases the exclusions are about.
    """
    rng = np.random.default_rng(seed)
    A = random_causal(rng, n_head, n, sharpness)
    t = rng.integers(0, vocab, size=n).tolist()
    assert_matches_reference(A, t)
    assert_matches_reference(A, t, first_row=int(rng.integers(0, n)))


def test_hand_built_heads_get_their_kind():
    t = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9]  # a sequence and its repeat
    n = len(t)
    prev = np.zeros((n, n), np.float32)
    prev[0, 0] = 1
    prev[np.arange(1, n), np.arange(n - 1)] = 1
    induction = np.zeros((n, n), np.float32)
    for i in range(n):
        if i >= 5:
            induction[i, i - 4] = 1  # the token after the earlier occurrence of t[i]
        else:
            induction[i, 0] = 1
    sink = np.zeros((n, n), np.float32)
    sink[:, 0] = 1
    selfish = np.eye(n, dtype=np.float32)
    uniform = np.tril(np.ones((n, n), np.float32))
    uniform /= uniform.sum(axis=1, keepdims=True)
    dup = np.zeros((n, n), np.float32)
    for i in range(n):
        dup[i, i - 5 if i >= 5 else i] = 1
    heads = np.stack([prev, induction, sink, selfish, uniform, dup])
    assert_matches_reference(heads, t)
    kinds = [s.kind for s in layer_stats(0, heads, np.asarray(t))]
    assert kinds == ["previous-token", "induction", "sink", "self", "broad", "duplicate-token"]
    stats = layer_stats(0, heads, np.asarray(t))
    assert stats[0].values["previous_token"] == pytest.approx(1.0)
    assert stats[1].values["induction"] == pytest.approx(1.0)


def test_permuting_heads_permutes_stats():
    rng = np.random.default_rng(3)
    A = random_causal(rng, 5, 16)
    t = rng.integers(0, 4, size=16)
    perm = rng.permutation(5)
    a, b = stats_arrays(A, t), stats_arrays(A[perm], t)
    for name in a:
        np.testing.assert_allclose(a[name][perm], b[name], rtol=0, atol=1e-12, equal_nan=True)


def test_single_token_has_undefined_token_statistics():
    values = layer_stats(0, np.ones((2, 1, 1), np.float32), np.array([3]))[0].values
    assert values["previous_token"] is None and values["first_token"] is None
    assert values["duplicate_token"] is None and values["induction"] is None
    assert values["self"] == 1.0 and values["entropy"] == 0.0


def test_kind_rules_use_known_statistics():
    """Every rule names a statistic that exists, has a threshold in (0, 1), and is decided by that statistic.

    `broad` names entropy relative to uniform. With every other statistic low, the rule's statistic at its threshold
    gives the rule's kind and just below it does not.
    """
    n_seq = 10
    low = {
        "entropy": 0.01,
        "max_weight": 0.99,
        "mean_distance": 0.0,
        "first_token": 0.0,
        "self": 0.0,
        "previous_token": 0.0,
        "duplicate_token": 0.0,
        "induction": 0.0,
    }
    uniform = float(np.mean(np.log(np.arange(1, n_seq + 1))))  # uniform over the visible keys
    for kind, stat, threshold in KIND_RULES:
        assert stat in STAT_NAMES or stat == "relative_entropy", (kind, stat)
        assert 0 < threshold < 1, (kind, threshold)
        name, scale = ("entropy", uniform) if stat == "relative_entropy" else (stat, 1.0)
        assert classify(low | {name: threshold * scale}, n_seq) == kind, kind
        assert classify(low | {name: (threshold - 1e-3) * scale}, n_seq) != kind, kind
    assert (
        classify(
            {
                "entropy": 0.1,
                "induction": None,
                "previous_token": 0.1,
                "duplicate_token": None,
                "self": 0.1,
                "first_token": 0.1,
                "max_weight": 0.9,
                "mean_distance": 1.0,
            },
            10,
        )
        == "mixed"
    )


def test_a_previous_token_head_scores_nothing_on_token_patterns_in_periodic_text():
    """In "O, O, O" the token after an earlier copy of the current token is often the previous token itself.

    The exclusions keep a pure previous-token head at 0 on duplicate_token and induction, and it stays previous-token.
    """
    for t in ([7, 7, 7, 7, 7, 7, 7, 7], [1, 2, 1, 2, 1, 2, 1, 2, 1], [3, 4, 3, 4, 3, 4, 3, 4, 3, 9]):
        n = len(t)
        prev = np.zeros((1, n, n), np.float32)
        prev[0, 0, 0] = 1
        prev[0, np.arange(1, n), np.arange(n - 1)] = 1
        assert_matches_reference(prev, t)
        (s,) = layer_stats(0, prev, np.asarray(t))
        assert s.kind == "previous-token"
        assert s.values["duplicate_token"] == 0.0 and s.values["induction"] == 0.0, (t, s.values)
        assert s.support["induction"] >= MIN_SUPPORT


def duplicate_mask(t: np.ndarray) -> np.ndarray:
    """[n] -> [n, n] bool, D_i as docs/statistics.md defines it: key j < i - 1 holds the same token as query i."""
    i, j = np.arange(len(t))[:, None], np.arange(len(t))[None, :]
    return (t[i] == t[j]) & (j < i - 1)


def induction_mask(t: np.ndarray) -> np.ndarray:
    """[n] -> [n, n] bool, I_i: 1 <= j <= i - 2 and the token before key j equals query i's token."""
    i, j = np.arange(len(t))[:, None], np.arange(len(t))[None, :]
    return (t[i] == t[np.maximum(j - 1, 0)]) & (j >= 1) & (j <= i - 2)


@settings(max_examples=300, deadline=None)
@given(t=st.lists(st.integers(0, 4), min_size=1, max_size=40), data=st.data())
def test_token_matches_list_exactly_the_cells_of_the_dense_masks(t, data):
    """The sparse pairs the statistics sum over are the nonzero cells of the dense definitions.

    TokenMatches (sorted positions, binary search), for any rows a..b-1 and keys lo.., in row-then-key order.
    """
    t = np.asarray(t)
    n = len(t)
    a = data.draw(st.integers(0, n - 1))
    b = data.draw(st.integers(a + 1, n))
    lo = data.draw(st.integers(0, b - 1))
    matches = TokenMatches(t)
    for name, mask in (("duplicate_token", duplicate_mask), ("induction", induction_mask)):
        rows, keys = matches.pairs(name, a, b, lo)
        want_rows, want_keys = np.nonzero(mask(t)[a:b, lo:b])
        assert np.array_equal(rows, want_rows) and np.array_equal(keys, want_keys), name


def test_previous_and_self_cells_are_never_targets():
    """Whatever the tokens, no duplicate or induction target sits at j = i-1 or j = i.

    So previous_token and self never share a cell with them; duplicate and induction share a cell only inside a run
    t_{j-1} = t_j = t_i.
    """
    rng = np.random.default_rng(0)
    for _ in range(200):
        t = rng.integers(0, 3, size=int(rng.integers(1, 30)))
        d, ind = duplicate_mask(t), induction_mask(t)
        n = len(t)
        for m in (d, ind):
            assert not np.diagonal(m).any() and not np.diagonal(m, offset=-1).any()
            assert not np.triu(m).any()
        for i, j in zip(*np.nonzero(d & ind)):
            assert t[j - 1] == t[j] == t[i]
        assert n == len(t)


def test_kinds_from_token_patterns_need_min_support():
    """An induction (or duplicate) pattern seen on fewer than MIN_SUPPORT rows decides no kind.

    On MIN_SUPPORT rows it does. The head attends to the first token elsewhere, so without the pattern it is a sink.
    """
    for n_rows in range(1, MIN_SUPPORT + 2):
        period = 3  # distinct tokens 10, 11, 12, repeated: rows n_rows copies deep into the repeat qualify
        prefix = [10, 11, 12]
        t = prefix + [20 + k for k in range(6)] + prefix[: min(n_rows, 3)] + [10, 11, 12][: max(0, n_rows - 3)]
        t = t[: 9 + n_rows]
        n = len(t)
        head = np.zeros((1, n, n), np.float32)
        head[0, :, 0] = 1
        for i in range(9, n):  # query i holds prefix[(i - 9) % 3]; the token after its earlier copy
            j = (i - 9) % period + 1
            head[0, i] = 0
            head[0, i, j] = 1
        (s,) = layer_stats(0, head, np.asarray(t))
        assert s.support["induction"] == n_rows, (t, s.support)
        assert s.values["induction"] == 1.0
        assert s.kind == ("induction" if n_rows >= MIN_SUPPORT else "sink"), (n_rows, s.kind)
        assert_matches_reference(head, t)
