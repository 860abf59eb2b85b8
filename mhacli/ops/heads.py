"""Heads of one text (`inspect`, `stats`, Run.stats/views).

A selection checked against the model and guarded for memory, then each selected head's statistics, with its map where
asked (mhacli.analyses.heads.analyse).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from mhacli.analyses.heads import HeadView, analyse, check_selection
from mhacli.analyses.partial import MapRequest
from mhacli.engine.blocks import ZEdit
from mhacli.ops.memory import Size, check_memory, heads_bytes


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


def head_views(
    ckpt,
    ids: np.ndarray,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    keep_maps: bool = True,
    edits: dict[int, ZEdit] | None = None,
    request: MapRequest | None = None,
) -> Iterator[HeadView]:
    """A HeadView per selected head, layer by layer.

    Whole maps only with keep_maps, else streamed; `request`: the part of each map a view shows
    (mhacli.analyses.partial).
    """
    return analyse(ckpt, ids, layers=layers, heads=heads, keep_maps=keep_maps, edits=edits, request=request)
