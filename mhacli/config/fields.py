"""Reading one config.json field:

type and range checks that raise ConfigError naming the field (and clip a hostile value in the message), the limits no
real model exceeds, the activations the MLPs accept, HF's defaults applied."""

from __future__ import annotations

import math
from typing import Any

from mhacli.errors import ConfigError

# Element-wise activations HF's GPT-2 MLP accepts (transformers.activations.ACT2CLS) that have no parameters.
ACTIVATIONS = (
    "gelu", "gelu_10", "gelu_accurate", "gelu_fast", "gelu_new", "gelu_python", "gelu_python_tanh",
    "gelu_pytorch_tanh", "hardswish", "laplace", "leaky_relu", "linear", "mish", "quick_gelu", "relu",
    "relu2", "relu6", "sigmoid", "silu", "sqrtsoftplus", "swish", "tanh",
)  # fmt: skip
MAX_DIM = 1 << 20  # no real model has a dimension this large; a bigger value is a corrupt or hostile config
MAX_COUNT = 4096  # layers or heads: real models have at most a few hundred
MAX_POSITIONS = 1 << 24  # rotary models state long contexts (Mistral's default is 131072); texts are far shorter


def _int(raw: dict, key: str, *, low: int = 1, high: int = MAX_DIM, where: str = "config.json") -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {key} must be an integer, got {_shown(value)}")
    if value < low or value > high:
        raise ConfigError(f"{where}: {key} = {value} is out of range ({low}..{high})")
    return value


def _bool(raw: dict, key: str, where: str = "config.json") -> bool:
    value = raw[key]
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be true or false, got {_shown(value)}")
    return value


def _finite(value: Any) -> bool:
    """A JSON number (not a bool) that is a finite float: an int too large for a float is not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _shown(value: Any, limit: int = 80) -> str:
    """repr(value), clipped: a hostile config's value can be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(raw: dict, key: str, *, where: str = "config.json", positive: bool = True) -> float:
    value = raw[key]
    if not _finite(value):
        raise ConfigError(f"{where}: {key} must be a finite number, got {_shown(value)}")
    if positive and value <= 0:
        raise ConfigError(f"{where}: {key} must be positive, got {value!r}")
    return float(value)


def _epsilon(raw: dict, key: str) -> float:
    eps = raw[key]
    if not _finite(eps) or not 0 < eps < 1:
        raise ConfigError(f"config.json: {key} must be a number in (0, 1), got {_shown(eps)}")
    return float(eps)


def _activation(raw: dict, key: str) -> str:
    activation = raw[key]
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"config.json: {key} {_shown(activation)} is not supported (supported: {', '.join(ACTIVATIONS)})"
        )
    return activation


def _with_defaults(raw: dict, defaults: dict[str, Any], aliases: dict[str, str]) -> dict[str, Any]:
    fields = dict(defaults)
    for alias, name in aliases.items():
        if alias in raw and name not in raw:
            fields[name] = raw[alias]
    fields.update({k: raw[k] for k in defaults if k in raw})
    return fields
