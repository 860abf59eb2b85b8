"""The forward pass in pure NumPy, float32 end to end: the shared building blocks, GPT-2's block, and `forward`,
which runs any supported architecture with its family's block (mhacli.arch). No I/O, no printing.

Shapes: n_seq tokens, n_embd model width, n_head heads of d_head each; an attention map is [n_head, q_pos, k_pos],
rows are queries and sum to 1. Weights keep HF's Conv1D layout [in, out], so a projection is `x @ w + b`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mhacli.attention import Sink, causal_attention
from mhacli.config import ModelConfig
from mhacli.errors import NumericsError

F32 = np.float32


class Params(Protocol):
    """Where the forward gets its weights from (weights.Checkpoint): tensors float32, read on demand."""

    config: ModelConfig

    def get(self, name: str) -> np.ndarray: ...

    def layer(self, layer: int) -> dict[str, np.ndarray]: ...


# --- activations (transformers.activations, element-wise, float32 in and out) ---------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), computed in one scratch array (the MLP's widest tensor)."""
    t = np.multiply(x, x)
    t *= F32(0.044715)
    t += F32(1.0)
    t *= x
    t *= F32(_SQRT_2_OVER_PI)
    np.tanh(t, out=t)
    t += F32(1.0)
    t *= x
    t *= F32(0.5)
    return t


def gelu_fast(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def gelu_erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf  # NumPy has no erf; imported only for models that use exact GELU

    return x * 0.5 * (1.0 + erf(x / math.sqrt(2.0)))


def laplace(x: np.ndarray, mu: float = 0.707107, sigma: float = 0.282095) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * (1.0 + erf((x - mu) / (sigma * math.sqrt(2.0))))


def sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a negative argument only: no overflow warnings for large |x|
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(F32)


def softplus(x: np.ndarray) -> np.ndarray:
    # torch's softplus (beta=1, threshold=20): x itself above the threshold
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0)))).astype(F32)


ACTIVATION_FNS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_python_tanh": gelu_tanh,
    "gelu_accurate": gelu_tanh,
    "gelu_fast": gelu_fast,
    "gelu": gelu_erf,
    "gelu_python": gelu_erf,
    "gelu_10": lambda x: np.clip(gelu_erf(x), -10.0, 10.0),
    "quick_gelu": lambda x: x * sigmoid(1.702 * x),
    "relu": lambda x: np.maximum(x, 0.0),
    "relu2": lambda x: np.square(np.maximum(x, 0.0)),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "silu": lambda x: x * sigmoid(x),
    "swish": lambda x: x * sigmoid(x),
    "sigmoid": sigmoid,
    "tanh": np.tanh,
    "linear": lambda x: x,
    "mish": lambda x: x * np.tanh(softplus(x)),
    "hardswish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "laplace": laplace,
    "sqrtsoftplus": lambda x: np.sqrt(softplus(x)),
}


# --- building blocks ------------------------------------------------------------------------------------------


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """[n_seq, n_embd] -> [n_seq, n_embd], biased variance as torch.nn.LayerNorm."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.square(centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + eps) * w + b


def split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """[n_seq, n_head * d_head] -> [n_head, n_seq, d_head]"""
    n_seq, width = x.shape
    return x.reshape(n_seq, n_head, width // n_head).transpose(1, 0, 2)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """[n_head, n_seq, d_head] -> [n_seq, n_head * d_head]"""
    n_head, n_seq, d_head = x.shape
    return x.transpose(1, 0, 2).reshape(n_seq, n_head * d_head)


def causal_softmax(scores: np.ndarray) -> np.ndarray:
    """[n_head, n_seq, n_seq] scaled scores -> probabilities; keys after the query get exactly 0."""
    n_seq = scores.shape[-1]
    future = np.triu(np.ones((n_seq, n_seq), dtype=bool), k=1)  # [q_pos, k_pos]
    scores = np.where(future, -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class AttentionParts:
    """Every intermediate of one attention block, for `explain` and for tests."""

    q: np.ndarray  # [n_head, n_seq, d_head]
    k: np.ndarray  # [n_head, n_seq, d_head]
    v: np.ndarray  # [n_head, n_seq, d_head]
    scores: np.ndarray | None  # [n_head, n_seq, n_seq] raw q.k, before scaling and mask (None: not kept)
    probs: np.ndarray | None  # [n_head, n_seq, n_seq] (None: streamed to a sink, not kept)
    z: np.ndarray  # [n_head, n_seq, d_head] per-head outputs
    out: np.ndarray  # [n_seq, n_embd] after c_proj


# An edit of the heads' outputs before the output projection (ablation): z [n_head, n_seq, d_head] -> the same shape.
# `AttentionParts.z` keeps the heads' own outputs; `out` is the projection of the edited ones.
ZEdit = Callable[[np.ndarray], np.ndarray]


def project_heads(z: np.ndarray, edit: ZEdit | None) -> np.ndarray:
    """z [n_head, n_seq, d_head] -> the concatenated head outputs [n_seq, n_head * d_head], the input of W_O."""
    return merge_heads(z if edit is None else edit(z))


def gpt2_attention_parts(
    x: np.ndarray, p: dict[str, np.ndarray], n_head: int, scale: float, *, keep_scores: bool = True,
    edit: ZEdit | None = None, sink: Sink | None = None,
) -> AttentionParts:
    """[n_seq, n_embd] (after ln_1) -> every intermediate of GPT2Attention.

    keep_scores=False is the forward's fast path (mhacli.attention): same numbers to float32 rounding, no raw
    [n_head, n_seq, n_seq] score tensor kept (`scores` is None); with a `sink` the map goes to it block by block
    and is not kept either (`probs` is None).
    """
    qkv = x @ p["attn.c_attn.weight"] + p["attn.c_attn.bias"]  # [n_seq, 3 * n_embd]
    q, k, v = (split_heads(t, n_head) for t in np.split(qkv, 3, axis=-1))  # 3 x [n_head, n_seq, d_head]
    if keep_scores:
        scores = q @ k.transpose(0, 2, 1)  # [n_head, n_seq, n_seq]
        probs = causal_softmax(scores * F32(scale))
        z = probs @ v  # [n_head, n_seq, d_head]
    else:
        scores = None
        z, probs = causal_attention(q, k, v, scale, sink=sink)
    out = project_heads(z, edit) @ p["attn.c_proj.weight"] + p["attn.c_proj.bias"]  # [n_seq, n_embd]
    return AttentionParts(q, k, v, scores, probs, z, out)


def gpt2_mlp(x: np.ndarray, p: dict[str, np.ndarray], act: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """[n_seq, n_embd] -> [n_seq, n_embd]"""
    h = act(x @ p["mlp.c_fc.weight"] + p["mlp.c_fc.bias"])  # [n_seq, n_inner]
    return h @ p["mlp.c_proj.weight"] + p["mlp.c_proj.bias"]


def gpt2_block(
    x: np.ndarray, p: dict[str, np.ndarray], config: ModelConfig, layer: int, edit: ZEdit | None = None,
    sink: Sink | None = None,
) -> tuple[np.ndarray, AttentionParts]:
    """Pre-LN block: [n_seq, n_embd] -> ([n_seq, n_embd], the attention's parts as the forward computed them)"""
    eps = config.layer_norm_epsilon
    h = layer_norm(x, p["ln_1.weight"], p["ln_1.bias"], eps)
    attn = gpt2_attention_parts(h, p, config.n_head, config.attn_scale(layer), keep_scores=False, edit=edit, sink=sink)
    x = x + attn.out
    x = x + gpt2_mlp(layer_norm(x, p["ln_2.weight"], p["ln_2.bias"], eps), p, ACTIVATION_FNS[config.activation_function])
    return x, attn


def family(config: ModelConfig):
    """The architecture module of this config (mhacli.arch), imported on first use: it builds on this module."""
    from mhacli.arch import family as lookup

    return lookup(config.model_type)


def embed(params: Params, ids: np.ndarray) -> np.ndarray:
    """[n_seq] token ids -> [n_seq, n_embd], the residual stream entering layer 0 (token + learned positions for
    GPT-2 and GPTBigCode; tokens alone for the rotary families)"""
    return family(params.config).embed(params, ids)


def final_norm(params: Params, x: np.ndarray) -> np.ndarray:
    """The norm after the last layer (ln_f or norm): [n_seq, n_embd] -> [n_seq, n_embd]"""
    return family(params.config).final_norm(params, x)


@dataclass(frozen=True)
class LayerTrace:
    layer: int
    attention: np.ndarray | None  # [n_head, n_seq, n_seq] (None: streamed to the layer's sink)
    residual: np.ndarray  # [n_seq, n_embd] the residual stream after this block
    z: np.ndarray  # [n_head, n_seq, d_head] each head's output (before any edit), the input of W_O per head


# Where a forward sends each layer's attention instead of keeping it: layer -> a sink (None: keep that layer's map).
Sinks = Callable[[int], Sink | None]


def forward(
    params: Params, ids: np.ndarray | list[int], *, n_layers: int | None = None, edits: dict[int, ZEdit] | None = None,
    sinks: Sinks | None = None,
) -> Iterator[LayerTrace]:
    """Run the model layer by layer, yielding each layer's attention and residual stream.

    Stops after `n_layers` layers (all by default); one layer's weights are fetched at a time. `edits` maps a
    layer to an edit of its heads' outputs before W_O (ablation). `sinks` streams a layer's attention, block by
    block, to the sink it returns for that layer (LayerTrace.attention is then None): no [n_head, n_seq, n_seq] map.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n = params.config.n_layer if n_layers is None else n_layers
    yield from forward_from(params, embed(params, ids), 0, n, edits=edits, sinks=sinks)


def forward_from(
    params: Params, x: np.ndarray, first: int, stop: int, *, edits: dict[int, ZEdit] | None = None,
    sinks: Sinks | None = None,
) -> Iterator[LayerTrace]:
    """Layers first..stop-1 on x [n_seq, n_embd], the residual stream entering layer `first`."""
    config = params.config
    block = family(config).block  # one small block function per architecture family
    edits = edits or {}
    for layer in range(first, stop):
        weights = params.layer(layer)
        sink = sinks(layer) if sinks is not None else None
        with np.errstate(all="ignore"):  # overflow is reported below, naming the layer and heads
            x, attn = block(x, weights, config, layer, edits.get(layer), sink=sink)
        check_finite(attn.probs if attn.probs is not None else attn.z, x, layer)
        yield LayerTrace(layer, attn.probs, x, attn.z)


def check_finite(per_head: np.ndarray, x: np.ndarray, layer: int) -> None:
    """per_head [n_head, ...]: the layer's attention, or its heads' outputs where the attention was streamed (a
    NaN in a head's weights reaches its output)."""
    if np.isfinite(per_head).all() and np.isfinite(x).all():
        return
    probs = per_head
    bad_heads = [h for h in range(probs.shape[0]) if not np.isfinite(probs[h]).all()]
    where = f"heads {bad_heads}" if bad_heads else "the residual stream"
    raise NumericsError(f"the forward pass produced NaN or Inf in layer {layer}, {where} (extreme weights?)")
