"""GPT-NeoX (Pythia, `gpt_neox`):

LayerNorm with bias, one fused query_key_value projection laid out per head, partial rotary positions on the first
`partial_rotary_factor` of each head (config.json's `rotary_pct`, base `rotary_emb_base`), and attention and MLP
either in parallel on the same input (`use_parallel_residual`) or one after the other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mhacli.config.base import ModelConfig
from mhacli.config.fields import MAX_COUNT, MAX_POSITIONS, _activation, _bool, _epsilon, _int, _number, _shown
from mhacli.config.rotary import DEFAULT_ROPE_THETA, RopeConfig, _rope
from mhacli.errors import ConfigError

# HF GPTNeoXConfig defaults (rotary_pct 0.25 when neither it nor rope_parameters.partial_rotary_factor is given)
NEOX_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50432, "hidden_size": 6144, "num_hidden_layers": 44, "num_attention_heads": 64,
    "intermediate_size": 24576, "hidden_act": "gelu", "max_position_embeddings": 2048, "layer_norm_eps": 1e-5,
    "tie_word_embeddings": False, "use_parallel_residual": True, "attention_bias": True,
}  # fmt: skip
DEFAULT_ROTARY_PCT = 0.25


@dataclass(frozen=True)
class NeoxConfig(ModelConfig):
    """gpt_neox."""

    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    use_parallel_residual: bool  # attention and MLP both read the layer's input (True) or the MLP reads x + attn
    attention_bias: bool  # query_key_value and dense have biases
    rotary_ndims: int  # the first rotary_ndims values of each head are rotated: int(d_head * partial_rotary_factor)
    rope: RopeConfig

    @property
    def norm_eps(self) -> float:
        return self.layer_norm_eps

    @property
    def rotary_dim(self) -> int:
        return self.rotary_ndims

    def rope_at(self, layer: int) -> RopeConfig:
        return self.rope


def _parse_neox(raw: dict) -> NeoxConfig:
    fields = dict(NEOX_DEFAULTS) | {k: raw[k] for k in NEOX_DEFAULTS if k in raw}
    n_embd = _int(fields, "hidden_size")
    n_head = _int(fields, "num_attention_heads", high=MAX_COUNT)
    if n_embd % n_head:
        raise ConfigError(f"config.json: hidden_size ({n_embd}) is not divisible by num_attention_heads ({n_head})")
    n_positions = _int(fields, "max_position_embeddings", high=MAX_POSITIONS)
    rope, factor = _neox_rope(raw, n_embd // n_head, n_positions)
    return NeoxConfig(
        model_type="gpt_neox",
        vocab_size=_int(fields, "vocab_size"),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=_int(fields, "num_hidden_layers", high=MAX_COUNT),
        n_head=n_head,
        n_kv_head=n_head,
        intermediate_size=_int(fields, "intermediate_size"),
        hidden_act=_activation(fields, "hidden_act"),
        layer_norm_eps=_epsilon(fields, "layer_norm_eps"),
        use_parallel_residual=_bool(fields, "use_parallel_residual"),
        attention_bias=_bool(fields, "attention_bias"),
        rotary_ndims=int(n_embd // n_head * factor),
        rope=rope,
        tie_word_embeddings=_bool(fields, "tie_word_embeddings"),
    )


def _neox_rope(raw: dict, head_dim: int, n_positions: int) -> tuple[RopeConfig, float]:
    """GPTNeoXConfig.convert_rope_params_to_dict: rope_scaling or rope_parameters, then rotary_emb_base and rotary_pct.

    (RopeConfig, partial_rotary_factor); the rotary parameters are those of the rotated part (rotary_dim values)."""
    params = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"config.json: rope_parameters must be an object or null, got {_shown(params)}")
    params = dict(params)
    params.setdefault("rope_theta", raw.get("rotary_emb_base", DEFAULT_ROPE_THETA))
    params.setdefault("partial_rotary_factor", raw.get("rotary_pct", DEFAULT_ROTARY_PCT))
    factor = _number(params, "partial_rotary_factor", where="config.json: rope_parameters")
    if factor > 1.0:  # refused before head_dim * factor, which can overflow
        raise ConfigError(
            f"config.json: partial_rotary_factor (rotary_pct) {factor!r} is more than 1: a head has {head_dim} values"
        )
    rotary_dim = int(head_dim * factor)
    if rotary_dim < 2 or rotary_dim % 2:
        raise ConfigError(
            f"config.json: partial_rotary_factor (rotary_pct) {factor!r} of head_dim {head_dim} gives {rotary_dim} "
            "rotated values; rotary embeddings rotate pairs, so it must be an even number from 2 to head_dim"
        )
    rope = _rope({k: v for k, v in params.items() if k != "partial_rotary_factor"}, "rope_parameters", rotary_dim,
                 n_positions)  # fmt: skip
    return rope, factor
