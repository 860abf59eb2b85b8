"""Gemma 2 and Gemma 3 text (`GemmaConfig`):

Llama's fields plus Gemma's, read as HF's Gemma2Config and Gemma3TextConfig read them.

What Gemma adds to a RotaryConfig: the attention scale query_pre_attn_scalar^-1/2 (not head_dim's), attention logit
soft-capping (Gemma 2; Gemma3Attention never passes it to its attention, so Gemma 3 does not cap whatever the config
says), final logit soft-capping, `hidden_activation` for the MLP, sliding windows on the `sliding_attention` layers
of `layer_types` (Gemma 2 by default every other one from layer 0, Gemma 3 five of every `sliding_window_pattern` = 6),
and for Gemma 3 two sets of rotary parameters: the global layers' (rope_theta, 1e6 by default, and any rope scaling)
and the local, sliding layers' (rope_local_base_freq, 1e4 by default).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mhacli.config.fields import MAX_COUNT, _activation, _bool, _int, _number, _shown
from mhacli.config.rotary import (
    RopeConfig,
    RotaryConfig,
    _layer_types,
    _parse_rotary,
    _rope,
    _ropes,
    _window,
    check_whole_heads,
)
from mhacli.errors import ConfigError

_GEMMA2 = {
    "vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "attention_bias": False,
    "query_pre_attn_scalar": 256, "sliding_window": 4096, "layer_types": None, "final_logit_softcapping": 30.0,
    "attn_logit_softcapping": 50.0, "use_bidirectional_attention": None,
}  # fmt: skip
GEMMA_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma2": _GEMMA2,
    "gemma3_text": _GEMMA2 | {"vocab_size": 262208, "max_position_embeddings": 131072, "final_logit_softcapping": None,
                              "attn_logit_softcapping": None, "use_bidirectional_attention": False,
                              "sliding_window_pattern": 6},
}  # fmt: skip
GEMMA3_GLOBAL_THETA = 1_000_000.0  # Gemma3TextConfig.default_theta["global"]
GEMMA3_LOCAL_THETA = 10_000.0  # ... ["local"]: rope_local_base_freq


@dataclass(frozen=True)
class GemmaConfig(RotaryConfig):
    """gemma2, gemma3_text."""

    query_pre_attn_scalar: float  # the attention scale is its inverse square root
    attn_logit_softcapping: float | None  # Gemma 2's cap on the scaled scores (None: not capped)
    final_logit_softcapping: float | None  # the cap on the output head's logits (None: not capped)
    qk_norm: bool  # Gemma 3: q_norm and k_norm over each head's d_head values

    def attn_scale(self, layer: int) -> float:
        return self.query_pre_attn_scalar**-0.5

    def attn_softcap(self, layer: int) -> float | None:
        return self.attn_logit_softcapping

    @property
    def logit_softcap(self) -> float | None:
        return self.final_logit_softcapping


F32_MAX = 3.4028234663852886e38  # the caps are applied in float32: cap * tanh(s / cap)


def _softcap(raw: dict, key: str) -> float | None:
    """A soft-cap: positive and within float32's range (the forward divides and multiplies by it), or null."""
    if raw[key] is None:
        return None
    cap = _number(raw, key)
    if cap > F32_MAX:
        raise ConfigError(f"config.json: {key} {cap!r} is beyond float32's range, in which the forward applies it")
    return cap


def _gemma3_ropes(raw: dict, head_dim: int, n_positions: int) -> tuple[RopeConfig, RopeConfig]:
    """Gemma3TextConfig.convert_rope_params_to_dict: the global layers' rotary parameters and the local ones'.

    One dict per layer type in rope_parameters; an old-style rope_scaling updates the global (full_attention) layers'
    only, a top-level rope_theta is their base and rope_local_base_freq the local layers'."""
    check_whole_heads(raw, "gemma3_text")
    params, scaling = raw.get("rope_parameters"), raw.get("rope_scaling")
    for key, value in (("rope_scaling", scaling), ("rope_parameters", params)):
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"config.json: {key} must be an object or null, got {_shown(value)}")
    nested = {k: dict(v) for k, v in (params or {}).items() if k in ("full_attention", "sliding_attention")}
    for kind in ("full_attention", "sliding_attention"):
        if not isinstance(nested.get(kind), dict):
            nested[kind] = {"rope_type": "default"}
    if scaling:
        nested["full_attention"].update(scaling)
    nested["full_attention"].setdefault("rope_theta", raw.get("rope_theta", GEMMA3_GLOBAL_THETA))
    nested["sliding_attention"].setdefault("rope_theta", raw.get("rope_local_base_freq", GEMMA3_LOCAL_THETA))
    full = _rope(nested["full_attention"], "rope_parameters.full_attention", head_dim, n_positions)
    local = _rope(nested["sliding_attention"], "rope_parameters.sliding_attention", head_dim, n_positions)
    return full, local


def _parse_gemma(raw: dict, model_type: str) -> GemmaConfig:
    defaults = GEMMA_DEFAULTS[model_type]
    f = dict(defaults) | {k: raw[k] for k in defaults if k in raw}
    if f["use_bidirectional_attention"] not in (None, False):
        raise ConfigError("config.json: use_bidirectional_attention is not supported (mha runs causal models)")
    # Llama's fields (the head layout, sizes, epsilon, biases, tying) are read and checked by the rotary parser;
    # Gemma's activation, windows, rotary parameters and caps here.
    llama_like = {k: f[k] for k in defaults if k not in GEMMA_ONLY} | {"mlp_bias": False, "hidden_act": "silu"}
    base = _parse_rotary(llama_like, "llama")
    n_layer = base.n_layer
    window = _window(f, model_type)
    types = f["layer_types"]
    if types is None:
        pattern = 2 if model_type == "gemma2" else _int(f, "sliding_window_pattern", high=MAX_COUNT)
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layer)]
    layer_types = _layer_types({"layer_types": types}, "olmo3", n_layer, window)  # OLMo 3's checks: a list per layer
    if model_type == "gemma2":
        rope, sliding_rope = _ropes(raw, model_type, base.head_dim, base.n_positions)[0], None
    else:
        rope, sliding_rope = _gemma3_ropes(raw, base.head_dim, base.n_positions)
    scalar = _number(f, "query_pre_attn_scalar")
    if not (scalar <= F32_MAX and scalar**-0.5 <= F32_MAX):
        raise ConfigError(
            f"config.json: query_pre_attn_scalar {scalar!r} gives an attention scale beyond float32's range"
        )
    values = {x.name: getattr(base, x.name) for x in fields(base)}
    return GemmaConfig(
        **values
        | {
            "model_type": model_type,
            "hidden_act": _activation(f, "hidden_activation"),
            "attention_bias": _bool(f, "attention_bias"),
            "window": window,
            "layer_types": layer_types,
            "rope": rope,
            "sliding_rope": sliding_rope,
        },
        query_pre_attn_scalar=scalar,
        attn_logit_softcapping=_softcap(f, "attn_logit_softcapping") if model_type == "gemma2" else None,
        final_logit_softcapping=_softcap(f, "final_logit_softcapping"),
        qk_norm=model_type == "gemma3_text",
    )


GEMMA_ONLY = (
    "hidden_activation", "query_pre_attn_scalar", "sliding_window", "layer_types", "final_logit_softcapping",
    "attn_logit_softcapping", "use_bidirectional_attention", "sliding_window_pattern",
)  # fmt: skip
