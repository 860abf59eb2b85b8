"""Architecture families, one module each. `family(model_type)` returns the module, which provides:

- MODEL_TYPES, KEY_PREFIX (stripped from checkpoint keys), EMBEDDING and LM_HEAD (the output head's tensors), LAYER_PREFIX (`h.{}.`, `layers.{}.`), KV_WEIGHT (the
  layer tensor holding K, whose dtype is the KV cache's), HF_MODEL_CLASS and HF_LM_CLASS (model_type -> transformers class, without and with the output head);
- normalise_key(key), expected_shapes(config): the checkpoint's names and the shape of every tensor read;
- embed(params, ids), block(x, p, config, layer, edit=None) -> (x, attention parts as computed: probs, z, out, ...),
  final_norm(params, x): the forward pass (`edit` replaces heads' outputs before the output projection: ablation);
- attention_input(x, p, config) and attention_parts(h, p, config, layer): one layer's attention, every
  intermediate kept (for `explain` and tests).

Modules are imported on first use: `mha info` on a GPT-2 never loads the rotary code.
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType

from mhacli.config import ModelConfig, RotaryConfig
from mhacli.errors import ConfigError

FAMILIES = {
    "gpt2": "gpt2",
    "gpt_bigcode": "gpt_bigcode",
    "llama": "llama",
    "mistral": "llama",
    "olmo2": "olmo",
    "olmo3": "olmo",
}


def family(model_type: str) -> ModuleType:
    return importlib.import_module(f"mhacli.engine.arch.{FAMILIES[model_type]}")


def check_config(config: ModelConfig) -> None:
    """What the forward will compute from a parsed config, computed once before any weight is read: the head
    layout, every layer's attention scale and, for rotary models, the inverse frequencies and attention factor of
    each set of rotary parameters. A non-finite or impossible value is a ConfigError naming the field, instead of
    a division by zero, a math domain error, an overflow or a broadcast error in the middle of the forward."""
    if config.n_head % config.n_kv_head or config.d_head < 1:
        raise ConfigError(
            f"config.json: {config.n_head} query heads cannot share {config.n_kv_head} K/V heads of {config.d_head} values"
        )
    for layer in range(config.n_layer):
        scale = config.attn_scale(layer)
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"config.json: the attention scale of layer {layer} is {scale!r}, not a positive number")
    if not isinstance(config, RotaryConfig):
        return
    if config.head_dim % 2:
        raise ConfigError(
            f"config.json: head_dim {config.head_dim} is odd; rotary embeddings rotate pairs of values, so it must be even"
        )
    from mhacli.engine.arch.rope import rope_problem  # only rotary models load the rotary code

    ropes = [("rope_parameters", config.rope)]
    if config.sliding_rope is not None:
        ropes = [
            ("rope_parameters.full_attention", config.rope),
            ("rope_parameters.sliding_attention", config.sliding_rope),
        ]
    for where, rope in ropes:
        problem = rope_problem(rope, config.d_head, config.n_positions)
        if problem is not None:
            raise ConfigError(
                f"config.json: {where} (rope_type {rope.rope_type!r}, head_dim {config.d_head}): {problem}"
            )
