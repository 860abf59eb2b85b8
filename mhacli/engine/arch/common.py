"""Pieces the non-GPT-2 families share:

nn.Linear projections, RMSNorm, SwiGLU, and causal attention over grouped K/V heads with an optional sliding window.
Pure NumPy, float32 in and out.

Shapes: q [n_head, n_seq, d_head], k and v [n_kv_head, n_seq, d_head]; query head h reads K/V head
h // (n_head // n_kv_head), as HF's repeat_kv lays them out. K and V are broadcast over their group of query
heads, never copied per query head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mhacli.engine.attention import Sink, causal_attention
from mhacli.engine.blocks import F32, causal_softmax, matmul_rows

Act = Callable[[np.ndarray], np.ndarray]


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """nn.Linear with the checkpoint's [out, in] weight: [..., n_seq, in] -> [..., n_seq, out]"""
    y = matmul_rows(x, w.T)
    return y if b is None else y + b


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """[..., n] -> [..., n]: x / sqrt(mean(x^2) + eps) * w, as HF's LlamaRMSNorm / Olmo2RMSNorm in float32."""
    inv_rms = F32(1.0) / np.sqrt(np.square(x).mean(axis=-1, keepdims=True) + F32(eps))
    return w * (x * inv_rms)


def swiglu(x: np.ndarray, p: dict[str, np.ndarray], act: Act) -> np.ndarray:
    """LlamaMLP: down(act(gate(x)) * up(x)), [n_seq, n_embd] -> [n_seq, n_embd].

    Biases where the checkpoint has them."""
    gate = linear(x, p["mlp.gate_proj.weight"], p.get("mlp.gate_proj.bias"))  # [n_seq, intermediate]
    up = linear(x, p["mlp.up_proj.weight"], p.get("mlp.up_proj.bias"))
    return linear(act(gate) * up, p["mlp.down_proj.weight"], p.get("mlp.down_proj.bias"))


def soft_cap(x: np.ndarray, cap: float | None) -> np.ndarray:
    """cap * tanh(x / cap), element-wise in float32 (Gemma 2's logit soft-capping); x itself when cap is None."""
    return x if cap is None else np.tanh(x / F32(cap)) * F32(cap)


def norm_gain(w: np.ndarray, start: int, end: int, offset: float) -> np.ndarray:
    """The gain a QK-norm applies to features [start, end) of its projection, float32.

    w covers the whole projection (OLMo: [n_head * d_head]) or one head, shared by every head (Gemma 3, Qwen 3:
    [d_head]); `offset` is the family's NORM_GAIN_OFFSET (Gemma stores the gain as 1 + w)."""
    gain = w if len(w) == end - start else w[start:end]
    return gain + F32(offset) if offset else gain


def grouped_scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """q [n_head, n_seq, d_head], k [n_kv_head, n_seq, d_head] -> raw q.k [n_head, n_seq, n_seq]"""
    n_head, n_seq, d_head = q.shape
    n_kv = k.shape[0]
    q4 = q.reshape(n_kv, n_head // n_kv, n_seq, d_head)  # [n_kv_head, group, n_seq, d_head]
    return (q4 @ k[:, None].transpose(0, 1, 3, 2)).reshape(n_head, n_seq, k.shape[1])


def grouped_mix(probs: np.ndarray, v: np.ndarray) -> np.ndarray:
    """probs [n_head, n_seq, n_seq], v [n_kv_head, n_seq, d_head] -> z [n_head, n_seq, d_head]"""
    n_head, n_seq, _ = probs.shape
    n_kv = v.shape[0]
    p4 = probs.reshape(n_kv, n_head // n_kv, n_seq, probs.shape[-1])
    return (p4 @ v[:, None]).reshape(n_head, n_seq, v.shape[-1])


def outside_window(n_seq: int, window: int) -> np.ndarray:
    """[q_pos, k_pos] bool: key j is too far back for query i (j <= i - window), HF's sliding_window_overlay negated."""
    i = np.arange(n_seq)[:, None]
    j = np.arange(n_seq)[None, :]
    return j <= i - window


def masked_softmax(scaled: np.ndarray, window: int | None) -> np.ndarray:
    """[n_head, n_seq, n_seq] scaled scores -> probabilities over the keys j with i - window < j <= i.

    Every other entry exactly 0. The window is applied here; the causal part by blocks.causal_softmax."""
    n_seq = scaled.shape[-1]
    if window is not None and window < n_seq:
        scaled = np.where(outside_window(n_seq, window), -np.inf, scaled)
    return causal_softmax(scaled)


@dataclass(frozen=True)
class GroupedAttentionParts:
    """Every intermediate of one attention block over grouped K/V heads (the first seven as blocks.AttentionParts)."""

    q: np.ndarray  # [n_head, n_seq, d_head] as scored (after RoPE where the family has it)
    k: np.ndarray  # [n_kv_head, n_seq, d_head] as scored
    v: np.ndarray  # [n_kv_head, n_seq, d_head]
    scores: np.ndarray | None  # [n_head, n_seq, n_seq] raw q.k, before scaling and mask (None: not kept)
    probs: np.ndarray | None  # [n_head, n_seq, n_seq] (None: streamed to a sink, not kept)
    z: np.ndarray  # [n_head, n_seq, d_head] per-head outputs
    out: np.ndarray  # [n_seq, n_embd] after the output projection
    q_pre_rope: np.ndarray | None = None  # [n_head, n_seq, d_head] before RoPE (None: no RoPE)
    k_pre_rope: np.ndarray | None = None  # [n_kv_head, n_seq, d_head]
    cos: np.ndarray | None = None  # [n_seq, d_head] the rotation used at each position
    sin: np.ndarray | None = None


def grouped_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float,
    window: int | None,
    *,
    keep_scores: bool = True,
    sink: Sink | None = None,
    softcap: float | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Causal attention over grouped K/V heads, with the layer's sliding window.

    q [n_head, n_seq, d_head], k/v [n_kv_head, n_seq, d_head]
    -> (scores, probs [n_head, n_seq, n_seq], z [n_head, n_seq, d_head])

    As HF's eager_attention_forward: (q @ k^T) * scale, soft-capped where the layer caps (softcap * tanh(s /
    softcap), Gemma 2), masked, softmax over keys, @ v. keep_scores=False is the
    forward's fast path (mhacli.engine.attention): the same numbers to float32 rounding, scores not kept (None).
    """
    if not keep_scores:
        z, probs = causal_attention(q, k, v, scale, window=window, sink=sink, softcap=softcap)
        return None, probs, z
    scores = grouped_scores(q, k)  # [n_head, n_seq, n_seq]
    probs = masked_softmax(soft_cap(scores * F32(scale), softcap), window)
    return scores, probs, grouped_mix(probs, v)


@dataclass(frozen=True)
class Projection:
    """Where one head's q, k or v (or the output projection) lives: output features [start, end) of a layer tensor.

    GPT-2's Conv1D weights are [in, out] (`in_out`): the features are columns. nn.Linear weights are [out, in]:
    the features are rows, and a projection multiplies by their transpose.
    """

    weight: str  # layer-relative key, e.g. "attn.c_attn.weight", "self_attn.k_proj.weight"
    bias: str | None  # None: this projection has no bias
    start: int
    end: int
    in_out: bool

    @property
    def axis(self) -> str:
        return "columns" if self.in_out else "rows"

    def apply(self, rows: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
        """[n, n_in] -> [n, end - start]: these features of the projection of each row."""
        w = p[self.weight]
        y = rows @ w[:, self.start : self.end] if self.in_out else rows @ w[self.start : self.end].T
        return y if self.bias is None else y + p[self.bias][self.start : self.end]

    def where(self) -> str:
        """e.g. `c_attn.weight[:, 48:56]`, `k_proj.weight[8:16, :]`"""
        name = ".".join(self.weight.split(".")[-2:])
        return f"{name}[:, {self.start}:{self.end}]" if self.in_out else f"{name}[{self.start}:{self.end}, :]"

    def bias_where(self) -> str | None:
        return None if self.bias is None else f"{'.'.join(self.bias.split('.')[-2:])}[{self.start}:{self.end}]"

    def to_dict(self) -> dict:
        return {"weight": self.weight, self.axis: [self.start, self.end], "bias": self.bias}
