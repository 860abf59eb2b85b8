"""`mha ablate` and `mha prune` on a terminal: the grid of loss changes and the ranking; the pruning curves."""

from __future__ import annotations

from rich.console import Console, Group, JustifyMethod, NewLine, RenderableType
from rich.table import Table
from rich.text import Text

from mhacli.views.terminal.common import KIND_STYLE, grid_view, one_line, weight_colour
from mhacli.views.terminal.grid import Cell


def _delta_cell(delta: float, top: float, label: str = "") -> Text:
    """A loss change on a background coloured by its size relative to the largest increase (`top`); decreases dim."""
    if delta <= 0 or top <= 0:
        return Text(f"{label}{delta:+.3f}", style="dim")
    x = min(delta / top, 1.0)
    return Text(f"{label}{delta:+.3f}", style=f"{'black' if x > 0.6 else 'white'} on {weight_colour(x)}")


def header(doc: dict) -> list[Text]:
    """What ran (mhacli.views.plain.ablate_header), a `key: value` line each."""
    from mhacli.views.plain import ablate_header

    return [Text(f"{key}: ", style="bold") + Text(value) for key, value in ablate_header(doc)]


def ablate_view(console: Console, doc: dict, top: int) -> Group:
    """Layer x head grid of Δloss (each head removed alone), then the `top` heads that matter most."""
    heads = {(r["layer"], r["head"]): r for r in doc["heads"]}
    best = max((r["delta"] for r in doc["heads"]), default=0.0)
    layers = sorted({r["layer"] for r in doc["heads"]})
    head_ids = sorted({r["head"] for r in doc["heads"]})

    def cell(layer: int, h: int) -> Cell | None:
        r = heads.get((layer, h))
        if r is None:
            return None
        letter, style = KIND_STYLE[r["kind"]]
        share = min(max(r["delta"] / best, 0.0), 1.0) if best > 0 else 0.0
        return Cell(letter, style, share, f"{r['delta']:+.3f}")

    says = f"Δloss (nats/token) with the head removed; colour: its share of the largest, {best:+.3g}"
    shown: list[RenderableType] = [
        *header(doc),
        *grid_view(console, "Δloss per head removed", cell, layers, head_ids, says, cell_w=8),
        NewLine(),
        one_line(Text(f"heads that matter most ({min(top, len(doc['heads']))} of {len(doc['heads'])})", style="bold")),
    ]
    ranking = Table()
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("#", "right"),
        ("head", "left"),
        ("kind", "left"),
        ("loss", "right"),
        ("Δloss", "right"),
        ("Δ%", "right"),
    )
    for name, justify in columns:
        ranking.add_column(name, justify=justify)
    for rank, r in enumerate(doc["heads"][:top], start=1):
        ranking.add_row(
            str(rank),
            f"L{r['layer']}H{r['head']}",
            Text(r["kind"], style=KIND_STYLE[r["kind"]][1]),
            f"{r['loss']:.4f}",
            _delta_cell(r["delta"], best),
            f"{r['delta_pct']:+.1f}%",
        )
    return Group(*shown, ranking)


def prune_view(console: Console, doc: dict) -> Group:
    """The two pruning curves as a chart, then the prunable fractions and the pruned heads."""
    from mhacli.views.plain import prune_chart, prune_summary

    shown: list[RenderableType] = [*header(doc)]
    width = max(30, min(80, console.width - 12))
    for line in prune_chart(doc, width=width):
        text = Text(line)
        text.highlight_regex("●", "bold magenta")
        text.highlight_regex("○", "cyan")
        text.highlight_regex("┄", "yellow")
        shown.append(text)
    shown += prune_summary(doc)  # str: read as rich markup, as console.print reads them
    return Group(*shown)
