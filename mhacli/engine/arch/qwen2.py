"""Qwen 2 and 2.5:

Llama's block (pre-RMSNorm, SwiGLU, grouped K/V heads, rotary positions) with biases on q_proj, k_proj and v_proj
(never on o_proj), and sliding windows on the layers from max_window_layers on when use_sliding_window is set (or
as layer_types says).
"""

from __future__ import annotations

from mhacli.config import RotaryConfig
from mhacli.engine.arch.common import Projection
from mhacli.engine.arch.llama import (  # the parts Qwen 2 shares with Llama unchanged
    ATTENTION_NORM,
    EMBEDDING,
    FINAL_NORM,
    KEY_PREFIX,
    KV_WEIGHT,
    LAYER_PREFIX,
    LM_HEAD,
    NORM_GAIN_OFFSET,
    QK_NORM,
    SLIDING_WINDOWS,
    attention_input,
    attention_parts,
    block,
    check,
    embed,
    final_norm,
    mlp_shapes,
    normalise_key,
    projections_note,
    rope_at,
)

__all__ = [  # the family interface (interface.Family): Llama's pieces and Qwen 2's own
    "ATTENTION_NORM", "EMBEDDING", "FINAL_NORM", "KEY_PREFIX", "KV_WEIGHT", "LAYER_PREFIX", "LM_HEAD", "QK_NORM",
    "NORM_GAIN_OFFSET", "SLIDING_WINDOWS",
    "attention_input", "attention_parts", "block", "check", "embed", "expected_shapes", "final_norm",
    "head_projections", "normalise_key", "out_projection", "projections_note", "rope_at",
]  # fmt: skip


def expected_shapes(config: RotaryConfig) -> dict[str, tuple[int, ...]]:
    e, q, kv = config.n_embd, config.n_head * config.d_head, config.n_kv_head * config.d_head
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (config.vocab_size, e), "norm.weight": (e,)}
    for layer in range(config.n_layer):
        p = LAYER_PREFIX.format(layer)
        a = p + "self_attn."
        shapes |= {
            p + "input_layernorm.weight": (e,), p + "post_attention_layernorm.weight": (e,),
            a + "q_proj.weight": (q, e), a + "k_proj.weight": (kv, e), a + "v_proj.weight": (kv, e),
            a + "q_proj.bias": (q,), a + "k_proj.bias": (kv,), a + "v_proj.bias": (kv,), a + "o_proj.weight": (e, q),
        }  # fmt: skip
        shapes |= mlp_shapes(config, p)
    return shapes


def head_projections(config: RotaryConfig, head: int) -> dict[str, Projection]:
    """Query head `head`'s rows of q_proj (with its bias); the rows of k_proj and v_proj of the K/V head it reads."""
    d, g = config.d_head, config.kv_head(head)

    def rows(name: str, lo: int) -> Projection:
        return Projection(f"self_attn.{name}.weight", f"self_attn.{name}.bias", lo, lo + d, False)

    return {"q": rows("q_proj", head * d), "k": rows("k_proj", g * d), "v": rows("v_proj", g * d)}


def out_projection(config: RotaryConfig) -> Projection:
    """o_proj.weight [n_embd, n_head * d_head] (nn.Linear, no bias): concat @ w.T."""
    return Projection("self_attn.o_proj.weight", None, 0, config.n_embd, False)
