"""The forward pass in pure NumPy, float32 end to end:

`forward` runs any supported architecture layer by layer with its family's block (mhacli.engine.arch, which builds on
mhacli.engine.blocks). No I/O, no printing.

Shapes: n_seq tokens, n_embd model width, n_head heads of d_head each; an attention map is [n_head, q_pos, k_pos],
rows are queries and sum to 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mhacli.config import ModelConfig
from mhacli.engine.arch import Family
from mhacli.engine.arch import family as family_module
from mhacli.engine.attention import Sink
from mhacli.engine.blocks import Params, ZEdit
from mhacli.engine.segments import Segments, packed
from mhacli.errors import NumericsError


def family(config: ModelConfig) -> Family[Any]:
    """The architecture module of this config (mhacli.engine.arch): its embed, block and final_norm."""
    return family_module(config.model_type)


def embed(params: Params, ids: np.ndarray) -> np.ndarray:
    """[n_seq] token ids -> [n_seq, n_embd], the residual stream entering layer 0.

    Token + learned positions for GPT-2 and GPTBigCode; tokens alone for the rotary families."""
    return family(params.config).embed(params, ids)


def final_norm(params: Params, x: np.ndarray) -> np.ndarray:
    """The norm after the last layer (ln_f or norm): [n_seq, n_embd] -> [n_seq, n_embd]"""
    return family(params.config).final_norm(params, x)


@dataclass(frozen=True)
class LayerTrace:
    layer: int
    attention: np.ndarray | None  # [n_head, n_seq, n_seq] (None: streamed to the layer's sink)
    residual: np.ndarray  # [n_seq, n_embd] the residual stream after this block
    z: np.ndarray  # [n_head, n_seq, d_head] each head's output (before any edit), the input of W_O per head


# Where a forward sends each layer's attention instead of keeping it: layer -> a sink (None: keep that layer's map).
Sinks = Callable[[int], Sink | None]


def forward(
    params: Params,
    ids: np.ndarray | list[int],
    *,
    n_layers: int | None = None,
    edits: dict[int, ZEdit] | None = None,
    sinks: Sinks | None = None,
    segments: Segments | None = None,
    attention_only_last: bool = False,
) -> Iterator[LayerTrace]:
    """Run the model layer by layer, yielding each layer's attention and residual stream.

    Stops after `n_layers` layers (all by default); one layer's weights are fetched at a time. `edits` maps a
    layer to an edit of its heads' outputs before W_O (ablation). `sinks` streams a layer's attention, block by
    block, to the sink it returns for that layer (LayerTrace.attention is then None): no [n_head, n_seq, n_seq] map.
    `segments`: `ids` is a pack of several texts (mhacli.engine.segments), each attending only to itself, its
    positions restarting at 0; a kept map is then the pack's [n_head, n_seq, n_seq], zero between texts.
    `attention_only_last`: see forward_from.
    """
    ids = np.asarray(ids, dtype=np.int64)
    n = params.config.n_layer if n_layers is None else n_layers
    with packed(segments):
        x = embed(params, ids)
    yield from forward_from(
        params, x, 0, n, edits=edits, sinks=sinks, segments=segments, attention_only_last=attention_only_last
    )


class _HeadsDone(Exception):  # noqa: N818 - not an error: the last layer's heads are computed, the rest is skipped
    def __init__(self, z: np.ndarray) -> None:
        self.z = z


def _stop_before_out(z: np.ndarray) -> np.ndarray:
    """A ZEdit that ends the block where the heads' outputs enter W_O (every family applies edits there)."""
    raise _HeadsDone(z)


def forward_from(
    params: Params,
    x: np.ndarray,
    first: int,
    stop: int,
    *,
    edits: dict[int, ZEdit] | None = None,
    sinks: Sinks | None = None,
    segments: Segments | None = None,
    attention_only_last: bool = False,
) -> Iterator[LayerTrace]:
    """Layers first..stop-1 on x [n_seq, n_embd], the residual stream entering layer `first` (a pack: `segments`).

    `attention_only_last` (with a sink for it, as the statistics need nothing more): layer stop-1 runs its attention
    and stops where the heads' outputs enter W_O, skipping its output projection and MLP (a twelfth of GPT-2 small's
    work); its trace has the heads' z, no map, and the residual stream *entering* it (no edit applies there)."""
    if attention_only_last and (sinks is None or stop - 1 in (edits or {})):
        raise ValueError("attention_only_last streams the last layer to a sink, and no edit can apply there")
    config = params.config
    block = family(config).block  # one small block function per architecture family
    edits = edits or {}
    for layer in range(first, stop):
        weights = params.layer(layer)
        sink = sinks(layer) if sinks is not None else None
        edit = _stop_before_out if attention_only_last and layer == stop - 1 else edits.get(layer)
        try:
            with np.errstate(all="ignore"), packed(segments):  # overflow is reported below, naming the layer and heads
                x, attn = block(x, weights, config, layer, edit, sink=sink)
        except _HeadsDone as done:
            check_finite(done.z, x, layer)
            yield LayerTrace(layer, None, x, done.z)
            return
        check_finite(attn.probs if attn.probs is not None else attn.z, x, layer)
        yield LayerTrace(layer, attn.probs, x, attn.z)


def check_finite(per_head: np.ndarray, x: np.ndarray, layer: int) -> None:
    """per_head [n_head, ...]:

    the layer's attention, or its heads' outputs where the attention was streamed (a NaN in a head's weights reaches
    its output); [B, n_head, ...] for a batch of variants."""
    if np.isfinite(per_head).all() and np.isfinite(x).all():
        return
    probs = per_head.swapaxes(0, 1) if per_head.ndim == 4 else per_head  # the heads first
    bad_heads = [h for h in range(probs.shape[0]) if not np.isfinite(probs[h]).all()]
    where = f"heads {bad_heads}" if bad_heads else "the residual stream"
    raise NumericsError(f"the forward pass produced NaN or Inf in layer {layer}, {where} (extreme weights?)")
