"""Rotary position embeddings (RoPE) as HF computes them (transformers.modeling_rope_utils), float32.

Numbers that do not depend on the CPU: NumPy's float32 `**`, `cos` and `sin` take different SIMD paths on
different CPUs (AVX-512, AVX2, baseline) and are not correctly rounded on all of them. So `base ** x`, cos and sin
are computed in float64 (Python's `math.pow` for the d_head/2 powers) and rounded to float32 once: the correctly
rounded float32 value, the same on every CPU, which torch's float32 results equal but for rare last-place ties.
Everything else follows HF's float32 operations one by one (IEEE multiply and divide are exact-then-rounded
everywhere).

`inv_freq` gives the d_head/2 rotation frequencies of one RopeConfig type (default, linear, dynamic, yarn,
longrope, llama3) and the factor HF multiplies cos and sin by (its `attention_scaling`); `rope_tables` turns them
into cos/sin [n_seq, d_head] for positions 0..n_seq-1; `apply_rope` rotates q or k with them:
x * cos + rotate_half(x) * sin, the two halves of each head forming d_head/2 rotation pairs (i, i + d_head/2).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TypeVar, cast

import numpy as np

from mhacli.config import RopeConfig
from mhacli.engine.blocks import F32
from mhacli.engine.segments import current


def _exponents(d_head: int) -> np.ndarray:
    """[d_head // 2]: 0, 2, 4, ... / d_head, in float32 as torch.arange(0, dim, 2).float() / dim"""
    return np.arange(0, d_head, 2, dtype=F32) / F32(d_head)


T = TypeVar("T")


def _given(value: T | None) -> T:
    """A rotary parameter the parser guarantees for this rope_type (mhacli.config.rotary), typed as present."""
    return cast("T", value)


def _powers(base: float, d_head: int) -> np.ndarray:
    """[d_head // 2] float32: base ** (2i / d_head), HF's float32 exponents, the power in float64 rounded once."""
    return np.array([math.pow(float(F32(base)), float(x)) for x in _exponents(d_head)], dtype=np.float64).astype(F32)


def _yarn_attention_factor(rope: RopeConfig, factor: float) -> float:
    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if rope.attention_factor is not None:
        return rope.attention_factor
    if rope.mscale and rope.mscale_all_dim:
        return float(mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim))
    return mscale(factor)


def _yarn(rope: RopeConfig, d_head: int, n_positions: int) -> tuple[np.ndarray, float]:
    base = rope.rope_theta
    original = rope.original_max_position_embeddings or n_positions  # parse_config fills it, as HF does
    factor = rope.factor if rope.factor is not None else n_positions / original
    beta_fast, beta_slow = rope.beta_fast or 32, rope.beta_slow or 1

    def correction_dim(rotations: float) -> float:
        return (d_head * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d_head - 1)
    if low == high:
        high += 0.001  # HF: prevent a division by zero
    pos_freqs = _powers(base, d_head)  # [d_head // 2]
    extrapolation = F32(1.0) / pos_freqs
    interpolation = F32(1.0) / (F32(factor) * pos_freqs)
    ramp = np.clip((np.arange(d_head // 2, dtype=F32) - F32(low)) / F32(high - low), 0, 1)
    extrapolation_factor = F32(1) - ramp
    inv = interpolation * (F32(1) - extrapolation_factor) + extrapolation * extrapolation_factor
    return inv, _yarn_attention_factor(rope, factor)


def _llama3(rope: RopeConfig, d_head: int) -> np.ndarray:
    inv = F32(1.0) / (_powers(rope.rope_theta, d_head))
    factor, low, high = _given(rope.factor), _given(rope.low_freq_factor), _given(rope.high_freq_factor)
    old = _given(rope.original_max_position_embeddings)
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = np.reciprocal(inv) * F32(2 * math.pi)  # torch computes `scalar / tensor` as reciprocal * scalar
    inv_llama = np.where(wavelen > low_wavelen, inv / F32(factor), inv)  # long wavelengths: divided by factor
    smooth = (np.reciprocal(wavelen) * F32(old) - F32(low)) / F32(high - low)
    smoothed = (F32(1) - smooth) * inv_llama / F32(factor) + smooth * inv_llama
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, inv_llama).astype(F32)


def inv_freq(rope: RopeConfig, d_head: int, n_positions: int, n_seq: int) -> tuple[np.ndarray, float]:
    """The inverse frequencies and attention factor for a text of n_seq tokens.

    ([d_head // 2] float32 inverse frequencies, the factor cos and sin are multiplied by); dynamic and longrope
    depend on n_seq, as HF's dynamic_rope_update makes them."""
    kind, base = rope.rope_type, rope.rope_theta
    if kind == "linear":
        return (F32(1.0) / (_powers(base, d_head))) / F32(_given(rope.factor)), 1.0
    if kind == "dynamic":
        factor = _given(rope.factor)
        seq_len = max(n_seq, n_positions)  # NTK scaling only grows the base past the stated context
        if seq_len > n_positions:  # HF computes this branch with tensors: float32
            grown = (F32(factor) * F32(seq_len) / F32(n_positions)) - F32(factor - 1)
            base = float(F32(base) * grown ** F32(d_head / (d_head - 2)))  # exact: _powers reads it as float32
        else:
            base = base * ((factor * seq_len / n_positions) - (factor - 1)) ** (d_head / (d_head - 2))
        return F32(1.0) / (_powers(base, d_head)), 1.0
    if kind == "yarn":
        return _yarn(rope, d_head, n_positions)
    if kind == "llama3":
        return _llama3(rope, d_head), 1.0
    if kind == "longrope":
        original = rope.original_max_position_embeddings or n_positions
        factor = rope.factor if rope.factor is not None else n_positions / original
        scaling = rope.attention_factor
        if scaling is None:
            scaling = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        ext = np.asarray(rope.long_factor if n_seq > original else rope.short_factor, dtype=F32)
        return F32(1.0) / (ext * _powers(base, d_head)), scaling
    return F32(1.0) / (_powers(base, d_head)), 1.0  # default


def rope_tables(rope: RopeConfig, d_head: int, n_positions: int, n_seq: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each [n_seq, d_head] float32 for positions 0..n_seq-1 (read-only: cached and shared).

    In a pack (mhacli.engine.segments) the positions restart at 0 with each text, and each text's rows are those
    it would have alone (dynamic and longrope tables depend on the text's own length)."""
    seg = current(n_seq)
    if seg is None:
        return _tables(rope, d_head, n_positions, n_seq)
    if rope.rope_type in ("dynamic", "longrope"):
        parts = [_tables(rope, d_head, n_positions, n) for n in seg.lengths]
        return np.concatenate([c for c, _ in parts]), np.concatenate([s for _, s in parts])
    cos, sin = _tables(rope, d_head, n_positions, max(seg.lengths))  # a row depends on its position only
    return cos[seg.positions], sin[seg.positions]


@lru_cache(maxsize=16)
def _tables(rope: RopeConfig, d_head: int, n_positions: int, n_seq: int) -> tuple[np.ndarray, np.ndarray]:
    inv, scaling = inv_freq(rope, d_head, n_positions, n_seq)
    angles = np.arange(n_seq, dtype=F32)[:, None] * inv[None, :]  # [n_seq, d_head // 2]
    emb = np.concatenate([angles, angles], axis=-1)  # [n_seq, d_head]
    cos, sin = np.cos(emb.astype(np.float64)).astype(F32), np.sin(emb.astype(np.float64)).astype(F32)
    if scaling != 1.0:
        cos, sin = cos * F32(scaling), sin * F32(scaling)
    cos.flags.writeable = sin.flags.writeable = False
    return cos, sin


def rotate_half(x: np.ndarray) -> np.ndarray:
    """[..., d_head] -> [..., d_head]: (x1, x2) -> (-x2, x1) for the two halves"""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x [n_heads, n_seq, d_head] (or [n_seq, d_head] / [d_head] with matching cos/sin rows) -> rotated, same shape"""
    return x * cos + rotate_half(x) * sin


# Fields the forward turns into float32 (F32(...)): a value beyond float32's range is not a usable parameter.
_FLOAT32_FIELDS = ("rope_theta", "factor", "attention_factor", "low_freq_factor", "high_freq_factor")
_F32_MAX = float(np.finfo(F32).max)


def _parameter_problem(rope: RopeConfig, n_positions: int) -> str | None:
    """What is wrong with the rotary parameters themselves, before any arithmetic (None: nothing)."""
    for key in _FLOAT32_FIELDS:
        value = getattr(rope, key)
        if value is not None and not abs(value) <= _F32_MAX:
            return f"{key} {value!r} is beyond float32's range, in which the forward computes it"
    for key in ("short_factor", "long_factor"):
        values = getattr(rope, key)
        if values is not None and not all(abs(v) <= _F32_MAX for v in values):
            return f"{key} holds a value beyond float32's range, in which the forward computes it"
    if rope.rope_type == "yarn":
        for key in ("beta_fast", "beta_slow"):
            if (getattr(rope, key) or 0) < 0:
                return f"{key} must be positive, got {getattr(rope, key)!r}"
    if rope.rope_type == "longrope" and rope.attention_factor is None:
        original = rope.original_max_position_embeddings or n_positions
        factor = rope.factor if rope.factor is not None else n_positions / original
        if factor > 1.0 and original <= 1:
            return "original_max_position_embeddings must be greater than 1 when factor > 1 (its log divides)"
    return None


def rope_problem(rope: RopeConfig, d_head: int, n_positions: int) -> str | None:
    """What is wrong with what the forward will compute from `rope` (None: nothing).

    Computed once, as the forward computes it, for the shortest and the longest text (dynamic and longrope depend on the
    length): inverse frequencies finite and >= 0 in float32, the angles of the last position finite, the attention
    factor positive and finite in float32, no division by zero, math domain error or overflow on the way."""
    problem = _parameter_problem(rope, n_positions)
    if problem is not None:
        return problem
    given = ", ".join(
        f"{k}={v!r}" for k, v in vars(rope).items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    for n_seq in sorted({1, n_positions}):
        try:
            with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
                inv, scaling = inv_freq(rope, d_head, n_positions, n_seq)
                angles = F32(max(n_seq - 1, 0)) * inv  # [d_head // 2], the largest angles the tables hold
        except ZeroDivisionError:
            return f"the rotary arithmetic divides by zero with {given}"
        except (ArithmeticError, ValueError) as exc:  # FloatingPointError, OverflowError, math domain error
            return f"the rotary arithmetic fails ({exc}) with {given}"
        if inv.shape != (d_head // 2,) or not (np.isfinite(inv).all() and (inv >= 0).all()):
            return f"the inverse frequencies are not finite and non-negative with {given}"
        if not np.isfinite(angles).all():
            return f"the rotation angles at position {n_seq - 1} overflow float32 with {given}"
        if not (isinstance(scaling, (int, float)) and 0 < scaling <= _F32_MAX):
            return f"the attention factor is {scaling!r}, not a positive float32, with {given}"
    return None
