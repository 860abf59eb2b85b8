"""GPTBigCode (StarCoder, SantaCoder):

GPT-2's pre-LayerNorm block with learned positions, but nn.Linear weights ([out, in]: `x @ w.T + b`) and, when
multi_query, one K/V head shared by every query head (MQA).

c_attn packs q, k and v: multi_query: [q of every head (n_embd) | k (d_head) | v (d_head)]; otherwise, per head
h, the block [q_h | k_h | v_h] of 3 * d_head rows (GPTBigCodeAttention.forward's view and split).
"""

from __future__ import annotations

import numpy as np

from mhacli.config import BigCodeConfig
from mhacli.engine.arch.common import GroupedAttentionParts, Projection, grouped_attention, linear
from mhacli.engine.arch.gpt2 import (  # noqa: F401 - the family interface: as GPT-2
    attention_input,
    check,
    embed,
    final_norm,
    rope_at,
)
from mhacli.engine.attention import Sink
from mhacli.engine.blocks import ACTIVATION_FNS, ZEdit, layer_norm, project_heads, split_heads

KEY_PREFIX = "transformer."
LAYER_PREFIX = "h.{}."
EMBEDDING = "wte.weight"  # the input embedding, also the output head when tied
LM_HEAD = "lm_head.weight"  # an untied output head, read only by the loss
KV_WEIGHT = "attn.c_attn.weight"


def normalise_key(key: str) -> str | None:
    if key.startswith(KEY_PREFIX):
        key = key[len(KEY_PREFIX) :]
    if (
        key == "bias"
        or key.endswith((".attn.bias", ".attn.masked_bias"))
        or (key.startswith("lm_head.") and key != LM_HEAD)
    ):
        return None  # the causal-mask buffer, and the LM head we do not use
    return key


def expected_shapes(config: BigCodeConfig) -> dict[str, tuple[int, ...]]:
    e, i, kv = config.n_embd, config.n_inner, config.n_kv_head * config.d_head
    shapes: dict[str, tuple[int, ...]] = {
        "wte.weight": (config.vocab_size, e),
        "wpe.weight": (config.n_positions, e),
        "ln_f.weight": (e,),
        "ln_f.bias": (e,),
    }
    for layer in range(config.n_layer):
        p = f"h.{layer}."
        shapes |= {
            p + "ln_1.weight": (e,), p + "ln_1.bias": (e,),
            p + "attn.c_attn.weight": (e + 2 * kv, e), p + "attn.c_attn.bias": (e + 2 * kv,),
            p + "attn.c_proj.weight": (e, e), p + "attn.c_proj.bias": (e,),
            p + "ln_2.weight": (e,), p + "ln_2.bias": (e,),
            p + "mlp.c_fc.weight": (i, e), p + "mlp.c_fc.bias": (i,),
            p + "mlp.c_proj.weight": (e, i), p + "mlp.c_proj.bias": (e,),
        }  # fmt: skip
    return shapes


def split_qkv(qkv: np.ndarray, config: BigCodeConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """c_attn's output, split into the heads' q, k and v.

    [n_seq, n_embd + 2 * n_kv_head * d_head] -> q [n_head, n_seq, d_head], k, v [n_kv_head, n_seq, d_head]
    """
    e, d = config.n_embd, config.d_head
    if config.multi_query:
        q = split_heads(qkv[..., :e], config.n_head)
        return q, qkv[..., None, :, e : e + d], qkv[..., None, :, e + d :]  # one K/V head: [1, n_seq, d_head]
    per_head = split_heads(qkv, config.n_head)  # [n_head, n_seq, 3 * d_head]
    return per_head[..., :d], per_head[..., d : 2 * d], per_head[..., 2 * d :]


def attention_parts(
    h: np.ndarray,
    p: dict[str, np.ndarray],
    config: BigCodeConfig,
    layer: int,
    keep_scores: bool = True,
    edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> GroupedAttentionParts:
    """[n_seq, n_embd] (after ln_1) -> every intermediate of GPTBigCodeAttention (eager, float32)."""
    q, k, v = split_qkv(linear(h, p["attn.c_attn.weight"], p["attn.c_attn.bias"]), config)
    scores, probs, z = grouped_attention(q, k, v, config.attn_scale(layer), None, keep_scores=keep_scores, sink=sink)
    out = linear(project_heads(z, edit), p["attn.c_proj.weight"], p["attn.c_proj.bias"])  # [n_seq, n_embd]
    return GroupedAttentionParts(q, k, v, scores, probs, z, out)


def block(
    x: np.ndarray,
    p: dict[str, np.ndarray],
    config: BigCodeConfig,
    layer: int,
    edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> tuple[np.ndarray, GroupedAttentionParts]:
    """GPTBigCodeBlock: [n_seq, n_embd] -> ([n_seq, n_embd], attention parts)"""
    attn = attention_parts(attention_input(x, p, config), p, config, layer, keep_scores=False, edit=edit, sink=sink)
    x = x + attn.out
    h = layer_norm(x, p["ln_2.weight"], p["ln_2.bias"], config.layer_norm_epsilon)
    act = ACTIVATION_FNS[config.activation_function]
    x = x + linear(
        act(linear(h, p["mlp.c_fc.weight"], p["mlp.c_fc.bias"])), p["mlp.c_proj.weight"], p["mlp.c_proj.bias"]
    )
    return x, attn


# --- for `explain`: where each head's numbers come from ----------------------------------------------------------
ATTENTION_NORM = ("layer_norm", "ln_1.weight", "ln_1.bias")
FINAL_NORM = ("layer_norm", "ln_f.weight", "ln_f.bias")
NORM_GAIN_OFFSET = 0.0  # every norm's gain is its weight
QK_NORM = None
SLIDING_WINDOWS = False


def head_projections(config: BigCodeConfig, head: int) -> dict[str, Projection]:
    """Query head `head`'s rows of c_attn.weight, and those of the K/V head it reads."""
    e, d, w, b = config.n_embd, config.d_head, "attn.c_attn.weight", "attn.c_attn.bias"
    if config.multi_query:
        q0, k0, v0 = head * d, e, e + d  # [q of every head | k | v]
    else:
        q0 = head * 3 * d  # per head: [q_h | k_h | v_h]
        k0, v0 = q0 + d, q0 + 2 * d
    return {k: Projection(w, b, lo, lo + d, False) for k, lo in (("q", q0), ("k", k0), ("v", v0))}


def out_projection(config: BigCodeConfig) -> Projection:
    return Projection("attn.c_proj.weight", "attn.c_proj.bias", 0, config.n_embd, False)


def projections_note(config: BigCodeConfig, head: int, kv_head: int) -> str:
    return f"the projection weights are [out, in] (x · Wᵀ); the rows of head {head} and of K/V head {kv_head}:"
