"""Running the model for a set of heads: statistics for every selected head, maps only where asked. Pure NumPy."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from mhacli.analyses.partial import MapRequest, PartialMap, Tee, TopSink, WindowSink
from mhacli.analyses.stats import STAT_NAMES, HeadStats, StatsAccumulator, head_stats, layer_stats
from mhacli.engine.attention import DISCARD, Sink, block_rows, blocks, threads_for
from mhacli.engine.blocks import Params, ZEdit
from mhacli.engine.forward import forward
from mhacli.errors import UsageError


@dataclass(frozen=True)
class HeadView:
    stats: HeadStats  # of query head `head`
    attention: np.ndarray | PartialMap | None  # [n_seq, n_seq] float32 (or the part asked for), None: no map
    kv_head: int | None = None  # the K/V head this query head reads (None: its own, as in MHA)

    @property
    def layer(self) -> int:
        return self.stats.layer

    @property
    def head(self) -> int:
        return self.stats.head

    def shown_map(self) -> np.ndarray | PartialMap:
        """The map (whole or the part asked for) of a head analysed with maps; an error for one without."""
        if self.attention is None:
            raise TypeError(f"head L{self.layer}H{self.head} was analysed without its map")
        return self.attention

    def whole_map(self) -> np.ndarray:
        """The whole [n_seq, n_seq] map of a head analysed with maps; an error for a part or none."""
        attention = self.shown_map()
        if not isinstance(attention, np.ndarray):
            raise TypeError(f"head L{self.layer}H{self.head} holds only part of its map")
        return attention


def check_selection(n_layer: int, n_head: int, layers: Sequence[int] | None, heads: Sequence[int] | None) -> None:
    for layer in layers or ():
        if not 0 <= layer < n_layer:
            raise UsageError(
                f"{{layer}} {layer} is out of range: this model has layers 0..{n_layer - 1}", params=("layer",)
            )
    for head in heads or ():
        if not 0 <= head < n_head:
            raise UsageError(f"{{head}} {head} is out of range: this model has heads 0..{n_head - 1}", params=("head",))


def analyse(
    params: Params,
    ids: np.ndarray,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    keep_maps: bool = True,
    edits: dict[int, ZEdit] | None = None,
    request: MapRequest | None = None,
) -> Iterator[HeadView]:
    """Yield a HeadView per selected head, layer by layer; the forward stops after the last selected layer.

    `edits`: heads' outputs replaced before W_O (ablation, mhacli.analyses.ablate), layer by layer. `request`: only
    that part of each selected head's map (a PartialMap, mhacli.analyses.partial), its statistics streamed: no whole
    map is made."""
    config = params.config
    check_selection(config.n_layer, config.n_head, layers, heads)
    wanted_layers = sorted(set(layers)) if layers else list(range(config.n_layer))
    wanted_heads = sorted(set(heads)) if heads else list(range(config.n_head))
    streams: dict[int, StatsAccumulator] = {}
    parts: dict[int, WindowSink | TopSink] = {}

    def sinks(layer: int) -> Sink | None:
        """A layer not shown needs no map at all.

        Without maps a shown layer's statistics are streamed (and the part of its map a request asks for kept
        beside them)."""
        if layer not in wanted_layers:
            return DISCARD
        if keep_maps and request is None:
            return None
        streams[layer] = StatsAccumulator(config.n_head, ids)
        if request is None:
            return streams[layer]
        parts[layer] = (
            TopSink(wanted_heads, len(ids), request.top) if request.top is not None
            else WindowSink(wanted_heads, len(ids), request.rows, request.keys)
        )  # fmt: skip
        return Tee(streams[layer], parts[layer])

    last = wanted_layers[-1]
    streamed = not (keep_maps and request is None) and last not in (edits or {})  # the last layer's MLP feeds nothing
    for trace in forward(params, ids, n_layers=last + 1, edits=edits, sinks=sinks, attention_only_last=streamed):
        if trace.layer not in wanted_layers:
            continue
        if trace.attention is None:  # streamed: every head's statistics, then the selected ones
            every = head_stats(trace.layer, streams.pop(trace.layer).result())
            part = parts.pop(trace.layer, None)
            maps = part.maps() if part is not None else [None] * len(wanted_heads)
            for head, attn in zip(wanted_heads, maps):
                yield HeadView(every[head], attn, config.kv_head(head))
            continue
        kept = trace.attention[wanted_heads]  # [n_selected, n_seq, n_seq]
        for row, stats in zip(kept, layer_stats(trace.layer, kept, ids)):
            head = wanted_heads[stats.head]
            yield HeadView(replace(stats, layer=trace.layer, head=head), row, config.kv_head(head))


# The memory model of a request (the guard, --max-memory), fitted to peak RSS measured on this code (a test checks
# its growth with n_seq against a child process's, within 30%). What the process already holds when it checks (the
# interpreter, NumPy, the tokenizer) is not counted: "available memory" is measured beside it. Per token: the
# residual stream, norms, q/k/v, the heads' outputs and the MLP's widest tensors of one layer alive at once; per
# block: the kernel's float32 scores and what a sink keeps of them.
ACT_EMBD, ACT_INNER = 8, 4  # float32 [n_seq, n_embd] and [n_seq, n_inner] arrays alive inside one layer
BLOCK_COPIES = 2  # whole float32 blocks [n_head, rows, n_seq] alive at once (a streamed diff's queue), per forward
TILE_COPIES = 3  # float32 tiles [rows, n_seq] per thread: the kernel's, the statistics' work array and distances
FULL_COPIES = 6  # [n_head, n_seq, n_seq] float32 arrays alive at once in the unfused attention (explain's)


def forward_bytes(config, n_seq: int) -> int:
    """One forward's working set without maps: a layer's activations, one attention block, the statistics' rows."""
    inner = getattr(config, "n_inner", None) or getattr(config, "intermediate_size", None) or 4 * config.n_embd
    activations = n_seq * (ACT_EMBD * config.n_embd + ACT_INNER * inner) * 4
    rows = block_rows(n_seq)
    tile = rows * n_seq * 4
    threads = threads_for(blocks(n_seq, rows, None), config.n_head)
    block = config.n_head * tile
    return activations + threads * TILE_COPIES * tile + BLOCK_COPIES * block + stats_bytes(config.n_head, n_seq)


def stats_bytes(n_head: int, n_seq: int) -> int:
    """A StatsAccumulator's own memory: its float64 per-row sums and the token index of its matches."""
    return n_head * n_seq * (len(STAT_NAMES) + 1) * 8 + 3 * n_seq * 8


def memory_needed(
    config,
    n_seq: int,
    *,
    kept_layers: int = 0,
    kept_heads: int = 0,
    keep_maps: bool = False,
    weight_bytes: int = 0,
    forwards: int = 1,
    kept_cells: int = 0,
) -> int:
    """Bytes a request needs at its peak:

    `forwards` forwards at once (2 for a streamed diff), the weights resident meanwhile (Checkpoint.weight_bytes:
    one pass's layers, or every tensor of a caching checkpoint) and, with keep_maps, the kept maps (the selected
    heads' copies) plus the whole map of the layer being computed; with `kept_cells`, that many float32 cells of
    each selected head's map. Without whole maps nothing grows with n_seq^2: attention is streamed
    (mhacli.engine.attention)."""
    maps = kept_layers * kept_heads * kept_cells * 4  # the parts of maps a view asked for (mhacli.analyses.partial)
    if keep_maps:
        square = n_seq * n_seq * 4
        maps = (kept_layers * kept_heads + config.n_head) * square  # kept copies, and the layer's whole map
    return weight_bytes + maps + forwards * forward_bytes(config, n_seq)


def full_attention_bytes(n_head: int, n_seq: int) -> int:
    """The unfused attention of one layer (scores, scaled, masked, exponentiated, probabilities): `explain`."""
    return FULL_COPIES * n_head * n_seq * n_seq * 4
