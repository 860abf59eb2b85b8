"""Phi-3, Gemma 2 and Gemma 3 (text) against HF eager float32, on every command.

Every checkpoint is a tiny random model built here with transformers (save_pretrained); the references are HF's own
outputs: attentions and hidden states of its base model, logits and `labels=ids` loss of its *ForCausalLM class
(final logit soft-capping included), its intermediates captured with forward hooks inside its attention modules, and
its loss with a forward pre-hook on o_proj that zeroes a head's input columns (ablation). Nothing expected comes from
the code under test. Each config field that changes the numbers is set both ways across the models below.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    ATTN_ATOL,
    HIDDEN_ATOL,
    LLAMA,
    ORIGINAL,
    WINDOW,
    assert_close,
    blocks_on_hf_inputs,
    bos_tokenizer,
    build,
    compare_with_hf,
    hf_outputs,
    parse_json,
)

ATTN_AIM = 1e-6  # attention vs HF on HF's own layer input
VEC_ATOL = 1e-4  # explain's vectors, per unit of max(1, max |HF value|)
LOSS_RTOL = 1e-5
TEXT = (
    "The quick brown fox jumps over the lazy dog. It is the east, and Juliet is the sun. "
    "ROMEO: But, soft! what light"
)  # 41 tokens with the BOS tokenizer: longer than every window and original context below
IDS = np.random.default_rng(17).integers(1, 400, size=48)
HALF = LLAMA["hidden_size"] // LLAMA["num_attention_heads"] // 2  # rotary pairs per head (d_head 8)

PHI3 = {k: v for k, v in LLAMA.items()}
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0, 1.3, 1.7, 2.0], "long_factor": [1.5, 2.5, 3.0, 5.0],
            "rope_theta": 10000.0}  # fmt: skip

GEMMA = LLAMA | {"head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": WINDOW}

# name -> (model_type, config fields)
MODELS = {
    "phi3_gqa": ("phi3", PHI3),
    "phi3_mha_window": ("phi3", PHI3 | {"num_key_value_heads": 8, "sliding_window": WINDOW, "num_hidden_layers": 3}),
    # 48 tokens > original 16: the long factors and the attention factor sqrt(1 + ln(64/16) / ln 16)
    "phi3_longrope": ("phi3", PHI3 | {"rope_parameters": LONGROPE, "original_max_position_embeddings": ORIGINAL}),
    # original 64 = the whole context: the short factors, attention factor 1
    "phi3_longrope_short": ("phi3", PHI3 | {"rope_parameters": LONGROPE, "original_max_position_embeddings": 64,
                                            "hidden_act": "gelu_new", "tie_word_embeddings": True}),
    # Gemma 2: alternating windows from layer 0, query_pre_attn_scalar != head_dim, caps that bite (5 on scaled scores
    # up to ~20; 0.5 on logits up to ~0.7), the default caps (50, 30), and none
    "gemma2_capped": ("gemma2", GEMMA | {"num_hidden_layers": 3, "attn_logit_softcapping": 5.0,
                                         "final_logit_softcapping": 0.5, "query_pre_attn_scalar": 32}),
    "gemma2_default_caps": ("gemma2", GEMMA | {"tie_word_embeddings": False, "num_key_value_heads": 8}),
    "gemma2_uncapped": ("gemma2", GEMMA | {"attn_logit_softcapping": None, "final_logit_softcapping": None,
                                           "layer_types": ["full_attention"] * 2,
                                           "hidden_activation": "gelu_new", "num_key_value_heads": 1}),
    # Gemma 3: five local layers then a global one (6), local/global rotary bases, linear scaling on global layers only;
    # its attn_logit_softcapping is set and, as in HF, not applied
    "gemma3_pattern": ("gemma3_text", GEMMA | {"num_hidden_layers": 6, "rope_local_base_freq": 100.0,
                                               "rope_theta": 20000.0, "attn_logit_softcapping": 5.0}),
    "gemma3_scaled": ("gemma3_text", GEMMA | {
        "num_hidden_layers": 3, "sliding_window_pattern": 2, "final_logit_softcapping": 0.4,
        "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 50000.0},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 500.0}}}),
}  # fmt: skip
SLIDING = ["phi3_mha_window", "gemma2_capped", "gemma3_pattern", "gemma3_scaled"]


@pytest.fixture(scope="module")
def bos_dir(tmp_path_factory) -> Path:
    return bos_tokenizer(tmp_path_factory.mktemp("bos"))


@pytest.fixture(scope="module")
def models(tmp_path_factory, bos_dir) -> dict[str, Path]:
    return {
        name: build(tmp_path_factory.mktemp(name), kind, fields, bos_dir, seed=60 + n)
        for n, (name, (kind, fields)) in enumerate(MODELS.items())
    }


def ours(directory: Path):
    from mhacli.io.weights import load_model

    return load_model(str(directory), cache=True)


def tokens_of(directory: Path, text: str = TEXT) -> tuple[int, ...]:
    from mhacli.io.tokenizer import load_tokenizer

    return tuple(load_tokenizer(directory).encode(text))


def hf_lm(directory: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32).eval()


# --- config -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_config_is_read_as_hf_reads_it(models, name):
    from transformers import AutoConfig

    c, h = ours(models[name]).config, AutoConfig.from_pretrained(models[name])
    assert (c.n_layer, c.n_head, c.n_kv_head, c.n_embd) == (
        h.num_hidden_layers, h.num_attention_heads, h.num_key_value_heads, h.hidden_size,
    )  # fmt: skip
    assert c.d_head == getattr(h, "head_dim", h.hidden_size // h.num_attention_heads)
    types = getattr(h, "layer_types", None) or ["full_attention"] * h.num_hidden_layers
    hf_windows = [h.sliding_window if (h.model_type == "phi3" or t == "sliding_attention") else None for t in types]
    assert [c.sliding_window(layer) for layer in range(c.n_layer)] == hf_windows
    assert c.attn_scale(0) == pytest.approx(hf_lm(models[name]).model.layers[0].self_attn.scaling, rel=1e-15)


PHI3_VARIANTS = [
    {},
    {"rope_scaling": {"type": "su", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48}},
    {"rope_scaling": {"type": "yarn", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48},
     "original_max_position_embeddings": 2048, "max_position_embeddings": 131072},
    {"rope_parameters": {"rope_type": "longrope", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48,
                         "rope_theta": 250000.0}},
    {"sliding_window": 2047, "num_key_value_heads": 8},
]  # fmt: skip


@pytest.mark.parametrize("raw", PHI3_VARIANTS, ids=lambda r: json.dumps(r)[:60])
def test_phi3_omitted_fields_and_rope_names_as_hf(raw):
    """Phi3Config's defaults, its original_max_position_embeddings (4096) and "su"/"yarn" read as longrope."""
    from transformers import Phi3Config

    from mhacli.config import parse_config

    h = Phi3Config(**json.loads(json.dumps(raw)))
    c = parse_config({"model_type": "phi3"} | json.loads(json.dumps(raw)))
    assert (c.n_embd, c.intermediate_size, c.n_positions, c.vocab_size, c.rms_norm_eps, c.n_kv_head) == (
        h.hidden_size, h.intermediate_size, h.max_position_embeddings, h.vocab_size, h.rms_norm_eps,
        h.num_key_value_heads,
    )  # fmt: skip
    assert c.tie_word_embeddings is h.tie_word_embeddings is False
    params = h.rope_parameters
    assert (c.rope.rope_type, c.rope.rope_theta) == (params["rope_type"], params["rope_theta"])
    if params["rope_type"] == "longrope":
        assert c.rope.original_max_position_embeddings == params["original_max_position_embeddings"]
        assert list(c.rope.long_factor) == params["long_factor"]
    assert c.sliding_window(0) == h.sliding_window


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"model_type": "phi3", "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
         "rope_type 'linear' is not supported by Phi-3"),
        ({"model_type": "phi3", "partial_rotary_factor": 0.75}, "partial_rotary_factor 0.75 is not supported"),
    ],
)  # fmt: skip
def test_bad_configs_name_the_field(raw, message):
    from mhacli.config import parse_config
    from mhacli.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_config(raw)


# --- the forward --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_layer_and_head_matches_hf(models, name):
    """The whole forward against HF: attention per layer and query head within ATTN_ATOL, hidden states."""
    errors = compare_with_hf(models[name], IDS)
    print(name, "worst attention error", max(a for a, _ in errors))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_block_reaches_the_aim_on_hf_inputs(models, name):
    from mhacli.engine.forward import final_norm

    ckpt = ours(models[name])
    _, hidden = hf_outputs(models[name], IDS)
    last = ckpt.config.n_layer - 1
    for layer, (err, x) in enumerate(blocks_on_hf_inputs(models[name], IDS)):
        assert err < ATTN_AIM, f"{name} layer {layer}: attention error {err:.3e} above the aim on HF's input"
        x = final_norm(ckpt, x) if layer == last else x
        h_err = float(np.abs(x - hidden[layer]).max())
        assert h_err <= HIDDEN_ATOL * max(1.0, float(np.abs(hidden[layer]).max())), f"{name} layer {layer}: {h_err}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_heads_are_sharp_enough_to_test(models, name):
    """Some head is far from uniform: the softmax is exercised, so matching HF means something."""
    from mhacli.analyses.stats import uniform_entropy
    from mhacli.engine.forward import family, forward

    a = np.stack([t.attention for t in forward(ours(models[name]), IDS)]).astype(np.float64)
    entropy = -(np.where(a > 0, a * np.log(np.where(a > 0, a, 1)), 0)).sum(-1).mean(-1)
    assert entropy.min() < 0.8 * uniform_entropy(len(IDS)), f"{name}: every head is near-uniform"
    ckpt = ours(models[name])
    arch = family(ckpt.config)
    p = ckpt.layer(0)
    parts = arch.attention_parts(arch.attention_input(arch.embed(ckpt, IDS), p, ckpt.config), p, ckpt.config, 0)
    logits = np.abs(parts.scores * ckpt.config.attn_scale(0)).max()
    assert 1.0 < logits < 40.0, f"{name}: layer 0's largest scaled logit is {logits:.1f}"


@pytest.mark.parametrize("name", SLIDING)
def test_sliding_windows_hide_what_hf_hides(models, name):
    from mhacli.engine.forward import forward

    ckpt = ours(models[name])
    hf_attn, _ = hf_outputs(models[name], IDS)
    n = len(IDS)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    cut = 0
    for t in forward(ckpt, IDS):
        w = ckpt.config.sliding_window(t.layer)
        hidden = (j > i) if w is None else (j > i) | (j <= i - w)
        assert np.all(t.attention[:, hidden] == 0.0) and np.all(hf_attn[t.layer][:, hidden] == 0.0)
        cut += int(w is not None)
    assert cut > 0


def test_longrope_switches_to_the_long_factors(models):
    """48 tokens past original 16 use long_factor; the same weights with original 64 use short_factor: the maps differ.

    Both match HF (test_every_layer_and_head_matches_hf), so the switch and the attention factor are HF's."""
    from mhacli.engine.arch.rope import inv_freq

    long_cfg = ours(models["phi3_longrope"]).config
    short_cfg = ours(models["phi3_longrope_short"]).config
    inv_long, factor_long = inv_freq(long_cfg.rope, 8, 64, 48)
    inv_short, factor_short = inv_freq(short_cfg.rope, 8, 64, 48)
    assert factor_short == 1.0 and factor_long == pytest.approx(np.sqrt(1 + np.log(4) / np.log(16)))
    assert np.allclose(inv_long * np.array(LONGROPE["long_factor"]), inv_short * np.array(LONGROPE["short_factor"]))


# --- output head, loss, verify, ablation ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def hf_loss(directory: Path, ids: tuple[int, ...], heads: tuple[tuple[int, int], ...] = ()) -> tuple[float, np.ndarray]:
    """HF's labels=ids loss and logits, with `heads` [(layer, head)] zeroed by a pre-hook on o_proj."""
    import torch

    model = hf_lm(directory)
    d = model.model.layers[0].self_attn.head_dim
    hooks = []
    for layer, head in heads:

        def pre(module, args, head=head):
            x = args[0].clone()
            x[..., head * d : (head + 1) * d] = 0.0
            return (x,)

        hooks.append(model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(pre))
    batch = torch.tensor([list(ids)])
    with torch.no_grad():
        out = model(batch, labels=batch)
    for hook in hooks:
        hook.remove()
    return float(out.loss), out.logits[0].numpy()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_and_logits_equal_hf(models, name):
    from mhacli.analyses.loss import logits, text_losses
    from mhacli.engine.forward import forward

    ckpt = ours(models[name])
    ids = tokens_of(models[name])
    last = list(forward(ckpt, np.array(ids)))[-1].residual
    loss = float(text_losses(ckpt, last, np.array(ids)).mean(dtype=np.float64))
    ref_loss, ref_logits = hf_loss(models[name], ids)
    assert loss == pytest.approx(ref_loss, rel=LOSS_RTOL)
    assert_close(f"{name} logits", logits(ckpt, last), ref_logits, 1e-4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_ablated_losses_equal_hf_with_the_head_zeroed_before_o_proj(models, name):
    from mhacli.analyses.ablate import Ablator

    ckpt = ours(models[name])
    ids = tokens_of(models[name])
    ablator = Ablator(ckpt, [np.array(ids)])
    for heads in [((0, 1),), ((1, 5),), ((0, 3), (1, 0), (1, 7))]:
        ours_loss = ablator.loss(list(heads))
        ref, _ = hf_loss(models[name], ids, heads)
        assert ours_loss == pytest.approx(ref, rel=LOSS_RTOL), f"{name} {heads}"
    assert ablator.loss([(1, 5)]) != pytest.approx(ablator.loss([]), rel=1e-6)  # the head matters


@pytest.mark.parametrize("name", sorted(MODELS))
def test_verify_passes(models, mha, name):
    r = mha("verify", TEXT, "-m", str(models[name]), "--format", "json")
    assert r.returncode == 0, r.stderr.decode()
    doc = parse_json(r.stdout)
    assert doc["passed"] is True and doc["loss"]["passed"] is True
    assert len(doc["layers"]) == MODELS[name][1].get("num_hidden_layers", 2)


# --- explain --------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def hf_capture(directory: Path, ids: tuple[int, ...], layer: int) -> dict:
    """HF's own intermediates in one layer's attention, from hooks inside its modules.

    q/k before RoPE (Phi-3: qkv_proj's output split as Phi3Attention splits it; Gemma 3: after q_norm / k_norm), the
    cos/sin of the layer's type, q/k rotated with the module's own apply_rotary_pos_emb, v, the attention weights,
    o_proj's input and output."""
    import importlib

    import torch

    model = hf_lm(directory).model
    attn = model.layers[layer].self_attn
    d, n = attn.head_dim, len(ids)
    n_head, n_kv = model.config.num_attention_heads, model.config.num_key_value_heads
    rec: dict = {}
    hooks = []
    for name in ("qkv_proj", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm"):
        if hasattr(attn, name):
            hooks.append(getattr(attn, name).register_forward_hook(lambda m, a, o, name=name: rec.__setitem__(name, o)))
    hooks.append(attn.o_proj.register_forward_pre_hook(lambda m, a: rec.__setitem__("concat", a[0][0].clone())))
    hooks.append(attn.register_forward_hook(lambda m, a, o: rec.update(out=o[0][0].clone(), weights=o[1][0].clone())))
    wanted = getattr(attn, "layer_type", None)

    def rotary_hook(module, args, output):
        if len(args) < 3 or args[2] == wanted:
            rec["cos"], rec["sin"] = output

    hooks.append(model.rotary_emb.register_forward_hook(rotary_hook))
    with torch.no_grad():
        model(torch.tensor([list(ids)]), output_attentions=True)
    for h in hooks:
        h.remove()
    if "qkv_proj" in rec:
        qkv = rec["qkv_proj"][0]
        q, k, v = qkv[:, : n_head * d], qkv[:, n_head * d : (n_head + n_kv) * d], qkv[:, (n_head + n_kv) * d :]
    else:
        q, k, v = rec["q_proj"][0], rec["k_proj"][0], rec["v_proj"][0]

    def heads(x):
        return x.view(n, -1, d).transpose(0, 1)[None]  # [1, heads, n_seq, d_head]

    q, k, v = heads(q), heads(k), heads(v)
    if "q_norm" in rec:
        q, k = rec["q_norm"], rec["k_norm"]  # [1, heads, n_seq, d_head]: Gemma 3 normalises each head
    apply = importlib.import_module(type(attn).__module__).apply_rotary_pos_emb
    # Gemma3Attention keeps attn_logit_softcapping but never passes it to its attention: only Gemma 2 caps
    softcap = attn.attn_logit_softcapping if type(attn).__name__ == "Gemma2Attention" else None
    q_rot, k_rot = apply(q, k, rec["cos"], rec["sin"])
    return {
        "q_pre": q[0].numpy(), "k_pre": k[0].numpy(), "q": q_rot[0].numpy(), "k": k_rot[0].numpy(),
        "v": v[0].numpy(), "cos": rec["cos"][0].numpy(), "sin": rec["sin"][0].numpy(),
        "weights": rec["weights"].numpy(), "concat": rec["concat"].numpy(), "out": rec["out"].numpy(),
        "scaling": float(attn.scaling), "softcap": softcap,
        "group": attn.num_key_value_groups,
        "embed_scale": float(getattr(model.embed_tokens, "embed_scale", 1.0)),  # Gemma's buffer, in float32
    }  # fmt: skip


EXPLAIN_CASES = [  # name, layer, head, query
    ("phi3_gqa", 0, 5, None),
    ("phi3_gqa", 1, 2, 17),
    ("phi3_mha_window", 2, 6, 20),
    ("phi3_longrope", 1, 3, 30),
    ("gemma2_capped", 0, 2, None),  # a sliding layer, the cap at 5
    ("gemma2_capped", 1, 7, 25),  # a global one
    ("gemma2_default_caps", 1, 0, 12),
    ("gemma2_uncapped", 0, 4, 30),
    ("gemma3_pattern", 2, 3, 33),  # local: rope_local_base_freq, QK-norm
    ("gemma3_pattern", 5, 6, None),  # global: rope_theta
    ("gemma3_scaled", 1, 1, 20),  # global, linear scaling
]


@pytest.mark.parametrize("name,layer,head,query", EXPLAIN_CASES)
def test_explain_matches_hf_intermediates(models, name, layer, head, query):
    from mhacli.analyses.explain import explain

    directory = models[name]
    ids = tokens_of(directory)
    i = len(ids) - 1 if query is None else query
    hf = hf_capture(directory, ids, layer)
    ex = explain(ours(directory), ids, layer, head, query)
    doc = json.loads(json.dumps(ex.to_dict(), allow_nan=False))
    g = head // hf["group"]
    where = f"{name} layer {layer} head {head} query {i}"
    assert doc["kv_head"] == g
    assert_close(f"{where}: query_pre_rope", doc["query_pre_rope"], hf["q_pre"][head, i], VEC_ATOL)
    assert_close(f"{where}: keys_pre_rope", doc["keys_pre_rope"], hf["k_pre"][g, : i + 1], VEC_ATOL)
    assert_close(f"{where}: cos", doc["rope"]["cos"], hf["cos"][: i + 1], 1e-6)
    assert_close(f"{where}: sin", doc["rope"]["sin"], hf["sin"][: i + 1], 1e-6)
    assert_close(f"{where}: query", doc["query"], hf["q"][head, i], VEC_ATOL)
    assert_close(f"{where}: keys", doc["keys"], hf["k"][g, : i + 1], VEC_ATOL)
    assert_close(f"{where}: values", doc["values"], hf["v"][g, : i + 1], VEC_ATOL)
    assert doc["scale"] == pytest.approx(hf["scaling"], rel=1e-12)
    scaled = (hf["q"][head, i] @ hf["k"][g, : i + 1].T) * hf["scaling"]
    assert_close(f"{where}: scaled scores", doc["scaled_scores"], scaled, VEC_ATOL)
    assert doc["softcap"] == hf["softcap"]
    if hf["softcap"] is None:
        assert doc["capped_scores"] is None
    else:
        capped = hf["softcap"] * np.tanh(scaled / hf["softcap"])
        assert_close(f"{where}: capped scores", doc["capped_scores"], capped, VEC_ATOL)
        assert np.abs(np.asarray(doc["capped_scores"]) - scaled).max() > 1e-3, "the cap does nothing here"
    assert_close(f"{where}: attention", doc["attention"], hf["weights"][head, i, : i + 1], ATTN_ATOL, relative=False)
    d = ex.d_head
    assert_close(f"{where}: head_output", doc["head_output"], hf["concat"][i, head * d : (head + 1) * d], VEC_ATOL)
    assert_close(f"{where}: output", doc["output"], hf["out"][i], VEC_ATOL)
    assert ex.matches, doc["diff_vs_forward"]
    assert doc["embed_scale"] == (pytest.approx(hf["embed_scale"], rel=1e-6) if layer == 0 else 1.0)


# --- every command ------------------------------------------------------------------------------------------------

COMMANDS = [
    ("inspect", TEXT, "-l", "1", "-H", "2"),
    ("stats", TEXT),
    ("census", "--probe-count", "2", "-j", "1"),
    ("explain", TEXT, "-l", "1", "-H", "5", "-q", "20"),
    ("ablate", TEXT, "-l", "1"),
    ("prune", TEXT, "--step", "0.5", "--seeds", "1"),
    ("circuits", "--top", "2"),
    ("circuits", "--top", "2", "--fold-ln"),
    ("info",),
    ("attribute", TEXT),
    ("lens", TEXT, "--pos", "-1"),
    # the corrupted prompt: one word changed, the same length in tokens; a site recomputed from q, k, v
    ("patch", TEXT, TEXT.replace(" the ", " is ", 1), "--answer", " the", "--wrong", " is", "--site", "k"),
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(x for x in a if x != TEXT)[:30])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_command_runs(models, mha, name, args):
    """Each command on each family, in JSON and text: exit 0, one JSON document, no error on stderr."""
    r = mha(*args, "-m", str(models[name]), "-f", "json")
    assert r.returncode == 0, r.stderr.decode()
    doc = parse_json(r.stdout)
    assert doc
    text = mha(*args, "-m", str(models[name]), "-f", "text")
    assert text.returncode == 0 and text.stdout, text.stderr.decode()


# --- circuits against TransformerLens ------------------------------------------------------------------------------

TL_ATOL = 1e-4  # TransformerLens computes in float32
CIRCUIT_MODELS = ["phi3_gqa", "gemma2_capped", "gemma3_scaled"]


@pytest.fixture(scope="module")
def bridges(models):
    pytest.importorskip("transformer_lens")
    from helpers import transformer_lens_bridge

    return {(name, fold): transformer_lens_bridge(models[name], processed=fold) for name in CIRCUIT_MODELS
            for fold in (False, True)}  # fmt: skip


def spectrum(eig: np.ndarray) -> np.ndarray:
    return np.concatenate([np.sort(np.abs(eig), axis=-1), np.sort(eig.real, axis=-1)], axis=-1)


@pytest.mark.parametrize("fold", [False, True], ids=["raw", "fold_ln"])
@pytest.mark.parametrize("name", CIRCUIT_MODELS)
def test_circuits_equal_transformer_lens(models, bridges, monkeypatch, name, fold):
    """Composition scores, OV/QK/full-OV eigenvalues and copying scores against TransformerLens' bridge.

    fold_ln folds Gemma's (1 + w) gains (NORM_GAIN_OFFSET) as TransformerLens does, and keeps W_U uncentred over the
    vocabulary for soft-capped logits, as it does. TransformerLens leaves Gemma 3's QK-norm out of W_Q and W_K (a
    norm it applies at run time); we fold its gain in (as for OLMo), so Gemma 3's Q and K scores are compared with
    the QK-norm taken out here, and the gain itself is checked by test_gemma3_qk_norm_gain_is_folded_into_w_q_w_k."""
    import mhacli
    import mhacli.engine.arch.gemma3 as gemma3
    from mhacli.analyses import circuits as C

    if name.startswith("gemma3"):
        monkeypatch.setattr(gemma3, "QK_NORM", None)
    model = mhacli.load(models[name])
    c, b = model.config, bridges[name, fold]
    f = C.head_factors(model.checkpoint, fold_ln=fold)
    layer = np.arange(c.n_layer)[:, None, None, None]
    mask = np.broadcast_to(layer < np.arange(c.n_layer)[None, None, :, None], (c.n_layer, c.n_head) * 2)
    for mode in C.MODES:
        want = b.all_composition_scores(mode).scores.detach().double().numpy()
        err = float(np.abs(C.composition_scores(f, mode)[mask] - want[mask]).max())
        assert err < TL_ATOL, f"{name} {mode} fold_ln={fold}: max |ours - TransformerLens| = {err:.2e}"
    g = C.grams(C.vocab_side(model.checkpoint, fold_ln=fold))
    full_ov = b.W_E @ b.OV @ b.W_U
    n = c.n_layer * c.n_head
    for what, got, theirs in [
        ("OV", C.ov_eigenvalues(f), b.OV.eigenvalues),
        ("QK", C.qk_eigenvalues(f), b.QK.eigenvalues),
        ("full OV", C.full_ov_eigenvalues(f, g), full_ov.eigenvalues),
    ]:
        theirs = theirs.detach().numpy().reshape(n, -1)
        err = float(np.abs(spectrum(got) - spectrum(theirs)).max()) / max(1.0, float(np.abs(theirs).max()))
        assert err < TL_ATOL, f"{name} {what} fold_ln={fold}: eigenvalues differ by {err:.2e} (relative)"
    eig = full_ov.eigenvalues.detach().numpy().reshape(c.n_layer, c.n_head, -1)
    err = float(np.abs(C.copying_scores(f, g) - eig.real.sum(-1) / np.abs(eig).sum(-1)).max())
    assert err < TL_ATOL, f"{name} fold_ln={fold}: copying scores differ by {err:.2e}"


def test_gemma3_qk_norm_gain_is_folded_into_w_q_w_k(models):
    """W_Q and W_K of a Gemma 3 head: q_proj's / k_proj's rows of the head times the per-head gain 1 + q_norm.weight."""
    from safetensors.numpy import load_file

    import mhacli
    from mhacli.analyses import circuits as C

    model = mhacli.load(models["gemma3_scaled"])
    f = C.head_factors(model.checkpoint)
    w = load_file(models["gemma3_scaled"] / "model.safetensors")
    d, layer, head = 8, 1, 5
    a = f"model.layers.{layer}.self_attn."
    want_q = w[a + "q_proj.weight"][head * d : (head + 1) * d].T * (1 + w[a + "q_norm.weight"])
    want_k = w[a + "k_proj.weight"][(head // 4) * d : (head // 4 + 1) * d].T * (1 + w[a + "k_norm.weight"])
    i = layer * 8 + head
    assert np.abs(f.w_q[i] - want_q).max() < 1e-6 and np.abs(f.w_k[i] - want_k).max() < 1e-6


# --- info ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_info_shows_soft_caps_and_local_global_layers(models, mha, name):
    from transformers import AutoConfig

    h = AutoConfig.from_pretrained(models[name])
    doc = parse_json(mha("info", "-m", str(models[name]), "--format", "json").stdout)
    a = doc["attention"]
    caps = getattr(h, "attn_logit_softcapping", None) if h.model_type == "gemma2" else None
    assert a["softcap"] == [caps] * h.num_hidden_layers
    assert a["logit_softcap"] == getattr(h, "final_logit_softcapping", None)
    types = getattr(h, "layer_types", None)
    if types is not None:
        assert a["sliding_window"] == [h.sliding_window if t == "sliding_attention" else None for t in types]
    text = mha("info", "-m", str(models[name]), "--format", "text").stdout.decode()
    assert ("soft-cap" in text) == (caps is not None or a["logit_softcap"] is not None)
    if caps is not None:
        assert f"attention scores at {caps:g} in every layer" in text
    if h.model_type == "gemma3_text":
        assert "rope (sliding layers)" in text and "qk_norm                  true" in text


def test_final_soft_cap_bites_on_the_test_model(models):
    """The capped model's logits are visibly capped (else the loss test could not see a missing cap)."""
    from mhacli.analyses.loss import logits, output_head
    from mhacli.engine.forward import final_norm, forward

    ckpt = ours(models["gemma2_capped"])
    last = list(forward(ckpt, IDS))[-1].residual
    raw = final_norm(ckpt, last) @ output_head(ckpt).T
    capped = logits(ckpt, last)
    assert np.abs(raw).max() > 0.6 and np.abs(capped).max() < 0.5 and np.abs(raw - capped).max() > 0.1


# --- GGUF -----------------------------------------------------------------------------------------------------------

GGUF_NAMES = {
    "embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output", "input_layernorm": "attn_norm",
    "self_attn.qkv_proj": "attn_qkv", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "mlp.gate_up_proj": "ffn_up", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}  # fmt: skip
GEMMA_NORMS = {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
               "post_feedforward_layernorm": "post_ffw_norm"}  # fmt: skip


def write_gguf(hf_dir: Path, path: Path, arch: str, meta: dict, extra: dict | None = None) -> Path:
    """llama.cpp's layout of an HF checkpoint, float32.

    Its tensor names, Gemma's norms stored as 1 + w (as convert_hf_to_gguf.py writes them), no Q/K permutation
    (these families use NeoX-style rotary in llama.cpp)."""
    import re

    gguf = pytest.importorskip("gguf")
    from safetensors.numpy import load_file

    names = GGUF_NAMES | (GEMMA_NORMS if arch.startswith("gemma") else {"post_attention_layernorm": "ffn_norm"})
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in meta.items():
        getattr(w, f"add_{key}")(value)
    for key, value in load_file(str(hf_dir / "model.safetensors")).items():
        key = re.sub(r"^model\.", "", key)
        m = re.match(r"^layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        stem, kind = (m.group(2), m.group(3)) if m else key.rsplit(".", 1)
        name = f"blk.{m.group(1)}.{names[stem]}.{kind}" if m else f"{names[stem]}.{kind}"
        if arch.startswith("gemma") and key.endswith("norm.weight"):
            value = value + np.float32(1.0)
        w.add_tensor(name, value.astype(np.float32))
    for name, value in (extra or {}).items():
        w.add_tensor(name, np.asarray(value, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def hf_gguf_outputs(path: Path, ids) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """transformers' own GGUF load of the file (eager, float32): attentions and hidden states per layer."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(
        str(path.parent), gguf_file=path.name, attn_implementation="eager", dtype=torch.float32
    ).eval()
    with torch.no_grad():
        out = model(torch.tensor([list(ids)]), output_attentions=True, output_hidden_states=True)
    return [a[0].numpy() for a in out.attentions], [h[0].numpy() for h in out.hidden_states[1:]]


def compare_to(path: Path, reference: tuple[list[np.ndarray], list[np.ndarray]], ids) -> float:
    from mhacli.engine.forward import final_norm, forward
    from mhacli.io.weights import load_model

    ckpt = load_model(str(path))
    attn, hidden = reference
    worst = 0.0
    for t in forward(ckpt, np.asarray(ids)):
        h = final_norm(ckpt, t.residual) if t.layer == ckpt.config.n_layer - 1 else t.residual
        err = float(np.abs(t.attention - attn[t.layer]).max())
        assert err <= ATTN_ATOL, f"{path.name} layer {t.layer}: attention error {err:.3e}"
        assert_close(f"{path.name} layer {t.layer} hidden", h, hidden[t.layer], HIDDEN_ATOL)
        worst = max(worst, err)
    return worst


def common_meta(fields: dict, head_dim: int) -> dict:
    return {"block_count": fields["num_hidden_layers"], "context_length": fields["max_position_embeddings"],
            "embedding_length": fields["hidden_size"], "feed_forward_length": fields["intermediate_size"],
            "head_count": fields["num_attention_heads"], "head_count_kv": fields["num_key_value_heads"],
            "layer_norm_rms_eps": 1e-6, "rope_freq_base": 10000.0, "vocab_size": fields["vocab_size"],
            "key_length": head_dim, "value_length": head_dim}  # fmt: skip


def test_phi3_gguf_matches_the_original(tmp_path, bos_dir):
    """A Phi-3 GGUF as llama.cpp writes it (fused attn_qkv and ffn_up) against the safetensors original.

    transformers' GGUF loader (5.x) does not read these fused tensors into Phi3's qkv_proj / gate_up_proj (it leaves
    them at their random init), so its own load of the file cannot be the reference."""
    from mhacli.io.weights import load_model

    fields = PHI3 | {"rms_norm_eps": 1e-6}
    hf_dir = build(tmp_path / "hf", "phi3", fields, bos_dir, seed=80)
    path = write_gguf(hf_dir, tmp_path / "phi3.gguf", "phi3", common_meta(fields, 8))
    got, want = load_model(str(path)).config, ours(hf_dir).config
    for key in ("n_layer", "n_head", "n_kv_head", "d_head", "intermediate_size", "rope", "layer_types", "window"):
        assert getattr(got, key) == getattr(want, key), key
    compare_to(path, hf_outputs(hf_dir, IDS), IDS)


def test_phi3_longrope_gguf_matches_the_original(tmp_path, bos_dir):
    """longrope from the rope_factors tensors and rope.scaling metadata llama.cpp writes.

    transformers' GGUF loader ignores them, so the reference is the safetensors original."""
    fields = PHI3 | {"rms_norm_eps": 1e-6, "rope_parameters": LONGROPE, "original_max_position_embeddings": ORIGINAL}
    hf_dir = build(tmp_path / "hf", "phi3", fields, bos_dir, seed=81)
    attn_factor = float(np.sqrt(1 + np.log(4) / np.log(16)))
    meta = common_meta(fields, 8) | {"rope_scaling_orig_ctx_len": ORIGINAL, "rope_scaling_attn_factors": attn_factor}
    extra = {"rope_factors_long.weight": LONGROPE["long_factor"], "rope_factors_short.weight": LONGROPE["short_factor"]}
    path = write_gguf(hf_dir, tmp_path / "phi3.gguf", "phi3", meta, extra)
    from mhacli.io.weights import load_model

    rope = load_model(str(path)).config.rope
    assert (rope.rope_type, rope.original_max_position_embeddings) == ("longrope", ORIGINAL)
    compare_to(path, hf_outputs(hf_dir, IDS), IDS)


@pytest.mark.parametrize("kind", ["gemma2", "gemma3_text"])
def test_gemma_gguf_matches_transformers_gguf_load(tmp_path, bos_dir, kind):
    """Gemma 2 and 3 GGUFs against transformers' GGUF load and the safetensors original.

    head_dim 256 = query_pre_attn_scalar: transformers' GGUF loader takes the scalar from Gemma's config defaults
    (256), llama.cpp from head_dim; here both agree. Gemma 3: six layers, five local and one global."""
    layers = 2 if kind == "gemma2" else 6
    fields = GEMMA | {"head_dim": 256, "query_pre_attn_scalar": 256, "num_attention_heads": 2,
                      "num_key_value_heads": 1, "num_hidden_layers": layers}  # fmt: skip
    hf_dir = build(tmp_path / "hf", kind, fields, bos_dir, seed=82)
    meta = common_meta(fields, 256) | {"sliding_window": WINDOW}
    if kind == "gemma2":
        meta |= {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
    else:
        meta["rope_freq_base"] = 1_000_000.0
    path = write_gguf(hf_dir, tmp_path / "gemma.gguf", "gemma2" if kind == "gemma2" else "gemma3", meta)
    from mhacli.io.weights import load_model

    ckpt = load_model(str(path))
    assert ckpt.config.model_type == kind and ckpt.config.attn_scale(0) == 256**-0.5
    assert [ckpt.config.sliding_window(i) for i in range(layers)] == (
        [WINDOW, None] if kind == "gemma2" else [WINDOW] * 5 + [None]
    )
    weight = ckpt.layer(0)["input_layernorm.weight"]  # 1 + w in the file, w again here
    assert np.abs(weight).max() < 0.5
    compare_to(path, hf_gguf_outputs(path, IDS), IDS)
    compare_to(path, hf_outputs(hf_dir, IDS), IDS)


# --- explain's views and bad configs -------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [40, 80, 160])
@pytest.mark.parametrize("name,layer,query", [("gemma2_capped", 0, 20), ("gemma3_pattern", 2, None)])
def test_explain_view_shows_the_cap_and_qk_norm_and_fits(models, width, name, layer, query):
    import io
    import re

    from rich.cells import cell_len
    from rich.console import Console

    from mhacli.analyses.explain import explain
    from mhacli.io.tokenizer import load_tokenizer
    from mhacli.views.terminal import explain_lines, explain_view

    directory = models[name]
    ids = tokens_of(directory)
    ex = explain(ours(directory), ids, layer, 3, query)
    tokens = load_tokenizer(directory).display(list(ids))
    laid_out = ["".join(t for t, _ in line) for line in explain_lines(ex, tokens, width, full=False)]
    assert all(cell_len(line) <= width for line in laid_out), [line for line in laid_out if cell_len(line) > width]
    text = " ".join(" ".join(laid_out).split())
    if width < 80:  # narrower, long names are cut across lines: the words are checked at 80 and 160
        pass
    elif name.startswith("gemma2"):
        assert "soft-cap (attn_logit_softcapping = 5)" in text and "capped" in text
        assert "query_pre_attn_scalar" in text and "γ = 1 + layers.0.input_layernorm.weight" in text
    else:
        assert "QK-norm" in text and "each head's d_head values" in text and "1 + layers.2.self_attn.q_norm" in text
        assert "soft-cap" not in text
    buf = io.StringIO()
    Console(width=width, file=buf, force_terminal=True, color_system="truecolor").print(
        explain_view(ex, tokens, width, full=False)
    )
    assert len(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue()).splitlines()) == len(laid_out)


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"model_type": "gemma2", "attn_logit_softcapping": 0}, "attn_logit_softcapping must be positive"),
        ({"model_type": "gemma2", "final_logit_softcapping": "big"}, "final_logit_softcapping must be a finite"),
        ({"model_type": "gemma2", "attn_logit_softcapping": 1e39}, "attn_logit_softcapping 1e+39 is beyond float32"),
        ({"model_type": "gemma2", "query_pre_attn_scalar": -1}, "query_pre_attn_scalar must be positive"),
        ({"model_type": "gemma2", "query_pre_attn_scalar": 1e-300}, "gives an attention scale beyond float32"),
        ({"model_type": "gemma3_text", "use_bidirectional_attention": True}, "use_bidirectional_attention"),
        ({"model_type": "gemma3_text", "num_hidden_layers": 2, "layer_types": ["full_attention"]},
         "layer_types must be a list of 2"),
        ({"model_type": "gemma3_text", "hidden_activation": "prelu"}, "hidden_activation 'prelu' is not supported"),
        ({"model_type": "gemma3_text", "rope_parameters": {"full_attention": {"rope_type": "su"}}},
         "rope_parameters.full_attention.rope_type 'su' is not supported"),
    ],
)  # fmt: skip
def test_bad_gemma_configs_name_the_field(raw, message):
    from mhacli.config import parse_config
    from mhacli.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"model_type": "gemma2"},
        {"model_type": "gemma2", "num_hidden_layers": 4, "query_pre_attn_scalar": 144, "head_dim": 128},
        {"model_type": "gemma3_text"},
        {"model_type": "gemma3_text", "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "rope_theta": 1e6},
        {"model_type": "gemma3_text", "rope_local_base_freq": 20000.0, "sliding_window_pattern": 3,
         "num_hidden_layers": 7},
    ],
    ids=lambda r: json.dumps(r)[:70],
)  # fmt: skip
def test_gemma_omitted_fields_as_hf(raw):
    """Gemma2Config / Gemma3TextConfig's defaults, layer types and per-layer-type rotary parameters."""
    import transformers

    from mhacli.config import parse_config

    hf = transformers.AutoConfig.for_model(raw["model_type"]).__class__(
        **{k: v for k, v in raw.items() if k != "model_type"}
    )
    c = parse_config(json.loads(json.dumps(raw)))
    assert (c.n_embd, c.n_head, c.n_kv_head, c.d_head, c.n_layer, c.vocab_size, c.n_positions) == (
        hf.hidden_size, hf.num_attention_heads, hf.num_key_value_heads, hf.head_dim, hf.num_hidden_layers,
        hf.vocab_size, hf.max_position_embeddings,
    )  # fmt: skip
    assert c.layer_types == tuple(hf.layer_types) and c.window == hf.sliding_window
    assert c.attn_scale(0) == hf.query_pre_attn_scalar**-0.5 and c.logit_softcap == hf.final_logit_softcapping
    assert c.hidden_act == hf.hidden_activation and c.tie_word_embeddings is hf.tie_word_embeddings
    params = hf.rope_parameters
    if raw["model_type"] == "gemma2":
        assert (c.rope.rope_type, c.rope.rope_theta) == (params["rope_type"], params["rope_theta"])
        assert c.attn_softcap(0) == hf.attn_logit_softcapping
    else:
        for rope, kind in ((c.rope, "full_attention"), (c.sliding_rope, "sliding_attention")):
            assert (rope.rope_type, rope.rope_theta) == (params[kind]["rope_type"], params[kind]["rope_theta"])
            assert rope.factor == params[kind].get("factor")
        assert c.attn_softcap(0) is None  # Gemma3Attention does not pass it to its attention


@pytest.mark.parametrize("pair", [("phi3_gqa", "phi3_longrope"), ("gemma2_capped", "gemma3_scaled")])
def test_diff_of_a_model_with_itself_is_zero_and_with_another_is_not(models, mha, pair):
    a, b = (str(models[name]) for name in pair)
    same = parse_json(mha("diff", a, a, TEXT, "-f", "json").stdout)
    assert same["heads"] and all(h["divergence"] == 0.0 for h in same["heads"])
    other = mha("diff", a, b, TEXT, "-f", "json")
    assert other.returncode == 0, other.stderr.decode()
    assert max(h["divergence"] for h in parse_json(other.stdout)["heads"]) > 1e-3


class TileMap:
    """A sink that writes the tiles it is given into a map of its own (hidden entries 0)."""

    concurrent = True

    def __init__(self, n_head: int, n_seq: int):
        self.probs = np.zeros((n_head, n_seq, n_seq), dtype=np.float32)

    def add(self, h, a, b, lo, p):
        self.probs[h : h + len(p), a:b, lo:b] = p


@pytest.mark.parametrize("name", ["phi3_mha_window", "gemma2_capped", "gemma3_pattern"])
def test_streamed_maps_equal_kept_ones(models, name):
    """Maps streamed to sinks (stats, census) equal the kept ones, which match HF: soft-caps and windows included."""
    from mhacli.engine.forward import forward

    ckpt = ours(models[name])
    kept = list(forward(ckpt, IDS))
    sinks = {layer: TileMap(ckpt.config.n_head, len(IDS)) for layer in range(ckpt.config.n_layer)}
    streamed = list(forward(ckpt, IDS, sinks=sinks.get))
    for k, s in zip(kept, streamed):
        assert s.attention is None and np.abs(sinks[s.layer].probs - k.attention).max() <= 1e-7
        assert np.abs(s.residual - k.residual).max() <= 1e-6


# --- attribution and the lens ----------------------------------------------------------------------------------------


def hf_head_logits(directory: Path, ids: tuple[int, ...]) -> np.ndarray:
    """HF's logits before any final soft-cap: lm_head's own output, captured by a forward hook, [n_seq, vocab]."""
    import torch

    model = hf_lm(directory)
    seen = {}
    hook = model.lm_head.register_forward_hook(lambda module, args, out: seen.update(out=out))
    with torch.no_grad():
        model(torch.tensor([list(ids)]))
    hook.remove()
    return seen["out"][0].double().numpy()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_attribution_sums_to_hf_pre_cap_logit_difference(models, name):
    """Attribution splits the logit before the final soft-cap (the cap is not additive): HF's lm_head output."""
    from mhacli.analyses.attribute import attribute

    ids = tokens_of(models[name])[:24]
    pre = hf_head_logits(models[name], ids)[-1]
    answer, wrong = int(np.argmax(pre)), int(np.argmin(pre))
    got = attribute(ours(models[name]), np.array(ids), answer, wrong, -1, kinds=False)
    want = pre[answer] - pre[wrong]
    assert abs(got.value - want) < 1e-4 * abs(want), f"{name}: {got.value} vs HF pre-cap {want}"
    assert got.completeness_error < 1e-9 * max(1.0, abs(got.value))
    post_norm = name.startswith("gemma")  # Gemma normalises the attention output: shares at its actual scale
    assert any(c.component == "remainder" for c in got.components) == post_norm
    if post_norm:  # at the actual scale the split is exact: the remainder is float32 rounding only
        heads = sum(abs(c.attribution) for c in got.components if c.component == "head")
        rest = sum(abs(c.attribution) for c in got.components if c.component == "remainder")
        assert rest < 1e-4 * heads


@pytest.mark.parametrize("name", ["gemma2_capped", "gemma3_scaled", "phi3_gqa"])
def test_lens_last_row_is_hf_capped_distribution(models, name):
    """The lens' last layer is the model's own prediction: HF's soft-capped logits where the model caps them."""
    import torch

    from mhacli.analyses.lens import lens

    ids = tokens_of(models[name])[:24]
    _, logits = hf_loss(models[name], ids)
    probs = torch.softmax(torch.tensor(logits, dtype=torch.float64), -1).numpy()
    _, cells = lens(ours(models[name]), np.array(ids), top=5).layers[-1]
    for cell in cells:
        err = float(np.abs(np.array(cell.top_probs) - probs[cell.pos][cell.top_ids]).max())
        assert err < 1e-5, f"{name} lens last row at {cell.pos} vs HF: {err:.2e}"
        assert cell.top_ids[0] == int(np.argmax(probs[cell.pos]))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_patching_recomputes_each_layers_attention_as_the_forward(models, name):
    """Patching q, k, v or a pattern recomputes a layer's z from q, k, v: unpatched, it is the forward's own z.

    Soft-caps and windows included."""
    from mhacli.analyses.patch import attend, record

    ckpt = ours(models[name])
    ids = np.array(tokens_of(models[name])[:24])
    run = record(ckpt, ids)
    for layer, acts in enumerate(run.acts):
        z = attend(ckpt, layer, acts.q, acts.k, acts.v)
        assert_close(f"{name} layer {layer} z", z, acts.z, 1e-5)
