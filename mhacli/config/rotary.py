"""Llama, Mistral, OLMo 2, OLMo 3, Qwen 2 and Qwen 3 (`RotaryConfig`):

RMSNorm, SwiGLU, grouped K/V heads, rotary positions and sliding windows; HF's defaults per model type, and the rotary
parameters (`RopeConfig`), read from `rope_parameters` or the older `rope_scaling` + `rope_theta` the way HF's
RotaryEmbeddingConfigMixin standardises them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mhacli.config.base import ModelConfig
from mhacli.config.fields import MAX_COUNT, MAX_POSITIONS, _activation, _bool, _epsilon, _finite, _int, _number, _shown
from mhacli.errors import ConfigError

# HF LlamaConfig / MistralConfig / Olmo2Config / Olmo3Config defaults. None: derived (head_dim = hidden_size //
# num_attention_heads, num_key_value_heads = num_attention_heads, layer_types from sliding_window).
_LLAMA = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": None, "head_dim": None, "hidden_act": "silu",
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "attention_bias": False, "mlp_bias": False,
    "tie_word_embeddings": False,
}  # fmt: skip
_OLMO2 = _LLAMA | {"vocab_size": 50304, "rms_norm_eps": 1e-5}
_QWEN = {k: v for k, v in _LLAMA.items() if k != "mlp_bias"} | {
    "vocab_size": 151936, "intermediate_size": 22016, "num_key_value_heads": 32, "max_position_embeddings": 32768,
    "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28, "layer_types": None,
}  # fmt: skip
ROTARY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": _LLAMA,
    # Phi3Config: no head_dim, bias or mlp_bias fields (its fused projections never have biases), window off
    "phi3": {k: v for k, v in _LLAMA.items() if k not in ("attention_bias", "mlp_bias")}
    | {"vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192, "max_position_embeddings": 4096,
       "rms_norm_eps": 1e-5, "sliding_window": None},
    # MistralConfig: no attention_bias / mlp_bias fields (its Linear layers never have biases), a 4096 window
    "mistral": _LLAMA | {"intermediate_size": 14336, "num_key_value_heads": 8, "max_position_embeddings": 4096 * 32,
                         "sliding_window": 4096},
    "olmo2": _OLMO2,  # Olmo2MLP has no biases whatever mlp_bias says
    "olmo3": _OLMO2 | {"sliding_window": 4096, "layer_types": None},
    # Qwen2Config / Qwen3Config: windows only when use_sliding_window, on the layers from max_window_layers on;
    # Qwen 2's q/k/v always have biases (its o_proj never), Qwen 3's none unless attention_bias
    "qwen2": _QWEN | {"attention_bias": True},
    "qwen3": _QWEN | {"head_dim": 128, "attention_bias": False},
}  # fmt: skip
QWEN_TYPES = ("qwen2", "qwen3")
LAYER_TYPES = ("full_attention", "sliding_attention")
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
DEFAULT_ROPE_THETA = 10_000.0  # RotaryEmbeddingConfigMixin.default_theta
OLMO3_DEFAULT_ROPE_THETA = 500_000.0  # Olmo3Config.default_theta


@dataclass(frozen=True)
class RopeConfig:
    """One set of rotary parameters (HF's standardised `rope_parameters`); None where the type does not use it."""

    rope_type: str
    rope_theta: float
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    attention_factor: float | None = None  # yarn, longrope: multiplies cos and sin
    beta_fast: float | None = None  # yarn
    beta_slow: float | None = None  # yarn
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    truncate: bool = True  # yarn
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None  # llama3
    short_factor: tuple[float, ...] | None = None  # longrope
    long_factor: tuple[float, ...] | None = None  # longrope


@dataclass(frozen=True)
class RotaryConfig(ModelConfig):
    """llama, mistral, olmo2, olmo3, qwen2, qwen3."""

    head_dim: int
    intermediate_size: int
    hidden_act: str
    rms_norm_eps: float
    attention_bias: bool  # q/k/v/o projections have biases (Qwen 2: q/k/v only, always)
    mlp_bias: bool  # gate/up/down projections have biases
    window: int | None  # `sliding_window` of config.json, used by the layers whose type is sliding_attention
    layer_types: tuple[str, ...]  # per layer: full_attention or sliding_attention
    rope: RopeConfig  # the full-attention layers' (every layer's, but OLMo 3's sliding ones)
    sliding_rope: RopeConfig | None  # OLMo 3's sliding-attention layers have their own; None: `rope` everywhere

    @property
    def d_head(self) -> int:
        return self.head_dim

    @property
    def norm_eps(self) -> float:
        return self.rms_norm_eps

    def sliding_window(self, layer: int) -> int | None:
        return self.window if self.layer_types[layer] == "sliding_attention" else None

    def rope_at(self, layer: int) -> RopeConfig:
        if self.sliding_rope is not None and self.layer_types[layer] == "sliding_attention":
            return self.sliding_rope
        return self.rope


def _parse_rotary(raw: dict, model_type: str) -> RotaryConfig:
    defaults = ROTARY_DEFAULTS[model_type]
    fields = dict(defaults) | {k: raw[k] for k in defaults if k in raw}
    if raw.get("head_dim") is not None:  # a plain attribute of Olmo2Config too, read with getattr by its attention
        fields["head_dim"] = raw["head_dim"]
    n_embd = _int(fields, "hidden_size")
    n_head = _int(fields, "num_attention_heads", high=MAX_COUNT)
    if fields["num_key_value_heads"] is None:
        fields["num_key_value_heads"] = n_head
    n_kv_head = _int(fields, "num_key_value_heads", high=MAX_COUNT)
    if n_head % n_kv_head:
        raise ConfigError(
            f"config.json: num_attention_heads ({n_head}) is not divisible by num_key_value_heads ({n_kv_head})"
        )
    if (fields["head_dim"] is None or model_type == "llama") and n_embd % n_head:  # LlamaConfig always checks
        raise ConfigError(f"config.json: hidden_size ({n_embd}) is not divisible by num_attention_heads ({n_head})")
    head_dim = n_embd // n_head if fields["head_dim"] is None else _int(fields, "head_dim")
    n_layer = _int(fields, "num_hidden_layers", high=MAX_COUNT)
    n_positions = _int(fields, "max_position_embeddings", high=MAX_POSITIONS)
    window = _window(fields, model_type)
    layer_types = _layer_types(fields, model_type, n_layer, window)
    rope, sliding_rope = _ropes(raw, model_type, head_dim, n_positions)
    return RotaryConfig(
        model_type=model_type,
        vocab_size=_int(fields, "vocab_size"),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_kv_head=n_kv_head,
        head_dim=head_dim,
        intermediate_size=_int(fields, "intermediate_size"),
        hidden_act=_activation(fields, "hidden_act"),
        rms_norm_eps=_epsilon(fields, "rms_norm_eps"),
        attention_bias=_bool(fields, "attention_bias")
        if "attention_bias" in defaults and model_type != "qwen2"
        else model_type == "qwen2",
        mlp_bias=_bool(fields, "mlp_bias") if model_type == "llama" else False,
        window=window,
        layer_types=layer_types,
        rope=rope,
        sliding_rope=sliding_rope,
        tie_word_embeddings=_bool(fields, "tie_word_embeddings"),
    )


PHI3_ROPE_TYPES = ("default", "longrope")  # Phi3Config.validate_rope; "su" and "yarn" are read as longrope
PHI3_ORIGINAL_CONTEXT = 4096  # Phi3Config.original_max_position_embeddings


def _parse_phi3(raw: dict) -> RotaryConfig:
    """Phi-3: Llama's fields (fused projections change the checkpoint, not the config), as Phi3Config reads them.

    Its original_max_position_embeddings (default 4096) is longrope's original context, and rope type "su" or
    "yarn" means longrope (Phi3Config.convert_rope_params_to_dict); other rope types are refused, as HF refuses them.
    """
    raw = dict(raw)
    if raw.get("original_max_position_embeddings") is None:
        raw["original_max_position_embeddings"] = PHI3_ORIGINAL_CONTEXT
    key = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
    rope = raw.get(key)
    if isinstance(rope, dict):
        kind = _rope_kind(rope)
        if kind in ("su", "yarn"):
            raw[key] = rope = dict(rope) | {"rope_type": "longrope"}
        elif kind not in PHI3_ROPE_TYPES:
            raise ConfigError(
                f"config.json: {key}.rope_type {_shown(kind)} is not supported by Phi-3 (supported: "
                f"{', '.join(PHI3_ROPE_TYPES)}, and su or yarn meaning longrope)"
            )
    return _parse_rotary(raw, "phi3")


def _window(fields: dict, model_type: str) -> int | None:
    if model_type in QWEN_TYPES and not _bool(fields, "use_sliding_window"):
        return None  # Qwen2Config / Qwen3Config set sliding_window to None
    if fields.get("sliding_window") is None:
        return None
    return _int(fields, "sliding_window", high=MAX_POSITIONS)


def _layer_types(fields: dict, model_type: str, n_layer: int, window: int | None) -> tuple[str, ...]:
    """Which layers use the sliding window:

    Mistral's and Phi-3's every layer when they have one (they ignore any layer_types), OLMo 3's and Qwen's as
    layer_types says (default: OLMo 3's three sliding layers, then a full one; Qwen's from max_window_layers on)."""
    if model_type in ("mistral", "phi3"):
        return ("sliding_attention" if window is not None else "full_attention",) * n_layer
    if model_type not in ("olmo3", *QWEN_TYPES):
        return ("full_attention",) * n_layer
    types = fields["layer_types"]
    if types is None and model_type == "olmo3":
        types = ["sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(n_layer)]
    elif types is None:  # Qwen: the layers from max_window_layers on, when there is a window
        first = _int(fields, "max_window_layers", low=0, high=MAX_COUNT)
        types = ["sliding_attention" if window is not None and i >= first else "full_attention" for i in range(n_layer)]
    if not isinstance(types, list) or len(types) != n_layer:
        raise ConfigError(
            f"config.json: layer_types must be a list of {n_layer} entries (one per layer), got {_shown(types)}"
        )
    for i, t in enumerate(types):
        if t not in LAYER_TYPES:
            raise ConfigError(f"config.json: layer_types[{i}] is {_shown(t)}; supported: {', '.join(LAYER_TYPES)}")
    if window is None and "sliding_attention" in types:
        raise ConfigError("config.json: sliding_window is null, but layer_types has sliding_attention layers")
    return tuple(types)


def check_whole_heads(raw: dict, model_type: str) -> None:
    """A top-level partial_rotary_factor must be 1 (or absent): these families rotate whole heads."""
    factor = raw.get("partial_rotary_factor")
    if factor is not None and factor != 1.0:
        raise ConfigError(
            f"config.json: partial_rotary_factor {_shown(factor)} is not supported ({model_type} rotates whole heads)"
        )


def _ropes(raw: dict, model_type: str, head_dim: int, n_positions: int) -> tuple[RopeConfig, RopeConfig | None]:
    """RotaryEmbeddingConfigMixin.convert_rope_params_to_dict + standardize_rope_params, for our model types."""
    check_whole_heads(raw, model_type)
    scaling = raw.get("rope_scaling")
    params = raw.get("rope_parameters")
    for key, value in (("rope_scaling", scaling), ("rope_parameters", params)):
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"config.json: {key} must be an object or null, got {_shown(value)}")
    top_original = raw.get("original_max_position_embeddings")
    if model_type != "olmo3":
        flat = dict(scaling or params or {})
        flat.setdefault("rope_theta", raw.get("rope_theta", DEFAULT_ROPE_THETA))
        if top_original is not None and _rope_kind(flat) in ("llama3", "yarn", "longrope"):
            flat["original_max_position_embeddings"] = top_original  # a top-level value wins (Phi-3 style)
        return _rope(flat, "rope_parameters", head_dim, n_positions), None
    # Olmo3Config.convert_rope_params_to_dict: one dict per layer type; an old-style rope_scaling updates the
    # full-attention layers' only, and so does a top-level rope_theta (HF pops it once: the sliding layers get
    # Olmo3Config.default_theta).
    nested = {k: dict(v) for k, v in (params or {}).items() if k in LAYER_TYPES and isinstance(v, dict)}
    nested.setdefault("full_attention", {"rope_type": "default"})
    nested.setdefault("sliding_attention", {"rope_type": "default"})
    if scaling:
        nested["full_attention"].update(scaling)
    nested["full_attention"].setdefault("rope_theta", raw.get("rope_theta", OLMO3_DEFAULT_ROPE_THETA))
    nested["sliding_attention"].setdefault("rope_theta", OLMO3_DEFAULT_ROPE_THETA)
    for kind in LAYER_TYPES:
        nested[kind].pop("truncate", None)  # HF's yarn reads `truncate` from the outer dict, where it never is
    full = _rope(nested["full_attention"], "rope_parameters.full_attention", head_dim, n_positions)
    sliding = _rope(nested["sliding_attention"], "rope_parameters.sliding_attention", head_dim, n_positions)
    return full, sliding


def _rope_kind(params: dict) -> Any:
    return params.get("rope_type", params.get("type", "default"))


REQUIRED_ROPE_KEYS = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor",),
    "longrope": ("short_factor", "long_factor"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
}


def _rope(params: dict, where: str, head_dim: int, n_positions: int) -> RopeConfig:
    """One standardised rope dict -> RopeConfig; a missing required key or a bad value is a ConfigError."""
    kind = _rope_kind(params)
    if kind not in ROPE_TYPES:
        raise ConfigError(
            f"config.json: {where}.rope_type {_shown(kind)} is not supported (supported: {', '.join(ROPE_TYPES)})"
        )
    where = f"config.json: {where}"
    for key in REQUIRED_ROPE_KEYS[kind]:
        if key not in params:
            raise ConfigError(f"{where} has no {key}, which rope_type {kind!r} needs")
    prf = params.get("partial_rotary_factor")
    if prf is not None and prf != 1.0:
        raise ConfigError(f"{where}.partial_rotary_factor {_shown(prf)} is not supported (whole heads are rotated)")
    theta = _number(params, "rope_theta", where=where)
    if theta <= 1.0:
        raise ConfigError(f"{where}: rope_theta must be greater than 1, got {theta!r}")
    out: dict[str, Any] = {"rope_type": kind, "rope_theta": theta} | _rope_scaling(params, kind, where, n_positions)
    if kind == "dynamic" and head_dim <= 2:
        raise ConfigError(f"{where}: rope_type 'dynamic' needs head_dim > 2, got {head_dim}")
    if kind == "longrope":
        for key in ("short_factor", "long_factor"):
            value = params[key]
            if (
                not isinstance(value, list)
                or len(value) != head_dim // 2
                or not all(_finite(x) and x > 0 for x in value)
            ):
                raise ConfigError(f"{where}.{key} must be a list of {head_dim // 2} positive numbers"[:300])
            out[key] = tuple(float(x) for x in value)
    return RopeConfig(**out)


def _rope_scaling(params: dict, kind: str, where: str, n_positions: int) -> dict[str, Any]:
    """The scaling fields rope_type `kind` reads (original context, factors, yarn's and llama3's own), validated."""
    out: dict[str, Any] = {}

    def optional(key: str, *, positive: bool = True) -> None:
        if params.get(key) is not None:
            out[key] = _number(params, key, where=where, positive=positive)

    if kind in ("llama3", "yarn", "longrope"):
        params = {"original_max_position_embeddings": n_positions} | params
        key = "original_max_position_embeddings"
        out[key] = _int(params, key, where=where, high=MAX_POSITIONS)
    if kind in ("linear", "dynamic", "llama3"):
        out["factor"] = _number(params, "factor", where=where)
    if kind in ("yarn", "longrope"):  # factor may be null: max_position_embeddings / original_max_position_embeddings
        optional("factor")
        optional("attention_factor")
    if kind == "yarn":
        for key in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
            optional(key, positive=False)
        if params.get("truncate") is not None:
            out["truncate"] = _bool(params, "truncate", where)
    if kind == "llama3":
        out["low_freq_factor"] = _number(params, "low_freq_factor", where=where)
        out["high_freq_factor"] = _number(params, "high_freq_factor", where=where)
        if out["high_freq_factor"] == out["low_freq_factor"]:
            raise ConfigError(
                f"{where}: high_freq_factor must differ from low_freq_factor (both {out['low_freq_factor']})"
            )
    return out
