"""Architecture families, one module each.

gpt2, gpt_bigcode, llama for Llama and Mistral, olmo for OLMo 2 and 3, phi3, gemma2, gemma3 (text), gpt_neox (Pythia),
qwen2, qwen3.

`family(model_type)` returns the module, which satisfies the `Family` protocol (arch/interface.py: its checkpoint
layout, its block, and the facts `explain` and `info` show); mypy checks each module against it below. Which
model_type runs on which family is one row of the registry, mhacli.config.registry (`FAMILIES` derives from it).

Modules are imported on first use: `mha info` on a GPT-2 never loads the rotary code.
"""

from __future__ import annotations

import importlib
import math
from typing import TYPE_CHECKING, Any, cast

from mhacli.config import ARCHITECTURES, ModelConfig
from mhacli.engine.arch.interface import Family
from mhacli.errors import ConfigError

__all__ = ["FAMILIES", "Family", "check_config", "family"]

# model_type -> the module of this package that runs it, in the registry's order
FAMILIES: dict[str, str] = {model_type: a.family for model_type, a in ARCHITECTURES.items()}

if TYPE_CHECKING:  # mypy checks every family module against the protocol here (no run-time import)
    from mhacli.config import BigCodeConfig, GemmaConfig, Gpt2Config, RotaryConfig
    from mhacli.config.neox import NeoxConfig
    from mhacli.engine.arch import gemma2, gemma3, gpt2, gpt_bigcode, gpt_neox, llama, olmo, phi3, qwen2, qwen3

    _gpt2: Family[Gpt2Config] = gpt2
    _gpt_bigcode: Family[BigCodeConfig] = gpt_bigcode
    _llama: Family[RotaryConfig] = llama
    _olmo: Family[RotaryConfig] = olmo
    _phi3: Family[RotaryConfig] = phi3
    _gemma2: Family[GemmaConfig] = gemma2
    _gemma3: Family[GemmaConfig] = gemma3
    _gpt_neox: Family[NeoxConfig] = gpt_neox
    _qwen2: Family[RotaryConfig] = qwen2
    _qwen3: Family[RotaryConfig] = qwen3


def family(model_type: str) -> Family[Any]:
    """The family module that runs `model_type` (a supported one: the config was parsed)."""
    return cast("Family[Any]", importlib.import_module(f"mhacli.engine.arch.{FAMILIES[model_type]}"))


def check_config(config: ModelConfig) -> None:
    """Check what the forward will compute from a parsed config, once, before any weight is read.

    The head layout, every layer's attention scale and the family's own checks (rotary models: the inverse
    frequencies and attention factor of each set of rotary parameters). A non-finite or impossible value is a
    ConfigError naming the field, instead of a division by zero, a math domain error, an overflow or a broadcast
    error in the middle of the forward.
    """
    if config.n_head % config.n_kv_head or config.d_head < 1:
        raise ConfigError(
            f"config.json: {config.n_head} query heads cannot share {config.n_kv_head} K/V heads of {config.d_head} "
            "values"
        )
    for layer in range(config.n_layer):
        scale = config.attn_scale(layer)
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"config.json: the attention scale of layer {layer} is {scale!r}, not a positive number")
    family(config.model_type).check(config)
