"""`mha ablate` and `mha prune` on a terminal: the grid of loss changes and the ranking; the pruning curves."""

from __future__ import annotations

from rich.console import Console, JustifyMethod
from rich.table import Table
from rich.text import Text

from mhacli.views.terminal.common import KIND_STYLE, one_line, print_grid, weight_colour
from mhacli.views.terminal.grid import Cell


def _delta_cell(delta: float, top: float, label: str = "") -> Text:
    """A loss change on a background coloured by its size relative to the largest increase (`top`); decreases dim."""
    if delta <= 0 or top <= 0:
        return Text(f"{label}{delta:+.3f}", style="dim")
    x = min(delta / top, 1.0)
    return Text(f"{label}{delta:+.3f}", style=f"{'black' if x > 0.6 else 'white'} on {weight_colour(x)}")


def render_ablate(console: Console, doc: dict, top: int) -> None:
    """Layer x head grid of Δloss (each head removed alone), then the `top` heads that matter most."""
    from mhacli.views.plain import ablate_header

    for key, value in ablate_header(doc):
        console.print(Text(f"{key}: ", style="bold") + Text(value))
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
    print_grid(console, "Δloss per head removed", cell, layers, head_ids, says, cell_w=8)
    console.print()
    one_line(
        console, Text(f"heads that matter most ({min(top, len(doc['heads']))} of {len(doc['heads'])})", style="bold")
    )
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
    console.print(ranking)


def render_prune(console: Console, doc: dict) -> None:
    """The two pruning curves as a chart, then the prunable fractions and the pruned heads."""
    from mhacli.views.plain import ablate_header, prune_chart, prune_summary

    for key, value in ablate_header(doc):
        console.print(Text(f"{key}: ", style="bold") + Text(value))
    width = max(30, min(80, console.width - 12))
    for line in prune_chart(doc, width=width):
        text = Text(line)
        text.highlight_regex("●", "bold magenta")
        text.highlight_regex("○", "cyan")
        text.highlight_regex("┄", "yellow")
        console.print(text)
    for line in prune_summary(doc):
        console.print(line)
