"""The family interface: what every architecture module of mhacli.engine.arch provides, as a `Protocol`.

A family is a module (gpt2, gpt_bigcode, llama, olmo); mypy checks each one against `Family` where
mhacli.engine.arch assigns it to a variable of that type, so a missing or mistyped member fails the type check,
and at run time `isinstance(module, Family)` checks that every member is there. Everything that differs between
architectures is asked of the family (or of the config object: `attn_scale`, `sliding_window`, `norm_eps`), never
tested from outside with `isinstance(config, ...)` or `model_type == ...`.

`Family[C]` is generic in the config class the module's functions read (Gpt2Config, BigCodeConfig, RotaryConfig);
`mhacli.engine.arch.family(model_type)` returns a `Family[Any]`, as the config it will be given was parsed by the
same registry row (mhacli.config.registry) that names the family.
"""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

from mhacli.config import ModelConfig, RopeConfig
from mhacli.engine.arch.common import GroupedAttentionParts, Projection
from mhacli.engine.attention import Sink
from mhacli.engine.blocks import AttentionParts, Params, ZEdit

C = TypeVar("C", bound=ModelConfig, contravariant=True)
Parts = AttentionParts | GroupedAttentionParts  # every intermediate of one attention block, as the family computed it
Weights = dict[str, np.ndarray]  # one layer's tensors, keys relative to its LAYER_PREFIX


@runtime_checkable
class Family(Protocol[C]):
    """One architecture family: its checkpoint layout, its forward pieces, and the facts `explain` and `info` show."""

    # --- the checkpoint's names ---
    @property
    def KEY_PREFIX(self) -> str:  # noqa: N802 - a module constant
        """Stripped from checkpoint keys: `transformer.`, `model.`."""

    @property
    def LAYER_PREFIX(self) -> str:  # noqa: N802
        """A layer's keys, to format with its index: `h.{}.`, `layers.{}.`."""

    @property
    def EMBEDDING(self) -> str:  # noqa: N802
        """The input embedding, also the output head when tied."""

    @property
    def LM_HEAD(self) -> str:  # noqa: N802
        """An untied output head (read only by the loss)."""

    @property
    def KV_WEIGHT(self) -> str:  # noqa: N802
        """The layer tensor holding K: its dtype is the KV cache's."""

    def normalise_key(self, key: str) -> str | None:
        """Checkpoint key -> our key; None for buffers and tensors the forward does not read."""

    def expected_shapes(self, config: C) -> dict[str, tuple[int, ...]]:
        """Every tensor the forward reads, with the shape the config implies."""

    def check(self, config: C) -> None:
        """The family's own checks of a parsed config before any weight is read (a ConfigError naming the field)."""

    # --- the forward ---
    def embed(self, params: Params, ids: np.ndarray) -> np.ndarray:
        """[n_seq] token ids -> [n_seq, n_embd], the residual stream entering layer 0.

        Learned positions are read at mhacli.engine.segments.positions(n_seq): they restart with each text of a
        pack (rotary ones need nothing: rope_tables and the attention kernel read the pack themselves)."""

    def block(
        self, x: np.ndarray, p: Weights, config: C, layer: int, edit: ZEdit | None = None, sink: Sink | None = None
    ) -> tuple[np.ndarray, Parts]:
        """One layer: [n_seq, n_embd] -> ([n_seq, n_embd], the attention's parts as the forward computed them)."""

    def final_norm(self, params: Params, x: np.ndarray) -> np.ndarray:
        """The norm after the last layer: [n_seq, n_embd] -> [n_seq, n_embd]."""

    def attention_input(self, x: np.ndarray, p: Weights, config: C) -> np.ndarray:
        """What the attention projections read: [n_seq, n_embd] -> [n_seq, n_embd]."""

    def attention_parts(self, h: np.ndarray, p: Weights, config: C, layer: int) -> Parts:
        """One layer's attention on its input, every intermediate kept (for `explain` and tests)."""

    # --- what `explain` and `info` show ---
    @property
    def ATTENTION_NORM(self) -> tuple[str, str, str | None] | None:  # noqa: N802
        """The norm before attention: (kind "layer_norm" or "rms_norm", weight, bias or None); None: no norm."""

    @property
    def FINAL_NORM(self) -> tuple[str, str, str | None]:  # noqa: N802
        """The norm after the last layer, before the output head: (kind, weight, bias or None), model-level keys."""

    @property
    def NORM_GAIN_OFFSET(self) -> float:  # noqa: N802
        """Added to every norm weight to give its gain: 0.0 (gain = w) but for Gemma, whose RMSNorms scale by 1 + w.

        Readers of ATTENTION_NORM, FINAL_NORM and QK_NORM weights (explain, circuits' folding, attribution's frozen
        final norm) use weight + NORM_GAIN_OFFSET; the stored weight itself is the checkpoint's."""

    @property
    def QK_NORM(self) -> tuple[str, str] | None:  # noqa: N802
        """(q_norm weight, k_norm weight): RMSNorms over the whole q/k projection; None: no QK-norm."""

    @property
    def SLIDING_WINDOWS(self) -> bool:  # noqa: N802
        """Whether the family's configs can give layers a sliding window (`info` shows a line for it)."""

    def rope_at(self, config: C, layer: int) -> RopeConfig | None:
        """The rotary parameters of `layer`; None: the family has no rotary positions."""

    def head_projections(self, config: C, head: int) -> dict[str, Projection]:
        """Where query head `head`'s q and its K/V head's k and v live in the layer's tensors."""

    def out_projection(self, config: C) -> Projection:
        """The output projection, all heads' outputs concatenated in."""

    def projections_note(self, config: C, head: int, kv_head: int) -> str:
        """`explain`'s sentence introducing the slices of the projection weights the head reads."""
