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
from types import ModuleType

FAMILIES = {
    "gpt2": "gpt2",
    "gpt_bigcode": "gpt_bigcode",
    "llama": "llama",
    "mistral": "llama",
    "olmo2": "olmo",
    "olmo3": "olmo",
}


def family(model_type: str) -> ModuleType:
    return importlib.import_module(f"mhacli.arch.{FAMILIES[model_type]}")
