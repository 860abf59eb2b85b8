"""Gemma 3 (text):

Gemma 2's block (mhacli.engine.arch.gemma2: embeddings times sqrt(hidden_size), (1 + w) RMSNorms before and after
attention and the MLP, query_pre_attn_scalar, GeGLU, final logit soft-capping where the config sets it) with
- QK-norm: q_norm and k_norm, RMSNorms over each head's d_head values with gain (1 + w), one weight shared by every
  head, applied before the rotation;
- local and global layers: the `sliding_attention` layers (five of every six by default) see `sliding_window` keys and
  rotate with rope_local_base_freq; the `full_attention` (global) layers see every key and rotate with rope_theta and
  the rope scaling (`config.rope_at`);
- no attention logit soft-capping: Gemma3Attention never passes attn_logit_softcapping to its attention, so the
  config's value is not applied (GemmaConfig drops it for gemma3_text).
"""

from __future__ import annotations

from mhacli.engine.arch.gemma2 import (  # noqa: F401 - the family interface: as Gemma 2, but QK_NORM
    ATTENTION_NORM,
    ATTENTION_OUT_NORM,
    EMBEDDING,
    FINAL_NORM,
    KEY_PREFIX,
    KV_WEIGHT,
    LAYER_PREFIX,
    LM_HEAD,
    NORM_GAIN_OFFSET,
    SLIDING_WINDOWS,
    attention_input,
    attention_parts,
    block,
    check,
    embed,
    expected_shapes,
    final_norm,
    head_projections,
    normalise_key,
    out_projection,
    projections_note,
    rope_at,
)

QK_NORM = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")  # per head: [d_head] each, gain 1 + w
