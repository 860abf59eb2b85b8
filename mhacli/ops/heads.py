"""Heads of one text (`inspect`, `stats`, Run.stats/views).

A selection checked against the model and guarded for memory, then each selected head's statistics, with its map where
asked (mhacli.analyses.heads.analyse).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mhacli.analyses.ablate import Head
from mhacli.analyses.heads import HeadView, analyse, check_selection
from mhacli.analyses.partial import MapRequest
from mhacli.analyses.stats import TOO_PLAIN, undecidable
from mhacli.engine.blocks import ZEdit
from mhacli.ops.ablation import ablation, removal_edits_of
from mhacli.ops.memory import Size, check_memory, heads_bytes
from mhacli.views.ablated import Ablated
from mhacli.views.formats import CSV_COLUMNS, head_record, stats_row, written
from mhacli.views.save import Picture, Pictures, caption

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

Progress = Callable[[Iterable, int, str], Iterable]


def _as_they_come(items: Iterable, total: int, description: str) -> Iterable:
    return items


def check_heads(
    ckpt,
    n_seq: int,
    layers: Sequence[int] | None,
    heads: Sequence[int] | None,
    *,
    keep_maps: bool,
    max_memory: Size,
    narrow: str = "text",
    request: MapRequest | None = None,
) -> tuple[int, int]:
    """The selection (layers and heads in range) and the memory it needs (ResourceError past max_memory).

    Maps are whole (keep_maps) or the part of each a view asks for (`request`). Returns (selected layers, selected
    heads per layer).
    """
    c = ckpt.config
    check_selection(c.n_layer, c.n_head, layers, heads)
    n_layers = len(set(layers)) if layers else c.n_layer
    n_heads = len(set(heads)) if heads else c.n_head
    cells = request.cells(n_seq) if request is not None else 0
    check_memory(heads_bytes(ckpt, n_seq, n_layers, n_heads, keep_maps, cells), max_memory, narrow)
    return n_layers, n_heads


@dataclass(frozen=True)
class HeadsRequest:
    """Heads of one text (`inspect`, `stats`): which ones (None: all), whole maps or the part a view shows."""

    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None
    keep_maps: bool = False  # whole maps (a machine format or a picture writes them); else streamed
    window: MapRequest | None = None  # the part of each map a view shows (mhacli.analyses.partial)
    max_memory: Size = None
    narrow: str = "text"  # the way out of the memory guard that fits the request (mhacli.errors.ResourceError)
    ablate: str | Sequence[Head] | None = None  # heads removed first: L.H[,L.H...], @mask.json or (layer, head) pairs


@dataclass(frozen=True)
class HeadsPlan:
    """A checked request: the selection's size, the heads removed, ready to run."""

    ckpt: Any
    ids: np.ndarray  # [n_seq] int64
    request: HeadsRequest
    n_layers: int
    n_heads: int  # selected heads per layer
    edits: dict[int, ZEdit] | None
    ablated: Ablated | None = None  # what `edits` removes, for every output to name

    def run(self, progress: Progress = _as_they_come) -> list[HeadView]:
        """Every selected head's view, layer by layer (`progress` wraps the stream: a bar on a terminal)."""
        r = self.request
        stream = analyse(
            self.ckpt, self.ids, layers=r.layers, heads=r.heads, keep_maps=r.keep_maps, edits=self.edits,
            request=r.window,
        )  # fmt: skip
        return list(progress(stream, self.n_layers * self.n_heads, "running layers"))


def plan_heads(ckpt, ids: np.ndarray, request: HeadsRequest) -> HeadsPlan:
    """`inspect` and `stats` before they run: the selection in range, the memory it needs, the heads removed."""
    r = request
    n_layers, n_heads = check_heads(
        ckpt, len(ids), r.layers, r.heads, keep_maps=r.keep_maps, max_memory=r.max_memory, narrow=r.narrow,
        request=r.window,
    )  # fmt: skip
    removal = ablation(r.ablate, ckpt)  # read once: a mask file is opened and checked here
    return HeadsPlan(ckpt, ids, r, n_layers, n_heads, removal_edits_of(removal, ckpt), Ablated.of(removal))


# --- the result: what inspect and stats show, in every format, and how --save pictures it -----------------------------


@dataclass
class HeadsResult:
    """Heads of one text: their statistics and kinds, and (inspect) their attention maps."""

    model: dict
    tokens: list[str]
    token_ids: list[int]
    views: list[HeadView]
    ablated: Ablated | None = field(default=None, kw_only=True)  # heads removed first (--ablate)
    COLUMNS = CSV_COLUMNS
    with_attention = False

    def head_dicts(self) -> Iterator[dict]:
        return (head_record(v, with_attention=self.with_attention) for v in self.views)

    def _front(self) -> dict:
        doc = {"model": self.model, "tokens": self.tokens, "token_ids": self.token_ids}
        return doc | (self.ablated.to_dict() if self.ablated else {})

    def to_dict(self) -> dict:
        return self._front() | {"heads": [*self.head_dicts()]}

    def json_chunks(self, dumps: Callable[[Any], str]) -> Iterator[str]:
        """The document written head by head, so only one head's lists exist at a time (the bytes of to_dict's)."""
        yield dumps(self._front())[:-1] + ', "heads": ['
        for k, record in enumerate(self.head_dicts()):
            yield (", " if k else "") + dumps(record)
        yield "]}\n"

    def records(self) -> Iterator[dict]:
        extra = self.ablated.to_dict() if self.ablated else {}
        return (record | extra for record in self.head_dicts())

    def rows(self) -> Iterator[list]:
        return (stats_row(v) for v in self.views)

    def notes(self, fmt: str) -> list[str]:
        return [TOO_PLAIN] if fmt == "text" and self.views and undecidable(self.views[0].stats.support) else []


@dataclass
class InspectResult(HeadsResult):
    """`mha inspect`: the maps; the terminal window (query, top, start, keys, panel_keys) is how they are drawn."""

    PICTURES = Pictures("inspect", figure="inspect_figure", page="inspect_page", npz=True)
    query: int | None = None
    top: int | None = None
    start: int | None = None  # None: the window ends at the text's last token
    keys: tuple[int, int] | None = None
    panel_keys: int | None = None
    with_attention = True

    def plain(self) -> str:
        from mhacli.views.plain import write_inspect

        return written(lambda out: write_inspect(out, self.views, self.tokens, query=self.query, top=self.top))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal.inspect import inspect_view

        return inspect_view(
            console,
            self.views,
            self.tokens,
            query=self.query,
            top=self.top,
            start=self.start,
            keys=self.keys,
            panel_keys=self.panel_keys,
        )


@dataclass
class StatsResult(HeadsResult):
    """`mha stats`: `stat` orders the text table and fills the terminal grid; `compact` forces the small grid."""

    PICTURES = Pictures("stats", figure="stats_figure", page="stats_page")
    n_layer: int = 0
    n_head: int = 0
    stat: str = "auto"
    compact: bool = False

    def plain(self) -> str:
        from mhacli.views.plain import write_stats

        return written(lambda out: write_stats(out, self.views, self.stat))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal.stats import stats_view

        layout = "compact" if self.compact else "auto"
        n_tokens = len(self.token_ids)
        return stats_view(console, self.views, self.n_layer, self.n_head, self.stat, n_tokens, layout=layout)


def inspect_picture(ckpt, tokens, views, ablated: Ablated | None = None) -> Picture:
    """inspect: the selected heads' maps (HeadViews with attention), the tokens."""
    c = ckpt.config
    return Picture(
        InspectResult.PICTURES,
        caption(ckpt.source, "".join(tokens.tokens), len(tokens.ids)),
        {
            "views": views,
            "tokens": list(tokens.tokens),
            "token_ids": tokens.ids.tolist(),
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "model": ckpt.source,
        },
        ablated,
    )


def stats_picture(ckpt, tokens, views, stat: str, ablated: Ablated | None = None) -> Picture:
    """stats: every head's statistics (maps too when a page is written: `wants(targets, "html")`)."""
    c = ckpt.config
    return Picture(
        StatsResult.PICTURES,
        caption(ckpt.source, "".join(tokens.tokens), len(tokens.ids)),
        {"views": views, "tokens": list(tokens.tokens), "n_layer": c.n_layer, "n_head": c.n_head, "stat": stat},
        ablated,
    )
