"""OLMo 2 and OLMo 3:

Llama's attention (grouped K/V heads, RoPE) and SwiGLU MLP, arranged differently: - no norm before attention or MLP;
RMSNorms after them instead, on each branch before the residual add (post_attention_layernorm,
post_feedforward_layernorm); - QK-norm: q_norm and k_norm are RMSNorms over the whole q_proj / k_proj output (every head
at once), before the heads are split and rotated; - OLMo 3: the layers whose layer_types entry is sliding_attention see
a window of `sliding_window` keys and have their own rotary parameters.
"""

from __future__ import annotations

import numpy as np

from mhacli.config import RotaryConfig
from mhacli.engine.arch.common import GroupedAttentionParts, linear, rms_norm, swiglu
from mhacli.engine.arch.llama import (  # the parts OLMo shares with Llama unchanged
    EMBEDDING,
    FINAL_NORM,
    KEY_PREFIX,
    KV_WEIGHT,
    LAYER_PREFIX,
    LM_HEAD,
    SLIDING_WINDOWS,
    check,
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
from mhacli.engine.blocks import ACTIVATION_FNS, ZEdit, split_heads

__all__ = [  # the family interface (interface.Family): Llama's pieces and OLMo's own
    "ATTENTION_NORM", "ATTENTION_OUT_NORM", "EMBEDDING", "FINAL_NORM", "KEY_PREFIX", "KV_WEIGHT", "LAYER_PREFIX",
    "LM_HEAD", "QK_NORM", "SLIDING_WINDOWS",
    "attention_input", "attention_parts", "block", "check", "embed", "expected_shapes", "final_norm",
    "head_projections", "normalise_key", "out_projection", "projections_note", "rope_at",
]  # fmt: skip


def expected_shapes(config: RotaryConfig) -> dict[str, tuple[int, ...]]:
    e = config.n_embd
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (config.vocab_size, e), "norm.weight": (e,)}
    for layer in range(config.n_layer):
        p = LAYER_PREFIX.format(layer)
        shapes |= {
            p + "self_attn.q_norm.weight": (config.n_head * config.d_head,),
            p + "self_attn.k_norm.weight": (config.n_kv_head * config.d_head,),
            p + "post_attention_layernorm.weight": (e,),
            p + "post_feedforward_layernorm.weight": (e,),
        }
        shapes |= projection_shapes(config, p) | mlp_shapes(config, p)
    return shapes


def attention_input(x: np.ndarray, p: dict[str, np.ndarray], config: RotaryConfig) -> np.ndarray:
    """OLMo's projections read the residual stream itself: no norm before attention."""
    return x


NORM_GAIN_OFFSET = 0.0  # the family interface: every norm's gain is its weight, as Llama's
__all__ += ["NORM_GAIN_OFFSET"]


def attention_parts(
    h: np.ndarray,
    p: dict[str, np.ndarray],
    config: RotaryConfig,
    layer: int,
    keep_scores: bool = True,
    edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> GroupedAttentionParts:
    """[n_seq, n_embd] -> every intermediate of Olmo2Attention / Olmo3Attention (q_norm, k_norm, RoPE, attention)."""
    eps = config.rms_norm_eps
    q = rms_norm(
        linear(h, p["self_attn.q_proj.weight"], p.get("self_attn.q_proj.bias")), p["self_attn.q_norm.weight"], eps
    )
    k = rms_norm(
        linear(h, p["self_attn.k_proj.weight"], p.get("self_attn.k_proj.bias")), p["self_attn.k_norm.weight"], eps
    )
    v = linear(h, p["self_attn.v_proj.weight"], p.get("self_attn.v_proj.bias"))  # [n_seq, n_kv_head * d_head]
    q, k, v = split_heads(q, config.n_head), split_heads(k, config.n_kv_head), split_heads(v, config.n_kv_head)
    return rotary_attention(q, k, v, p, config, layer, keep_scores, edit, sink)


def block(
    x: np.ndarray,
    p: dict[str, np.ndarray],
    config: RotaryConfig,
    layer: int,
    edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> tuple[np.ndarray, GroupedAttentionParts]:
    """Olmo2DecoderLayer: x + norm(attn(x)), then + norm(mlp(x)).

    [n_seq, n_embd] -> ([n_seq, n_embd], attention parts)
    """
    eps = config.rms_norm_eps
    attn = attention_parts(x, p, config, layer, keep_scores=False, edit=edit, sink=sink)
    x = x + rms_norm(attn.out, p["post_attention_layernorm.weight"], eps)
    mlp = swiglu(x, p, ACTIVATION_FNS[config.hidden_act])
    return x + rms_norm(mlp, p["post_feedforward_layernorm.weight"], eps), attn


# --- for `explain`: where each head's numbers come from ----------------------------------------------------------
ATTENTION_NORM = None  # the projections read x itself
QK_NORM = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")  # over the whole q_proj / k_proj output
# Post-norm: the attention output is normalised before the residual add (a norm over every head at once; direct
# logit attribution splits it at its actual scale, mhacli.analyses.attribute). Optional in the Family interface.
ATTENTION_OUT_NORM = ("rms_norm", "post_attention_layernorm.weight")
