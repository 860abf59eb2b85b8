"""The model config: parsed from config.json, validated, with HF's defaults for the fields it leaves out."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from mhacli.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("gpt2",)

# Element-wise activations HF's GPT-2 MLP accepts (transformers.activations.ACT2CLS) that have no parameters.
ACTIVATIONS = (
    "gelu", "gelu_10", "gelu_accurate", "gelu_fast", "gelu_new", "gelu_python", "gelu_python_tanh",
    "gelu_pytorch_tanh", "hardswish", "laplace", "leaky_relu", "linear", "mish", "quick_gelu", "relu",
    "relu2", "relu6", "sigmoid", "silu", "sqrtsoftplus", "swish", "tanh",
)  # fmt: skip

# HF GPT2Config defaults, used for every field config.json leaves out (the official gpt2 config omits several).
GPT2_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
}
# GPT2Config.attribute_map: generic names some configs use instead.
GPT2_ALIASES = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}
MAX_DIM = 1 << 20  # no real model has a dimension this large; a bigger value is a corrupt or hostile config
MAX_COUNT = 4096  # layers or heads: real models have at most a few hundred


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_kv_head: int
    n_inner: int
    activation_function: str
    layer_norm_epsilon: float
    scale_attn_weights: bool
    scale_attn_by_inverse_layer_idx: bool
    reorder_and_upcast_attn: bool

    @property
    def d_head(self) -> int:
        return self.n_embd // self.n_head

    @property
    def layout(self) -> str:
        if self.n_kv_head == self.n_head:
            return "MHA"
        return "MQA" if self.n_kv_head == 1 else "GQA"

    def attn_scale(self, layer: int) -> float:
        """The factor HF multiplies q.k by in `layer` (GPT2Attention.scaling)."""
        scale = 1.0
        if self.scale_attn_weights:
            scale = self.d_head**-0.5
        if self.scale_attn_by_inverse_layer_idx:
            scale /= float(layer + 1)
        return scale

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"d_head": self.d_head, "layout": self.layout}


def _int(raw: dict, key: str, *, low: int = 1, high: int = MAX_DIM) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config.json: {key} must be an integer, got {value!r}")
    if value < low or value > high:
        raise ConfigError(f"config.json: {key} = {value} is out of range ({low}..{high})")
    return value


def _bool(raw: dict, key: str) -> bool:
    value = raw[key]
    if not isinstance(value, bool):
        raise ConfigError(f"config.json: {key} must be true or false, got {value!r}")
    return value


def parse_config(raw: Any) -> ModelConfig:
    """Validate a config.json document and fill HF's defaults. Raises ConfigError naming the bad field."""
    if not isinstance(raw, dict):
        raise ConfigError("config.json must hold a JSON object")
    model_type = raw.get("model_type")
    if model_type is None:
        raise ConfigError(f"config.json has no model_type (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    fields = dict(GPT2_DEFAULTS)
    for alias, name in GPT2_ALIASES.items():
        if alias in raw and name not in raw:
            fields[name] = raw[alias]
    fields.update({k: raw[k] for k in GPT2_DEFAULTS if k in raw})

    n_embd, n_head = _int(fields, "n_embd"), _int(fields, "n_head", high=MAX_COUNT)
    if n_embd % n_head:
        raise ConfigError(f"config.json: n_embd ({n_embd}) is not divisible by n_head ({n_head})")
    n_inner = 4 * n_embd if fields["n_inner"] is None else _int(fields, "n_inner")
    activation = fields["activation_function"]
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"config.json: activation_function {activation!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
        )
    eps = fields["layer_norm_epsilon"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or not 0 < eps < 1:
        raise ConfigError(f"config.json: layer_norm_epsilon must be a number in (0, 1), got {eps!r}")
    return ModelConfig(
        model_type=model_type,
        vocab_size=_int(fields, "vocab_size"),
        n_positions=_int(fields, "n_positions"),
        n_embd=n_embd,
        n_layer=_int(fields, "n_layer", high=MAX_COUNT),
        n_head=n_head,
        n_kv_head=n_head,
        n_inner=n_inner,
        activation_function=activation,
        layer_norm_epsilon=float(eps),
        scale_attn_weights=_bool(fields, "scale_attn_weights"),
        scale_attn_by_inverse_layer_idx=_bool(fields, "scale_attn_by_inverse_layer_idx"),
        reorder_and_upcast_attn=_bool(fields, "reorder_and_upcast_attn"),
    )
