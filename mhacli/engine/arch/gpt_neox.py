"""GPT-NeoX (Pythia):

pre-LayerNorm blocks (with biases), one fused query_key_value projection laid out per head, rotary positions on the
first rotary_dim values of each head only (the rest pass through), a dense MLP, and attention and MLP either in
parallel on the same input (use_parallel_residual: x + attn(ln1(x)) + mlp(ln2(x))) or in sequence.

Weights are nn.Linear, [out, in]. query_key_value.weight has 3 * n_embd rows, head by head: rows
[3 h d_head, 3 h d_head + d_head) are head h's q, the next d_head its k, the next its v (HF views the output as
[n_seq, n_head, 3 * d_head] and splits the last axis in three).
"""

from __future__ import annotations

import numpy as np

from mhacli.config import RopeConfig
from mhacli.config.neox import NeoxConfig
from mhacli.engine.arch.common import GroupedAttentionParts, Projection, grouped_attention, linear
from mhacli.engine.arch.rope import apply_rope, rope_problem, rope_tables
from mhacli.engine.attention import Sink
from mhacli.engine.blocks import ACTIVATION_FNS, Params, ZEdit, layer_norm, project_heads, split_heads
from mhacli.errors import ConfigError

KEY_PREFIX = "gpt_neox."
LAYER_PREFIX = "layers.{}."
EMBEDDING = "embed_in.weight"  # the input embedding, also the output head when tied
LM_HEAD = "lm_head.weight"  # an untied output head (Pythia's checkpoints name it embed_out.weight), read by the loss
KV_WEIGHT = "attention.query_key_value.weight"
_BUFFERS = (".attention.bias", ".attention.masked_bias", "rotary_emb.inv_freq")  # old checkpoints' buffers


def normalise_key(key: str) -> str | None:
    """Strip `gpt_neox.`; `embed_out.weight` is the output head; None for buffers and other LM-head tensors."""
    if key.startswith(KEY_PREFIX):
        key = key[len(KEY_PREFIX) :]
    if key == "embed_out.weight":
        return LM_HEAD
    if key.startswith(("lm_head.", "embed_out.")) and key != LM_HEAD or key.endswith(_BUFFERS):
        return None
    return key


def check(config: NeoxConfig) -> None:
    """Rotary parameters whose inverse frequencies and attention factor are finite for the rotated values."""
    problem = rope_problem(config.rope, config.rotary_dim, config.n_positions)
    if problem is not None:
        raise ConfigError(
            f"config.json: rope_parameters (rope_type {config.rope.rope_type!r}, rotary dim {config.rotary_dim}): "
            f"{problem}"
        )


def rope_at(config: NeoxConfig, layer: int) -> RopeConfig | None:
    return config.rope


def expected_shapes(config: NeoxConfig) -> dict[str, tuple[int, ...]]:
    e, i = config.n_embd, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embed_in.weight": (config.vocab_size, e),
        "final_layer_norm.weight": (e,),
        "final_layer_norm.bias": (e,),
    }
    for layer in range(config.n_layer):
        p = LAYER_PREFIX.format(layer)
        shapes |= {
            p + "input_layernorm.weight": (e,), p + "input_layernorm.bias": (e,),
            p + "post_attention_layernorm.weight": (e,), p + "post_attention_layernorm.bias": (e,),
            p + "attention.query_key_value.weight": (3 * e, e), p + "attention.dense.weight": (e, e),
            p + "mlp.dense_h_to_4h.weight": (i, e), p + "mlp.dense_h_to_4h.bias": (i,),
            p + "mlp.dense_4h_to_h.weight": (e, i), p + "mlp.dense_4h_to_h.bias": (e,),
        }  # fmt: skip
        if config.attention_bias:
            shapes |= {p + "attention.query_key_value.bias": (3 * e,), p + "attention.dense.bias": (e,)}
    return shapes


def embed(params: Params, ids: np.ndarray) -> np.ndarray:
    """[n_seq] -> [n_seq, n_embd]: token embeddings only; positions enter as rotations of q and k"""
    return params.get("embed_in.weight")[ids]


def final_norm(params: Params, x: np.ndarray) -> np.ndarray:
    return layer_norm(
        x, params.get("final_layer_norm.weight"), params.get("final_layer_norm.bias"), params.config.norm_eps
    )


def attention_input(x: np.ndarray, p: dict[str, np.ndarray], config: NeoxConfig) -> np.ndarray:
    """input_layernorm: what the projections read, [n_seq, n_embd] -> [n_seq, n_embd]"""
    return layer_norm(x, p["input_layernorm.weight"], p["input_layernorm.bias"], config.layer_norm_eps)


def partial_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x [..., n_seq, d_head], cos/sin [n_seq, rotary_dim] -> the first rotary_dim values rotated, the rest as is."""
    r = cos.shape[-1]
    return np.concatenate([apply_rope(x[..., :r], cos, sin), x[..., r:]], axis=-1)


def attention_parts(
    h: np.ndarray,
    p: dict[str, np.ndarray],
    config: NeoxConfig,
    layer: int,
    keep_scores: bool = True,
    edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> GroupedAttentionParts:
    """[n_seq, n_embd] (after input_layernorm) -> every intermediate of GPTNeoXAttention.

    Leading axes (a batch of variants) pass through."""
    n_seq, d = h.shape[-2], config.d_head
    qkv = linear(h, p["attention.query_key_value.weight"], p.get("attention.query_key_value.bias"))
    qkv = split_heads(qkv, config.n_head)  # [..., n_head, n_seq, 3 * d_head]: head by head, q, k, v
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], np.ascontiguousarray(qkv[..., 2 * d :])
    cos, sin = rope_tables(config.rope, config.rotary_dim, config.n_positions, n_seq)  # [n_seq, rotary_dim]
    q_rot, k_rot = partial_rope(q, cos, sin), partial_rope(k, cos, sin)
    scores, probs, z = grouped_attention(q_rot, k_rot, v, config.attn_scale(layer), None, keep_scores=keep_scores,
                                         sink=sink)  # fmt: skip
    out = linear(project_heads(z, edit), p["attention.dense.weight"], p.get("attention.dense.bias"))
    return GroupedAttentionParts(q_rot, k_rot, v, scores, probs, z, out, q, k, cos, sin)


def mlp(x: np.ndarray, p: dict[str, np.ndarray], config: NeoxConfig) -> np.ndarray:
    """GPTNeoXMLP: dense_4h_to_h(act(dense_h_to_4h(x))), [n_seq, n_embd] -> [n_seq, n_embd]"""
    h = ACTIVATION_FNS[config.hidden_act](linear(x, p["mlp.dense_h_to_4h.weight"], p["mlp.dense_h_to_4h.bias"]))
    return linear(h, p["mlp.dense_4h_to_h.weight"], p["mlp.dense_4h_to_h.bias"])


def block(
    x: np.ndarray,
    p: dict[str, np.ndarray],
    config: NeoxConfig,
    layer: int,
    edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> tuple[np.ndarray, GroupedAttentionParts]:
    """GPTNeoXLayer: parallel, x + attn(ln1(x)) + mlp(ln2(x)); sequential, y = x + attn(ln1(x)), y + mlp(ln2(y)).

    [n_seq, n_embd] -> ([n_seq, n_embd], attention parts)
    """
    attn = attention_parts(attention_input(x, p, config), p, config, layer, keep_scores=False, edit=edit, sink=sink)
    eps = config.layer_norm_eps
    ln2 = (p["post_attention_layernorm.weight"], p["post_attention_layernorm.bias"])
    if config.use_parallel_residual:
        return mlp(layer_norm(x, *ln2, eps), p, config) + attn.out + x, attn  # HF's order of the sum
    y = attn.out + x
    return mlp(layer_norm(y, *ln2, eps), p, config) + y, attn


# --- for `explain`: where each head's numbers come from ----------------------------------------------------------
ATTENTION_NORM = ("layer_norm", "input_layernorm.weight", "input_layernorm.bias")
FINAL_NORM = ("layer_norm", "final_layer_norm.weight", "final_layer_norm.bias")
NORM_GAIN_OFFSET = 0.0  # every norm's gain is its weight
QK_NORM = None
SLIDING_WINDOWS = False


def head_projections(config: NeoxConfig, head: int) -> dict[str, Projection]:
    """Head `head`'s rows of query_key_value.weight: 3 d_head rows from 3 head d_head, its q, then k, then v."""
    d = config.d_head
    w = "attention.query_key_value.weight"
    b = "attention.query_key_value.bias" if config.attention_bias else None
    return {name: Projection(w, b, (3 * head + n) * d, (3 * head + n + 1) * d, False) for n, name in enumerate("qkv")}


def out_projection(config: NeoxConfig) -> Projection:
    """dense.weight [n_embd, n_embd] (nn.Linear): concat @ w.T (+ b)."""
    return Projection("attention.dense.weight", "attention.dense.bias" if config.attention_bias else None, 0,
                      config.n_embd, False)  # fmt: skip


def projections_note(config: NeoxConfig, head: int, kv_head: int) -> str:
    return (
        f"query_key_value.weight is [out, in] (x · Wᵀ), laid out head by head (q, k, v of head 0, then of head 1, "
        "...); "
        f"the rows of head {head}:"
    )
