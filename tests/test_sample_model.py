"""The bundled sample model as ground truth: HF loads it, our numbers match HF's, and its heads do what its
README says, measured with our engine and the statistic definitions of CLI.md."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import ATTN_ATOL, SAMPLE, hf_outputs, parse_json, run_mha
from mhacli.heads import analyse
from mhacli.model import forward
from mhacli.stats import stats_arrays
from mhacli.tokenizer import load_tokenizer
from mhacli.weights import load_model

PASSAGE = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\nFirst Citizen:\n"
    "You are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\nFirst Citizen:\n"
    "First, you know Caius Marcius is chief enemy to the people.\n"
)


@pytest.fixture(scope="module")
def sample():
    return load_model(str(SAMPLE))


def induction_scores(ckpt, seed: int) -> np.ndarray:
    """[n_layer, n_head]: 40 random ids from 256..V/2 repeated twice; mean over the second copy of the attention
    from each token to the token after its first occurrence (A[i, i - 39])."""
    rng = np.random.default_rng(seed)
    half = rng.integers(256, ckpt.config.vocab_size // 2, size=40)
    ids = np.concatenate([half, half])
    rows = np.arange(40, 80)
    return np.stack([t.attention[:, rows, rows - 39].mean(axis=-1) for t in forward(ckpt, ids)])


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


def test_an_induction_head(sample):
    scores = np.mean([induction_scores(sample, seed) for seed in range(8)], axis=0)
    assert scores.max() >= 0.3, f"best induction score {scores.max():.3f}"
    # the README names L1H2; the induction score of CLI.md (normalised over qualifying rows) agrees
    assert scores[1, 2] == scores.max()


def test_a_previous_token_head_on_natural_text(sample):
    ids = np.asarray(load_tokenizer(SAMPLE).encode(PASSAGE))
    best = max(np.nanmax(stats_arrays(t.attention, ids)["previous_token"]) for t in forward(sample, ids))
    assert best >= 0.5, f"best previous-token score {best:.3f}"


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
