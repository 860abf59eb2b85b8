"""Beyond GPT-2: Llama, Mistral, GPTBigCode, OLMo 2 and OLMo 3 against HF eager float32.

Llama with GQA, MQA, RoPE scalings, biases and an explicit head_dim; Mistral with a sliding window; GPTBigCode with
MQA and MHA; OLMo 2 and OLMo 3 with post-norms, QK-norm and sliding-window layers.

Every checkpoint is a tiny random model built here with transformers and saved with save_pretrained; the
references are HF's own outputs (AutoModel, eager attention, float32) and, for `explain`, its intermediates
captured with forward hooks inside its attention modules. Nothing expected comes from the code under test.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    ATTN_ATOL,
    HIDDEN_ATOL,
    LLAMA,
    MODELS,
    ORIGINAL,
    ROPE_SCALINGS,
    SLIDING,
    TRICKY_TEXTS,
    WINDOW,
    assert_close,
    blocks_on_hf_inputs,
    bos_tokenizer,
    break_attention_kernel,
    build,
    compare_with_hf,
    hf_outputs,
    parse_json,
    run_mha,
)
from safetensors.numpy import load_file, save_file

ATTN_AIM = 1e-6  # attention probabilities vs HF on HF's own layer input (ATTN_ATOL, helpers, end to end)
VEC_ATOL = 1e-4  # explain's vectors vs HF, per unit of max(1, max |HF value|)
TEXT = (
    "The quick brown fox jumps over the lazy dog. It is the east, and Juliet is the sun. "
    "ROMEO: But, soft! what light"
)  # 41 tokens with the BOS tokenizer: longer than every sliding window and every original context below
IDS = np.random.default_rng(7).integers(1, 400, size=48)


@pytest.fixture(scope="module")
def bos_tokenizer_dir(tmp_path_factory) -> Path:
    return bos_tokenizer(tmp_path_factory.mktemp("bos_tokenizer"))


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir, bos_tokenizer_dir) -> dict[str, Path]:
    built = {}
    for n, (name, s) in enumerate(MODELS.items()):
        tok = tokenizer_dir if s["kind"] == "gpt_bigcode" else bos_tokenizer_dir
        built[name] = build(tmp_path_factory.mktemp(name), s["kind"], s["fields"], tok, seed=n)
    return built


def ours(directory: Path):
    from mhacli.io.weights import load_model

    return load_model(str(directory))


def compare(directory: Path, ids=IDS) -> list[tuple[float, float]]:
    """helpers.compare_with_hf with this file's ids: hidden states within HIDDEN_ATOL x max(1, max |hidden|)."""
    return compare_with_hf(directory, ids)


# --- config: HF's defaults and rope standardisation ---------------------------------------------------------------


def hf_window(config, layer: int):
    kind = config.model_type
    if kind == "mistral":
        return config.sliding_window
    if kind == "olmo3":
        return config.sliding_window if config.layer_types[layer] == "sliding_attention" else None
    return None


def assert_config_like_hf(ours_config, hf_config) -> None:
    """Our parsed config against the HF config object built from the same config.json."""
    c, h = ours_config, hf_config
    assert (c.n_layer, c.n_head, c.n_kv_head) == (
        h.num_hidden_layers,
        h.num_attention_heads,
        getattr(h, "num_key_value_heads", None) or (1 if h.multi_query else h.n_head),
    )
    assert (c.n_embd, c.n_positions, c.vocab_size) == (h.hidden_size, h.max_position_embeddings, h.vocab_size)
    if c.model_type == "gpt_bigcode":
        assert c.d_head == h.hidden_size // h.num_attention_heads and c.layer_norm_epsilon == h.layer_norm_epsilon
        assert c.activation_function == h.activation_function and c.scale_attn_weights == h.scale_attn_weights
        return
    assert c.d_head == (getattr(h, "head_dim", None) or h.hidden_size // h.num_attention_heads)
    assert (c.rms_norm_eps, c.hidden_act, c.intermediate_size) == (h.rms_norm_eps, h.hidden_act, h.intermediate_size)
    assert [c.sliding_window(layer) for layer in range(c.n_layer)] == [
        hf_window(h, layer) for layer in range(c.n_layer)
    ]
    ropes = (
        {"full_attention": c.rope, "sliding_attention": c.sliding_rope} if c.model_type == "olmo3" else {None: c.rope}
    )
    for layer_type, rope in ropes.items():
        params = h.rope_parameters[layer_type] if layer_type else h.rope_parameters
        assert rope.rope_type == params["rope_type"] and rope.rope_theta == params["rope_theta"], (rope, params)
        for key in (
            "factor",
            "original_max_position_embeddings",
            "low_freq_factor",
            "high_freq_factor",
            "attention_factor",
            "mscale",
        ):
            if params.get(key) is not None and rope.rope_type != "default":
                assert getattr(rope, key) == params[key], (key, rope, params)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_config_is_parsed_as_hf_reads_it(models, name):
    from transformers import AutoConfig

    assert_config_like_hf(ours(models[name]).config, AutoConfig.from_pretrained(models[name]))


CONFIG_VARIANTS = [
    {"model_type": "llama"},
    {"model_type": "mistral"},
    {"model_type": "olmo2"},
    {"model_type": "olmo3", "num_hidden_layers": 6},
    {"model_type": "gpt_bigcode"},
    {"model_type": "gpt_bigcode", "multi_query": False, "n_embd": 96, "n_head": 4},
    {"model_type": "llama", "rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 4.0}},
    {"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
     "rope_theta": 500000.0, "max_position_embeddings": 131072},
    {"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}, "max_position_embeddings": 8192},
    {"model_type": "llama", "num_key_value_heads": None, "head_dim": None},
    {"model_type": "mistral", "sliding_window": None, "head_dim": 64},
    {"model_type": "olmo2", "head_dim": 64},
    {"model_type": "olmo3", "num_hidden_layers": 4, "rope_theta": 10000.0},  # HF: only the full layers get it
    {"model_type": "olmo3", "num_hidden_layers": 2, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    # HF keeps "default"
    {"model_type": "olmo3", "num_hidden_layers": 2, "rope_scaling": {"type": "linear", "factor": 2.0}},
]  # fmt: skip


@pytest.mark.parametrize("raw", CONFIG_VARIANTS, ids=lambda r: json.dumps(r)[:80])
def test_omitted_fields_get_hf_defaults(raw):
    """A config.json that omits fields, or uses the older rope_scaling / rope_theta keys, reads as HF reads it."""
    import transformers
    from transformers import AutoConfig

    from mhacli.config import parse_config

    transformers.logging.set_verbosity_error()
    hf = AutoConfig.for_model(raw["model_type"]).__class__.from_dict(
        {k: v for k, v in raw.items() if k != "model_type"}
    )
    assert_config_like_hf(parse_config(json.loads(json.dumps(raw))), hf)


# RoPE parameters compared with HF's inv_freq only (no model built): the branches the models above do not take
FREQUENCY_ONLY = {
    "llama3_low_2": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
                     "original_max_position_embeddings": ORIGINAL},
    "yarn_factor_1_5": {"rope_type": "yarn", "factor": 1.5, "original_max_position_embeddings": ORIGINAL},
    "yarn_factor_0_5": {"rope_type": "yarn", "factor": 0.5, "original_max_position_embeddings": ORIGINAL},
    "yarn_mscale_only": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL,
                         "mscale": 0.7},
    "yarn_mscale_all_dim_only": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL,
                                 "mscale_all_dim": 0.5},
    "yarn_null_factor": {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": ORIGINAL},
    "longrope_factor_2": {"rope_type": "longrope", "factor": 2.0, "original_max_position_embeddings": ORIGINAL},
    "longrope_factor_1_5": {"rope_type": "longrope", "factor": 1.5, "original_max_position_embeddings": ORIGINAL},
    "longrope_factor_0_5": {"rope_type": "longrope", "factor": 0.5, "original_max_position_embeddings": ORIGINAL},
    "longrope_attention_factor": {"rope_type": "longrope", "attention_factor": 1.3,
                                  "original_max_position_embeddings": ORIGINAL},
    # a long original context: the ramp starts past dimension 0 (low > 0)
    "yarn_original_4096": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
    "yarn_original_4096_untruncated": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096,
                                       "truncate": False},
    # the ramp's bounds clamped to d_head - 1, and equal (HF adds 0.001): at 0, and at the top for head_dim 8
    "yarn_high_clamped": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL,
                          "beta_slow": 1e-10},
    "yarn_equal_bounds_0": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL,
                            "beta_fast": 32, "beta_slow": 4},
    "yarn_equal_bounds_top": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL,
                              "beta_fast": 8.5e-8, "beta_slow": 1e-8},
}  # fmt: skip


@pytest.mark.parametrize("rope", sorted(ROPE_SCALINGS) + ["default"] + sorted(FREQUENCY_ONLY))
@pytest.mark.parametrize("d_head,theta", [(8, 10000.0), (64, 500000.0), (128, 1e6), (80, 1e6), (12, 10000.0)])
def test_rotary_frequencies_equal_hf(rope, d_head, theta):
    """inv_freq and the cos/sin scaling of every RoPE type, against HF's ROPE_INIT_FUNCTIONS.

    Including its longrope switch to long_factor past the original context and dynamic's growing base past
    max_position_embeddings, for a few head sizes (80 and 12: exponents 2i / d_head that float32 rounds) and bases.
    """
    import torch
    from transformers import LlamaConfig, LlamaModel
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from mhacli.config import parse_config
    from mhacli.engine.arch.rope import inv_freq

    params = dict((ROPE_SCALINGS | FREQUENCY_ONLY).get(rope, {"rope_type": "default"})) | {"rope_theta": theta}
    if params["rope_type"] == "longrope":
        params |= {
            "short_factor": [1.0 + c / d_head for c in range(d_head // 2)],
            "long_factor": [2.0 + c / d_head for c in range(d_head // 2)],
        }
    fields = {
        "hidden_size": 4 * d_head,
        "num_attention_heads": 4,
        "head_dim": d_head,
        "max_position_embeddings": 64,
        "rope_parameters": params,
    }
    hf = LlamaConfig(**fields)
    ours_config = parse_config({"model_type": "llama"} | json.loads(hf.to_json_string()))
    for n_seq in (ORIGINAL, 40, 100):  # 100: past max_position_embeddings, where dynamic grows its base
        if params["rope_type"] in ("longrope", "dynamic"):  # chosen per call by the text's length (dynamic_rope_update)
            rotary = LlamaModel(
                LlamaConfig(**fields | {"num_hidden_layers": 1, "vocab_size": 8, "intermediate_size": 8})
            ).rotary_emb
            cos, _ = rotary(torch.zeros(1), torch.arange(n_seq)[None])
            ref, scaling = rotary.inv_freq.numpy(), float(cos[0, 0, 0])  # cos(0) * attention_scaling
        else:
            fn = ROPE_INIT_FUNCTIONS.get(params["rope_type"])
            ref, scaling = (
                fn(hf) if fn else (1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.float) / d_head)), 1.0)
            )
            ref = ref.numpy()
        got, got_scaling = inv_freq(ours_config.rope, d_head, 64, n_seq)
        # ours is the correctly rounded float32 power; torch's float32 pow (its vector math, CPU-dependent) is
        # within one unit in the last place of it, so the two can differ by a unit or two after the reciprocal
        assert got.dtype == np.float32 and np.abs(got / ref - 1).max() <= 2.0**-22, f"{rope} n_seq {n_seq}"
        assert got_scaling == pytest.approx(scaling, rel=1e-6)


def test_llama3_frequency_exactly_at_the_low_frequency_wavelength_equals_hf():
    """A wavelength equal to original / low_freq_factor (in float32) is smoothed, not divided by the factor.

    head_dim 2: one frequency, inv_freq 1, wavelength 2 pi; low_freq_factor = 16 / (2 pi) puts the boundary on it.
    HF's `wavelen > low_freq_wavelen` is false there and its medium band includes it; `>=` on either side is not.
    """
    import math

    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from mhacli.config import parse_config
    from mhacli.engine.arch.rope import inv_freq

    params = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": ORIGINAL / (2 * math.pi),
              "high_freq_factor": 4.0, "original_max_position_embeddings": ORIGINAL, "rope_theta": 10000.0}  # fmt: skip
    fields = {"hidden_size": 8, "num_attention_heads": 4, "head_dim": 2, "max_position_embeddings": 64}
    hf = LlamaConfig(**fields, rope_parameters=params)
    assert np.float32(2 * math.pi) == np.float32(ORIGINAL / params["low_freq_factor"]), "the premise: on the boundary"
    ref = ROPE_INIT_FUNCTIONS["llama3"](hf)[0].numpy()
    got, _ = inv_freq(parse_config({"model_type": "llama"} | json.loads(hf.to_json_string())).rope, 2, 64, 40)
    assert np.abs(got / ref - 1).max() <= 2.0**-22, (got, ref)


ROTARY_DUMP = """
import json, sys
import numpy as np
from mhacli.engine.arch.rope import inv_freq, rope_tables
from mhacli.config import parse_config
out = {}
for name, params in json.loads(sys.argv[1]).items():
    for d_head, theta in ((8, 10000.0), (64, 500000.0), (128, 1e6)):
        config = parse_config({"model_type": "llama", "hidden_size": 4 * d_head, "num_attention_heads": 4,
                               "head_dim": d_head, "max_position_embeddings": 64,
                               "rope_parameters": params | {"rope_theta": theta}})
        for n_seq in (16, 40, 200):
            inv, _ = inv_freq(config.rope, d_head, 64, n_seq)
            cos, sin = rope_tables(config.rope, d_head, 64, n_seq)
            out[f"{name}/{d_head}/{n_seq}"] = [inv.tobytes().hex(), cos.tobytes().hex(), sin.tobytes().hex()]
print(json.dumps(out))
"""
# every SIMD target NumPy dispatches to above its baseline, on x86-64 (unknown names are ignored elsewhere)
BASELINE_ONLY = {"NPY_DISABLE_CPU_FEATURES": "AVX512_ICL AVX512_SPR X86_V4 X86_V3"}


def test_rotary_tables_do_not_depend_on_the_cpus_vector_math():
    """inv_freq, cos and sin of every RoPE type are bitwise the same whichever SIMD path NumPy takes.

    Computed in float64 and rounded once (NumPy's float32 pow/cos/sin round differently on AVX-512, AVX2 and SSE).
    """
    import os
    import subprocess
    import sys

    params = {name: spec for name, spec in ROPE_SCALINGS.items() if spec["rope_type"] != "longrope"}
    params["default"] = {"rope_type": "default"}
    arg = json.dumps(params)
    runs = [
        subprocess.run([sys.executable, "-c", ROTARY_DUMP, arg], capture_output=True, text=True, check=True,
                       env=os.environ | env).stdout
        for env in ({}, BASELINE_ONLY)
    ]  # fmt: skip
    native, baseline = (json.loads(r) for r in runs)
    assert native.keys() == baseline.keys() and len(native) == len(params) * 9
    differ = [k for k in native if native[k] != baseline[k]]
    assert not differ, f"RoPE tables differ between SIMD paths: {differ}"


# --- the forward pass -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_layer_and_head_matches_hf(models, name):
    """The whole forward, each layer fed our own previous layer's output: within ATTN_ATOL / HIDDEN_ATOL."""
    compare(models[name])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_block_reaches_the_aim_on_hf_inputs(models, name):
    """Each block fed HF's own input to that layer: attention within 1e-6 of HF for every head.

    End to end, float32 rounding of the residual stream accumulates over the layers (most in OLMo, whose
    post-norms rescale each branch to unit size), and sharp heads amplify it; fed the same input, every block
    agrees with HF's to the aim.
    """
    from mhacli.engine.forward import final_norm

    ckpt = ours(models[name])
    _, hidden = hf_outputs(models[name], IDS)  # after each block, the last after the final norm
    last = ckpt.config.n_layer - 1
    for layer, (err, x) in enumerate(blocks_on_hf_inputs(models[name], IDS)):
        assert err < ATTN_AIM, f"{name} layer {layer}: attention error {err:.3e} above the 1e-6 aim on HF's input"
        x = final_norm(ckpt, x) if layer == last else x
        h_err = float(np.abs(x - hidden[layer]).max())
        assert h_err <= HIDDEN_ATOL * max(1.0, float(np.abs(hidden[layer]).max())), f"{name} layer {layer}: {h_err:.3e}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_heads_are_not_uniform_and_logits_realistic(models, name):
    """The test models exercise the softmax: some heads are sharp, and no scaled logit is extreme."""
    from mhacli.analyses.stats import uniform_entropy
    from mhacli.engine.forward import family, forward

    ckpt = ours(models[name])
    arch = family(ckpt.config)
    traces = list(forward(ckpt, IDS))
    a = np.stack([t.attention for t in traces]).astype(np.float64)  # [n_layer, n_head, n_seq, n_seq]
    entropy = -(np.where(a > 0, a * np.log(np.where(a > 0, a, 1)), 0)).sum(-1).mean(-1)  # [n_layer, n_head]
    assert entropy.min() < 0.8 * uniform_entropy(len(IDS)), f"{name}: every head is near-uniform"
    x = arch.embed(ckpt, IDS)
    p = ckpt.layer(0)
    parts = arch.attention_parts(arch.attention_input(x, p, ckpt.config), p, ckpt.config, 0)
    logits = np.abs(parts.scores * ckpt.config.attn_scale(0)).max()
    assert 1.0 < logits < 40.0, f"{name}: layer 0's largest scaled logit is {logits:.1f}"


@pytest.mark.parametrize("name", SLIDING)
def test_sliding_window_zeros_are_exact_and_rows_sum_to_one(models, name):
    from mhacli.engine.forward import forward

    ckpt = ours(models[name])
    hf_attn, _ = hf_outputs(models[name], IDS)
    n = len(IDS)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    windows = [ckpt.config.sliding_window(layer) for layer in range(ckpt.config.n_layer)]
    assert any(w is not None and w < n for w in windows)
    for t in forward(ckpt, IDS):
        w = windows[t.layer]
        hidden = (j > i) if w is None else (j > i) | (j <= i - w)
        assert np.all(t.attention[:, hidden] == 0.0), f"layer {t.layer}: a masked entry is not exactly 0"
        assert np.all(t.attention[:, ~hidden] > 0.0)
        assert np.all(hf_attn[t.layer][:, hidden] == 0.0)  # HF masks the same entries
        np.testing.assert_allclose(t.attention.sum(-1), 1.0, atol=1e-6)
        if w is not None:  # without the window the far keys would have had weight: the mask is doing something
            assert np.abs(t.attention[:, w:, :1] - hf_attn[t.layer][:, w:, :1]).max() == 0.0


def test_legacy_rope_config_keys(tmp_path, bos_tokenizer_dir):
    """An older config.json: rope_scaling with `type`, and rope_theta at the top level."""
    directory = build(tmp_path, "llama", LLAMA, bos_tokenizer_dir, seed=11)
    config = json.loads((directory / "config.json").read_text())
    config.pop("rope_parameters", None)
    config |= {"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 5000.0}
    (directory / "config.json").write_text(json.dumps(config))
    rope = ours(directory).config.rope
    assert (rope.rope_type, rope.rope_theta, rope.factor) == ("linear", 5000.0, 2.0)
    compare(directory)


@pytest.mark.parametrize("variant", ["tied_base_model_keys", "sharded_bfloat16"])
def test_checkpoint_layouts(tmp_path, bos_tokenizer_dir, variant):
    """Keys without the `model.` prefix (a base LlamaModel saved alone, tied embeddings), and a sharded bfloat16 one."""
    if variant == "tied_base_model_keys":
        directory = build(tmp_path, "llama", LLAMA | {"tie_word_embeddings": True}, bos_tokenizer_dir, base_model=True)
        keys = load_file(directory / "model.safetensors").keys()
        assert not any(k.startswith(("model.", "lm_head.")) for k in keys)
    else:
        directory = build(
            tmp_path,
            "mistral",
            LLAMA | {"sliding_window": WINDOW},
            bos_tokenizer_dir,
            dtype="bfloat16",
            max_shard_size="40KB",
        )
        assert len(list(directory.glob("model-*.safetensors"))) > 2
        assert ours(directory).kv_dtype() == "BF16"
    compare(directory)


# --- the tokenizer --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_bos_tokenizer_ids_match_hf(bos_tokenizer_dir, text):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from mhacli.io.tokenizer import load_tokenizer

    ids = load_tokenizer(bos_tokenizer_dir).encode(text)
    assert ids[0] == 0, "the BOS post-processor was not applied"
    assert ids == AutoTokenizer.from_pretrained(bos_tokenizer_dir)(text)["input_ids"]
    assert ids == PreTrainedTokenizerFast(tokenizer_file=str(bos_tokenizer_dir / "tokenizer.json"))(text)["input_ids"]


# --- the CLI ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["llama_gqa", "llama_rope_yarn", "mistral_window", "bigcode_mqa", "bigcode_mha_unscaled", "olmo2", "olmo3"]
)
def test_verify_command_passes(models, mha, name):
    r = mha("verify", TEXT, "-m", str(models[name]), "--format", "json")
    assert r.returncode == 0, r.stderr.decode()
    doc = parse_json(r.stdout)
    assert doc["passed"] is True and len(doc["layers"]) == MODELS[name]["fields"].get("num_hidden_layers", 2)
    assert all(len(layer["head_attention_max_abs_err"]) == 8 for layer in doc["layers"])  # query heads


def test_verify_catches_a_wrong_rotary_implementation(models, monkeypatch):
    """Turn q and k by slightly wrong angles: verify must see it."""
    import mhacli.engine.arch.llama as llama
    from mhacli.analyses.verify import verify

    real = llama.rope_tables
    monkeypatch.setattr(
        llama, "rope_tables", lambda rope, d, n_pos, n: tuple(t * np.float32(1.01) for t in real(rope, d, n_pos, n))
    )
    report = verify(ours(models["llama_gqa"]), np.asarray(IDS))
    assert not report.passed and report.max_attention_err > ATTN_ATOL


INFO = {  # name -> (layout, n_kv_head, group_size, kv values per token)
    "llama_gqa": ("GQA", 2, 4, 2 * 2 * 2 * 8),
    "llama_mqa": ("MQA", 1, 8, 2 * 2 * 1 * 8),
    "llama_mha_bias_head_dim": ("MHA", 8, 1, 2 * 2 * 8 * 12),
    "bigcode_mqa": ("MQA", 1, 8, 2 * 2 * 1 * 8),
    "bigcode_mha_unscaled": ("MHA", 8, 1, 2 * 2 * 8 * 8),
    "olmo3": ("GQA", 2, 4, 2 * 4 * 2 * 8),
}


@pytest.mark.parametrize("name", sorted(INFO))
def test_info_shows_layout_and_kv_cache(models, mha, name):
    layout, n_kv, group, values = INFO[name]
    r = mha("info", "-m", str(models[name]), "--format", "json")
    assert r.returncode == 0, r.stderr.decode()
    a = parse_json(r.stdout)["attention"]
    assert (a["layout"], a["n_head"], a["n_kv_head"], a["group_size"]) == (layout, 8, n_kv, group)
    kv = a["kv_cache"]
    assert kv["values_per_token"] == values and kv["checkpoint_dtype"] == "F32"
    assert kv["bytes_per_token"] == {"float32": 4 * values, "checkpoint_dtype": 4 * values}
    assert kv["mha_bytes_per_token"]["float32"] == 4 * values * 8 // n_kv
    windows = a["sliding_window"]
    assert windows == ([WINDOW, WINDOW, WINDOW, None] if name == "olmo3" else [None] * len(windows))
    text = mha("info", "-m", str(models[name]), "--format", "text").stdout.decode()
    assert layout in text and ("group size 4" in text) == (layout == "GQA")


def test_info_kv_cache_in_the_checkpoint_dtype(tmp_path, bos_tokenizer_dir, mha):
    directory = build(tmp_path, "llama", LLAMA, bos_tokenizer_dir, dtype="bfloat16")
    kv = parse_json(mha("info", "-m", str(directory), "--format", "json").stdout)["attention"]["kv_cache"]
    assert kv["checkpoint_dtype"] == "BF16"
    assert kv["bytes_per_token"] == {"float32": 4 * 64, "checkpoint_dtype": 2 * 64}
    assert kv["mha_bytes_per_token"] == {"float32": 4 * 256, "checkpoint_dtype": 2 * 256}


@pytest.mark.parametrize("name", ["llama_gqa", "bigcode_mqa", "olmo3"])
@pytest.mark.parametrize("command", ["inspect", "stats"])
def test_heads_say_which_kv_head_they_read(models, mha, name, command):
    r = mha(command, TEXT, "-m", str(models[name]), "--format", "json")
    assert r.returncode == 0, r.stderr.decode()
    doc = parse_json(r.stdout)
    group = 8 // ours(models[name]).config.n_kv_head
    assert [(h["head"], h["kv_head"]) for h in doc["heads"]][:8] == [(h, h // group) for h in range(8)]
    assert doc["model"]["n_kv_head"] == 8 // group and doc["model"]["model_type"] == MODELS[name]["kind"]
    assert (command == "inspect") == ("attention" in doc["heads"][0])
    lines = mha(command, TEXT, "-m", str(models[name]), "--format", "jsonl").stdout.decode().splitlines()
    assert [json.loads(line)["kv_head"] for line in lines[:8]] == [h // group for h in range(8)]
    header = mha(command, TEXT, "-m", str(models[name]), "--format", "csv").stdout.decode().splitlines()[0]
    assert (
        header
        == "layer,head,kind,entropy,max_weight,mean_distance,first_token,self,previous_token,duplicate_token,induction,"
        "duplicate_rows,induction_rows"
    )


def test_gpt2_heads_read_their_own_kv_head(tiny_model, mha):
    doc = parse_json(mha("stats", "hello there world", "-m", str(tiny_model), "--format", "json").stdout)
    assert all(h["kv_head"] == h["head"] for h in doc["heads"])


def test_rotary_numbers_do_not_come_from_hf(models):
    """With torch and transformers unimportable, inspect on a Llama still produces the HF-equal numbers."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
        "from mhacli.cli import run; "
        f"sys.exit(run(['inspect', {TEXT!r}, '-m', {str(models['llama_gqa'])!r}, '-f', 'json']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    doc = parse_json(result.stdout)
    hf_attn, _ = hf_outputs(models["llama_gqa"], doc["token_ids"])
    for head in doc["heads"]:
        ref = hf_attn[head["layer"]][head["head"]]
        for i, row in enumerate(head["attention"]):
            assert np.abs(np.asarray(row) - ref[i, : i + 1]).max() < 1e-6


# --- explain ------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def hf_capture(directory: Path, ids: tuple[int, ...], layer: int) -> dict:
    """HF's own intermediates in one rotary layer.

    Q/k/v as projected (and QK-normed), cos/sin, q/k rotated with HF's apply_rotary_pos_emb, the attention weights,
    o_proj's input (the heads' outputs) and output.
    """
    import importlib

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32).eval()
    cfg = model.config
    attn = model.layers[layer].self_attn
    d = attn.head_dim
    rec: dict = {}
    hooks = []
    for name in ("q_proj", "k_proj", "v_proj", "q_norm", "k_norm"):
        if hasattr(attn, name):
            hooks.append(
                getattr(attn, name).register_forward_hook(
                    lambda m, a, o, name=name: rec.__setitem__(name, o[0].clone())
                )
            )
    hooks.append(attn.o_proj.register_forward_pre_hook(lambda m, a: rec.__setitem__("concat", a[0][0].clone())))
    hooks.append(attn.register_forward_hook(lambda m, a, o: rec.update(out=o[0][0].clone(), weights=o[1][0].clone())))
    layer_type = getattr(cfg, "layer_types", None)
    wanted = layer_type[layer] if cfg.model_type == "olmo3" else None

    def rotary_hook(module, args, output):
        if wanted is None or args[2] == wanted:
            rec["cos"], rec["sin"] = output

    hooks.append(model.rotary_emb.register_forward_hook(rotary_hook))
    with torch.no_grad():
        model(torch.tensor([list(ids)]), output_attentions=True)
    for h in hooks:
        h.remove()
    n = len(ids)
    q = rec.get("q_norm", rec["q_proj"]).view(n, -1, d).transpose(0, 1)[None]  # [1, n_head, n_seq, d_head]
    k = rec.get("k_norm", rec["k_proj"]).view(n, -1, d).transpose(0, 1)[None]
    apply = importlib.import_module(type(attn).__module__).apply_rotary_pos_emb
    q_rot, k_rot = apply(q, k, rec["cos"], rec["sin"])
    return {
        "q_pre": q[0].numpy(), "k_pre": k[0].numpy(), "q": q_rot[0].numpy(), "k": k_rot[0].numpy(),
        "v": rec["v_proj"].view(n, -1, d).transpose(0, 1).numpy(), "cos": rec["cos"][0].numpy(),
        "sin": rec["sin"][0].numpy(), "weights": rec["weights"].numpy(), "concat": rec["concat"].numpy(),
        "out": rec["out"].numpy(), "scaling": float(attn.scaling), "group": attn.num_key_value_groups,
    }  # fmt: skip


def tokens_of(directory: Path, text: str = TEXT) -> tuple[int, ...]:
    from mhacli.io.tokenizer import load_tokenizer

    return tuple(load_tokenizer(directory).encode(text))


EXPLAIN_CASES = [  # name, layer, head, query
    ("llama_gqa", 0, 0, None),
    ("llama_gqa", 1, 5, 17),
    ("llama_gqa", 1, 3, 0),
    ("llama_gqa", 0, 7, 2),
    ("mistral_window", 0, 2, None),
    ("mistral_window", 1, 6, 20),
    ("mistral_window", 1, 1, WINDOW - 1),
    ("mistral_window", 0, 4, WINDOW),
    ("llama_rope_yarn", 1, 4, None),
    ("llama_rope_longrope", 0, 1, 30),
    ("llama_mha_bias_head_dim", 1, 3, 12),
    ("olmo3", 0, 3, None),
    ("olmo3", 3, 6, 25),
    ("olmo3_mixed_rope", 1, 2, 33),
    ("olmo2", 1, 0, 9),
]


@pytest.mark.parametrize("name,layer,head,query", EXPLAIN_CASES)
def test_explain_matches_hf_intermediates(models, name, layer, head, query):
    from mhacli.analyses.explain import explain

    directory = models[name]
    ids = tokens_of(directory)
    n = len(ids)
    i = n - 1 if query is None else query
    hf = hf_capture(directory, ids, layer)
    ex = explain(ours(directory), ids, layer, head, query)
    doc = json.loads(json.dumps(ex.to_dict(), allow_nan=False))
    g = head // hf["group"]
    where = f"{name} layer {layer} head {head} query {i}"
    assert doc["kv_head"] == g == ex.kv_head and doc["group_size"] == hf["group"]
    assert doc["kv_group"] == list(range(g * hf["group"], (g + 1) * hf["group"]))
    d = ex.d_head
    assert doc["projections"]["w_k"]["rows"] == [g * d, (g + 1) * d] and doc["projections"]["w_q"]["rows"] == [
        head * d,
        (head + 1) * d,
    ]
    assert doc["projections"]["w_k"]["weight"].endswith(f"layers.{layer}.self_attn.k_proj.weight")
    out = doc["output_projection"]  # o_proj [n_embd, n_head * d_head]: every one of its rows, this head's columns
    assert out["rows"] == [0, doc["n_embd"]] and out["head_slice"] == [head * d, (head + 1) * d]
    assert out["weight"].endswith(f"layers.{layer}.self_attn.o_proj.weight")
    assert_close(f"{where}: query_pre_rope", doc["query_pre_rope"], hf["q_pre"][head, i], VEC_ATOL)
    assert_close(f"{where}: keys_pre_rope", doc["keys_pre_rope"], hf["k_pre"][g, : i + 1], VEC_ATOL)
    assert_close(f"{where}: cos", doc["rope"]["cos"], hf["cos"][: i + 1], 1e-6)
    assert_close(f"{where}: sin", doc["rope"]["sin"], hf["sin"][: i + 1], 1e-6)
    assert_close(f"{where}: query", doc["query"], hf["q"][head, i], VEC_ATOL)
    assert_close(f"{where}: keys", doc["keys"], hf["k"][g, : i + 1], VEC_ATOL)
    assert_close(f"{where}: values", doc["values"], hf["v"][g, : i + 1], VEC_ATOL)
    assert doc["scale"] == pytest.approx(hf["scaling"], rel=1e-12)
    scores = hf["q"][head, i] @ hf["k"][g, : i + 1].T
    assert_close(f"{where}: scores", doc["scores"], scores, VEC_ATOL)
    assert_close(f"{where}: attention", doc["attention"], hf["weights"][head, i, : i + 1], ATTN_ATOL, relative=False)
    assert_close(f"{where}: head_output", doc["head_output"], hf["concat"][i, head * d : (head + 1) * d], VEC_ATOL)
    assert_close(f"{where}: concat", doc["concat"], hf["concat"][i], VEC_ATOL)
    assert_close(f"{where}: output", doc["output"], hf["out"][i], VEC_ATOL)
    window = ex.window
    outside = [] if window is None else list(range(0, max(0, i - window + 1)))
    assert doc["window"] == window and doc["window_masked_keys"] == outside
    assert doc["masked_keys"] == outside + list(range(i + 1, n))
    assert all(doc["attention"][j] == 0.0 for j in outside) and np.all(hf["weights"][head, i, outside] == 0)
    assert sum(doc["attention"]) == pytest.approx(1.0, abs=1e-6)
    assert ex.matches and doc["max_abs_diff_vs_forward"] < 1e-5, doc["diff_vs_forward"]
    assert {"query_pre_rope", "keys_pre_rope"} <= doc["diff_vs_forward"].keys()


def test_window_cases_really_cut(models):
    """The sliding-window explain cases do hide keys (else the window assertions above would prove nothing)."""
    from mhacli.analyses.explain import explain

    ex = explain(ours(models["mistral_window"]), tokens_of(models["mistral_window"]), 1, 6, 20)
    assert ex.window_masked_keys == list(range(0, 20 - WINDOW + 1))


@pytest.mark.parametrize("name", ["bigcode_mqa", "bigcode_mha_unscaled"])
def test_explain_bigcode_matches_hf(models, name):
    """GPTBigCode: q from c_attn's rows, k and v from the (shared, for MQA) K/V head's rows; output vs HF's attn."""
    import torch
    from transformers import AutoModel

    from mhacli.analyses.explain import explain

    directory = models[name]
    ids = tokens_of(directory)
    model = AutoModel.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32).eval()
    rec = {}
    hook = model.h[1].attn.register_forward_hook(
        lambda m, a, o: rec.update(out=o[0][0].clone(), weights=o[1][0].clone())
    )
    with torch.no_grad():
        model(torch.tensor([list(ids)]), output_attentions=True)
    hook.remove()
    for head, query in [(0, None), (5, 7), (7, 0)]:
        ex = explain(ours(directory), ids, 1, head, query)
        i = ex.query_index
        assert ex.kv_head == (0 if name == "bigcode_mqa" else head)
        assert_close(
            "attention", ex.step.attention, rec["weights"][head, i, : i + 1].numpy(), ATTN_ATOL, relative=False
        )
        assert_close("output", ex.output, rec["out"][i].numpy(), VEC_ATOL)
        assert ex.matches and ex.rope is None and ex.to_dict()["rope"] is None


@pytest.mark.parametrize("name", ["llama_gqa", "mistral_window", "olmo3"])
def test_explain_check_catches_a_broken_attention_kernel(models, monkeypatch, name):
    """Break the forward's attention kernel (z times 1.5).

    Explain's steps still match HF, and its check reports the mismatch in the head outputs and the projection, while q,
    k, v and the attention agree.
    """
    import mhacli.analyses.explain as core

    break_attention_kernel(monkeypatch, 1.5)
    directory = models[name]
    ids = tokens_of(directory)
    hf = hf_capture(directory, ids, 0)
    ex = core.explain(ours(directory), ids, 0, 2, 9)  # layer 0: its input is the embeddings, untouched
    assert_close("output", ex.output, hf["out"][9], VEC_ATOL)
    assert_close("attention", ex.step.attention, hf["weights"][2, 9, :10], ATTN_ATOL, relative=False)
    assert not ex.matches
    for part in ("head_output", "concat", "output"):
        assert ex.diffs[part] > ex.bounds[part], part
    for part in ("query", "keys", "values", "scores", "attention"):
        assert ex.diffs[part] <= ex.bounds[part], part


@pytest.mark.parametrize("name", ["llama_gqa", "mistral_window", "olmo3", "bigcode_mqa"])
def test_explain_cli_text_and_json(models, name):
    directory = models[name]
    r = run_mha("explain", TEXT, "-m", str(directory), "-l", "1", "-H", "5", "-q", "20")
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "\x1b" not in out
    starts = [out.index(f"\n{n}. ") for n in range(1, 7)]
    assert starts == sorted(starts)
    assert re.search(r"matches the model's forward pass: max \|diff\| \d\.\de[-+]\d\d", out)
    kind = MODELS[name]["kind"]
    if kind != "gpt_bigcode":
        assert "GQA: query head 5 reads K/V head 1" in out and "RoPE (" in out and "W_K = k_proj.weight[8:16, :]" in out
    else:
        assert "MQA: query head 5 reads K/V head 0" in out and "W_K = c_attn.weight[64:72, :]" in out
    if name == "mistral_window":
        assert f"keys 0..{20 - WINDOW} are too far back" in out
    if kind == "olmo3":
        assert "QK-norm" in out and "no norm before attention" in out
    doc = parse_json(
        run_mha("explain", TEXT, "-m", str(directory), "-l", "1", "-H", "5", "-q", "20", "--format", "json").stdout
    )
    assert doc["kv_head"] == (0 if kind == "gpt_bigcode" else 1) and doc["matches_forward"] is True
    assert (doc["rope"] is None) == (kind == "gpt_bigcode")


@pytest.mark.parametrize("width", [40, 80, 160])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize(
    "name,layer,query",
    [
        ("mistral_window", 1, 20),
        ("olmo3_mixed_rope", 2, None),
        ("llama_rope_yarn", 0, 0),
        ("bigcode_mha_unscaled", 1, 3),
    ],
)
def test_explain_view_fits_the_terminal(models, width, full, name, layer, query):
    import io

    from rich.cells import cell_len
    from rich.console import Console

    from mhacli.analyses.explain import explain
    from mhacli.io.tokenizer import load_tokenizer
    from mhacli.views.terminal import explain_lines, explain_view

    directory = models[name]
    ids = tokens_of(directory)
    ex = explain(ours(directory), ids, layer, 3, query)
    tokens = load_tokenizer(directory).display(list(ids))
    laid_out = ["".join(t for t, _ in line) for line in explain_lines(ex, tokens, width, full=full)]
    assert all(cell_len(line) <= width for line in laid_out), [line for line in laid_out if cell_len(line) > width][0]
    buf = io.StringIO()
    Console(width=width, file=buf, force_terminal=True, color_system="truecolor").print(
        explain_view(ex, tokens, width, full=full)
    )
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue()).splitlines()
    assert len(shown) == len(laid_out)


# --- errors -------------------------------------------------------------------------------------------------------


def test_unsupported_model_type_lists_every_supported_one(models, tmp_path):
    from mhacli.errors import ConfigError

    shutil.copytree(models["llama_gqa"], tmp_path / "m")
    from mhacli.config import SUPPORTED_MODEL_TYPES

    config = json.loads((tmp_path / "m" / "config.json").read_text()) | {"model_type": "falcon"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    assert SUPPORTED_MODEL_TYPES[:6] == ("gpt2", "gpt_bigcode", "llama", "mistral", "olmo2", "olmo3")
    with pytest.raises(
        ConfigError, match=re.escape(f"'falcon' is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    ):
        ours(tmp_path / "m")


def test_wrong_shaped_k_proj_is_named(models, tmp_path, mha):
    from mhacli.errors import WeightsError

    shutil.copytree(models["llama_gqa"], tmp_path / "m")
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    key = "model.layers.1.self_attn.k_proj.weight"
    assert tensors[key].shape == (16, 64)
    tensors[key] = np.zeros((64, 64), dtype=np.float32)  # as if every query head had its own K/V head
    save_file(tensors, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        WeightsError,
        match=re.escape(f"tensor '{key}' in model.safetensors has shape [64, 64], but config.json implies [16, 64]"),
    ):
        ours(tmp_path / "m")
    r = mha("stats", TEXT, "-m", str(tmp_path / "m"))
    err = r.stderr.decode()
    assert r.returncode == 2 and r.stdout == b"" and len(err.splitlines()) == 1 and key in err


def test_missing_tensor_names_the_key_and_prefix(models, tmp_path):
    from mhacli.errors import WeightsError

    shutil.copytree(models["olmo3"], tmp_path / "m")
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    del tensors["model.layers.2.self_attn.q_norm.weight"]
    save_file(tensors, tmp_path / "m" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"'layers.2.self_attn.q_norm.weight' is missing .*'model.'"):
        ours(tmp_path / "m")


BAD_CONFIGS = [
    ({"model_type": "llama", "num_attention_heads": 8, "num_key_value_heads": 3, "hidden_size": 64},
     "num_key_value_heads (3)"),
    ({"model_type": "llama", "num_key_value_heads": "two"}, "num_key_value_heads must be an integer"),
    ({"model_type": "llama", "hidden_size": 65, "num_attention_heads": 8}, "hidden_size (65) is not divisible"),
    ({"model_type": "llama", "rope_scaling": {"rope_type": "su"}}, "rope_type 'su' is not supported"),
    ({"model_type": "llama", "rope_scaling": {"rope_type": "yarn"}}, "has no factor, which rope_type 'yarn' needs"),
    ({"model_type": "llama", "rope_scaling": {"rope_type": "linear", "factor": -2}}, "factor must be positive"),
    ({"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "has no low_freq_factor"),
    ({"model_type": "llama", "rope_scaling": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0],
                                              "original_max_position_embeddings": 16}},
     "short_factor must be a list of 64"),
    ({"model_type": "llama", "rope_theta": "big"}, "rope_theta must be a finite number"),
    ({"model_type": "llama", "partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5 is not supported"),
    ({"model_type": "llama", "rope_scaling": [1, 2]}, "rope_scaling must be an object"),
    ({"model_type": "mistral", "sliding_window": 0}, "sliding_window = 0 is out of range"),
    ({"model_type": "olmo3", "num_hidden_layers": 2, "layer_types": ["full_attention"]},
     "layer_types must be a list of 2"),
    ({"model_type": "olmo3", "num_hidden_layers": 2, "layer_types": ["full_attention", "chunked_attention"]},
     "layer_types[1]"),
    ({"model_type": "olmo3", "num_hidden_layers": 2, "sliding_window": None}, "sliding_window is null"),
    ({"model_type": "olmo2", "rms_norm_eps": 0}, "rms_norm_eps must be a number in (0, 1)"),
    ({"model_type": "llama", "hidden_act": "prelu"}, "hidden_act 'prelu' is not supported"),
    ({"model_type": "gpt_bigcode", "multi_query": "yes"}, "multi_query must be true or false"),
    ({"model_type": "gpt_bigcode", "n_head": 5}, "n_embd (768) is not divisible by n_head (5)"),
]  # fmt: skip


@pytest.mark.parametrize("raw,message", BAD_CONFIGS, ids=[m for _, m in BAD_CONFIGS])
def test_bad_configs_name_the_field(raw, message):
    from mhacli.config import parse_config
    from mhacli.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(raw)


def test_verify_a_lone_safetensors_file(models, tmp_path, mha):
    """A renamed weights file: HF gets the same tensors through its own state-dict loader, keys normalised."""
    directory = tmp_path / "m"
    shutil.copytree(models["olmo3"], directory)
    (directory / "model.safetensors").rename(directory / "weights-v2.safetensors")
    r = mha("verify", TEXT, "-m", str(directory / "weights-v2.safetensors"), "--format", "json")
    assert r.returncode == 0, r.stderr.decode()
    assert parse_json(r.stdout)["passed"] is True


class TileMap:
    """A sink that writes the tiles it is given into a map of its own (hidden entries 0), counting them."""

    concurrent = True

    def __init__(self, n_head: int, n_seq: int):
        self.probs = np.zeros((n_head, n_seq, n_seq), dtype=np.float32)
        self.tiles = 0

    def add(self, h, a, b, lo, p):
        self.probs[h : h + len(p), a:b, lo:b] = p
        self.tiles += 1


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_family_streams_each_layers_map_to_its_sink(models, name):
    """forward(sinks=...): each layer's map goes to its sink, none is kept, and nothing else changes."""
    from mhacli.engine.forward import forward

    params = ours(models[name])
    ids = np.array(tokens_of(models[name]))
    config = params.config
    kept = list(forward(params, ids))
    sinks = {layer: TileMap(config.n_head, len(ids)) for layer in range(config.n_layer)}
    streamed = list(forward(params, ids, sinks=sinks.get))
    assert len(streamed) == len(kept) == config.n_layer
    for k, s in zip(kept, streamed):
        assert s.attention is None and sinks[s.layer].tiles > 0, f"layer {s.layer}: the map was kept"
        assert np.abs(sinks[s.layer].probs - k.attention).max() <= 1e-7
        assert np.abs(s.residual - k.residual).max() <= 1e-6 and np.abs(s.z - k.z).max() <= 1e-6


@pytest.mark.parametrize(
    "family,key,want",
    [
        ("gpt2", "transformer.h.0.attn.c_attn.weight", "h.0.attn.c_attn.weight"),
        ("gpt2", "h.0.attn.c_attn.weight", "h.0.attn.c_attn.weight"),
        ("gpt2", "transformer.h.3.attn.bias", None),  # the causal-mask buffers of old checkpoints
        ("gpt2", "h.3.attn.masked_bias", None),
        ("gpt2", "lm_head.weight", "lm_head.weight"),
        ("gpt2", "lm_head.bias", None),
        ("gpt_bigcode", "transformer.h.0.attn.c_attn.weight", "h.0.attn.c_attn.weight"),
        ("gpt_bigcode", "transformer.bias", None),
        ("gpt_bigcode", "h.1.attn.masked_bias", None),
        ("gpt_bigcode", "h.1.attn.bias", None),
        ("gpt_bigcode", "lm_head.weight", "lm_head.weight"),
        ("gpt_bigcode", "lm_head.extra", None),
        ("gpt_bigcode", "h.1.attn.c_attn.bias", "h.1.attn.c_attn.bias"),
        ("llama", "model.layers.0.self_attn.q_proj.weight", "layers.0.self_attn.q_proj.weight"),
        ("llama", "layers.0.self_attn.q_proj.bias", "layers.0.self_attn.q_proj.bias"),
        ("llama", "model.layers.0.self_attn.rotary_emb.inv_freq", None),  # old checkpoints' RoPE buffers
        ("llama", "lm_head.weight", "lm_head.weight"),
        ("llama", "lm_head.bias", None),
        ("llama", "model.norm.weight", "norm.weight"),
        ("olmo", "model.layers.2.self_attn.q_norm.weight", "layers.2.self_attn.q_norm.weight"),
        ("olmo", "model.layers.2.self_attn.rotary_emb.inv_freq", None),
        ("olmo", "lm_head.weight", "lm_head.weight"),
    ],
)
def test_checkpoint_keys_are_normalised_as_each_family_documents(family, key, want):
    """Each family's prefix stripped; buffers and LM-head tensors other than its weight dropped (None)."""
    import importlib

    assert importlib.import_module(f"mhacli.engine.arch.{family}").normalise_key(key) == want


# --- the family interface and the one table of model types -------------------------------------------------------


def test_the_registry_is_the_one_list_of_model_types():
    from mhacli.config import ARCHITECTURES, SUPPORTED_MODEL_TYPES, parse_config
    from mhacli.engine.arch import FAMILIES
    from mhacli.ops.info import architectures

    assert tuple(ARCHITECTURES) == SUPPORTED_MODEL_TYPES == tuple(FAMILIES) == tuple(architectures())
    import transformers

    for model_type, row in ARCHITECTURES.items():
        assert row.model_type == model_type
        assert parse_config({"model_type": model_type}).model_type == model_type  # its own parser, HF's defaults
        for name in (row.hf_model, row.hf_lm):
            assert getattr(transformers, name).config_class.model_type == model_type, name


def test_every_family_module_satisfies_the_interface():
    import types

    from mhacli.engine.arch import FAMILIES, Family, family
    from mhacli.engine.arch.interface import Family as Declared

    assert Family is Declared
    for model_type in FAMILIES:
        arch = family(model_type)
        assert isinstance(arch, Family), f"{model_type}: {arch.__name__} lacks a member of the Family protocol"
    gpt2 = family("gpt2")
    broken = types.ModuleType("broken")
    broken.__dict__.update({k: v for k, v in vars(gpt2).items() if k != "SLIDING_WINDOWS"})
    assert not isinstance(broken, Family)


def test_family_facts_are_never_tested_outside_the_families():
    """isinstance(config, RotaryConfig), model_type == "gpt2" and the like belong in mhacli/engine/arch and config."""
    package = Path(__file__).resolve().parent.parent / "mhacli"
    smell = re.compile(
        r"isinstance\([^)]*,\s*\(?(RotaryConfig|Gpt2Config|BigCodeConfig|LayerNormConfig)"
        r"|model_type\"?\]?\s*(==|!=|not in|in)\s*[\"'(\[]"
    )
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith(("config/", "engine/arch/")):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if smell.search(line):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "family facts tested outside the families:\n" + "\n".join(found)


def test_mypy_checks_each_family_against_the_protocol(tmp_path):
    """A family module that lacks a member, or types one differently, fails mypy where it is used as a Family."""
    import subprocess
    import sys

    pytest.importorskip("mypy")
    repo = Path(__file__).resolve().parent.parent
    source = (repo / "mhacli" / "engine" / "arch" / "gpt2.py").read_text(encoding="utf-8")
    broken = source.replace("SLIDING_WINDOWS = False", "SLIDING_WINDOW = False")
    signature = "def rope_at(config: LayerNormConfig, layer: {})"
    broken = broken.replace(signature.format("int"), signature.format("str"))
    assert broken.count("SLIDING_WINDOW =") == 1 and "layer: str)" in broken
    (tmp_path / "broken_family.py").write_text(broken, encoding="utf-8")
    (tmp_path / "use_families.py").write_text(
        "from mhacli.config import Gpt2Config\n"
        "from mhacli.engine.arch import Family, gpt2\n"
        "import broken_family\n"
        "fine: Family[Gpt2Config] = gpt2\n"
        "wrong: Family[Gpt2Config] = broken_family\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-error-summary", "--cache-dir",
         str(tmp_path / "cache"), "use_families.py"],
        cwd=tmp_path, capture_output=True, text=True, env={"MYPYPATH": str(repo), "PATH": ""}, timeout=300,
    )  # fmt: skip
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and errors[0].startswith("use_families.py:5:"), result.stdout
    assert "SLIDING_WINDOWS" in result.stdout and "layer: str" in result.stdout, result.stdout
