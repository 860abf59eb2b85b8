"""GGUF files of GPT-NeoX (`gptneox`), Qwen 2 (`qwen2`) and Qwen 3 (`qwen3`).

Each is a tiny random HF checkpoint built here, written with gguf.GGUFWriter under llama.cpp's tensor names and
metadata keys, the way its converter (convert_hf_to_gguf.py) writes that architecture: GPT-NeoX's query_key_value
reordered from head-by-head to all q, all k, all v; Qwen's Q/K not permuted. Qwen's files are compared with
transformers' own GGUF load of the same file; transformers cannot load a GPT-NeoX GGUF, so that one is compared
with HF on the safetensors original.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from helpers import ATTN_ATOL, HIDDEN_ATOL, NEOX_QWEN_MODELS, bos_tokenizer, build, compare_with_hf  # noqa: E402

IDS = [0, 40, 72, 265, 257, 3, 88, 100, 259, 200, 17, 256, 40, 72, 265, 257, 5, 9]
NEOX_NAMES = {"embed_in": "token_embd", "final_layer_norm": "output_norm", "embed_out": "output",
              "lm_head": "output", "input_layernorm": "attn_norm", "attention.query_key_value": "attn_qkv",
              "attention.dense": "attn_output", "post_attention_layernorm": "ffn_norm",
              "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down"}  # fmt: skip
QWEN_NAMES = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output",
              "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return bos_tokenizer(tmp_path_factory.mktemp("tok"))


def gguf_name(key: str, names: dict[str, str]) -> str:
    key = re.sub(r"^(gpt_neox|model)\.", "", key)
    m = re.match(r"^layers\.(\d+)\.(.+)\.(weight|bias)$", key)
    if m:
        return f"blk.{m.group(1)}.{names[m.group(2)]}.{m.group(3)}"
    stem, kind = key.rsplit(".", 1)
    return f"{names[stem]}.{kind}"


def neox_qkv_as_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py GPTNeoXModel.modify_tensors: per head (q, k, v) -> all q, then all k, then all v."""
    d = w.shape[0] // 3 // n_head
    parts = w.reshape(n_head, 3, d, *w.shape[1:])
    return np.concatenate([parts[:, i].reshape(n_head * d, *w.shape[1:]) for i in range(3)], axis=0)


def to_gguf(directory: Path, path: Path, arch: str, meta: dict, n_head: int, qtype=None) -> None:
    from safetensors.numpy import load_file

    names = NEOX_NAMES if arch == "gptneox" else QWEN_NAMES
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in meta.items():
        getattr(w, f"add_{key}")(value)
    for key, value in load_file(str(directory / "model.safetensors")).items():
        value = value.astype(np.float32)
        if ".query_key_value." in key:
            value = neox_qkv_as_llama_cpp(value, n_head)
        if qtype is not None and value.ndim == 2:
            w.add_tensor(gguf_name(key, names), value.astype(np.float16))
        else:
            w.add_tensor(gguf_name(key, names), value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def neox_meta(fields: dict) -> dict:
    d = fields["hidden_size"] // fields["num_attention_heads"]
    return {"block_count": fields["num_hidden_layers"], "context_length": fields["max_position_embeddings"],
            "embedding_length": fields["hidden_size"], "feed_forward_length": fields["intermediate_size"],
            "head_count": fields["num_attention_heads"], "layer_norm_eps": fields.get("layer_norm_eps", 1e-5),
            "rope_dimension_count": int(d * fields.get("rotary_pct", 0.25)),
            "parallel_residual": fields.get("use_parallel_residual", True),
            "vocab_size": fields["vocab_size"]}  # fmt: skip


@pytest.mark.parametrize("name", ["neox_parallel", "neox_sequential_tied"])
def test_gptneox_gguf_matches_hf(tmp_path, tok, name):
    """Parallel and sequential residuals, partial rotary from rope.dimension_count, untied and tied heads."""
    from mhacli.io.weights import load_model

    s = NEOX_QWEN_MODELS[name]
    fields = s["fields"]
    hf_dir = build(tmp_path / "hf", "gpt_neox", fields, tok, seed=3)
    meta = neox_meta(fields) | ({"rope_freq_base": fields["rotary_emb_base"]} if "rotary_emb_base" in fields else {})
    path = tmp_path / f"{name}.gguf"
    to_gguf(hf_dir, path, "gptneox", meta, fields["num_attention_heads"])
    ckpt = load_model(str(path))
    c = ckpt.config
    assert (c.model_type, c.use_parallel_residual, c.rotary_dim) == (
        "gpt_neox",
        fields.get("use_parallel_residual", True),
        meta["rope_dimension_count"],
    )
    assert c.tie_word_embeddings == fields.get("tie_word_embeddings", False)
    errors = compare_with_hf(path, IDS, reference_dir=hf_dir)
    assert len(errors) == fields["num_hidden_layers"]


def test_gptneox_without_the_reordering_fails(tmp_path, tok, monkeypatch):
    """A loader that forgot to undo the q/k/v reordering would be caught: the check is not vacuous."""
    import mhacli.io.gguf_model as gm
    from mhacli.io.weights import load_model

    fields = NEOX_QWEN_MODELS["neox_parallel"]["fields"]
    hf_dir = build(tmp_path / "hf", "gpt_neox", fields, tok, seed=3)
    path = tmp_path / "neox.gguf"
    to_gguf(hf_dir, path, "gptneox", neox_meta(fields), fields["num_attention_heads"])
    monkeypatch.setattr(gm, "interleave_heads", lambda w, n_head: w)
    with pytest.raises(AssertionError):
        compare_with_hf(path, IDS, reference_dir=hf_dir)
    assert load_model(str(path)).config.n_head == 8


def qwen_fields(kind: str) -> dict:
    """Sizes transformers' GGUF loader can rebuild: it reads no head_dim, so Qwen 3's must be its default, 128."""
    base = dict(vocab_size=400, num_hidden_layers=2, max_position_embeddings=64, intermediate_size=96,
                bos_token_id=0, eos_token_id=0)  # fmt: skip
    if kind == "qwen3":
        return base | dict(hidden_size=256, num_attention_heads=2, num_key_value_heads=1, head_dim=128)
    return base | dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=2)


def hf_gguf_outputs(path: Path, ids: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(
        str(path.parent), gguf_file=path.name, attn_implementation="eager", dtype=torch.float32
    ).eval()
    with torch.no_grad():
        out = model(torch.tensor([ids], dtype=torch.long), output_attentions=True, output_hidden_states=True)
    return [a[0].numpy() for a in out.attentions], [h[0].numpy() for h in out.hidden_states[1:]]


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
@pytest.mark.parametrize("f16", [False, True])
def test_qwen_gguf_matches_transformers_gguf_load(tmp_path, tok, kind, f16):
    from mhacli.engine.forward import final_norm, forward
    from mhacli.io.weights import load_model

    fields = qwen_fields(kind)
    hf_dir = build(tmp_path / "hf", kind, fields | {"tie_word_embeddings": kind == "qwen2"}, tok, seed=4)
    d = fields.get("head_dim", fields["hidden_size"] // fields["num_attention_heads"])
    meta = {"block_count": 2, "context_length": 64, "embedding_length": fields["hidden_size"],
            "feed_forward_length": 96, "head_count": fields["num_attention_heads"],
            "head_count_kv": fields["num_key_value_heads"], "layer_norm_rms_eps": 1e-6, "rope_freq_base": 10000.0,
            "rope_dimension_count": d, "key_length": d, "value_length": d, "vocab_size": 400}  # fmt: skip
    path = tmp_path / f"{kind}.gguf"
    to_gguf(hf_dir, path, kind, meta, fields["num_attention_heads"], qtype="f16" if f16 else None)
    ckpt = load_model(str(path))
    assert ckpt.config.model_type == kind and ckpt.config.d_head == d
    assert ckpt.config.tie_word_embeddings == (kind == "qwen2")
    hf_attn, hf_hidden = hf_gguf_outputs(path, IDS)
    for t in forward(ckpt, np.asarray(IDS)):
        hidden = final_norm(ckpt, t.residual) if t.layer == ckpt.config.n_layer - 1 else t.residual
        err = float(np.abs(t.attention - hf_attn[t.layer]).max())
        assert err <= ATTN_ATOL, f"{kind} layer {t.layer}: attention {err:.3e}"
        bound = HIDDEN_ATOL * max(1.0, float(np.abs(hf_hidden[t.layer]).max()))
        assert float(np.abs(hidden - hf_hidden[t.layer]).max()) <= bound
    if not f16:  # the float32 file is the safetensors original, tensor for tensor
        compare_with_hf(path, IDS, reference_dir=hf_dir)
