"""Phi-3:

Llama's block (pre-RMSNorm, SwiGLU, grouped K/V heads, rotary positions; a sliding window on every layer when the
config sets one) with two fused projections in the checkpoint:
- `self_attn.qkv_proj.weight` [(n_head + 2 n_kv_head) * head_dim, n_embd]: the rows of q_proj, then k_proj, then
  v_proj, as Phi3Attention slices them (queries first, then the keys of each K/V head, then their values);
- `mlp.gate_up_proj.weight` [2 * intermediate, n_embd]: gate's rows, then up's (Phi3MLP's `chunk(2)`).
Its rotary scaling is `default` or `longrope` (short factors up to original_max_position_embeddings, long ones past
it), which mhacli.engine.arch.rope computes as for Llama.
"""

from __future__ import annotations

import numpy as np

from mhacli.config import RotaryConfig
from mhacli.engine.arch.common import GroupedAttentionParts, Projection, linear, rms_norm
from mhacli.engine.arch.llama import (  # the parts Phi-3 shares with Llama unchanged
    ATTENTION_NORM,
    EMBEDDING,
    FINAL_NORM,
    KEY_PREFIX,
    LAYER_PREFIX,
    LM_HEAD,
    NORM_GAIN_OFFSET,
    QK_NORM,
    SLIDING_WINDOWS,
    attention_input,
    check,
    embed,
    final_norm,
    normalise_key,
    out_projection,
    rope_at,
    rotary_attention,
)
from mhacli.engine.attention import Sink
from mhacli.engine.blocks import ACTIVATION_FNS, ZEdit, split_heads

__all__ = [  # the family interface (interface.Family): Llama's pieces and Phi-3's own
    "ATTENTION_NORM", "EMBEDDING", "FINAL_NORM", "KEY_PREFIX", "KV_WEIGHT", "LAYER_PREFIX", "LM_HEAD", "QK_NORM",
    "NORM_GAIN_OFFSET", "SLIDING_WINDOWS",
    "attention_input", "attention_parts", "block", "check", "embed", "expected_shapes", "final_norm",
    "head_projections", "normalise_key", "out_projection", "projections_note", "rope_at",
]  # fmt: skip

KV_WEIGHT = "self_attn.qkv_proj.weight"  # K lives in the fused projection: its dtype is the KV cache's
QKV = "self_attn.qkv_proj.weight"
GATE_UP = "mlp.gate_up_proj.weight"


def expected_shapes(config: RotaryConfig) -> dict[str, tuple[int, ...]]:
    e, i = config.n_embd, config.intermediate_size
    q, kv = config.n_head * config.d_head, config.n_kv_head * config.d_head
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (config.vocab_size, e), "norm.weight": (e,)}
    for layer in range(config.n_layer):
        p = LAYER_PREFIX.format(layer)
        shapes |= {
            p + "input_layernorm.weight": (e,),
            p + "post_attention_layernorm.weight": (e,),
            p + QKV: (q + 2 * kv, e),
            p + "self_attn.o_proj.weight": (e, q),
            p + GATE_UP: (2 * i, e),
            p + "mlp.down_proj.weight": (e, i),
        }
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
    """[n_seq, n_embd] (after input_layernorm) -> every intermediate of Phi3Attention."""
    q_end = config.n_head * config.d_head
    k_end = q_end + config.n_kv_head * config.d_head
    qkv = linear(h, p[QKV])  # [n_seq, (n_head + 2 n_kv_head) * d_head]
    q = split_heads(qkv[..., :q_end], config.n_head)  # [n_head, n_seq, d_head]
    k = split_heads(qkv[..., q_end:k_end], config.n_kv_head)  # [n_kv_head, n_seq, d_head]
    v = split_heads(qkv[..., k_end:], config.n_kv_head)
    return rotary_attention(q, k, v, p, config, layer, keep_scores, edit, sink)


def block(
    x: np.ndarray,
    p: dict[str, np.ndarray],
    config: RotaryConfig,
    layer: int,
    edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> tuple[np.ndarray, GroupedAttentionParts]:
    """Phi3DecoderLayer: x + attn(norm(x)), then + down(act(gate) * up) of norm(x).

    [n_seq, n_embd] -> ([n_seq, n_embd], attention parts)
    """
    attn = attention_parts(attention_input(x, p, config), p, config, layer, keep_scores=False, edit=edit, sink=sink)
    x = x + attn.out
    h = rms_norm(x, p["post_attention_layernorm.weight"], config.rms_norm_eps)
    gate_up = linear(h, p[GATE_UP])  # [n_seq, 2 * intermediate]
    gate, up = gate_up[..., : config.intermediate_size], gate_up[..., config.intermediate_size :]
    return x + linear(ACTIVATION_FNS[config.hidden_act](gate) * up, p["mlp.down_proj.weight"]), attn


def head_projections(config: RotaryConfig, head: int) -> dict[str, Projection]:
    """Query head `head`'s rows of qkv_proj; the rows of its K/V head's key and value, further down the same weight."""
    d, g = config.d_head, config.kv_head(head)
    k0 = config.n_head * d
    v0 = k0 + config.n_kv_head * d

    def rows(lo: int) -> Projection:
        return Projection(QKV, None, lo, lo + d, False)

    return {"q": rows(head * d), "k": rows(k0 + g * d), "v": rows(v0 + g * d)}


def projections_note(config: RotaryConfig, head: int, kv_head: int) -> str:
    return (
        f"qkv_proj fuses the three projections ([out, in], x · Wᵀ): the rows of query head {head}, then the key and "
        f"value rows of K/V head {kv_head}:"
    )
