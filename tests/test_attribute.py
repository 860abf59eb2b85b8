"""Direct logit attribution and the logit lens (mhacli.analyses.attribute, mhacli.analyses.lens, the commands).

Against TransformerLens (its bridge over the same HF checkpoint): per-head attribution equals its
`stack_head_results` read through its frozen final norm (`apply_ln_to_stack`; `logit_attrs` once its weights are
processed, which folds the norm's gain into W_U: raw, TL's `logit_attrs` leaves the gain out, so the raw reference
multiplies it back), with and without --fold-value-bias matching its raw and processed modes; the embeddings and MLPs
equal its hooks; the lens equals `accumulated_resid(apply_ln=True)` times W_U. Against HF: the components sum to HF's
logit difference for every family, the lens' last row is HF's distribution, OLMo's post-norm head shares equal a
reference built from HF's o_proj. On the real model: the README's figures.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    LLAMA,
    MODELS,
    bos_tokenizer,
    build,
    parse_json,
    run_mha,
    smollm2_gguf,
    train_tokenizer,
    transformer_lens_bridge,
)

import mhacli
from mhacli.analyses.attribute import attribute
from mhacli.analyses.lens import lens
from mhacli.errors import UsageError
from mhacli.io.weights import load_model

TL_ATOL = 1e-4  # TransformerLens computes in float32
COMPLETE_RTOL = 1e-4  # the sum against HF's logit (difference), relative
LENS_ATOL = 1e-5  # our last lens row against HF's probabilities
GPT2 = dict(n_layer=3, n_head=4, n_embd=32, n_positions=64, vocab_size=400, bos_token_id=0, eos_token_id=0)
LLAMA_GQA = LLAMA | {"num_hidden_layers": 3, "attention_bias": True}  # 8 query heads over 2 K/V heads, value biases
IDS = [0, 5, 17, 93, 40, 5, 17, 250, 3, 71, 12]
POS = -2  # an inner position: the analysis must not read the last one
FAMILIES = ["gpt2", "llama_gqa", "llama_mqa", "mistral_window", "bigcode_mqa", "olmo2", "olmo3"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok")), bos_tokenizer(tmp_path_factory.mktemp("bos"))


@pytest.fixture(scope="module")
def tl_models(tokenizers, tmp_path_factory) -> dict[str, Path]:
    tok, bos = tokenizers
    return {
        "gpt2": build(tmp_path_factory.mktemp("gpt2"), "gpt2", GPT2, tok, seed=1),
        "llama_gqa": build(tmp_path_factory.mktemp("llama"), "llama", LLAMA_GQA, bos, seed=2),
    }


@pytest.fixture(scope="module")
def family_models(tokenizers, tmp_path_factory) -> dict[str, Path]:
    tok, bos = tokenizers
    out = {}
    for name in FAMILIES:
        if name == "gpt2":
            out[name] = build(tmp_path_factory.mktemp(name), "gpt2", GPT2, tok, seed=3)
        else:
            out[name] = build(tmp_path_factory.mktemp(name), MODELS[name]["kind"], MODELS[name]["fields"], bos, seed=3)
    return out


@pytest.fixture(scope="module")
def caches(tl_models):
    """(name, processed) -> (bridge, its cache of IDS)."""
    pytest.importorskip("transformer_lens")
    import torch

    out = {}
    for name, d in tl_models.items():
        for processed in (False, True):
            bridge = transformer_lens_bridge(d, processed=processed)
            _, cache = bridge.run_with_cache(torch.tensor([IDS]))
            out[name, processed] = (bridge, cache)
    return out


def hf_logits(directory: Path) -> np.ndarray:
    """[n_seq, vocab] float64, HF eager float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].double().numpy()


# --- TransformerLens --------------------------------------------------------------------------------------------------


def tl_reference(bridge, cache, stack, answer: int, wrong: int | None, processed: bool) -> np.ndarray:
    """Components [k, 1, n_embd] through TL's frozen final norm, read along W_U[answer] (- W_U[wrong])."""
    import torch

    if processed:  # the gain is folded into W_U: TL's own logit_attrs
        wrong_t = None if wrong is None else torch.tensor([wrong])
        attrs = cache.logit_attrs(stack, tokens=torch.tensor([answer]), incorrect_tokens=wrong_t, pos_slice=POS)
        return attrs.detach().double().numpy()[:, 0]
    normed = cache.apply_ln_to_stack(stack, pos_slice=POS)[:, 0] * bridge.ln_final.w.detach()
    w_u = bridge.W_U.detach()
    direction = w_u[:, answer] - (0 if wrong is None else w_u[:, wrong])
    return (normed @ direction).detach().double().numpy()


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
@pytest.mark.parametrize("processed", [False, True], ids=["raw", "fold_value_bias"])
def test_heads_equal_transformer_lens(tl_models, caches, name, processed):
    bridge, cache = caches[name, processed]
    ckpt = load_model(str(tl_models[name]))
    stack = cache.stack_head_results(layer=-1, pos_slice=POS)  # [n_layer * n_head, 1, n_embd]
    for wrong in (11, None) if not processed else (11,):  # processed TL centres W_U: single logits differ
        ours = attribute(ckpt, np.array(IDS), 7, wrong, POS, fold_value_bias=processed, kinds=False)
        want = tl_reference(bridge, cache, stack, 7, wrong, processed)
        err = np.abs(ours.heads().ravel() - want).max()
        assert err < TL_ATOL, f"{name} heads vs TransformerLens ({'processed' if processed else 'raw'}): {err:.2e}"
        assert np.abs(want).max() > 1e-3  # the heads write something: the comparison is not of zeros


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
@pytest.mark.parametrize("processed", [False, True], ids=["raw", "fold_value_bias"])
def test_embed_biases_and_mlps_equal_transformer_lens(tl_models, caches, name, processed):
    """embed, attn_bias and mlp equal TransformerLens' hook_embed (+ hook_pos_embed), b_O and hook_mlp_out.

    Each through the same frozen norm; processed, its b_O holds the folded value biases."""
    import torch

    bridge, cache = caches[name, processed]
    ckpt = load_model(str(tl_models[name]))
    found = attribute(ckpt, np.array(IDS), 7, 11, POS, fold_value_bias=processed, kinds=False)
    ours = {(c.component, c.layer): c.attribution for c in found.components}
    n_layer = ckpt.config.n_layer
    embed = cache["hook_embed"] + (cache["hook_pos_embed"] if "hook_pos_embed" in cache else 0)
    rows = [embed[0, POS]] + [cache[f"blocks.{layer}.hook_mlp_out"][0, POS] for layer in range(n_layer)]
    rows += [bridge.b_O[layer] for layer in range(n_layer)]
    stack = torch.stack([r.detach() for r in rows])[:, None]
    want = tl_reference(bridge, cache, stack, 7, 11, processed)
    got = [ours["embed", None]] + [ours["mlp", layer] for layer in range(n_layer)]
    got += [ours["attn_bias", layer] for layer in range(n_layer)]
    err = np.abs(np.array(got) - want).max()
    assert err < TL_ATOL, f"{name} embed, MLPs and attention biases vs TransformerLens: {err:.2e}"
    assert {c.component for c in found.components} == {"embed", "head", "attn_bias", "mlp"} | (
        {"norm_bias"} if name == "gpt2" else set()
    )
    assert (found.wrong, found.metric, found.fold_value_bias) == (11, "logit_diff", processed)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_lens_equals_transformer_lens_accumulated_resid(tl_models, caches, name):
    import torch

    bridge, cache = caches[name, False]
    resid = cache.accumulated_resid(apply_ln=True)[:, 0]  # [n_layer + 1, n_seq, n_embd], each at its own scale
    probs = torch.softmax((resid.detach() @ bridge.W_U.detach()).double(), -1).numpy()
    got = lens(load_model(str(tl_models[name])), np.array(IDS), top=4)
    assert len(got.layers) == probs.shape[0] == load_model(str(tl_models[name])).config.n_layer + 1
    worst = 0.0
    for k, (layer, cells) in enumerate(got.layers):
        assert layer == k - 1
        for cell in cells:
            p = probs[k, cell.pos]
            worst = max(worst, float(np.abs(np.array(cell.top_probs) - p[cell.top_ids]).max()))
            assert cell.top_ids[0] == int(np.argmax(p))
            if cell.next_id is not None:
                worst = max(worst, abs(cell.next_prob - p[cell.next_id]))
                assert cell.next_rank == 1 + int(np.sum(p > p[cell.next_id]))
    assert worst < TL_ATOL, f"{name} lens vs TransformerLens: {worst:.2e}"


# --- HF: completeness and the lens' last row, every family ---------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_components_sum_to_hf_logit_difference(family_models, name):
    logits = hf_logits(family_models[name])[POS]
    answer, wrong = int(np.argmax(logits)), int(np.argmin(logits))
    ckpt = load_model(str(family_models[name]))
    for w in (wrong, None):
        want = logits[answer] - (0.0 if w is None else logits[w])
        sums = []
        for fold in (False, True):
            a = attribute(ckpt, np.array(IDS), None, w, POS, fold_value_bias=fold, kinds=False)
            assert a.answer == answer  # the default answer: the model's top prediction
            rel = abs(a.sum - want) / abs(want)
            assert rel < COMPLETE_RTOL, f"{name} sum {a.sum} vs HF {want}: {rel:.2e} relative"
            assert a.completeness_error < 1e-9 * max(1.0, abs(a.value))  # closes by construction, float64
            sums.append(a.sum)
        assert abs(sums[0] - sums[1]) < 1e-9 * max(1.0, abs(sums[0]))  # folding moves shares, never the sum
    kinds = {c.component for c in a.components}
    assert ("remainder" in kinds) == name.startswith("olmo")  # only the post-norm families need one
    n_layer = ckpt.config.n_layer
    for kind in ("mlp", "remainder") if name.startswith("olmo") else ("mlp",):
        assert [c.layer for c in a.components if c.component == kind] == list(range(n_layer))


def test_lens_cells_name_the_next_token_at_every_position(family_models, monkeypatch):
    """One cell per layer and position, the actual next token in each (none at the last), the same in blocks."""
    import mhacli.analyses.lens as lens_module

    ckpt = load_model(str(family_models["gpt2"]))
    whole = lens(ckpt, np.array(IDS), top=40)  # more tokens than n_embd (32)
    monkeypatch.setattr(lens_module, "POS_BLOCK", 3)
    blocked = lens(ckpt, np.array(IDS), top=40)
    assert [layer for layer, _ in whole.layers] == [-1, 0, 1, 2]
    for (_, cells), (_, again) in zip(whole.layers, blocked.layers, strict=True):
        assert [c.pos for c in cells] == list(range(len(IDS)))
        assert [c.next_id for c in cells] == [*IDS[1:], None]
        assert all(len(c.top_ids) == 40 for c in cells)
        for c, d in zip(cells, again, strict=True):  # a GEMM of other rows may differ in its last bits
            assert (c.pos, c.top_ids, c.next_id, c.next_rank) == (d.pos, d.top_ids, d.next_id, d.next_rank)
            assert np.allclose(c.top_probs, d.top_probs, rtol=1e-5, atol=1e-9)
    assert whole.layers[-1][1][-1].next_prob is None and whole.layers[-1][1][-1].next_rank is None
    some = lens(ckpt, np.array(IDS), top=2, positions=[-1, 3, 3])
    assert some.positions == [3, len(IDS) - 1] and [c.next_id for c in some.layers[0][1]] == [IDS[4], None]


@pytest.mark.parametrize("name", FAMILIES)
def test_lens_last_row_is_hf_distribution(family_models, name):
    import torch

    probs = torch.softmax(torch.tensor(hf_logits(family_models[name])), -1).numpy()
    got = lens(load_model(str(family_models[name])), np.array(IDS), top=5)
    last_layer, cells = got.layers[-1]
    assert last_layer == load_model(str(family_models[name])).config.n_layer - 1
    for cell in cells:
        p = probs[cell.pos]
        err = float(np.abs(np.array(cell.top_probs) - p[cell.top_ids]).max())
        assert err < LENS_ATOL, f"{name} lens last row at {cell.pos} vs HF: {err:.2e}"
        assert cell.top_ids[0] == int(np.argmax(p))


def test_olmo_post_norm_head_shares_equal_a_reference_from_hf(family_models):
    """Head h's share: (z_h W_O,h) * s * g at the post-attention norm's actual scale, through the frozen final norm."""
    import torch
    from transformers import AutoModelForCausalLM

    d = family_models["olmo2"]
    model = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    seen = {}
    hooks = [
        layer.self_attn.o_proj.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, (i[0][0], o[0])))
        for k, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        out = model(torch.tensor([IDS]), output_hidden_states=True)
    for h in hooks:
        h.remove()
    cfg = model.config
    n_head, d_head = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    final = out.hidden_states[-1][0, POS].double()  # HF's last hidden state is after the final norm
    ckpt = load_model(str(d))
    ours = attribute(ckpt, np.array(IDS), 7, 11, POS, kinds=False)
    w_u = model.lm_head.weight.detach().double()
    direction = w_u[7] - w_u[11]
    # the final norm frozen at the real residual: HF's residual before model.norm (its input, hooked)
    resid = {}
    hook = model.model.norm.register_forward_hook(lambda m, i, o: resid.__setitem__("x", i[0][0, POS].double()))
    with torch.no_grad():
        model(torch.tensor([IDS]))
    hook.remove()
    x = resid["x"]
    s_final = 1.0 / torch.sqrt((x * x).mean() + cfg.rms_norm_eps)
    g_final = model.model.norm.weight.detach().double()
    assert torch.allclose(x * s_final * g_final, final, atol=1e-5)
    for k, layer in enumerate(model.model.layers):
        z, o = (t[POS].double() for t in seen[k])
        s = 1.0 / torch.sqrt((o * o).mean() + cfg.rms_norm_eps)
        g = layer.post_attention_layernorm.weight.detach().double()
        w_o = layer.self_attn.o_proj.weight.detach().double()  # [n_embd, n_head * d_head]
        for h in range(n_head):
            write = z[h * d_head : (h + 1) * d_head] @ w_o[:, h * d_head : (h + 1) * d_head].T * s * g
            want = float((write * s_final * g_final) @ direction)
            assert abs(ours.heads()[k, h] - want) < TL_ATOL, f"olmo2 L{k}H{h}: {ours.heads()[k, h]} vs {want}"
    remainder = sum(c.attribution for c in ours.components if c.component == "remainder")
    assert abs(remainder) < 1e-5 * max(1.0, abs(ours.value))  # at the actual scale the split is exact: rounding only


def test_top_k_is_argsort_largest_first():
    from mhacli.analyses.attribute import top_k

    rng = np.random.default_rng(0)
    for n in (1, 5, 50):
        row = rng.standard_normal(n).astype(np.float32)
        for k in range(1, n + 2):
            want = np.argsort(-row, kind="stable")[: min(k, n)]
            assert top_k(row, k).tolist() == want.tolist(), (n, k)
    assert top_k(np.array([1.0, 3.0, 3.0, 0.0]), 2).tolist() == [1, 2]  # ties: the smaller index first


def test_unembed_bias_is_a_component_and_in_the_value(family_models, monkeypatch):
    """A family whose output head has a bias (none of the families yet; e.g. Phi-2): its share and the value."""
    from mhacli.analyses.loss import output_head
    from mhacli.engine.arch import gpt2 as gpt2_family

    ckpt = load_model(str(family_models["gpt2"]))
    b_u = np.random.default_rng(1).standard_normal(ckpt.config.vocab_size).astype(np.float32)

    class WithBias:
        config = ckpt.config
        tensors = {**{k: None for k in getattr(ckpt, "tensors", {})}, "lm_head.bias": None}

        def get(self, name):
            return b_u if name == "lm_head.bias" else ckpt.get(name)

        def layer(self, layer):
            return ckpt.layer(layer)

    monkeypatch.setattr(gpt2_family, "LM_HEAD_BIAS", "lm_head.bias", raising=False)
    plain = attribute(ckpt, np.array(IDS), 7, 11, POS, kinds=False)
    biased = attribute(WithBias(), np.array(IDS), 7, 11, POS, kinds=False)
    share = {c.component: c.attribution for c in biased.components}["unembed_bias"]
    assert share == pytest.approx(float(b_u[7]) - float(b_u[11]), abs=1e-12)
    assert biased.value == pytest.approx(plain.value + share, abs=1e-9)
    assert biased.completeness_error < 1e-9
    alone = attribute(WithBias(), np.array(IDS), 7, None, POS, kinds=False)
    assert {c.component: c.attribution for c in alone.components}["unembed_bias"] == pytest.approx(float(b_u[7]))
    plain_alone = attribute(ckpt, np.array(IDS), 7, None, POS, kinds=False)
    assert alone.value == pytest.approx(plain_alone.value + float(b_u[7]), abs=1e-9)
    # the default answer and the lens read the biased logits too
    *_, last = forward_of(ckpt)
    from mhacli.engine.forward import final_norm

    logits = final_norm(ckpt, last.residual[[POS]])[0] @ output_head(ckpt).T + b_u
    assert attribute(WithBias(), np.array(IDS), None, None, POS, kinds=False).answer == int(np.argmax(logits))
    top = lens(WithBias(), np.array(IDS), top=3, positions=[POS]).layers[-1][1][0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert top.top_ids == np.argsort(-probs)[:3].tolist()
    assert abs(top.top_probs[0] - probs[top.top_ids[0]]) < LENS_ATOL


def forward_of(ckpt):
    from mhacli.engine.forward import forward

    return list(forward(ckpt, IDS))


def test_top_tokens_are_the_largest_logit_changes(family_models):
    """A head's promoted tokens: the top of its write through the frozen norm times W_U, computed here in float64."""
    ckpt = load_model(str(family_models["gpt2"]))
    a = attribute(ckpt, np.array(IDS), 7, None, POS, top_tokens=4, kinds=False)
    assert set(a.promotes) == {(layer, h) for layer in range(3) for h in range(4)}
    for key, effects in a.promotes.items():
        values = [e.value for e in effects]
        assert values == sorted(values, reverse=True)
        lows = [e.value for e in a.suppresses[key]]
        assert lows == sorted(lows) and lows[0] < values[-1]
    one = attribute(ckpt, np.array(IDS), 7, None, POS, top_tokens=1, kinds=False)
    assert set(one.promotes) == set(a.promotes) and set(one.suppresses) == set(a.promotes)
    assert all(len(e) == 1 and e[0] == a.promotes[key][0] for key, e in one.promotes.items())
    assert attribute(ckpt, np.array(IDS), 7, None, POS, kinds=False).promotes == {}  # none unless asked for
    wide = attribute(ckpt, np.array(IDS), 7, None, POS, top_tokens=40, kinds=False)  # more than n_embd (32)
    assert all(len(e) == 40 for e in wide.promotes.values())
    import mhacli.analyses.attribute as attribute_module

    saved = attribute_module.HEAD_BLOCK
    attribute_module.HEAD_BLOCK = 5  # 12 heads in blocks of 5: the same tokens
    try:
        blocked = attribute(ckpt, np.array(IDS), 7, None, POS, top_tokens=4, kinds=False)
    finally:
        attribute_module.HEAD_BLOCK = saved
    for key in a.promotes:  # a GEMM of other rows may differ in its last bits: the same tokens, close values
        for mine, theirs in ((blocked.promotes[key], a.promotes[key]), (blocked.suppresses[key], a.suppresses[key])):
            assert [e.id for e in mine] == [e.id for e in theirs]
            assert np.allclose([e.value for e in mine], [e.value for e in theirs], rtol=1e-5, atol=1e-9)
    # the answer's own change by a head equals its share of the single-logit metric (no wrong token)
    shares = a.heads()
    for (layer, h), effects in a.promotes.items():
        for e in effects:
            if e.id == 7:
                assert abs(e.value - shares[layer, h]) < 1e-4


def test_bad_answer_pair_and_position_are_usage_errors(family_models, monkeypatch):
    import mhacli.analyses.attribute as attribute_module

    ckpt = load_model(str(family_models["gpt2"]))
    top = attribute(ckpt, np.array(IDS), None, None, POS, kinds=False).answer
    with pytest.raises(UsageError, match="same token"):  # the default answer is the wrong token given
        attribute(ckpt, np.array(IDS), None, top, POS, kinds=False)
    with pytest.raises(UsageError, match="outside the vocabulary") as exc:
        attribute(ckpt, np.array(IDS), 7, 10**6, POS, kinds=False)
    assert exc.value.params == ("wrong",)
    with pytest.raises(UsageError, match="must be 0 or more") as exc:
        attribute(ckpt, np.array(IDS), 7, None, POS, top_tokens=-1)
    assert exc.value.params == ("top_tokens",)
    with pytest.raises(UsageError, match="must be at least 1") as exc:
        lens(ckpt, np.array(IDS), top=0)
    assert exc.value.params == ("top",)

    def no_forward(*args, **kwargs):
        raise AssertionError("the forward ran before the answer pair was checked")

    monkeypatch.setattr(attribute_module, "run_at", no_forward)
    with pytest.raises(UsageError, match="same token"):
        attribute(ckpt, np.array(IDS), 7, 7)
    with pytest.raises(UsageError, match="outside the text"):
        attribute(ckpt, np.array(IDS), 7, None, len(IDS))
    with pytest.raises(UsageError, match="outside the text"):
        lens(ckpt, np.array(IDS), positions=[-len(IDS) - 1])


# --- the command and the API --------------------------------------------------------------------------------------

TEXT = "ROMEO: I love thee. JULIET: I love thee"


@pytest.mark.parametrize("stdin", [False, True], ids=["argument", "stdin"])
@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "tsv", "text"])
def test_attribute_command_formats(fmt, stdin):
    args = ["attribute", "--wrong", " thee", "-f", fmt] + ([] if stdin else [TEXT])
    r = run_mha(*args, input=TEXT if stdin else None)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    doc = mhacli.load("sample").run(TEXT).attribute(wrong=" thee").to_dict()
    if fmt == "json":
        got = parse_json(r.stdout)
        assert set(got) == {"model", "tokens", "token_ids", "pos", "answer", "wrong", "metric", "value", "sum",
                            "completeness_error", "fold_value_bias", "components"}  # fmt: skip
        assert (
            got["metric"] == "logit_diff" and got["wrong"]["token"] == " thee" and got["pos"] == len(got["tokens"]) - 1
        )
        assert got["completeness_error"] == abs(got["sum"] - got["value"]) and got["completeness_error"] < 1e-6
        shares = [c["attribution"] for c in got["components"]]
        assert shares == sorted(shares, reverse=True)
        heads = [c for c in got["components"] if c["component"] == "head"]
        assert len(heads) == 8 and all({"layer", "head", "kv_head", "kind"} <= set(c) for c in heads)
        assert got["components"] == doc["components"]  # the API's document is the command's
    elif fmt == "jsonl":
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines == doc["components"]
    elif fmt in ("csv", "tsv"):
        rows = list(csv.reader(io.StringIO(out), delimiter="," if fmt == "csv" else "\t"))
        assert rows[0] == ["component", "layer", "head", "kv_head", "kind", "attribution"]
        assert len(rows) == 1 + len(doc["components"])
        embed = next(r for r in rows if r[0] == "embed")
        assert embed[1:5] == ["", "", "", ""]
    else:
        assert "check: sum " in out and "✓" in out and "L1H2" in out


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "text"])
def test_lens_command_formats(fmt):
    r = run_mha("lens", TEXT, "--top", "3", "-f", fmt)
    assert r.returncode == 0, r.stderr.decode()
    if fmt == "json":
        doc = parse_json(r.stdout)
        assert [layer["layer"] for layer in doc["layers"]] == [-1, 0, 1]
        n = len(doc["tokens"])
        assert all(len(layer["positions"]) == n for layer in doc["layers"])
        last = doc["layers"][-1]["positions"]
        assert last[-1]["next"] is None and last[0]["next"]["id"] == doc["token_ids"][1]
        assert all(len(c["top"]) == 3 for c in last)
    elif fmt == "jsonl":
        lines = [json.loads(line) for line in r.stdout.decode().splitlines()]
        assert len(lines) == 3 * len(mhacli.load("sample").run(TEXT).tokens)
    elif fmt == "csv":
        rows = list(csv.reader(io.StringIO(r.stdout.decode())))
        assert rows[0][:4] == ["layer", "pos", "top_token", "top_id"]
    else:
        assert "emb" in r.stdout.decode()


def test_ids_and_fold_value_bias_on_the_command():
    r = run_mha(
        "attribute", "--ids", "352,277,303,2012,352,277", "--answer-id", "303", "--fold-value-bias", "-f", "json"
    )
    assert r.returncode == 0, r.stderr.decode()
    doc = parse_json(r.stdout)
    assert doc["answer"]["id"] == 303 and doc["fold_value_bias"] and doc["wrong"] is None and doc["metric"] == "logit"
    assert doc["completeness_error"] < 1e-6


def test_rich_view_shows_grid_check_and_ranking():
    r = run_mha("attribute", TEXT, "--wrong", " thee", "-f", "rich", env={"COLUMNS": "100"})
    out = r.stdout.decode()
    assert r.returncode == 0 and "check: sum " in out and "MLP" in out and "induction" in out
    r = run_mha("lens", TEXT, "-f", "rich", env={"COLUMNS": "80"})
    assert r.returncode == 0 and "logit lens" in r.stdout.decode()


@pytest.mark.parametrize(
    "args",
    [
        ["--answer", " love thee"],  # two tokens
        ["--answer", ""],
        ["--pos", "99"],
        ["--pos", "-99"],
        ["--answer", " thee", "--wrong", " thee"],
        ["--answer-id", "418", "--wrong", " thee"],
        ["--answer", " thee", "--answer-id", "418"],
        ["--answer-id", "999999"],
        ["--top-tokens", "-1"],
        ["--top", "0"],
    ],
)
def test_bad_input_is_one_error_line_exit_2(args):
    r = run_mha("attribute", TEXT, *args)
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error:"), r.stderr.decode()
    assert r.stdout == b""


@pytest.mark.parametrize("args", [["--pos", "40"], ["--top", "0"]])
def test_lens_bad_input(args):
    r = run_mha("lens", TEXT, *args)
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error:"), r.stderr.decode()


def test_save_writes_every_kind(tmp_path):
    pytest.importorskip("matplotlib")
    paths = [tmp_path / f"a.{k}" for k in ("png", "svg", "pdf", "html")]
    r = run_mha("attribute", TEXT, *[a for p in paths for a in ("--save", str(p))], "-f", "json")
    assert r.returncode == 0, r.stderr.decode()
    assert all(p.stat().st_size > 1000 for p in paths)
    assert "mha attribute" in paths[-1].read_text()
    lens_paths = [tmp_path / f"l.{k}" for k in ("png", "html")]
    r = run_mha("lens", TEXT, *[a for p in lens_paths for a in ("--save", str(p))], "-f", "json")
    assert r.returncode == 0 and all(p.stat().st_size > 1000 for p in lens_paths)


def test_head_kinds_are_what_stats_finds_on_the_text():
    run = mhacli.load("sample").run("The cat sat on the mat. The cat sat on the mat")
    kinds = {(s.layer, s.head): s.kind for s in run.stats()}
    assert run.attribute().attribution.kinds == kinds
    assert "induction" in kinds.values()  # the text tells kinds apart: the comparison is not of all-`mixed`


def test_pages_open_clean_in_a_browser(browser, tmp_path):
    """The attribute page (heads ringed by their share, each with its map) and the lens page run without errors."""
    from helpers import Opened

    page, lens_page = tmp_path / "a.html", tmp_path / "l.html"
    assert run_mha("attribute", TEXT, "--save", str(page), "-f", "json").returncode == 0
    assert run_mha("lens", TEXT, "--save", str(lens_page), "-f", "json").returncode == 0
    opened = Opened(browser, page)
    opened.check_clean()
    assert opened.page.locator("#grid button.cell").count() == 8
    assert sum(opened.map_pixels()) > 0  # the opened head's map is drawn
    opened = Opened(browser, lens_page)
    opened.check_clean()
    n = len(mhacli.load("sample").run(TEXT).tokens)
    assert opened.page.locator("#grid button.cell").count() == 3 * n


def test_api_answers_as_text_or_id():
    run = mhacli.load("sample").run(TEXT)
    by_text = run.attribute(" thee", pos=-3)
    by_id = run.attribute(by_text.answer.id, pos=-3)
    assert by_text.to_dict() == by_id.to_dict()
    assert by_text.attribution.pos == len(run.tokens) - 3
    lensed = run.lens(top=2, pos=[-1, 0])
    assert lensed.lens.positions == [0, len(run.tokens) - 1]
    with pytest.raises(UsageError):
        mhacli.load("sample").run(TEXT, remove=[(0, 1)]).attribute()


# --- the real model: the README's figures --------------------------------------------------------------------------

# (text, answer, wrong) -> the model's logit difference and its three largest heads (README.md, "What each head
# wrote"), SmolLM2-135M-Instruct Q4_1
README_FIGURES = {
    ("The Eiffel Tower is in the city of", " Paris", " London"): (4.7646, [((23, 4), 0.895), ((29, 1), 0.728),
                                                                          ((23, 5), 0.469)]),
    ("When Mary and John went to the store, John gave a drink to", " Mary", " John"): (
        6.1196, [((23, 3), 2.855), ((29, 1), 1.730), ((23, 0), 0.818)]),
}  # fmt: skip


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf()
    if path is None:
        pytest.skip("the SmolLM2 GGUF is not available (MHA_SMOLLM2_GGUF)")
    return mhacli.load(path)


@pytest.mark.parametrize("case", list(README_FIGURES), ids=["eiffel", "ioi"])
def test_real_model_figures_in_the_readme(smollm2, case):
    text, answer, wrong = case
    value, heads = README_FIGURES[case]
    report = smollm2.run(text).attribute(answer, wrong, top_tokens=0)
    a = report.attribution
    assert abs(a.value - value) < 1e-3 and a.completeness_error < 1e-9
    grid = a.heads()
    order = np.argsort(-grid.ravel())[: len(heads)]
    assert [divmod(int(k), grid.shape[1]) for k in order] == [h for h, _ in heads]
    for (layer, head), share in heads:
        assert abs(grid[layer, head] - share) < 1e-3


def test_real_model_lens_answers_at_the_last_layers(smollm2):
    run = smollm2.run("When Mary and John went to the store, John gave a drink to")
    tokens = run.lens(top=1, pos=-1).to_dict()["layers"]
    winners = [layer["layer"] for layer in tokens if layer["positions"][0]["top"][0]["token"] == " Mary"]
    assert winners == [29]  # " Mary" wins only after the last block (README)
