"""GPT-2: the checkpoint's names and shapes, and its block: pre-LayerNorm, Conv1D projections, a GELU MLP.

HF GPT-2 stores Conv1D weights as [in, out]: a projection is `x @ w + b`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mhacli.config import LayerNormConfig, RopeConfig
from mhacli.engine.arch.common import Projection
from mhacli.engine.attention import Sink, causal_attention
from mhacli.engine.blocks import (
    ACTIVATION_FNS,
    F32,
    AttentionParts,
    Params,
    ZEdit,
    causal_softmax,
    layer_norm,
    matmul_rows,
    project_heads,
    split_heads,
)
from mhacli.engine.segments import positions

KEY_PREFIX = "transformer."
LAYER_PREFIX = "h.{}."
EMBEDDING = "wte.weight"  # the input embedding, also the output head when tied
LM_HEAD = "lm_head.weight"  # an untied output head, read only by the loss
KV_WEIGHT = "attn.c_attn.weight"  # holds K and V: its dtype is the KV cache's


def gpt2_attention_parts(
    x: np.ndarray,
    p: dict[str, np.ndarray],
    n_head: int,
    scale: float,
    *,
    keep_scores: bool = True,
    edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> AttentionParts:
    """[n_seq, n_embd] (after ln_1) -> every intermediate of GPT2Attention.

    keep_scores=False is the forward's fast path (mhacli.engine.attention): same numbers to float32 rounding, no raw
    [n_head, n_seq, n_seq] score tensor kept (`scores` is None); with a `sink` the map goes to it block by block
    and is not kept either (`probs` is None).
    """
    qkv = matmul_rows(x, p["attn.c_attn.weight"]) + p["attn.c_attn.bias"]  # [n_seq, 3 * n_embd]
    q, k, v = (split_heads(t, n_head) for t in np.split(qkv, 3, axis=-1))  # 3 x [n_head, n_seq, d_head]
    scores: np.ndarray | None
    probs: np.ndarray | None
    if keep_scores:
        scores = q @ k.transpose(0, 2, 1)  # [n_head, n_seq, n_seq]
        probs = causal_softmax(scores * F32(scale))
        z = probs @ v  # [n_head, n_seq, d_head]
    else:
        scores = None
        z, probs = causal_attention(q, k, v, scale, sink=sink)
    out = matmul_rows(project_heads(z, edit), p["attn.c_proj.weight"]) + p["attn.c_proj.bias"]  # [n_seq, n_embd]
    return AttentionParts(q, k, v, scores, probs, z, out)


def gpt2_mlp(x: np.ndarray, p: dict[str, np.ndarray], act: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """[n_seq, n_embd] -> [n_seq, n_embd]"""
    h = act(matmul_rows(x, p["mlp.c_fc.weight"]) + p["mlp.c_fc.bias"])  # [n_seq, n_inner]
    return matmul_rows(h, p["mlp.c_proj.weight"]) + p["mlp.c_proj.bias"]


def gpt2_block(
    x: np.ndarray,
    p: dict[str, np.ndarray],
    config: LayerNormConfig,
    layer: int,
    edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> tuple[np.ndarray, AttentionParts]:
    """Pre-LN block: [n_seq, n_embd] -> ([n_seq, n_embd], the attention's parts as the forward computed them)"""
    eps = config.layer_norm_epsilon
    h = layer_norm(x, p["ln_1.weight"], p["ln_1.bias"], eps)
    attn = gpt2_attention_parts(h, p, config.n_head, config.attn_scale(layer), keep_scores=False, edit=edit, sink=sink)
    x = x + attn.out
    x = x + gpt2_mlp(
        layer_norm(x, p["ln_2.weight"], p["ln_2.bias"], eps), p, ACTIVATION_FNS[config.activation_function]
    )
    return x, attn


block = gpt2_block


def check(config: LayerNormConfig) -> None:
    """Nothing to check beyond what every family's config has (mhacli.engine.arch.check_config)."""


def rope_at(config: LayerNormConfig, layer: int) -> RopeConfig | None:
    """None: learned positions (wpe), no rotation."""
    return None


def normalise_key(key: str) -> str | None:
    """Checkpoint key -> our key: strip `transformer.`; None for buffers and heads we do not use."""
    if key.startswith(KEY_PREFIX):
        key = key[len(KEY_PREFIX) :]
    if key.endswith((".attn.bias", ".attn.masked_bias")) or (key.startswith("lm_head.") and key != LM_HEAD):
        return None
    return key


def expected_shapes(config: LayerNormConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the GPT-2 forward reads, with the shape the config implies (Conv1D weights are [in, out])."""
    e, i = config.n_embd, config.n_inner
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
            p + "attn.c_attn.weight": (e, 3 * e), p + "attn.c_attn.bias": (3 * e,),
            p + "attn.c_proj.weight": (e, e), p + "attn.c_proj.bias": (e,),
            p + "ln_2.weight": (e,), p + "ln_2.bias": (e,),
            p + "mlp.c_fc.weight": (e, i), p + "mlp.c_fc.bias": (i,),
            p + "mlp.c_proj.weight": (i, e), p + "mlp.c_proj.bias": (e,),
        }  # fmt: skip
    return shapes


def embed(params: Params, ids: np.ndarray) -> np.ndarray:
    """[n_seq] token ids -> [n_seq, n_embd] token + position embeddings"""
    return params.get("wte.weight")[ids] + params.get("wpe.weight")[positions(len(ids))]  # restarting in a pack


def final_norm(params: Params, x: np.ndarray) -> np.ndarray:
    """ln_f: [n_seq, n_embd] -> [n_seq, n_embd]"""
    return layer_norm(x, params.get("ln_f.weight"), params.get("ln_f.bias"), params.config.norm_eps)


def attention_input(x: np.ndarray, p: dict[str, np.ndarray], config: LayerNormConfig) -> np.ndarray:
    """ln_1: what the attention projections read, [n_seq, n_embd] -> [n_seq, n_embd]"""
    return layer_norm(x, p["ln_1.weight"], p["ln_1.bias"], config.layer_norm_epsilon)


def attention_parts(h: np.ndarray, p: dict[str, np.ndarray], config: LayerNormConfig, layer: int) -> AttentionParts:
    return gpt2_attention_parts(h, p, config.n_head, config.attn_scale(layer))


# --- for `explain`: where each head's numbers come from ----------------------------------------------------------
ATTENTION_NORM = ("layer_norm", "ln_1.weight", "ln_1.bias")
FINAL_NORM = ("layer_norm", "ln_f.weight", "ln_f.bias")
NORM_GAIN_OFFSET = 0.0  # every norm's gain is its weight
QK_NORM = None
SLIDING_WINDOWS = False


def head_projections(config: LayerNormConfig, head: int) -> dict[str, Projection]:
    """Head `head`'s columns of c_attn.weight [n_embd, 3 * n_embd]: q, then k, then v, each n_embd wide."""
    e, lo = config.n_embd, head * config.d_head
    hi = lo + config.d_head
    w, b = "attn.c_attn.weight", "attn.c_attn.bias"
    return {k: Projection(w, b, n * e + lo, n * e + hi, True) for n, k in enumerate("qkv")}


def out_projection(config: LayerNormConfig) -> Projection:
    """c_proj.weight [n_embd, n_embd] (Conv1D): concat @ w + b."""
    return Projection("attn.c_proj.weight", "attn.c_proj.bias", 0, config.n_embd, True)


def projections_note(config: LayerNormConfig, head: int, kv_head: int) -> str:
    return f"head {head}'s slices of c_attn.weight [{config.n_embd}, {3 * config.n_embd}] and of c_attn.bias:"
