"""mhacli.analyses.diff where the in-process tests left mutants alive (mutation testing, tests/mutants.md).

The K/V head each query head reads (head // group, DiffReport's docstring; -1: its own head), heads removed from B in
`paired_stream` and in a packed matched run, and packs whose attention comes in several row blocks (every test pack
fit one block, so a tile's first row and key were always 0). References: the K/V arithmetic written here, and each
text compared alone in one block (itself checked against HF attentions in tests/test_diff.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from cached_models import model as cached_model

N_LAYER, N_HEAD = 3, 4
ATOL = 1e-5  # float64 reductions of float32 maps computed in other block shapes


@pytest.fixture(scope="module")
def pair():
    from mhacli.io.weights import load_model

    return tuple(load_model(str(cached_model("ablate_ref", seed=s, n_layer=N_LAYER, n_head=N_HEAD))) for s in (3, 4))


def test_a_kv_head_not_given_is_the_query_heads_own():
    from mhacli.analyses.diff import DiffRow, NearestRow

    row = DiffRow(0, 3, 1, 2, 0.5, "mixed", "mixed", {})
    assert (row.to_dict()["kv_head_a"], row.to_dict()["kv_head_b"]) == (3, 2)
    row = DiffRow(0, 3, 1, 2, 0.5, "mixed", "mixed", {}, kv_head_a=0, kv_head_b=1)
    assert (row.to_dict()["kv_head_a"], row.to_dict()["kv_head_b"]) == (0, 1)
    near = NearestRow(1, 2, 0, 3, 0.5)
    assert (near.to_dict()["kv_head_b"], near.to_dict()["kv_head_a"]) == (2, 3)
    near = NearestRow(1, 2, 0, 3, 0.5, kv_head_b=0, kv_head_a=1)
    assert (near.to_dict()["kv_head_b"], near.to_dict()["kv_head_a"]) == (0, 1)


def text_diff(divergence, na: int, nb: int):
    from mhacli.analyses.diff import TextDiff
    from mhacli.analyses.stats import STAT_NAMES

    rng = np.random.default_rng(0)
    n = len(STAT_NAMES)
    return TextDiff(np.asarray(divergence), rng.random((n, na)), rng.random((n, nb)), ["mixed"] * na, ["mixed"] * nb)


def test_each_head_reads_the_kv_head_of_its_group():
    from mhacli.analyses.diff import summarise

    # paired: 1 layer x 4 heads; A has 2 query heads per K/V head, B 4
    report = summarise([text_diff([0.1, 0.2, 0.3, 0.4], 4, 4)], "js", "paired", (1, 4), (1, 4), groups=(2, 4))
    for row in report.heads:
        assert row.to_dict()["kv_head_a"] == row.head_a // 2
        assert row.to_dict()["kv_head_b"] == row.head_b // 4

    # matched: A 1 x 4 (group 2), B 1 x 4 (group 4); B head j is nearest to A head 3 - j
    div = np.ones((4, 4))
    for j in range(4):
        div[3 - j, j] = 0.01 * (j + 1)
    report = summarise([text_diff(div, 4, 4)], "js", "matched", (1, 4), (1, 4), groups=(2, 4))
    assert sorted((r.head_a, r.head_b) for r in report.heads) == [(3 - j, j) for j in range(4)][::-1]
    for row in report.heads:
        d = row.to_dict()
        assert (d["kv_head_a"], d["kv_head_b"]) == (row.head_a // 2, row.head_b // 4)
    assert report.nearest is not None
    for near in report.nearest:
        d = near.to_dict()
        assert near.head_a == 3 - near.head_b
        assert (d["kv_head_a"], d["kv_head_b"]) == (near.head_a // 2, near.head_b // 4)


def test_paired_stream_removes_the_heads_of_b(pair):
    from mhacli.analyses.ablate import removal_edits
    from mhacli.analyses.diff import paired_stream

    a, _ = pair
    ids = np.random.default_rng(8).integers(1, 400, size=15)
    layers = list(paired_stream(a, a, ids, "js", removal_edits([(1, 2)])))
    # the same model: only what follows the removed head differs, nothing before its layer
    assert np.abs(layers[0][1]).max() < ATOL and np.abs(layers[1][1]).max() < ATOL
    assert layers[2][1].max() > 1e-4


def test_a_packed_matched_run_removes_the_heads_of_b_in_every_text(pair):
    from mhacli.analyses.ablate import removal_edits
    from mhacli.analyses.diff import compare_pack, compare_text

    a, b = pair
    texts = [np.random.default_rng(s).integers(1, 400, size=n) for s, n in ((9, 8), (10, 11))]
    edits = removal_edits([(0, 1), (1, 3)])
    packed = compare_pack(a, b, texts, "js", "matched", edits)
    for ids, got in zip(texts, packed):
        alone = compare_text(a, b, ids, "js", "matched", edits)
        np.testing.assert_allclose(got.divergence, alone.divergence, atol=ATOL)
        np.testing.assert_allclose(got.stats_b, alone.stats_b, atol=ATOL)


@pytest.mark.parametrize("metric", ["js", "tv", "cosine"])
def test_a_pack_in_several_row_blocks_gives_each_text_its_comparison_alone(pair, metric, monkeypatch):
    from mhacli.analyses.diff import compare_pack, compare_text
    from mhacli.engine import attention

    a, b = pair
    texts = [np.random.default_rng(s).integers(1, 400, size=n) for s, n in ((11, 7), (12, 12), (13, 9))]
    alone = [compare_text(a, b, ids, metric, "paired") for ids in texts]  # one block each: rows and keys from 0
    monkeypatch.setattr(attention, "BLOCK", 5)  # the pack's 28 rows in blocks of 5: tiles from rows and keys > 0
    monkeypatch.setattr(attention, "MIN_BLOCK", 1)
    assert attention.block_rows(sum(len(t) for t in texts)) == 5
    for got, want in zip(compare_pack(a, b, texts, metric, "paired"), alone):
        np.testing.assert_allclose(got.divergence, want.divergence, atol=ATOL)
        np.testing.assert_allclose(got.stats_a, want.stats_a, atol=ATOL)
        np.testing.assert_allclose(got.stats_b, want.stats_b, atol=ATOL)
