"""What every architecture's config has (`ModelConfig`): the head layout, the attention scale, the KV cache size.

Each family's config (gpt2, gpt_bigcode, rotary) extends it with its own fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """What every architecture has. Heads are query heads; query head h reads K/V head h // group_size."""

    model_type: str
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_kv_head: int
    # The output head is the input embedding (True) or its own `lm_head.weight` (False); HF's default per family.
    tie_word_embeddings: bool = field(default=True, kw_only=True)

    @property
    def d_head(self) -> int:
        return self.n_embd // self.n_head

    @property
    def rotary_dim(self) -> int:
        """How many values of each head (the first ones) rotary positions rotate: d_head, fewer with partial rotary."""
        return self.d_head

    @property
    def layout(self) -> str:
        if self.n_kv_head == self.n_head:
            return "MHA"
        return "MQA" if self.n_kv_head == 1 else "GQA"

    @property
    def group_size(self) -> int:
        """Query heads per K/V head (HF's num_key_value_groups)."""
        return self.n_head // self.n_kv_head

    def kv_head(self, head: int) -> int:
        """The K/V head query head `head` reads (HF's repeat_kv: consecutive query heads share one)."""
        return head // self.group_size

    def attn_scale(self, layer: int) -> float:
        """The factor q.k is multiplied by before the softmax in `layer`."""
        return self.d_head**-0.5

    def sliding_window(self, layer: int) -> int | None:
        """How many keys (the query's own included) a query of `layer` sees at most; None: all earlier ones."""
        return None

    def attn_softcap(self, layer: int) -> float | None:
        """Attention logit soft-capping of `layer`: scaled scores s become cap * tanh(s / cap); None: not capped."""
        return None

    @property
    def logit_softcap(self) -> float | None:
        """Final logit soft-capping: the output head's logits z become cap * tanh(z / cap); None: not capped."""
        return None

    @property
    def norm_eps(self) -> float:
        """The epsilon of the model's norms (LayerNorm's layer_norm_epsilon, RMSNorm's rms_norm_eps)."""
        raise NotImplementedError(f"{type(self).__name__} names no norm epsilon")

    def kv_cache_bytes_per_token(self, bytes_per_value: int = 4) -> int:
        """Bytes of K and V cached per token over all layers: 2 x n_layer x n_kv_head x d_head values."""
        return 2 * self.n_layer * self.n_kv_head * self.d_head * bytes_per_value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"d_head": self.d_head, "layout": self.layout}
