"""StatsAccumulator fed tile by tile, against docs/statistics.md written as plain loops; HeadStats' views of it.

The accumulator is given what the attention kernel gives it: blocks of rows over a window of keys (the keys before
the window hidden, 0 in the whole map), blocks of any size, in any order, from several threads, split into chunks
when SCRATCH_BYTES is small, rows before `first_row` skipped. Every statistic must equal the loop definition on the
whole map. The 0-1 scale (`unit_value`, `score`) is checked on maps whose value is known: uniform attention has
relative entropy 1, attention all on key 0 relative distance 1.
"""

from __future__ import annotations

import math
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mhacli.analyses import stats
from mhacli.analyses.stats import (
    KINDS,
    MIN_SUPPORT,
    STAT_NAMES,
    TOO_PLAIN,
    HeadStats,
    LayerStats,
    StatsAccumulator,
    TokenMatches,
    classify,
    head_stats,
    kinds_from_holds,
    layer_arrays,
    layer_stats,
    rule_holds,
    stats_arrays,
    target_rows,
    undecidable,
    uniform_entropy,
)


def duplicate_targets(t: list[int], i: int) -> list[int]:
    return [j for j in range(i - 1) if t[j] == t[i]]  # D_i = { j : j < i-1, t_j = t_i }


def induction_targets(t: list[int], i: int) -> list[int]:
    return [j for j in range(1, i - 1) if t[j - 1] == t[i]]  # I_i = { j : 1 <= j <= i-2, t_{j-1} = t_i }


def loop_stats(A: np.ndarray, t: list[int], first_row: int = 0) -> tuple[dict[str, float], dict[str, int]]:
    """One head's statistics over rows first_row.. of its whole map, as docs/statistics.md defines them."""
    rows = range(first_row, len(t))
    later = [i for i in rows if i >= 1]
    out = {
        "entropy": sum(-sum(A[i, j] * math.log(A[i, j]) for j in range(i + 1) if A[i, j] > 0) for i in rows)
        / len(rows),
        "max_weight": sum(max(A[i, : i + 1]) for i in rows) / len(rows),
        "mean_distance": sum(sum(A[i, j] * (i - j) for j in range(i + 1)) for i in rows) / len(rows),
        "first_token": sum(A[i, 0] for i in later) / len(later) if later else math.nan,
        "self": sum(A[i, i] for i in rows) / len(rows),
        "previous_token": sum(A[i, i - 1] for i in later) / len(later) if later else math.nan,
    }
    support = {}
    for name, targets in (("duplicate_token", duplicate_targets), ("induction", induction_targets)):
        sums = [sum(A[i, j] for j in targets(t, i)) for i in rows if targets(t, i)]
        out[name] = sum(sums) / len(sums) if sums else math.nan
        support[name] = len(sums)
    return out, support


def causal_map(rng: np.random.Generator, n_head: int, n: int, window: int | None, sharpness: float) -> np.ndarray:
    """Random softmax rows over the visible keys (j <= i, and j > i - window with a window), float32."""
    logits = rng.normal(size=(n_head, n, n)) * sharpness
    i, j = np.indices((n, n))
    hidden = (j > i) | ((i - j >= window) if window else False)
    logits[:, hidden] = -np.inf
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def feed(acc: StatsAccumulator, A: np.ndarray, window: int | None, bounds: list[int], heads: int, threads: int):
    """Give the accumulator A's tiles as the kernel does, shuffled and shared among `threads` threads.

    Tile: rows a..b-1 of heads h..h+heads-1 over keys lo..b-1, lo the first key in the window of row a.
    """
    n_head = A.shape[0]
    tiles = []
    for a, b in zip(bounds, bounds[1:]):
        lo = max(0, a - window + 1) if window else 0
        for h in range(0, n_head, heads):
            tiles.append((h, a, b, lo, np.ascontiguousarray(A[h : h + heads, a:b, lo:b])))
    random.Random(len(tiles)).shuffle(tiles)
    # this thread takes the first share, the pool the others; .result(): an error in a thread fails the test
    with ThreadPoolExecutor(max(1, threads - 1)) as pool:
        others = [pool.submit(lambda k=k: [acc.add(*t) for t in tiles[k::threads]]) for k in range(1, threads)]
        for t in tiles[::threads]:
            acc.add(*t)
        for done in others:
            done.result()
    return acc.result()


def assert_reference(result, A: np.ndarray, t: list[int], first_row: int) -> None:
    n = len(t)
    for h in range(A.shape[0]):
        ref, support = loop_stats(A[h].astype(np.float64), t, first_row)
        assert result.support == support
        for name in STAT_NAMES:
            got, want = float(result.values[name][h]), ref[name]
            if math.isnan(want):
                assert math.isnan(got), (h, name)
            else:
                # float32 products summed in float64 (docs/statistics.md): a few parts in 10^7 of the value
                assert got == pytest.approx(want, rel=1e-6, abs=1e-9), (h, name)
    assert result.n_rows == n - first_row
    assert result.uniform_entropy == pytest.approx(sum(math.log(i + 1) for i in range(first_row, n)) / (n - first_row))
    assert result.max_distance == pytest.approx(sum(range(first_row, n)) / (n - first_row))


CASES = [
    # n, n_head, window, row bounds, heads per tile, threads, first_row
    (23, 3, None, [0, 23], 3, 1, 0),
    (23, 3, None, [0, 5, 6, 17, 23], 1, 2, 0),
    (23, 2, 4, [0, 3, 9, 10, 23], 2, 2, 0),
    (23, 2, 1, [0, 7, 23], 1, 1, 0),  # a window of one key: previous_token 0
    (9, 2, 1, list(range(10)), 1, 1, 0),  # one row per tile in a window of one key: no previous key at all
    (30, 4, 6, [0, 4, 8, 12, 16, 20, 24, 28, 30], 2, 3, 13),
    (30, 2, None, [0, 11, 30], 1, 2, 11),
    (17, 1, None, [0, 8, 17], 1, 1, 16),  # one row read
    (1, 2, None, [0, 1], 2, 1, 0),  # one token: first_token and previous_token undefined
    (2, 2, None, [0, 1, 2], 1, 1, 1),
]


@pytest.mark.parametrize("n,n_head,window,bounds,heads,threads,first_row", CASES)
@pytest.mark.parametrize("vocab", [3, 50])
def test_tiles_in_any_order_give_the_loop_definitions(n, n_head, window, bounds, heads, threads, first_row, vocab):
    rng = np.random.default_rng([n, n_head, vocab, first_row])
    A = causal_map(rng, n_head, n, window, sharpness=2.5)
    t = rng.integers(0, vocab, size=n).tolist()
    acc = StatsAccumulator(n_head, np.asarray(t), first_row)
    assert_reference(feed(acc, A, window, bounds, heads, threads), A, t, first_row)


def test_small_work_arrays_split_a_tile_into_chunks_with_the_same_result(monkeypatch):
    """SCRATCH_BYTES bounds the work arrays: a tile of 40 rows is reduced a few rows at a time."""
    rng = np.random.default_rng(5)
    A = causal_map(rng, 3, 40, 9, sharpness=2.0)
    t = rng.integers(0, 4, size=40).tolist()
    for scratch in (1, 4 * 3 * 40 * 3, 4 * 3 * 40 * 7 + 5):  # under one row, 3 rows, 7 rows and a bit
        monkeypatch.setattr(stats, "SCRATCH_BYTES", scratch)
        acc = StatsAccumulator(3, np.asarray(t), 5)
        assert_reference(feed(acc, A, 9, [0, 17, 40], 3, 1), A, t, 5)


def test_whole_maps_in_row_blocks_give_the_loop_definitions(monkeypatch):
    """layer_arrays feeds a whole map ROW_BLOCK rows at a time: blocks of 7 rows here, from any first row."""
    monkeypatch.setattr(stats, "ROW_BLOCK", 7)
    rng = np.random.default_rng(11)
    A = causal_map(rng, 2, 26, None, sharpness=3.0)
    t = rng.integers(0, 5, size=26).tolist()
    for first_row in (0, 3, 7, 25):
        assert_reference(layer_arrays(A, np.asarray(t), first_row), A, t, first_row)
        values = stats_arrays(A, np.asarray(t), first_row) if first_row else stats_arrays(A, np.asarray(t))
        assert list(values) == list(STAT_NAMES)
        ref, _ = loop_stats(A[1].astype(np.float64), t, first_row)
        assert float(values["entropy"][1]) == pytest.approx(ref["entropy"], rel=1e-6)


def test_a_first_row_outside_the_text_is_an_error():
    for first_row in (-1, 5):
        with pytest.raises(ValueError, match=r"first_row .* outside 0\.\.4"):
            StatsAccumulator(1, np.arange(5), first_row)


@pytest.mark.parametrize("seed", range(6))
def test_target_rows_and_token_matches_are_the_target_sets(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    t = rng.integers(0, [2, 3, 8, 40, 2, 5][seed], size=n).tolist()
    has = target_rows(np.asarray(t))
    assert has["duplicate_token"].tolist() == [bool(duplicate_targets(t, i)) for i in range(n)]
    assert has["induction"].tolist() == [bool(induction_targets(t, i)) for i in range(n)]
    matches = TokenMatches(np.asarray(t))
    for _ in range(5):
        a = int(rng.integers(0, n))
        b = int(rng.integers(a + 1, n + 1))
        lo = int(rng.integers(0, b))
        for name, targets in (("duplicate_token", duplicate_targets), ("induction", induction_targets)):
            rows, keys = matches.pairs(name, a, b, lo)
            got = sorted(zip((rows + a).tolist(), (keys + lo).tolist()))
            want = [(i, j) for i in range(a, b) for j in targets(t, i) if j >= lo]
            assert got == want, (name, a, b, lo)
            assert rows.tolist() == sorted(rows.tolist())  # by row


def one_hot_map(n: int, key) -> np.ndarray:
    A = np.zeros((1, n, n), np.float32)
    for i in range(n):
        A[0, i, key(i)] = 1
    return A


def test_unit_values_are_fractions_of_their_maximum():
    n = 12
    uniform = np.tril(np.ones((n, n), np.float32))
    uniform /= uniform.sum(axis=1, keepdims=True)
    sink = one_hot_map(n, lambda i: 0)
    own = one_hot_map(n, lambda i: i)
    t = np.arange(n)
    (u,), (s,), (o,) = (layer_stats(2, A, t) for A in (uniform[None], sink, own))
    assert u.layer == s.layer == o.layer == 2 and u.head == 0
    assert u.kind == "broad" and u.unit_value("entropy") == pytest.approx(1.0, rel=1e-6)
    assert u.unit_value("relative_entropy") == u.unit_value("entropy") and u.score == u.unit_value("entropy")
    assert u.unit_value("mean_distance") == pytest.approx(0.5, rel=1e-6)  # mean over j <= i of i - j is i / 2
    assert u.unit_value("max_weight") == u.values["max_weight"] == pytest.approx(sum(1 / (i + 1) for i in range(n)) / n)
    assert s.kind == "sink" and s.unit_value("relative_distance") == pytest.approx(1.0) and s.score == 1.0
    assert s.unit_value("entropy") == 0.0 and s.unit_value("first_token") == 1.0
    assert o.kind == "self" and o.unit_value("mean_distance") == 0.0 and o.score == 1.0
    assert s.unit_value("duplicate_token") is None  # no row has an earlier copy of its token


def test_unit_values_are_undefined_without_a_scale():
    values = dict.fromkeys(STAT_NAMES, 0.5) | {"induction": None}
    unknown = HeadStats(0, 0, "mixed", values)  # uniform_entropy and max_distance unknown (NaN)
    assert unknown.unit_value("entropy") is None and unknown.unit_value("mean_distance") is None
    assert unknown.unit_value("self") == 0.5 and unknown.unit_value("induction") is None
    zero = HeadStats(0, 0, "mixed", values, uniform_entropy=0.0, max_distance=0.0)  # one token
    assert zero.unit_value("relative_entropy") is None and zero.unit_value("relative_distance") is None
    scaled = HeadStats(0, 0, "broad", values, uniform_entropy=2.0, max_distance=0.25)
    assert scaled.unit_value("entropy") == 0.25 and scaled.unit_value("mean_distance") == 2.0
    assert scaled.score == 0.25 and HeadStats(0, 0, "mixed", values).score == 0.5  # mixed: max_weight


def test_kind_support_and_the_json_object():
    values = dict.fromkeys(STAT_NAMES, 0.1)
    support = {"duplicate_token": 6, "induction": 5}
    for kind in KINDS:
        h = HeadStats(1, 3, kind, values, support)
        want = {"induction": 5, "duplicate-token": 6}.get(kind)
        assert h.kind_support == want
    h = HeadStats(1, 3, "self", values | {"induction": None}, support)
    assert h.to_dict() == {
        "layer": 1,
        "head": 3,
        "kind": "self",
        "stats": values | {"induction": None},
        "support": {"duplicate_token": 6, "induction": 5},
    }
    bare = HeadStats(0, 0, "induction", values).to_dict()
    assert bare["support"] == {"duplicate_token": 0, "induction": 0} and bare["kind"] == "induction"
    assert HeadStats(0, 0, "induction", values).kind_support == 0


def test_head_stats_carry_the_layers_scales_and_null_for_nan():
    values = {name: np.array([0.2, math.nan]) for name in STAT_NAMES}
    ls = LayerStats(values, {"duplicate_token": 2, "induction": 0}, 9, 1.5, 4.0)
    a, b = head_stats(7, ls)
    assert (a.layer, a.head, b.head) == (7, 0, 1)
    assert a.values == dict.fromkeys(STAT_NAMES, 0.2) and b.values == dict.fromkeys(STAT_NAMES, None)
    assert (a.uniform_entropy, a.max_distance) == (1.5, 4.0) and a.support == ls.support
    assert a.kind == b.kind == "mixed"


def test_uniform_entropy_is_the_mean_of_ln_i_plus_1():
    for n in (1, 2, 7, 100):
        assert uniform_entropy(n) == pytest.approx(sum(math.log(i + 1) for i in range(n)) / n, rel=1e-12)


def test_relative_entropy_without_a_scale_never_holds():
    values = {name: np.array([0.0]) for name in STAT_NAMES} | {"entropy": np.array([5.0])}
    support = {"duplicate_token": 9, "induction": 9}
    assert not rule_holds(values, support, 0.0)["broad"][0]
    assert rule_holds(values, support, 2.0)["broad"][0]  # 5 / 2 >= 0.75
    short = values | {"entropy": np.array([0.4])}  # a short text: uniform entropy under 1
    assert rule_holds(short, support, 0.5)["broad"][0] and not rule_holds(short, support, 0.6)["broad"][0]
    assert not rule_holds(values | {"relative_entropy": np.array([0.7])}, support, 2.0)["broad"][0]


def test_kinds_of_a_grid_of_heads():
    holds = {kind: np.zeros((2, 3), bool) for kind, _, _ in stats.KIND_RULES}
    holds["sink"][0, 1] = holds["self"][0, 1] = True  # self comes first
    holds["broad"][1, 2] = True
    holds["induction"][1, 0] = holds["broad"][1, 0] = True
    kinds = [[KINDS[k] for k in row] for row in kinds_from_holds(holds)]
    assert kinds == [["mixed", "self", "mixed"], ["induction", "mixed", "broad"]]


def test_classify_assumes_enough_support_unless_told():
    values = dict.fromkeys(STAT_NAMES, 0.0) | {"induction": 0.4, "duplicate_token": 0.5}
    assert classify(values, 10) == "induction"
    assert classify(values, 10, {"induction": MIN_SUPPORT - 1, "duplicate_token": MIN_SUPPORT}) == "duplicate-token"


@pytest.mark.parametrize(
    "support,plain",
    [
        ({"duplicate_token": 3, "induction": 3}, True),
        ({"duplicate_token": 4, "induction": 0}, False),
        ({"duplicate_token": 0, "induction": 4}, False),
        ({"duplicate_token": 3}, True),
        ({}, True),
        ({"duplicate_token": 40, "induction": 40}, False),
    ],
)
def test_a_text_is_too_plain_when_neither_token_pattern_has_4_rows(support, plain):
    assert undecidable(support) is plain


def test_the_too_plain_note_names_the_rows_it_needs():
    assert "fewer than 4 rows with an earlier copy of their token" in TOO_PLAIN
    assert TOO_PLAIN.startswith("this text is too short or too plain to tell induction or duplicate-token heads")
    assert TOO_PLAIN.endswith("`mha census` classifies heads over probes and a corpus")


def test_sums_over_long_rows_are_reduced_in_float64():
    """docs/statistics.md: sums are reduced in float64.

    One row of 300,000 equal float32 weights: its entropy is n w ln(1 / w) to a few parts in 10^7, which float32
    sums of the terms do not reach.
    """
    n = 300_000
    w = np.float32(1 / n)
    acc = StatsAccumulator(1, np.arange(n), first_row=n - 1)
    acc.add(0, n - 1, n, 0, np.full((1, 1, n), w, np.float32))
    result = acc.result()
    want = -n * float(w) * math.log(float(w))
    assert float(result.values["entropy"][0]) == pytest.approx(want, rel=1e-6)
    assert float(result.values["mean_distance"][0]) == pytest.approx(float(w) * (n - 1) * n / 2, rel=1e-6)
