"""mhacli.analyses.heads in this process: `analyse`, the selection's checks and the memory model's structure.

`analyse` runs the bundled model and is checked against HF's attention and the loop definitions of
docs/statistics.md.

The memory model's constants are fitted to measured peak RSS by a benchmark, not by a test; what is checked here is
what the docstrings define: the statistics' own bytes (counted on a real StatsAccumulator), the maps a request
keeps, forwards and weights adding up, and the MLP width GPT-2 uses when a config names none (4 x n_embd).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import ATTN_ATOL, SAMPLE, hf_outputs

from mhacli.analyses import heads as heads_module
from mhacli.analyses.heads import (
    analyse,
    check_selection,
    forward_bytes,
    full_attention_bytes,
    memory_needed,
    stats_bytes,
)
from mhacli.analyses.partial import MapRequest, PartialMap, ranked
from mhacli.analyses.stats import STAT_NAMES, StatsAccumulator
from mhacli.errors import UsageError

IDS = [2047, 40, 41, 42, 43, 40, 41, 42, 43, 40, 7, 41]


@pytest.fixture(scope="module")
def model():
    from mhacli.io.weights import load_model

    return load_model(str(SAMPLE))


def loop_stats(A: np.ndarray, t: list[int]) -> dict[str, float]:
    """docs/statistics.md as loops over every row of one head."""
    n = len(t)
    out = {
        "entropy": sum(-sum(A[i, j] * math.log(A[i, j]) for j in range(i + 1) if A[i, j] > 0) for i in range(n)) / n,
        "max_weight": sum(max(A[i, : i + 1]) for i in range(n)) / n,
        "mean_distance": sum(sum(A[i, j] * (i - j) for j in range(i + 1)) for i in range(n)) / n,
        "first_token": sum(A[i, 0] for i in range(1, n)) / (n - 1),
        "self": sum(A[i, i] for i in range(n)) / n,
        "previous_token": sum(A[i, i - 1] for i in range(1, n)) / (n - 1),
    }
    for name, targets in (
        ("duplicate_token", lambda i: [j for j in range(i - 1) if t[j] == t[i]]),
        ("induction", lambda i: [j for j in range(1, i - 1) if t[j - 1] == t[i]]),
    ):
        sums = [sum(A[i, j] for j in targets(i)) for i in range(n) if targets(i)]
        out[name] = sum(sums) / len(sums)
    return out


def assert_stats_of_hf(view, attentions) -> None:
    want = loop_stats(attentions[view.layer][view.head].astype(np.float64), IDS)
    for name in STAT_NAMES:
        tol = 2e-3 if name in ("entropy", "mean_distance") else 1e-4  # HF's cells within 1e-5 of ours
        assert view.stats.values[name] == pytest.approx(want[name], abs=tol), (view.layer, view.head, name)


@pytest.mark.parametrize("keep_maps", [True, False])
@pytest.mark.parametrize("layers,heads", [(None, None), ([1], [3, 0, 3]), ([0], [2])])
def test_every_selected_head_has_the_statistics_of_hfs_attention(model, keep_maps, layers, heads):
    attentions, _ = hf_outputs(SAMPLE, IDS)
    views = list(analyse(model, np.asarray(IDS), layers=layers, heads=heads, keep_maps=keep_maps))
    want_layers = sorted(set(layers)) if layers else [0, 1]
    want_heads = sorted(set(heads)) if heads else [0, 1, 2, 3]
    assert [(v.layer, v.head) for v in views] == [(la, h) for la in want_layers for h in want_heads]
    for v in views:
        assert (v.stats.layer, v.stats.head, v.kv_head) == (v.layer, v.head, v.head)  # GPT-2: one K/V head each
        assert v.stats.support == {"duplicate_token": 6, "induction": 6}  # rows 5-9 and 11
        assert_stats_of_hf(v, attentions)
        if keep_maps:
            np.testing.assert_allclose(v.attention, attentions[v.layer][v.head], atol=ATTN_ATOL, rtol=0)
        else:
            assert v.attention is None


def test_a_window_request_keeps_those_cells_of_hfs_attention(model):
    attentions, _ = hf_outputs(SAMPLE, IDS)
    request = MapRequest(rows=(2, 5, 11), keys=(0, 1, 5))
    views = list(analyse(model, np.asarray(IDS), layers=[1], heads=[1, 2], request=request))
    assert [(v.layer, v.head) for v in views] == [(1, 1), (1, 2)]
    for v in views:
        assert isinstance(v.attention, PartialMap) and v.attention.shape == (12, 12)
        for i in request.rows:
            for j in request.keys:
                assert v.attention[i, j] == pytest.approx(attentions[1][v.head][i, j], abs=ATTN_ATOL)
        assert_stats_of_hf(v, attentions)


def test_a_top_request_keeps_every_rows_strongest_keys(model):
    views = list(analyse(model, np.asarray(IDS), layers=[0], heads=[3], request=MapRequest(top=3)))
    (whole,) = list(analyse(model, np.asarray(IDS), layers=[0], heads=[3]))
    (v,) = views
    keys, weights = v.attention.top_keys
    for i in range(len(IDS)):
        n = min(3, i + 1)
        want = ranked(whole.attention[i, : i + 1], 3)
        assert keys[i, :n].tolist() == want.tolist()
        np.testing.assert_array_equal(weights[i, :n], whole.attention[i, want])
    assert v.stats.values == whole.stats.values


def test_the_forward_stops_after_the_last_selected_layer(model, monkeypatch):
    asked = []
    real = heads_module.forward

    def forward(params, ids, **kwargs):
        asked.append(kwargs["n_layers"])
        return real(params, ids, **kwargs)

    monkeypatch.setattr(heads_module, "forward", forward)
    list(analyse(model, np.asarray(IDS), layers=[0], heads=[1]))
    list(analyse(model, np.asarray(IDS), layers=[1, 0], keep_maps=False))
    assert asked == [1, 2]


@pytest.mark.parametrize("rows,kind", [(3, False), (4, True)])
@pytest.mark.parametrize("keep_maps", [True, False])
def test_the_induction_head_needs_4_rows_of_support(model, rows, kind, keep_maps):
    """MIN_SUPPORT through `analyse`, on the bundled model's L1H2 (induction about 0.85 on short repeats).

    A sequence of `rows` tokens and its repeat give `rows` rows with an induction target; from 3 rows it cannot
    be an induction head.
    """
    s = [40, 41, 42, 43][:rows]
    ids = np.array([2047, *s, *s])
    (v,) = analyse(model, ids, layers=[1], heads=[2], keep_maps=keep_maps)
    assert v.stats.support["induction"] == rows and v.stats.values["induction"] >= 0.5
    assert (v.stats.kind == "induction") is kind


@pytest.mark.parametrize(
    "layers,heads,message",
    [
        ([2], None, "layer 2 is out of range: this model has layers 0..1"),
        ([0, -1], None, "layer -1 is out of range: this model has layers 0..1"),
        (None, [4], "head 4 is out of range: this model has heads 0..3"),
        ([1], [0, -1], "head -1 is out of range: this model has heads 0..3"),
    ],
)
def test_a_selection_outside_the_model_is_a_usage_error(layers, heads, message):
    with pytest.raises(UsageError) as info:
        check_selection(2, 4, layers, heads)
    assert str(info.value) == message
    check_selection(2, 4, [0, 1], [0, 1, 2, 3])
    check_selection(2, 4, None, None)
    check_selection(2, 4, [], [])


def test_a_selection_is_checked_before_the_model_runs(model):
    with pytest.raises(UsageError, match="layer 2 is out of range"):
        next(analyse(model, np.asarray(IDS), layers=[2]))
    with pytest.raises(UsageError, match="head 4 is out of range"):
        next(analyse(model, np.asarray(IDS), heads=[4]))


@pytest.mark.parametrize("keep_maps", [True, False])
def test_edits_reach_the_forward(model, keep_maps):
    """Layer 0's heads silenced before W_O: layer 1's attention is the engine's forward with that edit."""
    from mhacli.engine.forward import forward

    edits = {0: lambda z: np.zeros_like(z)}
    (want,) = [t.attention for t in forward(model, np.asarray(IDS), edits=edits) if t.layer == 1]
    (plain,) = [t.attention for t in forward(model, np.asarray(IDS)) if t.layer == 1]
    assert np.abs(want - plain).max() > 1e-3  # the edit changes layer 1
    views = list(analyse(model, np.asarray(IDS), layers=[1], keep_maps=keep_maps, edits=edits))
    for v in views:
        if keep_maps:
            np.testing.assert_array_equal(v.attention, want[v.head])
        assert v.stats.values["self"] == pytest.approx(float(np.mean(np.diag(want[v.head]))), abs=1e-6)


@pytest.mark.parametrize("n_head,n_seq", [(1, 1), (4, 37), (12, 500)])
def test_stats_bytes_count_a_stats_accumulators_arrays(n_head, n_seq):
    """Its float64 per-row sums, and the token index of its matches (ids, base and keys, int64)."""
    acc = StatsAccumulator(n_head, np.arange(n_seq, dtype=np.int64) % 7)
    held = sum(a.nbytes for a in acc.per_row.values()) + acc.ids.nbytes
    held += acc.index.matches.base.nbytes + acc.index.matches.keys.nbytes
    assert stats_bytes(n_head, n_seq) == held


def gpt2_like(n_inner=None, **extra):
    return SimpleNamespace(n_embd=64, n_head=4, n_inner=n_inner, **extra)


def test_a_config_without_an_mlp_width_uses_four_times_n_embd():
    for n_seq in (1, 100, 3000):
        assert forward_bytes(gpt2_like(), n_seq) == forward_bytes(gpt2_like(256), n_seq)
        llama = SimpleNamespace(n_embd=64, n_head=4, intermediate_size=200)
        assert forward_bytes(llama, n_seq) == forward_bytes(gpt2_like(200), n_seq)
        assert forward_bytes(SimpleNamespace(n_embd=64, n_head=4), n_seq) == forward_bytes(gpt2_like(256), n_seq)
        assert forward_bytes(gpt2_like(300), n_seq) > forward_bytes(gpt2_like(256), n_seq)


def test_one_forward_holds_at_least_its_activations_block_and_statistics():
    config = gpt2_like(256)
    sizes = [forward_bytes(config, n) for n in (1, 10, 100, 1000, 4000)]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    for n in (1, 10, 1000):
        # the residual stream and one [n_seq, n_inner] MLP tensor, float32, and the statistics' own arrays
        assert forward_bytes(config, n) > n * (64 + 256) * 4 + stats_bytes(4, n)
    more_heads = SimpleNamespace(n_embd=64, n_head=8, n_inner=256)
    assert forward_bytes(more_heads, 100) > forward_bytes(config, 100)


def test_a_requests_memory_adds_up():
    config = gpt2_like(256)
    one = forward_bytes(config, 300)
    assert memory_needed(config, 300) == one
    assert memory_needed(config, 300, weight_bytes=12345) == one + 12345
    assert memory_needed(config, 300, forwards=2, weight_bytes=7) == 2 * one + 7
    square = 300 * 300 * 4  # one float32 map
    # kept maps: the selected heads' copies, plus the whole map of the layer being computed (n_head maps)
    assert memory_needed(config, 300, kept_layers=2, kept_heads=3, keep_maps=True) == one + (2 * 3 + 4) * square
    assert memory_needed(config, 300, keep_maps=True) == one + 4 * square
    # parts of maps: that many float32 cells per selected head
    assert memory_needed(config, 300, kept_layers=2, kept_heads=3, kept_cells=50) == one + 2 * 3 * 50 * 4
    assert memory_needed(config, 300, kept_layers=2, kept_heads=3) == one  # no cells, no maps: nothing kept
    assert memory_needed(config, 300, kept_heads=3, keep_maps=True) == one + 4 * square  # no layers kept
    assert memory_needed(config, 300, kept_layers=2, keep_maps=True) == one + 4 * square  # no heads kept


def test_the_unfused_attention_grows_with_heads_and_the_square_of_the_text():
    base = full_attention_bytes(1, 10)
    assert full_attention_bytes(3, 10) == 3 * base and full_attention_bytes(1, 20) == 4 * base
    one_map = 10 * 10 * 4  # float32 [n_seq, n_seq]
    assert base >= 5 * one_map and base % one_map == 0  # scores, scaled, masked, exponentiated, probabilities
