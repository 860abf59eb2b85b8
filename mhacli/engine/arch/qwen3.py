"""Qwen 3:

Llama's block with an explicit head_dim, and q_norm / k_norm: RMSNorms over each head's d_head values (one weight
vector shared by every head), applied to q and k before the rotation (OLMo's QK-norm is over the whole projection
instead). Biases on every attention projection only when attention_bias; sliding windows as Qwen 2's.
"""

from __future__ import annotations

import numpy as np

from mhacli.config import RotaryConfig
from mhacli.engine.arch.common import GroupedAttentionParts, linear, rms_norm
from mhacli.engine.arch.llama import (  # the parts Qwen 3 shares with Llama unchanged
    ATTENTION_NORM,
    EMBEDDING,
    FINAL_NORM,
    KEY_PREFIX,
    KV_WEIGHT,
    LAYER_PREFIX,
    LM_HEAD,
    NORM_GAIN_OFFSET,
    SLIDING_WINDOWS,
    attention_input,
    check,
    decoder_block,
    embed,
    final_norm,
    head_projections,
    mlp_shapes,
    normalise_key,
    out_projection,
    projection_shapes,
    projections_note,
    rope_at,
    rotary_attention,
)
from mhacli.engine.attention import Sink
from mhacli.engine.blocks import ZEdit, split_heads

__all__ = [  # the family interface (interface.Family): Llama's pieces and Qwen 3's own
    "ATTENTION_NORM", "EMBEDDING", "FINAL_NORM", "KEY_PREFIX", "KV_WEIGHT", "LAYER_PREFIX", "LM_HEAD", "QK_NORM",
    "NORM_GAIN_OFFSET", "SLIDING_WINDOWS",
    "attention_input", "attention_parts", "block", "check", "embed", "expected_shapes", "final_norm",
    "head_projections", "normalise_key", "out_projection", "projections_note", "rope_at",
]  # fmt: skip


def expected_shapes(config: RotaryConfig) -> dict[str, tuple[int, ...]]:
    e, d = config.n_embd, config.d_head
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (config.vocab_size, e), "norm.weight": (e,)}
    for layer in range(config.n_layer):
        p = LAYER_PREFIX.format(layer)
        shapes |= {
            p + "input_layernorm.weight": (e,), p + "post_attention_layernorm.weight": (e,),
            p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,),
        }  # fmt: skip
        shapes |= projection_shapes(config, p) | mlp_shapes(config, p)
    return shapes


def attention_parts(
    h: np.ndarray,
    p: dict[str, np.ndarray],
    config: RotaryConfig,
    layer: int,
    keep_scores: bool = True,
    edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> GroupedAttentionParts:
    """[n_seq, n_embd] (after input_layernorm) -> every intermediate of Qwen3Attention (per-head q/k norms, RoPE).

    `q_pre_rope` and `k_pre_rope` are after the norms, as they are rotated."""
    eps = config.rms_norm_eps
    q = split_heads(linear(h, p["self_attn.q_proj.weight"], p.get("self_attn.q_proj.bias")), config.n_head)
    k = split_heads(linear(h, p["self_attn.k_proj.weight"], p.get("self_attn.k_proj.bias")), config.n_kv_head)
    v = split_heads(linear(h, p["self_attn.v_proj.weight"], p.get("self_attn.v_proj.bias")), config.n_kv_head)
    q = rms_norm(q, p["self_attn.q_norm.weight"], eps)  # [n_head, n_seq, d_head], each head on its own
    k = rms_norm(k, p["self_attn.k_norm.weight"], eps)  # [n_kv_head, n_seq, d_head]
    return rotary_attention(q, k, v, p, config, layer, keep_scores, edit, sink)


def block(
    x: np.ndarray,
    p: dict[str, np.ndarray],
    config: RotaryConfig,
    layer: int,
    edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> tuple[np.ndarray, GroupedAttentionParts]:
    """Qwen3DecoderLayer (as LlamaDecoderLayer): x + attn(norm(x)), then + mlp(norm(x)).

    [n_seq, n_embd] -> ([n_seq, n_embd], attention parts)
    """
    return decoder_block(attention_parts, x, p, config, layer, edit, sink)


# --- for `explain`: where each head's numbers come from ----------------------------------------------------------
QK_NORM = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")  # d_head weights each: per head, not OLMo's whole
