"""GPT-2 and GPTBigCode (StarCoder, SantaCoder):

their fields, HF's defaults and the parsing they share (GPTBigCode is GPT-2's block with nn.Linear layouts and, when
multi_query, one K/V head shared by every query head)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mhacli.config.base import ModelConfig
from mhacli.config.fields import MAX_COUNT, _activation, _bool, _epsilon, _int, _with_defaults
from mhacli.errors import ConfigError

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
    "tie_word_embeddings": True,
}
# GPT2Config.attribute_map (and GPTBigCodeConfig's): generic names some configs use instead.
GPT2_ALIASES = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}
# HF GPTBigCodeConfig defaults.
BIGCODE_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_pytorch_tanh",
    "layer_norm_epsilon": 1e-5,
    "scale_attn_weights": True,
    "attention_softmax_in_fp32": True,
    "scale_attention_softmax_in_fp32": True,
    "multi_query": True,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class LayerNormConfig(ModelConfig):
    """What GPT-2 and GPTBigCode share: LayerNorms, a dense MLP, an optional attention scale."""

    n_inner: int
    activation_function: str
    layer_norm_epsilon: float
    scale_attn_weights: bool

    @property
    def norm_eps(self) -> float:
        return self.layer_norm_epsilon


@dataclass(frozen=True)
class Gpt2Config(LayerNormConfig):
    scale_attn_by_inverse_layer_idx: bool
    reorder_and_upcast_attn: bool

    def attn_scale(self, layer: int) -> float:
        """The factor HF multiplies q.k by in `layer` (GPT2Attention.scaling)."""
        scale = 1.0
        if self.scale_attn_weights:
            scale = self.d_head**-0.5
        if self.scale_attn_by_inverse_layer_idx:
            scale /= float(layer + 1)
        return scale


@dataclass(frozen=True)
class BigCodeConfig(LayerNormConfig):
    multi_query: bool
    # Both only choose the dtype of HF's fused softmax kernels; its eager float32 path ignores them, as we do.
    attention_softmax_in_fp32: bool
    scale_attention_softmax_in_fp32: bool

    def attn_scale(self, layer: int) -> float:
        """GPTBigCodeAttention.scaling"""
        return self.d_head**-0.5 if self.scale_attn_weights else 1.0


def _gpt2_dims(fields: dict) -> tuple[int, int, int]:
    n_embd, n_head = _int(fields, "n_embd"), _int(fields, "n_head", high=MAX_COUNT)
    if n_embd % n_head:
        raise ConfigError(f"config.json: n_embd ({n_embd}) is not divisible by n_head ({n_head})")
    n_inner = 4 * n_embd if fields["n_inner"] is None else _int(fields, "n_inner")
    return n_embd, n_head, n_inner


def _gpt2_like(fields: dict) -> dict:
    """The fields GPT-2 and GPTBigCode share (validated), as keyword arguments of their configs."""
    n_embd, n_head, n_inner = _gpt2_dims(fields)
    return {
        "vocab_size": _int(fields, "vocab_size"),
        "n_positions": _int(fields, "n_positions"),
        "n_embd": n_embd,
        "n_layer": _int(fields, "n_layer", high=MAX_COUNT),
        "n_head": n_head,
        "n_inner": n_inner,
        "activation_function": _activation(fields, "activation_function"),
        "layer_norm_epsilon": _epsilon(fields, "layer_norm_epsilon"),
        "scale_attn_weights": _bool(fields, "scale_attn_weights"),
        "tie_word_embeddings": _bool(fields, "tie_word_embeddings"),
    }


def _parse_gpt2(raw: dict) -> Gpt2Config:
    fields = _with_defaults(raw, GPT2_DEFAULTS, GPT2_ALIASES)
    common = _gpt2_like(fields)
    return Gpt2Config(
        model_type="gpt2",
        n_kv_head=common["n_head"],
        scale_attn_by_inverse_layer_idx=_bool(fields, "scale_attn_by_inverse_layer_idx"),
        reorder_and_upcast_attn=_bool(fields, "reorder_and_upcast_attn"),
        **common,
    )


def _parse_bigcode(raw: dict) -> BigCodeConfig:
    fields = _with_defaults(raw, BIGCODE_DEFAULTS, GPT2_ALIASES)
    common = _gpt2_like(fields)
    multi_query = _bool(fields, "multi_query")
    return BigCodeConfig(
        model_type="gpt_bigcode",
        n_kv_head=1 if multi_query else common["n_head"],
        multi_query=multi_query,
        attention_softmax_in_fp32=_bool(fields, "attention_softmax_in_fp32"),
        scale_attention_softmax_in_fp32=_bool(fields, "scale_attention_softmax_in_fp32"),
        **common,
    )
