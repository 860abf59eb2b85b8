"""Llama and Mistral:

pre-RMSNorm blocks, a SwiGLU MLP, grouped K/V heads (GQA; MQA and MHA as its extremes) with rotary positions; Mistral
adds a sliding window to every layer's causal mask.

Weights are nn.Linear, [out, in]: a projection is `x @ w.T (+ b)`. q_proj has n_head * head_dim rows, k_proj and
v_proj n_kv_head * head_dim: rows [g * head_dim, (g + 1) * head_dim) are K/V head g.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mhacli.config import RopeConfig, RotaryConfig
from mhacli.engine.arch.common import GroupedAttentionParts, Projection, grouped_attention, linear, rms_norm, swiglu
from mhacli.engine.arch.rope import apply_rope, rope_problem, rope_tables
from mhacli.engine.attention import Sink
from mhacli.engine.blocks import ACTIVATION_FNS, Params, ZEdit, project_heads, split_heads
from mhacli.errors import ConfigError

KEY_PREFIX = "model."
LAYER_PREFIX = "layers.{}."
EMBEDDING = "embed_tokens.weight"  # the input embedding, also the output head when tied
LM_HEAD = "lm_head.weight"  # an untied output head, read only by the loss
KV_WEIGHT = "self_attn.k_proj.weight"


def normalise_key(key: str) -> str | None:
    """Strip `model.`; None for old rotary_emb.inv_freq buffers and LM-head tensors other than its weight."""
    if key.startswith(KEY_PREFIX):
        key = key[len(KEY_PREFIX) :]
    if (key.startswith("lm_head.") and key != LM_HEAD) or key.endswith("rotary_emb.inv_freq"):
        return None
    return key


def check(config: RotaryConfig) -> None:
    """An even head_dim, and rotary parameters whose inverse frequencies and attention factor are finite.

    Each set is checked (OLMo 3's sliding layers have their own): a ConfigError naming the field instead of an
    error mid-forward."""
    if config.head_dim % 2:
        raise ConfigError(
            f"config.json: head_dim {config.head_dim} is odd; rotary embeddings rotate pairs of values, so it must "
            "be even"
        )
    ropes = [("rope_parameters", config.rope)]
    if config.sliding_rope is not None:
        ropes = [
            ("rope_parameters.full_attention", config.rope),
            ("rope_parameters.sliding_attention", config.sliding_rope),
        ]
    for where, rope in ropes:
        problem = rope_problem(rope, config.d_head, config.n_positions)
        if problem is not None:
            raise ConfigError(
                f"config.json: {where} (rope_type {rope.rope_type!r}, head_dim {config.d_head}): {problem}"
            )


def rope_at(config: RotaryConfig, layer: int) -> RopeConfig | None:
    return config.rope_at(layer)


def projection_shapes(config: RotaryConfig, prefix: str) -> dict[str, tuple[int, ...]]:
    """q/k/v/o projections (with biases when attention_bias) of one layer."""
    e, q, kv = config.n_embd, config.n_head * config.d_head, config.n_kv_head * config.d_head
    a = prefix + "self_attn."
    shapes: dict[str, tuple[int, ...]] = {
        a + "q_proj.weight": (q, e),
        a + "k_proj.weight": (kv, e),
        a + "v_proj.weight": (kv, e),
    }
    shapes[a + "o_proj.weight"] = (e, q)
    if config.attention_bias:
        shapes |= {a + "q_proj.bias": (q,), a + "k_proj.bias": (kv,), a + "v_proj.bias": (kv,), a + "o_proj.bias": (e,)}
    return shapes


def mlp_shapes(config: RotaryConfig, prefix: str) -> dict[str, tuple[int, ...]]:
    e, i, m = config.n_embd, config.intermediate_size, prefix + "mlp."
    shapes: dict[str, tuple[int, ...]] = {
        m + "gate_proj.weight": (i, e),
        m + "up_proj.weight": (i, e),
        m + "down_proj.weight": (e, i),
    }
    if config.mlp_bias:
        shapes |= {m + "gate_proj.bias": (i,), m + "up_proj.bias": (i,), m + "down_proj.bias": (e,)}
    return shapes


def expected_shapes(config: RotaryConfig) -> dict[str, tuple[int, ...]]:
    e = config.n_embd
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (config.vocab_size, e), "norm.weight": (e,)}
    for layer in range(config.n_layer):
        p = LAYER_PREFIX.format(layer)
        shapes |= {p + "input_layernorm.weight": (e,), p + "post_attention_layernorm.weight": (e,)}
        shapes |= projection_shapes(config, p) | mlp_shapes(config, p)
    return shapes


def embed(params: Params, ids: np.ndarray) -> np.ndarray:
    """[n_seq] -> [n_seq, n_embd]: token embeddings only; positions enter as rotations of q and k"""
    return params.get("embed_tokens.weight")[ids]


def final_norm(params: Params, x: np.ndarray) -> np.ndarray:
    return rms_norm(x, params.get("norm.weight"), params.config.norm_eps)


def attention_input(x: np.ndarray, p: dict[str, np.ndarray], config: RotaryConfig) -> np.ndarray:
    """input_layernorm: what the projections read, [n_seq, n_embd] -> [n_seq, n_embd]"""
    return rms_norm(x, p["input_layernorm.weight"], config.rms_norm_eps)


def rotary_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    p: dict[str, np.ndarray],
    config: RotaryConfig,
    layer: int,
    keep_scores: bool = True,
    edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> GroupedAttentionParts:
    """Rotate q and k, attend (causal, and the layer's sliding window), project with o_proj.

    q [n_head, n_seq, d_head], k/v [n_kv_head, n_seq, d_head] before RoPE. Shared with OLMo, whose q and k are
    normalised first."""
    cos, sin = rope_tables(config.rope_at(layer), config.d_head, config.n_positions, q.shape[-2])  # [n_seq, d_head]
    q_rot, k_rot = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    scores, probs, z = grouped_attention(
        q_rot,
        k_rot,
        v,
        config.attn_scale(layer),
        config.sliding_window(layer),
        keep_scores=keep_scores,
        sink=sink,
        softcap=config.attn_softcap(layer),
    )
    out = linear(
        project_heads(z, edit), p["self_attn.o_proj.weight"], p.get("self_attn.o_proj.bias")
    )  # [n_seq, n_embd]
    return GroupedAttentionParts(q_rot, k_rot, v, scores, probs, z, out, q, k, cos, sin)


def attention_parts(
    h: np.ndarray,
    p: dict[str, np.ndarray],
    config: RotaryConfig,
    layer: int,
    keep_scores: bool = True,
    edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> GroupedAttentionParts:
    """[n_seq, n_embd] (after input_layernorm) -> every intermediate of LlamaAttention / MistralAttention."""
    q = linear(h, p["self_attn.q_proj.weight"], p.get("self_attn.q_proj.bias"))  # [n_seq, n_head * d_head]
    k = linear(h, p["self_attn.k_proj.weight"], p.get("self_attn.k_proj.bias"))  # [n_seq, n_kv_head * d_head]
    v = linear(h, p["self_attn.v_proj.weight"], p.get("self_attn.v_proj.bias"))
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
    """LlamaDecoderLayer: x + attn(norm(x)), then + mlp(norm(x)).

    [n_seq, n_embd] -> ([n_seq, n_embd], attention parts)
    """
    return decoder_block(attention_parts, x, p, config, layer, edit, sink)


def decoder_block(
    attend: Callable[..., GroupedAttentionParts],
    x: np.ndarray,
    p: dict[str, np.ndarray],
    config: RotaryConfig,
    layer: int,
    edit: ZEdit | None,
    sink: Sink | None,
) -> tuple[np.ndarray, GroupedAttentionParts]:
    """Llama's decoder layer around an attention (a family's own `attention_parts`, e.g. Qwen 3's QK-norm)."""
    attn = attend(attention_input(x, p, config), p, config, layer, keep_scores=False, edit=edit, sink=sink)
    x = x + attn.out
    h = rms_norm(x, p["post_attention_layernorm.weight"], config.rms_norm_eps)
    return x + swiglu(h, p, ACTIVATION_FNS[config.hidden_act]), attn


# --- for `explain`: where each head's numbers come from ----------------------------------------------------------
ATTENTION_NORM = ("rms_norm", "input_layernorm.weight", None)
FINAL_NORM = ("rms_norm", "norm.weight", None)
NORM_GAIN_OFFSET = 0.0  # every norm's gain is its weight
QK_NORM = None
SLIDING_WINDOWS = True  # Mistral's every layer, OLMo 3's sliding_attention ones


def head_projections(config: RotaryConfig, head: int) -> dict[str, Projection]:
    """Query head `head`'s rows of q_proj.weight; the rows of k_proj and v_proj of the K/V head it reads."""
    d, g = config.d_head, config.kv_head(head)

    def rows(name: str, lo: int) -> Projection:
        bias = f"self_attn.{name}.bias" if config.attention_bias else None
        return Projection(f"self_attn.{name}.weight", bias, lo, lo + d, False)

    return {"q": rows("q_proj", head * d), "k": rows("k_proj", g * d), "v": rows("v_proj", g * d)}


def out_projection(config: RotaryConfig) -> Projection:
    """o_proj.weight [n_embd, n_head * d_head] (nn.Linear): concat @ w.T (+ b)."""
    bias = "self_attn.o_proj.bias" if config.attention_bias else None
    return Projection("self_attn.o_proj.weight", bias, 0, config.n_embd, False)


def projections_note(config: RotaryConfig, head: int, kv_head: int) -> str:
    return f"the projection weights are [out, in] (x · Wᵀ); the rows of head {head} and of K/V head {kv_head}:"
