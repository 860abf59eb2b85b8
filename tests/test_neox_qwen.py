"""GPT-NeoX (Pythia), Qwen 2 / 2.5 and Qwen 3 against HF eager float32.

GPT-NeoX with parallel and sequential residuals, partial rotary (rotary_pct), rotary_emb_base, the per-head fused
query_key_value, LayerNorm biases, hidden_act and tied or untied heads; Qwen 2 with its q/k/v biases, sliding windows
from max_window_layers on (use_sliding_window both ways) and tied embeddings; Qwen 3 with per-head q_norm / k_norm
before the rotation, an explicit head_dim, with and without biases.

Every checkpoint is a tiny random model built here with transformers; the references are HF's own outputs (eager
attention, float32), its intermediates captured with hooks inside its attention modules, its labels=ids loss, and
its loss with a head zeroed by a pre-hook on the output projection. Nothing expected comes from the code under test.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    ATTN_ATOL,
    HIDDEN_ATOL,
    NEOX_QWEN_MODELS,
    WINDOW,
    assert_close,
    blocks_on_hf_inputs,
    bos_tokenizer,
    build,
    compare_with_hf,
    hf_outputs,
    parse_json,
)
from safetensors.numpy import load_file, save_file

ATTN_AIM = 1e-6  # each block on HF's own layer input (measured worst 7.2e-7: Qwen 2)
VEC_ATOL = 1e-4  # explain's vectors vs HF, per unit of max(1, max |HF value|)
LOSS_RTOL = 1e-5
TEXT = (
    "The quick brown fox jumps over the lazy dog. It is the east, and Juliet is the sun. ROMEO: But, soft! what light"
)
IDS = np.random.default_rng(7).integers(1, 400, size=48)
MODELS = NEOX_QWEN_MODELS


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tok = bos_tokenizer(tmp_path_factory.mktemp("bos_tokenizer"))
    return {
        name: build(tmp_path_factory.mktemp(name), s["kind"], s["fields"], tok, seed=60 + n)
        for n, (name, s) in enumerate(MODELS.items())
    }


def ours(directory: Path):
    from mhacli.io.weights import load_model

    return load_model(str(directory))


def hf_lm(directory: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32).eval()


# --- config --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_config_is_parsed_as_hf_reads_it(models, name):
    from transformers import AutoConfig

    c, h = ours(models[name]).config, AutoConfig.from_pretrained(models[name])
    assert (c.n_layer, c.n_head, c.n_kv_head, c.n_embd, c.vocab_size) == (
        h.num_hidden_layers, h.num_attention_heads, getattr(h, "num_key_value_heads", h.num_attention_heads),
        h.hidden_size, h.vocab_size,
    )  # fmt: skip
    assert c.tie_word_embeddings == h.tie_word_embeddings
    assert c.rope_at(0).rope_theta == h.rope_parameters["rope_theta"]
    if c.model_type == "gpt_neox":
        assert c.rotary_dim == int(c.d_head * h.rope_parameters["partial_rotary_factor"])
        assert (c.use_parallel_residual, c.attention_bias, c.hidden_act, c.layer_norm_eps) == (
            h.use_parallel_residual, h.attention_bias, h.hidden_act, h.layer_norm_eps,
        )  # fmt: skip
        return
    assert c.d_head == (getattr(h, "head_dim", None) or h.hidden_size // h.num_attention_heads)
    windows = [h.sliding_window if t == "sliding_attention" else None for t in h.layer_types]
    assert [c.sliding_window(layer) for layer in range(c.n_layer)] == windows


@pytest.mark.parametrize(
    "raw",
    [
        {"model_type": "gpt_neox"},
        {"model_type": "gpt_neox", "rotary_pct": 0.5, "rotary_emb_base": 500.0, "use_parallel_residual": False},
        {"model_type": "qwen2"},
        {"model_type": "qwen2", "use_sliding_window": True, "max_window_layers": 30},
        {"model_type": "qwen3"},
        {"model_type": "qwen3", "use_sliding_window": True, "sliding_window": 128, "max_window_layers": 4},
    ],
    ids=lambda r: json.dumps(r)[:60],
)
def test_omitted_fields_get_hf_defaults(raw):
    import transformers

    from mhacli.config import parse_config

    hf = transformers.AutoConfig.for_model(**raw)
    c = parse_config(raw)
    assert (c.n_layer, c.n_head, c.n_kv_head, c.d_head, c.n_positions, c.vocab_size, c.tie_word_embeddings) == (
        hf.num_hidden_layers, hf.num_attention_heads, getattr(hf, "num_key_value_heads", hf.num_attention_heads),
        getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads, hf.max_position_embeddings,
        hf.vocab_size, hf.tie_word_embeddings,
    )  # fmt: skip
    assert c.rope_at(0).rope_theta == hf.rope_parameters["rope_theta"]
    if raw["model_type"] == "gpt_neox":
        assert c.rotary_dim == int(c.d_head * hf.rope_parameters["partial_rotary_factor"])
    else:
        windows = [hf.sliding_window if t == "sliding_attention" else None for t in hf.layer_types]
        assert [c.sliding_window(layer) for layer in range(c.n_layer)] == windows


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"model_type": "gpt_neox", "rotary_pct": 0.01}, "gives 0 rotated values"),
        ({"model_type": "gpt_neox", "rotary_pct": 1.5}, "partial_rotary_factor (rotary_pct) 1.5"),
        ({"model_type": "gpt_neox", "use_parallel_residual": "yes"}, "use_parallel_residual must be true or false"),
        ({"model_type": "gpt_neox", "hidden_size": 65, "num_attention_heads": 8}, "hidden_size (65) is not divisible"),
        ({"model_type": "qwen2", "use_sliding_window": True, "max_window_layers": -1}, "max_window_layers = -1"),
        ({"model_type": "qwen3", "num_hidden_layers": 2, "layer_types": ["full_attention"]}, "layer_types must be"),
    ],
)
def test_bad_configs_name_the_field(raw, message):
    from mhacli.config import parse_config
    from mhacli.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(raw)


# --- the forward ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_layer_and_head_matches_hf(models, name):
    """End to end, each head's attention within ATTN_ATOL, each layer's hidden states within HIDDEN_ATOL (relative)."""
    compare_with_hf(models[name], IDS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_block_on_hf_inputs(models, name):
    from mhacli.engine.forward import final_norm

    ckpt = ours(models[name])
    _, hidden = hf_outputs(models[name], IDS)
    last = ckpt.config.n_layer - 1
    for layer, (err, x) in enumerate(blocks_on_hf_inputs(models[name], IDS)):
        assert err < ATTN_AIM, f"{name} layer {layer}: attention error {err:.3e} on HF's own input"
        x = final_norm(ckpt, x) if layer == last else x
        bound = HIDDEN_ATOL * max(1.0, float(np.abs(hidden[layer]).max()))
        assert float(np.abs(x - hidden[layer]).max()) <= bound


FLIPS = {  # a config field flipped on the same weights: the numbers change, and still equal HF's
    "neox_parallel": {"use_parallel_residual": False},
    "neox_sequential_tied": {"rotary_pct": 1.0},
    "neox_full_rotary_no_bias": {"rotary_emb_base": 100.0},
    "qwen2_window_off": {"use_sliding_window": True, "sliding_window": WINDOW, "layer_types": None},
    "qwen3_bias_window": {"max_window_layers": 0, "layer_types": None},
}


@pytest.mark.parametrize("name", sorted(FLIPS))
def test_each_field_changes_the_numbers_as_in_hf(models, tmp_path, name):
    from mhacli.engine.forward import forward

    directory = tmp_path / name
    shutil.copytree(models[name], directory)
    config = json.loads((directory / "config.json").read_text())
    if "rotary_pct" in FLIPS[name] or "rotary_emb_base" in FLIPS[name]:
        config.pop("rope_parameters", None)
        config.pop("rope_scaling", None)
        config.setdefault("rotary_pct", MODELS[name]["fields"].get("rotary_pct", 0.25))
        config.setdefault("rotary_emb_base", MODELS[name]["fields"].get("rotary_emb_base", 10000.0))
    config |= FLIPS[name]
    (directory / "config.json").write_text(json.dumps(config))
    before = [t.attention for t in forward(ours(models[name]), IDS)]
    after = [t.attention for t in forward(ours(directory), IDS)]
    assert max(float(np.abs(a - b).max()) for a, b in zip(before, after)) > 1e-3, "the field changed nothing"
    compare_with_hf(directory, IDS)


@pytest.mark.parametrize("name", ["qwen2_window", "qwen3_bias_window"])
def test_sliding_windows_from_max_window_layers_on(models, name):
    from mhacli.engine.forward import forward

    ckpt = ours(models[name])
    first = MODELS[name]["fields"]["max_window_layers"]
    windows = [ckpt.config.sliding_window(layer) for layer in range(ckpt.config.n_layer)]
    assert windows == [None] * first + [WINDOW] * (ckpt.config.n_layer - first)
    hf_attn, _ = hf_outputs(models[name], IDS)
    n = len(IDS)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    for t in forward(ckpt, IDS):
        w = windows[t.layer]
        hidden = (j > i) if w is None else (j > i) | (j <= i - w)
        assert np.all(t.attention[:, hidden] == 0.0) and np.all(hf_attn[t.layer][:, hidden] == 0.0)
        assert np.all(t.attention[:, ~hidden] > 0.0)


@pytest.mark.parametrize("head", ["embed_out.weight", "lm_head.weight"])
def test_pythia_checkpoint_keys(models, tmp_path, head):
    """Pythia's files (`embed_out.weight`, old attention buffers) and HF's newer `lm_head.weight` give HF's loss."""
    import torch

    from mhacli.analyses.ablate import Ablator

    directory = tmp_path / "pythia"
    shutil.copytree(models["neox_parallel"], directory)
    tensors = load_file(directory / "model.safetensors")
    tensors[head] = tensors.pop("embed_out.weight")
    for layer in range(2):
        tensors[f"gpt_neox.layers.{layer}.attention.bias"] = np.tril(np.ones((64, 64), dtype=bool))
        tensors[f"gpt_neox.layers.{layer}.attention.rotary_emb.inv_freq"] = np.ones(2, dtype=np.float32)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    model = hf_lm(models["neox_parallel"])
    with torch.no_grad():
        ref = float(model(torch.tensor([IDS.tolist()]), labels=torch.tensor([IDS.tolist()])).loss)
    got = Ablator(ours(directory), [IDS]).baseline
    assert abs(got - ref) <= LOSS_RTOL * ref, (got, ref)


# --- loss and ablation ---------------------------------------------------------------------------------------------


def out_projection_module(model, layer: int):
    block = model.base_model.layers[layer]
    return block.attention.dense if hasattr(block, "attention") else block.self_attn.o_proj


def hf_loss(model, ids, heads=()) -> float:
    """HF's mean next-token loss with `heads` [(layer, head)] zeroed by a pre-hook on the output projection."""
    import torch

    cfg = model.config
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    hooks = []
    for layer, head in heads:

        def pre(module, args, head=head):
            x = args[0].clone()
            x[..., head * d : (head + 1) * d] = 0.0
            return (x,)

        hooks.append(out_projection_module(model, layer).register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            logits = model(torch.tensor([list(ids)])).logits[0].float()
    finally:
        for h in hooks:
            h.remove()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    targets = torch.tensor(list(ids[1:]))
    return float(-logp[torch.arange(len(targets)), targets].double().mean())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_baseline_and_ablated_losses_equal_hf(models, name):
    from mhacli.analyses.ablate import Ablator

    model = hf_lm(models[name])
    ablator = Ablator(ours(models[name]), [IDS])
    assert ablator.baseline == pytest.approx(hf_loss(model, IDS), rel=LOSS_RTOL)
    n_layer, n_head = model.config.num_hidden_layers, model.config.num_attention_heads
    for heads in ([(0, 1)], [(n_layer - 1, n_head - 1)], [(0, 0), (1, 2), (n_layer - 1, 3)]):
        ref = hf_loss(model, IDS, heads)
        got = ablator.loss(heads)
        assert abs(got - ref) <= LOSS_RTOL * ref, f"{name} {heads}: {got:.7f} vs HF {ref:.7f}"
        assert abs(got - ablator.baseline) > 1e-6, "the ablation changed nothing"


@pytest.mark.parametrize("name", ["neox_parallel", "neox_sequential_tied", "qwen2_window", "qwen3_bias_window"])
def test_verify_command_passes(models, mha, name):
    r = mha("verify", TEXT, "-m", str(models[name]), "--format", "json")
    assert r.returncode == 0, r.stderr.decode()
    doc = parse_json(r.stdout)
    assert doc["passed"] is True and len(doc["layers"]) == MODELS[name]["fields"]["num_hidden_layers"]


# --- explain ---------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def hf_capture(directory: Path, ids: tuple[int, ...], layer: int) -> dict:
    """HF's own intermediates in one layer: q/k/v as projected (and normed), rotated with HF's apply_rotary_pos_emb, ...

    ... the attention weights, the output projection's input (the heads' outputs) and output."""
    import importlib

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32).eval()
    block = model.layers[layer]
    neox = hasattr(block, "attention")
    attn = block.attention if neox else block.self_attn
    n = len(ids)
    d = attn.head_size if neox else attn.head_dim
    rec: dict = {}
    hooks = []
    names = ("query_key_value",) if neox else ("q_proj", "k_proj", "v_proj", "q_norm", "k_norm")
    for name in names:
        if hasattr(attn, name):
            hooks.append(getattr(attn, name).register_forward_hook(lambda m, a, o, name=name: rec.update({name: o[0]})))
    o_proj = attn.dense if neox else attn.o_proj
    hooks.append(o_proj.register_forward_pre_hook(lambda m, a: rec.__setitem__("concat", a[0][0].clone())))
    hooks.append(attn.register_forward_hook(lambda m, a, o: rec.update(out=o[0][0].clone(), weights=o[1][0].clone())))
    hooks.append(model.rotary_emb.register_forward_hook(lambda m, a, o: rec.update(cos=o[0], sin=o[1])))
    with torch.no_grad():
        model(torch.tensor([list(ids)]), output_attentions=True)
    for h in hooks:
        h.remove()
    if neox:
        qkv = rec["query_key_value"].view(n, -1, 3 * d).transpose(0, 1)[None]  # [1, n_head, n, 3 d]
        q, k, v = qkv.chunk(3, dim=-1)
    else:
        q = rec.get("q_norm", rec["q_proj"].view(n, -1, d)).view(n, -1, d).transpose(0, 1)[None]
        k = rec.get("k_norm", rec["k_proj"].view(n, -1, d)).view(n, -1, d).transpose(0, 1)[None]
        v = rec["v_proj"].view(n, -1, d).transpose(0, 1)[None]
    apply = importlib.import_module(type(attn).__module__).apply_rotary_pos_emb
    q_rot, k_rot = apply(q, k, rec["cos"], rec["sin"])
    return {
        "q_pre": q[0].numpy(), "k_pre": k[0].numpy(), "q": q_rot[0].numpy(), "k": k_rot[0].numpy(),
        "v": v[0].numpy(), "cos": rec["cos"][0].numpy(), "sin": rec["sin"][0].numpy(),
        "weights": rec["weights"].numpy(), "concat": rec["concat"].numpy(), "out": rec["out"].numpy(),
        "scaling": float(attn.scaling), "group": getattr(attn, "num_key_value_groups", 1),
    }  # fmt: skip


def tokens_of(directory: Path) -> tuple[int, ...]:
    from mhacli.io.tokenizer import load_tokenizer

    return tuple(load_tokenizer(directory).encode(TEXT))


EXPLAIN_CASES = [  # name, layer, head, query
    ("neox_parallel", 1, 5, None),
    ("neox_sequential_tied", 0, 2, 17),
    ("neox_full_rotary_no_bias", 1, 7, 3),
    ("qwen2_window", 1, 6, 20),
    ("qwen2_tied", 0, 1, None),
    ("qwen3", 2, 3, None),
    ("qwen3_bias_window", 2, 5, 30),
]


@pytest.mark.parametrize("name,layer,head,query", EXPLAIN_CASES)
def test_explain_matches_hf_intermediates(models, name, layer, head, query):
    """Step by step, one vector at a time: partial rotary and per-head QK-norm included, against HF's own numbers."""
    from mhacli.analyses.explain import explain

    directory = models[name]
    ids = tokens_of(directory)
    i = len(ids) - 1 if query is None else query
    hf = hf_capture(directory, ids, layer)
    ex = explain(ours(directory), ids, layer, head, query)
    doc = json.loads(json.dumps(ex.to_dict(), allow_nan=False))
    g, d = head // hf["group"], ex.d_head
    where = f"{name} layer {layer} head {head} query {i}"
    assert doc["kv_head"] == g
    rotary = doc["rope"]["rotary_dim"]
    assert rotary == hf["cos"].shape[-1] and len(doc["rope"]["cos"][0]) == rotary
    if MODELS[name]["kind"] == "gpt_neox":
        assert doc["projections"]["w_q"]["rows"] == [3 * head * d, (3 * head + 1) * d]
        assert doc["projections"]["w_v"]["rows"] == [(3 * head + 2) * d, (3 * head + 3) * d]
    if MODELS[name]["kind"] == "qwen3":
        assert doc["qk_norm"]["per_head"] is True and len(doc["qk_norm"]["key_rms"]) == i + 1
    else:
        assert doc["qk_norm"] is None
    assert_close(f"{where}: query_pre_rope", doc["query_pre_rope"], hf["q_pre"][head, i], VEC_ATOL)
    assert_close(f"{where}: keys_pre_rope", doc["keys_pre_rope"], hf["k_pre"][g, : i + 1], VEC_ATOL)
    assert_close(f"{where}: cos", doc["rope"]["cos"], hf["cos"][: i + 1], 1e-6)
    assert_close(f"{where}: query", doc["query"], hf["q"][head, i], VEC_ATOL)
    assert_close(f"{where}: keys", doc["keys"], hf["k"][g, : i + 1], VEC_ATOL)
    assert_close(f"{where}: values", doc["values"], hf["v"][g, : i + 1], VEC_ATOL)
    assert doc["scale"] == pytest.approx(hf["scaling"], rel=1e-12)
    assert_close(f"{where}: attention", doc["attention"], hf["weights"][head, i, : i + 1], ATTN_ATOL, relative=False)
    assert_close(f"{where}: head_output", doc["head_output"], hf["concat"][i, head * d : (head + 1) * d], VEC_ATOL)
    assert_close(f"{where}: output", doc["output"], hf["out"][i], VEC_ATOL)
    assert ex.matches and doc["max_abs_diff_vs_forward"] < 1e-5, doc["diff_vs_forward"]


@pytest.mark.parametrize("name,phrase", [("neox_parallel", "partial rotary: only the first 2 of the 8 values"),
                                         ("qwen3", "RMSNorms over each head's d_head values")])  # fmt: skip
def test_explain_text_names_the_twist(models, mha, name, phrase):
    r = mha("explain", TEXT, "-m", str(models[name]), "-l", "1", "-H", "2", "--format", "text")
    assert r.returncode == 0, r.stderr.decode()
    assert phrase in " ".join(r.stdout.decode().split())


# --- the other commands ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["neox_parallel", "qwen2_window", "qwen3"])
@pytest.mark.parametrize(
    "command", ["inspect", "stats", "census", "ablate", "prune", "circuits", "info", "attribute", "lens", "patch"]
)
def test_every_command_runs(models, mha, name, command):
    args = [command] if command in ("circuits", "info", "census") else [command, TEXT]
    args += ["--probe-count", "2", "-j", "1"] if command == "census" else []
    swapped = TEXT.replace(" the ", " is ", 1)  # the corrupted prompt: one word changed, the same length in tokens
    args += [swapped, "--answer", " the", "--wrong", " is", "--site", "q"] if command == "patch" else []
    r = mha(*args, "-m", str(models[name]), "--format", "json")
    assert r.returncode == 0, r.stderr.decode()
    parse_json(r.stdout)


def test_info_shows_the_peculiarities(models, mha):
    doc = parse_json(mha("info", "-m", str(models["neox_sequential_tied"]), "--format", "json").stdout)
    assert doc["config"]["use_parallel_residual"] is False and doc["config"]["rotary_ndims"] == 4
    text = mha("info", "-m", str(models["neox_parallel"]), "--format", "text").stdout.decode()
    assert "use_parallel_residual" in text and "rotary_ndims" in text and "true" in text
    doc = parse_json(mha("info", "-m", str(models["qwen2_window"]), "--format", "json").stdout)
    assert doc["attention"]["sliding_window"] == [None, WINDOW, WINDOW]


@pytest.mark.parametrize("name", ["neox_parallel", "qwen2_tied", "qwen3"])
def test_circuits_read_each_heads_weights(models, name):
    """The circuits' W_Q, W_K, W_V, W_O of a head equal the slices of HF's own modules (Qwen 3: times q_norm/k_norm)."""
    from mhacli.analyses.circuits import head_factors

    model = hf_lm(models[name])
    cfg = model.config
    n_head = cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    f = head_factors(ours(models[name]))
    for layer, head in ((0, 0), (1, n_head - 1)):
        block = model.base_model.layers[layer]
        g = head // (n_head // getattr(cfg, "num_key_value_heads", n_head))
        if hasattr(block, "attention"):
            qkv = block.attention.query_key_value.weight.detach().numpy().reshape(n_head, 3, d, -1)
            wq, wk, wv = qkv[head, 0].T, qkv[head, 1].T, qkv[head, 2].T
            wo = block.attention.dense.weight.detach().numpy()[:, head * d : (head + 1) * d].T
        else:
            a = block.self_attn
            wq = a.q_proj.weight.detach().numpy()[head * d : (head + 1) * d].T
            wk = a.k_proj.weight.detach().numpy()[g * d : (g + 1) * d].T
            wv = a.v_proj.weight.detach().numpy()[g * d : (g + 1) * d].T
            wo = a.o_proj.weight.detach().numpy()[:, head * d : (head + 1) * d].T
            if hasattr(a, "q_norm"):
                wq, wk = wq * a.q_norm.weight.detach().numpy(), wk * a.k_norm.weight.detach().numpy()
        i = layer * n_head + head
        for label, got, want in (("W_Q", f.w_q[i], wq), ("W_K", f.w_k[i], wk), ("W_V", f.w_v[i], wv),
                                 ("W_O", f.w_o[i], wo)):  # fmt: skip
            assert_close(f"{name} {layer}.{head} {label}", got, want, 1e-6)


@pytest.mark.parametrize(
    "family,key,want",
    [
        ("gpt_neox", "gpt_neox.layers.0.attention.query_key_value.weight", "layers.0.attention.query_key_value.weight"),
        ("gpt_neox", "gpt_neox.embed_in.weight", "embed_in.weight"),
        ("gpt_neox", "embed_out.weight", "lm_head.weight"),  # Pythia's name for the output head
        ("gpt_neox", "lm_head.weight", "lm_head.weight"),
        ("gpt_neox", "embed_out.bias", None),
        ("gpt_neox", "gpt_neox.layers.3.attention.bias", None),  # old checkpoints' causal-mask buffers
        ("gpt_neox", "gpt_neox.layers.3.attention.masked_bias", None),
        ("gpt_neox", "gpt_neox.layers.3.attention.rotary_emb.inv_freq", None),
        ("qwen2", "model.layers.1.self_attn.q_proj.bias", "layers.1.self_attn.q_proj.bias"),
        ("qwen3", "model.layers.1.self_attn.q_norm.weight", "layers.1.self_attn.q_norm.weight"),
        ("qwen3", "lm_head.bias", None),
    ],
)
def test_checkpoint_keys_are_normalised(family, key, want):
    import importlib

    assert importlib.import_module(f"mhacli.engine.arch.{family}").normalise_key(key) == want


# --- attribute -------------------------------------------------------------------------------------------------------

ATTRIBUTE_RTOL = 1e-4  # the components' sum against HF's logit (difference), relative


@pytest.mark.parametrize(
    "name", ["neox_parallel", "neox_sequential_tied", "qwen2_tied", "qwen2_window", "qwen3", "qwen3_bias_window"]
)
def test_attribution_sums_to_hf_logit_difference(models, name):
    """The components sum to HF's logit (difference) at an inner position, with and without --fold-value-bias.

    GPT-NeoX's parallel residual (x + attn(ln1(x)) + mlp(ln2(x))) still telescopes: mlp = after - before - attention.
    """
    import torch

    from mhacli.analyses.attribute import attribute

    ids = [int(i) for i in IDS[:20]]
    pos = -3  # an inner position: the analysis must not read the last one
    with torch.no_grad():
        logits = hf_lm(models[name])(torch.tensor([ids])).logits[0, pos].double().numpy()
    answer, wrong = int(np.argmax(logits)), int(np.argmin(logits))
    ckpt = ours(models[name])
    for w in (wrong, None):
        want = logits[answer] - (0.0 if w is None else logits[w])
        sums = []
        for fold in (False, True):
            got = attribute(ckpt, np.array(ids), None, w, pos, fold_value_bias=fold, kinds=False)
            assert got.answer == answer  # the default answer: the model's top prediction
            rel = abs(got.sum - want) / abs(want)
            assert rel < ATTRIBUTE_RTOL, f"{name} sum {got.sum} vs HF {want}: {rel:.2e} relative"
            assert got.completeness_error < 1e-9 * max(1.0, abs(got.value))
            sums.append(got.sum)
        assert abs(sums[0] - sums[1]) < 1e-9 * max(1.0, abs(sums[0]))  # folding moves shares, never the sum
    n_layer = ckpt.config.n_layer
    assert not any(c.component == "remainder" for c in got.components)  # pre-norm families: nothing left over
    assert [c.layer for c in got.components if c.component == "mlp"] == list(range(n_layer))
    heads = [(c.layer, c.head) for c in got.components if c.component == "head"]
    assert len(heads) == n_layer * ckpt.config.n_head


@pytest.mark.parametrize("name", sorted(MODELS))
def test_patching_recomputes_each_layers_attention_as_the_forward(models, name):
    """Patching q, k, v or a pattern recomputes a layer's z from q, k, v: unpatched, it is the forward's own z.

    Partial rotary, per-head QK-norm and windows included (q and k are kept after them)."""
    from mhacli.analyses.patch import attend, record

    ckpt = ours(models[name])
    ids = np.array(tokens_of(models[name])[:24])
    run = record(ckpt, ids)
    for layer, acts in enumerate(run.acts):
        z = attend(ckpt, layer, acts.q, acts.k, acts.v)
        err = float(np.abs(z - acts.z).max())
        assert err < 1e-5 * max(1.0, float(np.abs(acts.z).max())), f"{name} layer {layer} z: {err:.2e}"
