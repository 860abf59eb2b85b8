"""Heads of one text (`inspect`, `stats`, Run.stats/views).

A selection checked against the model and guarded for memory, then each selected head's statistics, with its map where
asked (mhacli.analyses.heads.analyse).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mhacli.analyses.heads import HeadView, analyse, check_selection
from mhacli.analyses.partial import MapRequest
from mhacli.engine.blocks import ZEdit
from mhacli.ops.ablation import ablation_edits, ablation_note
from mhacli.ops.memory import Size, check_memory, heads_bytes
from mhacli.views.ablated import Ablated

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
    ablate: str | None = None  # heads removed first: L.H[,L.H...] or @mask.json


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
    return HeadsPlan(ckpt, ids, r, n_layers, n_heads, ablation_edits(r.ablate, ckpt), ablation_note(r.ablate, ckpt))
