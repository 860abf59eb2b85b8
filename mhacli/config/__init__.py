"""The model config: parsed from config.json, validated, with HF's defaults for the fields it leaves out.

One frozen dataclass per architecture family, all built on `ModelConfig` (config/base.py), which holds what every
other module reads (n_layer, n_head, n_kv_head, d_head, n_embd, n_positions, vocab_size, layout, attn_scale, to_dict):
- `Gpt2Config`: gpt2; `BigCodeConfig`: gpt_bigcode, both a `LayerNormConfig` (config/gpt2.py: their fields,
  defaults and parsing);
- `RotaryConfig`: llama, mistral, olmo2, olmo3, phi3, with its rotary parameters as a `RopeConfig` (config/rotary.py);
- `GemmaConfig`: gemma2, gemma3_text, a RotaryConfig with Gemma's scale, soft-caps and QK-norm (config/gemma.py).
Reading one field (types, ranges, the messages that name it) is config/fields.py. The supported model types, their
parsers and families are one table, `ARCHITECTURES` (config/registry.py); `parse_config` dispatches through it.
"""

from __future__ import annotations

from typing import Any

from mhacli.config.base import ModelConfig
from mhacli.config.fields import ACTIVATIONS, MAX_COUNT, MAX_DIM, MAX_POSITIONS, _shown
from mhacli.config.gemma import GEMMA_DEFAULTS, GemmaConfig
from mhacli.config.gpt2 import (
    BIGCODE_DEFAULTS,
    GPT2_ALIASES,
    GPT2_DEFAULTS,
    BigCodeConfig,
    Gpt2Config,
    LayerNormConfig,
)
from mhacli.config.registry import ARCHITECTURES, SUPPORTED_MODEL_TYPES, Architecture
from mhacli.config.rotary import (
    DEFAULT_ROPE_THETA,
    LAYER_TYPES,
    OLMO3_DEFAULT_ROPE_THETA,
    REQUIRED_ROPE_KEYS,
    ROPE_TYPES,
    ROTARY_DEFAULTS,
    RopeConfig,
    RotaryConfig,
)
from mhacli.errors import ConfigError

__all__ = [
    "ACTIVATIONS", "ARCHITECTURES", "BIGCODE_DEFAULTS", "DEFAULT_ROPE_THETA", "GPT2_ALIASES", "GPT2_DEFAULTS",
    "LAYER_TYPES", "MAX_COUNT", "MAX_DIM", "MAX_POSITIONS", "OLMO3_DEFAULT_ROPE_THETA", "REQUIRED_ROPE_KEYS",
    "ROPE_TYPES", "ROTARY_DEFAULTS", "SUPPORTED_MODEL_TYPES", "Architecture", "BigCodeConfig", "Gpt2Config",
    "LayerNormConfig", "ModelConfig", "RopeConfig", "RotaryConfig", "parse_config",
    "GEMMA_DEFAULTS", "GemmaConfig",
]  # fmt: skip


def parse_config(raw: Any) -> ModelConfig:
    """Validate a config.json document and fill HF's defaults. Raises ConfigError naming the bad field."""
    if not isinstance(raw, dict):
        raise ConfigError("config.json must hold a JSON object")
    model_type = raw.get("model_type")
    if model_type is None:
        raise ConfigError(f"config.json has no model_type (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"model_type {_shown(model_type)} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return ARCHITECTURES[model_type].parse(raw)
