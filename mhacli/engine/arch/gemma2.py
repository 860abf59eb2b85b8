"""Gemma 2:

Llama's attention (grouped K/V heads, rotary positions) and gated MLP, arranged and scaled differently:
- the embeddings are multiplied by sqrt(hidden_size), rounded to float32 as HF's buffer is (HF multiplies in the
  weights' dtype: float32 here, as `verify` runs it);
- every RMSNorm scales by (1 + weight), not weight (NORM_GAIN_OFFSET = 1), computed in float32 as Gemma2RMSNorm;
- four norms per layer: input_layernorm before attention and post_attention_layernorm on its output before the
  residual add; pre_feedforward_layernorm before the MLP and post_feedforward_layernorm on its output;
- the attention scale is query_pre_attn_scalar^-1/2, and the scaled scores are soft-capped to
  cap * tanh(s / cap) (attn_logit_softcapping) before the mask and softmax: the maps are the capped ones;
- the `sliding_attention` layers of layer_types (every other one, from layer 0) see `sliding_window` keys;
- the MLP is GeGLU: down(act(gate(x)) * up(x)) with hidden_activation (gelu_pytorch_tanh);
- the output head's logits are soft-capped (final_logit_softcapping), in mhacli.analyses.loss through
  config.logit_softcap.
The heads' outputs z enter o_proj as Llama's do, so an edit of z (ablation) is applied where Llama's is.
"""

from __future__ import annotations

import math

import numpy as np

from mhacli.config import GemmaConfig
from mhacli.engine.arch.common import GroupedAttentionParts, linear, rms_norm, swiglu
from mhacli.engine.arch.llama import (  # the parts Gemma shares with Llama unchanged
    EMBEDDING,
    KEY_PREFIX,
    KV_WEIGHT,
    LAYER_PREFIX,
    LM_HEAD,
    SLIDING_WINDOWS,
    check,
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
from mhacli.engine.blocks import ACTIVATION_FNS, F32, Params, ZEdit, split_heads

__all__ = [  # the family interface (interface.Family): Llama's pieces and Gemma's own
    "ATTENTION_NORM", "EMBEDDING", "FINAL_NORM", "KEY_PREFIX", "KV_WEIGHT", "LAYER_PREFIX", "LM_HEAD", "QK_NORM",
    "ATTENTION_OUT_NORM", "NORM_GAIN_OFFSET", "SLIDING_WINDOWS",
    "attention_input", "attention_parts", "block", "check", "embed", "expected_shapes", "final_norm",
    "head_projections", "normalise_key", "out_projection", "projections_note", "rope_at",
]  # fmt: skip

NORM_GAIN_OFFSET = 1.0  # Gemma's RMSNorms scale by 1 + weight (llama.cpp's GGUF stores the sum)
ATTENTION_NORM = ("rms_norm", "input_layernorm.weight", None)
FINAL_NORM = ("rms_norm", "norm.weight", None)
QK_NORM: tuple[str, str] | None = None
# Post-norm (optional in the interface, read by attribution as OLMo's is): the attention output is normalised, gain
# 1 + w, before the residual add.
ATTENTION_OUT_NORM = ("rms_norm", "post_attention_layernorm.weight")
LAYER_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")


def gemma_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """Gemma2RMSNorm / Gemma3RMSNorm in float32: x / sqrt(mean(x^2) + eps) * (1 + w), [..., n] -> [..., n]."""
    return rms_norm(x, F32(1.0) + w, eps)


def expected_shapes(config: GemmaConfig) -> dict[str, tuple[int, ...]]:
    e = config.n_embd
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (config.vocab_size, e), "norm.weight": (e,)}
    for layer in range(config.n_layer):
        p = LAYER_PREFIX.format(layer)
        shapes |= {f"{p}{norm}.weight": (e,) for norm in LAYER_NORMS}
        if config.qk_norm:
            shapes |= {p + "self_attn.q_norm.weight": (config.d_head,), p + "self_attn.k_norm.weight": (config.d_head,)}
        shapes |= projection_shapes(config, p) | mlp_shapes(config, p)
    return shapes


def embed(params: Params, ids: np.ndarray) -> np.ndarray:
    """[n_seq] -> [n_seq, n_embd]: token embeddings times sqrt(hidden_size) (Gemma2TextScaledWordEmbedding)."""
    return params.get(EMBEDDING)[ids] * F32(math.sqrt(params.config.n_embd))


def final_norm(params: Params, x: np.ndarray) -> np.ndarray:
    return gemma_norm(x, params.get("norm.weight"), params.config.norm_eps)


def attention_input(x: np.ndarray, p: dict[str, np.ndarray], config: GemmaConfig) -> np.ndarray:
    """input_layernorm (1 + w): what the projections read, [n_seq, n_embd] -> [n_seq, n_embd]"""
    return gemma_norm(x, p["input_layernorm.weight"], config.rms_norm_eps)


def attention_parts(
    h: np.ndarray,
    p: dict[str, np.ndarray],
    config: GemmaConfig,
    layer: int,
    keep_scores: bool = True,
    edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> GroupedAttentionParts:
    """[n_seq, n_embd] (after input_layernorm) -> every intermediate of Gemma2Attention / Gemma3Attention.

    Gemma 3 normalises each head's q and k (q_norm, k_norm over d_head, gain 1 + w) before rotating them."""
    q = split_heads(linear(h, p["self_attn.q_proj.weight"], p.get("self_attn.q_proj.bias")), config.n_head)
    k = split_heads(linear(h, p["self_attn.k_proj.weight"], p.get("self_attn.k_proj.bias")), config.n_kv_head)
    v = split_heads(linear(h, p["self_attn.v_proj.weight"], p.get("self_attn.v_proj.bias")), config.n_kv_head)
    if config.qk_norm:  # [.., n_head, n_seq, d_head]: each head's d_head values on their own
        q = gemma_norm(q, p["self_attn.q_norm.weight"], config.rms_norm_eps)
        k = gemma_norm(k, p["self_attn.k_norm.weight"], config.rms_norm_eps)
    return rotary_attention(q, k, v, p, config, layer, keep_scores, edit, sink)


def block(
    x: np.ndarray,
    p: dict[str, np.ndarray],
    config: GemmaConfig,
    layer: int,
    edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> tuple[np.ndarray, GroupedAttentionParts]:
    """Gemma2DecoderLayer: x + norm(attn(norm(x))), then + norm(mlp(norm(x))).

    [n_seq, n_embd] -> ([n_seq, n_embd], attention parts)
    """
    eps = config.rms_norm_eps
    attn = attention_parts(attention_input(x, p, config), p, config, layer, keep_scores=False, edit=edit, sink=sink)
    x = x + gemma_norm(attn.out, p["post_attention_layernorm.weight"], eps)
    mlp = swiglu(gemma_norm(x, p["pre_feedforward_layernorm.weight"], eps), p, ACTIVATION_FNS[config.hidden_act])
    return x + gemma_norm(mlp, p["post_feedforward_layernorm.weight"], eps), attn
