"""Building blocks of the forward pass in pure NumPy, float32 in and out:

activations, LayerNorm, head splitting, the causal softmax, the parts of one attention block and the edit of heads'
outputs before W_O (ablation). Nothing of ours above this module is imported here: the families (mhacli.engine.arch) and
the forward (mhacli.engine.forward) build on it.

Shapes: n_seq tokens, n_embd model width, n_head heads of d_head each; an attention map is [n_head, q_pos, k_pos],
rows are queries and sum to 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mhacli.config import ModelConfig

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
    """[..., n_seq, n_head * d_head] -> [..., n_head, n_seq, d_head] (leading axes: a batch of variants)"""
    *lead, n_seq, width = x.shape
    return x.reshape(*lead, n_seq, n_head, width // n_head).swapaxes(-3, -2)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """[..., n_head, n_seq, d_head] -> [..., n_seq, n_head * d_head]"""
    *lead, n_head, n_seq, d_head = x.shape
    return x.swapaxes(-3, -2).reshape(*lead, n_seq, n_head * d_head)


def matmul_rows(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """[..., n_in] @ w [n_in, n_out] -> [..., n_out] as one GEMM over every row (a batch of variants stacked).

    NumPy's matmul of a stacked [B, n_seq, n_in] would run B small GEMMs; the rows are independent, so one
    [B * n_seq, n_in] GEMM computes the same numbers at a better rate."""
    if x.ndim == 2:
        return x @ w
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


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
    q_pre_rope: None = None  # learned positions: nothing is rotated (as arch.common.GroupedAttentionParts names it)
    k_pre_rope: None = None


# An edit of the heads' outputs before the output projection (ablation): z [n_head, n_seq, d_head] -> the same shape.
# `AttentionParts.z` keeps the heads' own outputs; `out` is the projection of the edited ones.
ZEdit = Callable[[np.ndarray], np.ndarray]


def project_heads(z: np.ndarray, edit: ZEdit | None) -> np.ndarray:
    """z [n_head, n_seq, d_head] -> the concatenated head outputs [n_seq, n_head * d_head], the input of W_O."""
    return merge_heads(z if edit is None else edit(z))
