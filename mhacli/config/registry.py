"""The one table of supported architectures:

config.json's model_type -> its config parser, the family module that runs it (mhacli.engine.arch) and HF's classes for
it.

Everything that lists model types derives from `ARCHITECTURES`: `parse_config`, `SUPPORTED_MODEL_TYPES`,
`mhacli.engine.arch.FAMILIES`, `mha --version` and `mha verify`'s reference classes; a test checks the README's
list against it. A new architecture is one row here, its config parser, and its family module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from mhacli.config.base import ModelConfig
from mhacli.config.gemma import _parse_gemma
from mhacli.config.gpt2 import _parse_bigcode, _parse_gpt2
from mhacli.config.neox import _parse_neox
from mhacli.config.rotary import _parse_phi3, _parse_rotary


@dataclass(frozen=True)
class Architecture:
    """One supported model_type."""

    model_type: str
    parse: Callable[[dict[str, Any]], ModelConfig]  # config.json (a dict, model_type checked) -> its config
    family: str  # the module of mhacli.engine.arch whose block runs it
    hf_model: str  # transformers' class without the output head, e.g. GPT2Model
    hf_lm: str  # with the output head (`verify` compares logits and loss), e.g. GPT2LMHeadModel


def _rotary(model_type: str) -> Callable[[dict[str, Any]], ModelConfig]:
    return partial(_parse_rotary, model_type=model_type)


# In this order in `mha --version` and in error messages.
ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in (
        Architecture("gpt2", _parse_gpt2, "gpt2", "GPT2Model", "GPT2LMHeadModel"),
        Architecture("gpt_bigcode", _parse_bigcode, "gpt_bigcode", "GPTBigCodeModel", "GPTBigCodeForCausalLM"),
        Architecture("llama", _rotary("llama"), "llama", "LlamaModel", "LlamaForCausalLM"),
        Architecture("mistral", _rotary("mistral"), "llama", "MistralModel", "MistralForCausalLM"),
        Architecture("olmo2", _rotary("olmo2"), "olmo", "Olmo2Model", "Olmo2ForCausalLM"),
        Architecture("olmo3", _rotary("olmo3"), "olmo", "Olmo3Model", "Olmo3ForCausalLM"),
        Architecture("phi3", _parse_phi3, "phi3", "Phi3Model", "Phi3ForCausalLM"),
        Architecture(
            "gemma2", partial(_parse_gemma, model_type="gemma2"), "gemma2", "Gemma2Model", "Gemma2ForCausalLM"
        ),
        Architecture(
            "gemma3_text",
            partial(_parse_gemma, model_type="gemma3_text"),
            "gemma3",
            "Gemma3TextModel",
            "Gemma3ForCausalLM",
        ),
        Architecture("gpt_neox", _parse_neox, "gpt_neox", "GPTNeoXModel", "GPTNeoXForCausalLM"),
        Architecture("qwen2", _rotary("qwen2"), "qwen2", "Qwen2Model", "Qwen2ForCausalLM"),
        Architecture("qwen3", _rotary("qwen3"), "qwen3", "Qwen3Model", "Qwen3ForCausalLM"),
    )
}
SUPPORTED_MODEL_TYPES = tuple(ARCHITECTURES)
