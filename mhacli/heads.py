"""Running the model for a set of heads: statistics for every selected head, maps only where asked. Pure NumPy."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from mhacli.attention import DISCARD, Sink
from mhacli.errors import UsageError
from mhacli.model import Params, ZEdit, forward
from mhacli.stats import HeadStats, StatsAccumulator, head_stats, layer_stats


@dataclass(frozen=True)
class HeadView:
    stats: HeadStats  # of query head `head`
    attention: np.ndarray | None  # [n_seq, n_seq] float32, None when maps were not requested
    kv_head: int | None = None  # the K/V head this query head reads (None: its own, as in MHA)

    @property
    def layer(self) -> int:
        return self.stats.layer

    @property
    def head(self) -> int:
        return self.stats.head


def check_selection(n_layer: int, n_head: int, layers: Sequence[int] | None, heads: Sequence[int] | None) -> None:
    for layer in layers or ():
        if not 0 <= layer < n_layer:
            raise UsageError(f"--layer {layer} is out of range: this model has layers 0..{n_layer - 1}")
    for head in heads or ():
        if not 0 <= head < n_head:
            raise UsageError(f"--head {head} is out of range: this model has heads 0..{n_head - 1}")


def analyse(
    params: Params,
    ids: np.ndarray,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    keep_maps: bool = True,
    edits: dict[int, ZEdit] | None = None,
) -> Iterator[HeadView]:
    """Yield a HeadView per selected head, layer by layer; the forward stops after the last selected layer.
    `edits`: heads' outputs replaced before W_O (ablation, mhacli.ablate), layer by layer."""
    config = params.config
    check_selection(config.n_layer, config.n_head, layers, heads)
    wanted_layers = sorted(set(layers)) if layers else list(range(config.n_layer))
    wanted_heads = sorted(set(heads)) if heads else list(range(config.n_head))
    streams: dict[int, StatsAccumulator] = {}

    def sinks(layer: int) -> Sink | None:
        """A layer not shown needs no map at all; without maps a shown layer's statistics are streamed."""
        if layer not in wanted_layers:
            return DISCARD
        if keep_maps:
            return None
        streams[layer] = StatsAccumulator(config.n_head, ids)
        return streams[layer]

    for trace in forward(params, ids, n_layers=wanted_layers[-1] + 1, edits=edits, sinks=sinks):
        if trace.layer not in wanted_layers:
            continue
        if trace.attention is None:  # streamed: every head's statistics, then the selected ones
            every = head_stats(trace.layer, streams.pop(trace.layer).result())
            for head in wanted_heads:
                yield HeadView(every[head], None, config.kv_head(head))
            continue
        attn = trace.attention[wanted_heads]  # [n_selected, n_seq, n_seq]
        for row, stats in zip(attn, layer_stats(trace.layer, attn, ids)):
            head = wanted_heads[stats.head]
            yield HeadView(replace(stats, layer=trace.layer, head=head), row, config.kv_head(head))


FORWARD_COPIES = 6  # [n_head, n_seq, n_seq] float32 arrays alive at once inside one layer's attention


def memory_needed(
    n_head: int, n_seq: int, *, kept_layers: int, kept_heads: int, keep_maps: bool, weight_bytes: int
) -> int:
    """Bytes a request needs at its peak: the kept maps, one layer's attention working set, and the weights
    resident meanwhile (Checkpoint.weight_bytes: one pass's layers, or every tensor of a caching checkpoint)."""
    maps = kept_layers * kept_heads * n_seq * n_seq * 4 if keep_maps else 0
    return maps + FORWARD_COPIES * n_head * n_seq * n_seq * 4 + weight_bytes
