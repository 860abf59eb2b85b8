"""`mha verify` sees one bad head anywhere, and one bad layer's hidden states.

The forward is broken for a single head that is not head 0, in a layer that is neither the first nor the last (its
attention probabilities nudged by far more than atol, the others untouched), or for the last layer's output only:
verify must fail, report that head by name as the worst and pass every other head and layer (issue 37 item 4).
A check that took a mean over heads, or head 0 only, or the first layer only, passes the broken model and fails
here.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import build_model, parse_json

N_LAYER, N_HEAD = 3, 4
BAD_LAYER, BAD_HEAD = 1, 2
NUDGE = 1e-3  # 100x verify's default atol


@pytest.fixture(scope="module")
def model(tmp_path_factory, tokenizer_dir):
    return build_model(tmp_path_factory.mktemp("verify3"), tokenizer_dir, n_layer=N_LAYER, n_head=N_HEAD)


def patch_kernel(monkeypatch, change):
    """Replace the attention kernel in every mhacli module that calls it by one that counts layers.

    Calls come in forward order, N_LAYER per forward; `change(layer, z, probs)` may alter that layer's results.
    """
    import mhacli.engine.arch.common  # noqa: F401 - the modules that call the kernel, loaded so they can be patched
    import mhacli.engine.arch.gpt2  # noqa: F401
    import mhacli.engine.attention

    real = mhacli.engine.attention.causal_attention
    calls = [0]

    def patched(*args, **kwargs):
        z, probs = real(*args, **kwargs)
        layer = calls[0] % N_LAYER
        calls[0] += 1
        return change(layer, z, probs)

    for name, module in list(sys.modules.items()):
        if name.startswith("mhacli") and getattr(module, "causal_attention", None) is real:
            monkeypatch.setattr(module, "causal_attention", patched)


TEXT = "The quick brown fox jumps over the lazy dog. The quick brown fox"


def test_verify_fails_on_one_head_and_names_it(mha, model, monkeypatch):
    def one_head(layer, z, probs):
        if layer == BAD_LAYER and probs is not None:
            probs = probs.copy()
            probs[BAD_HEAD, 5, 2] += np.float32(NUDGE)
        return z, probs

    patch_kernel(monkeypatch, one_head)
    result = mha("verify", TEXT, "-m", str(model), "-f", "json")
    assert result.returncode == 1, result.stderr
    doc = parse_json(result.stdout)
    assert doc["passed"] is False
    assert doc["worst_head"]["layer"] == BAD_LAYER and doc["worst_head"]["head"] == BAD_HEAD
    assert doc["worst_head"]["attention_max_abs_err"] == pytest.approx(NUDGE, rel=0.01)
    for layer in doc["layers"]:
        errors = layer["head_attention_max_abs_err"]
        bad = [h for h, e in enumerate(errors) if e > doc["atol"]]
        assert bad == ([BAD_HEAD] if layer["layer"] == BAD_LAYER else []), (layer["layer"], errors)
        assert layer["passed"] is (layer["layer"] != BAD_LAYER)
        assert layer["hidden_max_abs_err"] <= layer["hidden_scale"] * doc["hidden_atol"]


def test_verify_fails_on_the_last_layers_hidden_states_alone(mha, model, monkeypatch):
    """The last layer's head outputs scaled: its hidden states and the logits move, no attention map does."""

    def last_output(layer, z, probs):
        return (z * np.float32(1.05) if layer == N_LAYER - 1 else z), probs

    patch_kernel(monkeypatch, last_output)
    result = mha("verify", TEXT, "-m", str(model), "-f", "json")
    assert result.returncode == 1, result.stderr
    doc = parse_json(result.stdout)
    assert doc["passed"] is False and doc["max_abs_err"]["attention"] <= doc["atol"]
    assert [layer["passed"] for layer in doc["layers"]] == [True] * (N_LAYER - 1) + [False]


def test_an_intact_model_passes_every_head(mha, model):
    doc = parse_json(mha("verify", TEXT, "-m", str(model), "-f", "json").stdout)
    assert doc["passed"] is True
    assert all(e <= doc["atol"] for layer in doc["layers"] for e in layer["head_attention_max_abs_err"])
    assert len(doc["layers"]) == N_LAYER and all(len(x["head_attention_max_abs_err"]) == N_HEAD for x in doc["layers"])
