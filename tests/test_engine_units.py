"""The engine's small pieces against references written here (issue 37's mutation survivors of the engine).

The NumPy building blocks on batched inputs (a batch of variants, as ablation runs them), the activations at their
thresholds, the forward's finiteness check and the config check, and where a head's projections live.
"""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest

from mhacli.engine import blocks
from mhacli.engine.arch import check_config
from mhacli.engine.arch.common import Projection, masked_softmax, rms_norm
from mhacli.engine.forward import check_finite
from mhacli.errors import ConfigError, NumericsError

RNG = np.random.default_rng(0)


def softmax_reference(scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Row softmax over the allowed keys, in float64, written out."""
    out = np.zeros(scores.shape)
    for idx in np.ndindex(*scores.shape[:-1]):
        row, ok = scores[idx].astype(np.float64), allowed[idx[-1]]
        e = np.exp(row[ok] - row[ok].max())
        out[idx][ok] = e / e.sum()
    return out


def test_causal_softmax_of_every_head_is_a_softmax_over_the_keys_so_far():
    scores = RNG.standard_normal((3, 6, 6)).astype(np.float32) * 4
    scores[1] -= 150.0  # far below the other heads: each row is shifted by its own maximum, nothing underflows
    scores[2, 3] += 60.0  # a row of large logits: exp of the shifted scores cannot overflow
    allowed = np.tril(np.ones((6, 6), dtype=bool))
    got = blocks.causal_softmax(scores)
    assert np.abs(got - softmax_reference(scores, allowed)).max() < 1e-6
    assert np.all(got[:, ~allowed] == 0.0)


@pytest.mark.parametrize("window", [None, 2, 6, 9])
def test_masked_softmax_keeps_the_window_of_keys(window):
    """A key j is seen by query i when j <= i and, with a window, i - j < window (HF's sliding window)."""
    scores = RNG.standard_normal((2, 4, 6, 6)).astype(np.float32) * 4
    i, j = np.indices((6, 6))
    allowed = (j <= i) & ((i - j < window) if window is not None else True)
    got = masked_softmax(scores, window)
    assert np.abs(got - softmax_reference(scores, allowed)).max() < 1e-6


def test_matmul_rows_of_a_batch_is_each_rows_product():
    w = RNG.standard_normal((5, 7)).astype(np.float32)
    for shape in [(4, 5), (3, 4, 5), (2, 3, 4, 5)]:
        x = RNG.standard_normal(shape).astype(np.float32)
        got = blocks.matmul_rows(x, w)
        assert got.shape == (*shape[:-1], 7)
        assert np.abs(got - np.einsum("...i,io->...o", x.astype(np.float64), w)).max() < 1e-5


def test_norms_of_a_batch_normalise_each_row():
    x = RNG.standard_normal((3, 4, 8)).astype(np.float32) * 3 + 1
    w, b = RNG.standard_normal(8).astype(np.float32), RNG.standard_normal(8).astype(np.float32)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
    assert np.abs(blocks.layer_norm(x, w, b, 1e-5) - ((x64 - mean) / np.sqrt(var + 1e-5) * w + b)).max() < 1e-5
    want = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6) * w
    assert np.abs(rms_norm(x, w, 1e-6) - want).max() < 1e-5


def test_heads_split_and_merge_on_a_batch():
    x = np.arange(2 * 5 * 12, dtype=np.float32).reshape(2, 5, 12)  # [B, n_seq, n_head * d_head], 3 heads of 4
    heads = blocks.split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)
    assert np.array_equal(heads[1, 2, 4], x[1, 4, 8:12])
    assert np.array_equal(blocks.merge_heads(heads), x)


def test_softplus_and_sigmoid_equal_their_definitions_at_every_range():
    x = np.array([-100, -30, -1, 0, 1, 19.5, 20, 20.5, 30, 100], dtype=np.float32)
    x64 = x.astype(np.float64)
    assert np.allclose(blocks.softplus(x), np.logaddexp(0, x64), rtol=1e-6, atol=1e-40)  # -100: subnormal
    assert np.allclose(blocks.sigmoid(x), 1 / (1 + np.exp(-x64)), rtol=1e-6, atol=1e-30)


def test_check_finite_names_the_heads_that_went_bad():
    probs = np.full((4, 5, 5), 0.2, dtype=np.float32)
    x = np.zeros((5, 8), dtype=np.float32)
    check_finite(probs, x, 3)  # all finite: no error
    probs[2, 1, 0] = np.nan
    with pytest.raises(NumericsError, match=r"^the forward pass produced NaN or Inf in layer 3, heads \[2\] "):
        check_finite(probs, x, 3)
    batch = np.full((2, 4, 5, 5), 0.2, dtype=np.float32)  # [B, n_head, ...]: a batch of variants
    batch[1, 1, 4, 4] = np.inf
    batch[0, 3, 0, 0] = np.nan
    with pytest.raises(NumericsError, match=r"in layer 0, heads \[1, 3\] "):
        check_finite(batch, np.zeros((2, 5, 8), dtype=np.float32), 0)
    x[4, 7] = np.inf
    with pytest.raises(NumericsError, match=r"in layer 1, the residual stream \(extreme weights\?\)$"):
        check_finite(np.full((4, 5, 5), 0.2, dtype=np.float32), x, 1)


def config(n_head=4, n_kv_head=2, d_head=8, scales=(0.25, 0.25)):
    return types.SimpleNamespace(
        model_type="gpt2", n_head=n_head, n_kv_head=n_kv_head, d_head=d_head, n_layer=len(scales),
        attn_scale=lambda layer: scales[layer],
    )  # fmt: skip


def test_check_config_refuses_an_impossible_head_layout():
    check_config(config())
    check_config(config(d_head=1))  # one value per head is small, not impossible
    with pytest.raises(ConfigError, match="^config.json: 6 query heads cannot share 4 K/V heads of 8 values$"):
        check_config(config(n_head=6, n_kv_head=4))
    with pytest.raises(ConfigError, match="^config.json: 4 query heads cannot share 2 K/V heads of 0 values$"):
        check_config(config(d_head=0))


@pytest.mark.parametrize("bad", [0.0, -0.5, float("inf"), float("nan")])
def test_check_config_refuses_a_scale_that_is_not_a_positive_number(bad):
    with pytest.raises(
        ConfigError, match=r"^config.json: the attention scale of layer 1 is .*, not a positive number$"
    ):
        check_config(config(scales=(0.25, bad)))


def test_a_projection_says_where_its_features_live():
    conv = Projection("attn.c_attn.weight", "attn.c_attn.bias", 48, 56, True)
    linear = Projection("self_attn.k_proj.weight", None, 8, 16, False)
    assert conv.where() == "c_attn.weight[:, 48:56]" and conv.bias_where() == "c_attn.bias[48:56]"
    assert linear.where() == "k_proj.weight[8:16, :]" and linear.bias_where() is None
    assert conv.to_dict() == {"weight": "attn.c_attn.weight", "columns": [48, 56], "bias": "attn.c_attn.bias"}
    assert linear.to_dict() == {"weight": "self_attn.k_proj.weight", "rows": [8, 16], "bias": None}
    deep = Projection("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias", 0, 4, False)
    assert deep.where() == "q_proj.weight[0:4, :]" and deep.bias_where() == "q_proj.bias[0:4]"


def test_the_forward_names_the_layer_and_head_that_overflowed(tmp_path):
    """Head 1 of layer 1 with huge query and key weights: its scores overflow; the error names that layer and head."""
    from helpers import build_model
    from safetensors.numpy import load_file, save_file

    from mhacli.engine.forward import forward
    from mhacli.io.weights import load_model

    directory = build_model(tmp_path)
    tensors = load_file(directory / "model.safetensors")
    key = next(k for k in tensors if k.endswith("h.1.attn.c_attn.weight"))
    n_embd = tensors[key].shape[0]
    d_head = n_embd // 4  # the tiny model's 4 heads
    for start in (d_head, n_embd + d_head):  # head 1's query columns, then its key columns
        tensors[key][:, start : start + d_head] = 1e30
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    ckpt = load_model(str(directory))
    assert ckpt.config.n_head == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the overflow is reported once, as the error; no RuntimeWarning before it
        with pytest.raises(NumericsError, match=r"in layer 1, heads \[1\] "):
            list(forward(ckpt, np.arange(6)))


def test_gpt2_attention_parts_keep_every_intermediate(tmp_path):
    """The family's every-intermediate path (raw scores kept): probabilities equal HF eager's, scores are q kᵀ."""
    from helpers import ATTN_ATOL, build_model, hf_outputs

    from mhacli.engine.forward import family
    from mhacli.io.weights import load_model

    directory = build_model(tmp_path)
    ids = np.arange(3, 15)
    ckpt = load_model(str(directory))
    c, arch = ckpt.config, family(ckpt.config)
    hf_attn, _ = hf_outputs(directory, ids)
    x = arch.embed(ckpt, ids)
    for layer in range(c.n_layer):
        p = ckpt.layer(layer)
        parts = arch.attention_parts(arch.attention_input(x, p, c), p, c, layer)
        assert parts.scores.shape == parts.probs.shape == (c.n_head, len(ids), len(ids))
        q, k, v = (t.astype(np.float64) for t in (parts.q, parts.k, parts.v))
        assert np.abs(parts.scores - q @ k.transpose(0, 2, 1)).max() < 1e-4
        assert np.abs(parts.probs - hf_attn[layer]).max() < ATTN_ATOL
        assert np.abs(parts.z - parts.probs.astype(np.float64) @ v).max() < 1e-5
        x, _ = arch.block(x, p, c, layer)


def test_gpt2_and_bigcode_projections_name_hf_tensors():
    """Where explain and circuits read a head, in HF's tensors, each with its bias.

    GPT-2's Conv1D c_attn [n_embd, 3 n_embd] (q, k, v columns) and c_proj [n_embd, n_embd]; GPT-BigCode's
    nn.Linear c_proj [n_embd, n_embd] (rows)."""
    from mhacli.engine.arch import gpt2, gpt_bigcode

    c = types.SimpleNamespace(n_embd=32, d_head=8, n_head=4)
    proj = gpt2.head_projections(c, 2)
    assert {k: (p.start, p.end, p.bias) for k, p in proj.items()} == {
        "q": (16, 24, "attn.c_attn.bias"), "k": (48, 56, "attn.c_attn.bias"), "v": (80, 88, "attn.c_attn.bias")
    }  # fmt: skip
    assert gpt2.out_projection(c).to_dict() == {
        "weight": "attn.c_proj.weight",
        "columns": [0, 32],
        "bias": "attn.c_proj.bias",
    }
    assert gpt_bigcode.out_projection(c).to_dict() == {
        "weight": "attn.c_proj.weight",
        "rows": [0, 32],
        "bias": "attn.c_proj.bias",
    }
    assert "c_attn.weight [32, 96]" in gpt2.projections_note(c, 2, 2)
