"""`mha stats` on a terminal: the layer x head grid of kinds and one statistic, then each kind's strongest heads."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, Group, NewLine, RenderableType
from rich.text import Text

from mhacli.analyses.heads import HeadView
from mhacli.analyses.stats import KINDS, TOO_PLAIN, HeadStats, undecidable
from mhacli.views.terminal.common import KIND_STYLE, grid_view, kind_evidence, one_line, packed
from mhacli.views.terminal.grid import Cell

GRID_SAYS = {
    "auto": "each head's kind score, 0–1: the fraction of attention on its pattern (broad: entropy ÷ its maximum; "
            "mixed: max_weight)",
    "entropy": "entropy ÷ its maximum (uniform attention over the visible keys), 0–1",
    "mean_distance": "mean_distance ÷ its maximum (every query on key 0), 0–1",
}  # fmt: skip


def grid_value(s: HeadStats, stat: str) -> float | None:
    """The number a head shows in the stats grid: its kind score, or statistic `stat`, on a 0-1 scale."""
    return s.score if stat == "auto" else s.unit_value(stat)


def _strength(s: HeadStats) -> float:
    """The sort key of a scored head, strongest first."""
    if s.score is None:
        raise ValueError(f"head L{s.layer}H{s.head} has no score to rank by")
    return -s.score


def stats_view(
    console: Console,
    views: Sequence[HeadView],
    n_layer: int,
    n_head: int,
    stat: str,
    n_tokens: int,
    *,
    layout: str = "auto",
) -> Group:
    """The one-screen overview.

    A layer x head grid (kind letter and one statistic on a 0-1 scale), then the most distinctive heads of each
    kind.
    """
    by_pos = {(v.layer, v.head): v.stats for v in views}
    layers = sorted({v.layer for v in views}) or list(range(n_layer))
    heads = sorted({v.head for v in views}) or list(range(n_head))

    def cell(layer: int, h: int) -> Cell | None:
        s = by_pos.get((layer, h))
        if s is None:
            return None
        letter, style = KIND_STYLE[s.kind]
        return Cell(letter, style, grid_value(s, stat))

    width = console.width
    what = "kind scores" if stat == "auto" else stat
    says = GRID_SAYS.get(stat, f"{stat}, a fraction of attention, 0–1")
    lines: list[RenderableType] = [
        *grid_view(console, f"kinds and {what} ({n_tokens} tokens)", cell, layers, heads, says, layout=layout),
        NewLine(),
        one_line(Text("strongest heads of each kind", style="bold")),
    ]
    label_w = max(len(k) for k in KINDS) + 2
    shown = 0
    for kind in KINDS[:-1]:
        scored = sorted((s for s in by_pos.values() if s.kind == kind and s.score is not None), key=_strength)
        if not scored:
            continue
        shown += 1
        entries = [Text(f"L{s.layer}H{s.head}{kind_evidence(s)}") for s in scored[:5]]
        first = Text(kind.ljust(label_w), style=KIND_STYLE[kind][1])
        if label_w + 12 > width:
            first = Text(kind + " ", style=KIND_STYLE[kind][1])
        lines += map(one_line, packed(entries, width, first=first))
    if not shown:
        lines.append(Text("no head reaches a kind threshold on this text (all mixed)", style="dim"))
    if views and undecidable(views[0].stats.support):
        lines.append(Text(TOO_PLAIN, style="dim"))
    return Group(*lines)
