"""The bundled sample model as ground truth.

HF loads it, our numbers match HF's, and its heads score what the READMEs say on the probes they name, measured with our
engine and the statistics of docs/statistics.md, and agree with the scores HF measured when the model was trained
(training_summary.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import ATTN_ATOL, SAMPLE, hf_outputs, parse_json, run_mha

from mhacli.analyses.heads import analyse
from mhacli.analyses.stats import stats_arrays
from mhacli.engine.forward import forward
from mhacli.io.tokenizer import load_tokenizer
from mhacli.io.weights import load_model

PASSAGE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\nFirst Citizen:\n"
    "You are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\nFirst Citizen:\n"
    "First, you know Caius Marcius is chief enemy to the people.\n"
)


@pytest.fixture(scope="module")
def sample():
    return load_model(str(SAMPLE))


HELDOUT = json.loads((Path(__file__).parent / "data" / "heldout_shakespeare.json").read_text(encoding="utf-8"))
SUMMARY = json.loads((SAMPLE / "training_summary.json").read_text())  # measured by HF (torch) when it was trained
# The figures the READMEs state (README.md "The bundled sample model", sample_weights/tiny-shakespeare/README.md),
# rounded to 2 decimals there: our forward on the stated probe must give them to within that rounding.
README_ROUNDING = 0.005
SUMMARY_ATOL = 1e-4  # our forward vs the HF-measured training summary on the same probe (float32 rounding only)


def mean_scores(traces_per_text, score) -> np.ndarray:
    """[n_layer, n_head]: `score(attention [n_head, n_seq, n_seq], ids)` -> [n_head], averaged over the texts."""
    return np.mean([np.stack([score(t.attention, ids) for t in traces]) for ids, traces in traces_per_text], axis=0)


@pytest.fixture(scope="module")
def heldout(sample):
    """Our forward on the 8 held-out passages of 200 tokens (tests/data/heldout_shakespeare.json)."""
    tok = load_tokenizer(SAMPLE)
    runs = []
    for text in HELDOUT["passages"]:
        ids = np.asarray(tok.encode(text))
        assert len(ids) == 200
        runs.append((ids, list(forward(sample, ids))))
    return runs


@pytest.fixture(scope="module")
def repeated_random(sample):
    """Our forward on the induction probe of the training summary.

    16 draws (seed 1234) of 40 random ids in [256, V/2), each repeated twice (80 tokens, no BOS).
    """
    draws = np.random.default_rng(1234).integers(256, sample.config.vocab_size // 2, (16, 40))
    return [(ids, list(forward(sample, ids))) for ids in (np.concatenate([d, d]) for d in draws)]


def induction_offset(attn: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Mean over the second copy (i = 40..79) of A[i, i - 39], the token after the earlier copy of token i."""
    rows = np.arange(40, 80)
    return attn[:, rows, rows - 39].mean(axis=-1)


def previous(attn: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return stats_arrays(attn, ids)["previous_token"]


def sink(attn: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return stats_arrays(attn, ids)["first_token"]


def test_l0h3_is_the_previous_token_head(heldout, repeated_random):
    scores = mean_scores(heldout, previous)
    np.testing.assert_allclose(scores, SUMMARY["per_head"]["previous_token_natural_text"], atol=SUMMARY_ATOL)
    assert abs(scores[0, 3] - 0.97) <= README_ROUNDING, f"L0H3 on held-out text: {scores[0, 3]:.4f}"
    on_random = mean_scores(repeated_random, previous)
    np.testing.assert_allclose(on_random, SUMMARY["history"][-1]["previous_token_random"], atol=SUMMARY_ATOL)
    assert abs(on_random[0, 3] - 0.995) <= README_ROUNDING / 10, f"L0H3 on random tokens: {on_random[0, 3]:.4f}"
    others = np.delete(scores.reshape(-1), 3)
    assert others.max() <= 0.12, f"README: no other head above 0.12: {scores.round(3)}"


def test_l1h2_is_the_induction_head(repeated_random):
    scores = mean_scores(repeated_random, induction_offset)
    np.testing.assert_allclose(scores, SUMMARY["per_head"]["induction_repeated_random_tokens"], atol=SUMMARY_ATOL)
    assert abs(scores[1, 2] - 0.92) <= README_ROUNDING, f"L1H2: {scores[1, 2]:.4f}"
    # the `induction` statistic (`mha stats`), over every row with a target, on the same sequences
    stat = mean_scores(repeated_random, lambda a, ids: stats_arrays(a, ids)["induction"])
    assert abs(stat[1, 2] - 0.93) <= README_ROUNDING, f"L1H2 induction statistic: {stat[1, 2]:.4f}"
    others = np.delete(stat.reshape(-1), 6)
    assert others.max() <= 0.03, f"README: no other head above 0.03: {stat.round(3)}"


def test_l1h2_is_the_sink_and_l1h3_a_partial_one(heldout):
    scores = mean_scores(heldout, sink)
    np.testing.assert_allclose(scores, SUMMARY["per_head"]["attention_to_position0_natural_text"], atol=SUMMARY_ATOL)
    assert abs(scores[1, 2] - 0.67) <= README_ROUNDING, f"L1H2 to position 0: {scores[1, 2]:.4f}"
    assert abs(scores[1, 3] - 0.20) <= README_ROUNDING, f"L1H3 to position 0: {scores[1, 3]:.4f}"


def test_hf_loads_it_and_verify_passes():
    result = run_mha("verify", PASSAGE, "-f", "json")
    assert result.returncode == 0, result.stderr
    doc = parse_json(result.stdout)
    assert doc["passed"] and 0 < doc["max_abs_err"]["attention"] <= ATTN_ATOL


def test_our_attention_matches_hf_on_natural_text(sample):
    """Measured: 4.8e-7 (layer 0) and 1.3e-6 (layer 1, whose heads are very sharp) on this passage."""
    ids = load_tokenizer(SAMPLE).encode(PASSAGE)
    hf_attn, _ = hf_outputs(SAMPLE, ids)
    for t in forward(sample, ids):
        err = np.abs(t.attention - hf_attn[t.layer]).max()
        assert err <= ATTN_ATOL, f"layer {t.layer}: {err:.2e}"


def test_kinds_on_a_repeated_sentence(sample):
    """What a new user sees: `mha stats` labels a previous-token and an induction head."""
    ids = np.asarray(load_tokenizer(SAMPLE).encode("The cat sat on the mat. The cat sat on the mat."))
    kinds = {(v.layer, v.head): v.stats.kind for v in analyse(sample, ids, keep_maps=False)}
    assert kinds[(0, 3)] == "previous-token"
    assert kinds[(1, 2)] == "induction"


def test_cli_stats_json_labels_the_heads():
    doc = parse_json(run_mha("stats", "ROMEO: I love thee. JULIET: I love thee.", "-f", "json").stdout)
    kinds = {(h["layer"], h["head"]): h["kind"] for h in doc["heads"]}
    assert kinds[(0, 3)] == "previous-token" and kinds[(1, 2)] == "induction"
    assert doc["model"]["source"] == "sample:tiny-shakespeare"


def test_size_limit():
    assert (SAMPLE / "model.safetensors").stat().st_size <= 10 * 1024 * 1024


def test_token_pattern_statistics_equal_transformer_lens_where_no_target_is_adjacent(sample):
    """The independent reference of CLI.md.

    TransformerLens' head detector scores (mul, no BOS, current token kept) on our maps of the repeated random tokens,
    where no target falls at i-1 or i, equal our statistics times (qualifying rows)/n_seq, and previous_token times
    (n_seq-1)/n_seq.
    """
    import torch
    from transformer_lens import head_detector as hd

    from mhacli.analyses.stats import layer_arrays

    rng = np.random.default_rng(7)
    draws = [rng.choice(np.arange(256, sample.config.vocab_size // 2), 40, replace=False) for _ in range(6)]
    checked = 0
    for ids in (np.concatenate([d, d]) for d in draws):  # distinct tokens in each copy: no target at i-1 or i
        traces = list(forward(sample, ids))
        n = len(ids)
        tokens = torch.as_tensor(ids)[None]
        patterns = {
            "previous_token": hd.get_previous_token_head_detection_pattern(tokens),
            "duplicate_token": hd.get_duplicate_token_head_detection_pattern(tokens),
            "induction": hd.get_induction_head_detection_pattern(tokens),
        }
        for t in traces:
            ours = layer_arrays(t.attention, ids)
            scale = {"previous_token": (n - 1) / n} | {s: ours.support[s] / n for s in ("duplicate_token", "induction")}
            for h in range(t.attention.shape[0]):
                attn = torch.as_tensor(t.attention[h].astype(np.float64))
                for name, pattern in patterns.items():
                    theirs = hd.compute_head_attention_similarity_score(
                        attn, pattern, exclude_bos=False, exclude_current_token=False, error_measure="mul"
                    )
                    assert abs(theirs - ours.values[name][h] * scale[name]) <= 5e-8, (t.layer, h, name)
                    checked += 1
    assert checked == 6 * 2 * 4 * 3


def test_the_previous_token_head_is_not_called_induction_in_periodic_text():
    """The issue's two cases, as a new user types them."""
    doc = parse_json(run_mha("stats", "O, O, O, O, O!", "-f", "json").stdout)
    heads = {(h["layer"], h["head"]): h for h in doc["heads"]}
    assert heads[(0, 3)]["kind"] == "previous-token", heads[(0, 3)]
    assert heads[(0, 3)]["stats"]["induction"] < 0.05 and heads[(0, 3)]["support"]["induction"] >= 4
    assert heads[(1, 2)]["kind"] == "induction"  # the real induction head: ", " at 5 looks at " O" after ", " at 1
    doc = parse_json(run_mha("stats", "The cat sat on the mat.", "-f", "json").stdout)
    assert all(h["support"]["induction"] < 4 for h in doc["heads"])  # one qualifying row
    assert all(h["kind"] not in ("induction", "duplicate-token") for h in doc["heads"])
    assert {(h["layer"], h["head"]): h["kind"] for h in doc["heads"]}[(1, 2)] == "sink"
    plain = run_mha("stats", "The cat sat on the mat.")
    assert plain.returncode == 0 and "too short or too plain" in plain.stderr.decode()
