"""`mha circuits` on a terminal: the baselines, the strongest compositions, a grid of copying scores, token pairs."""

from __future__ import annotations

from rich.console import Console, Group, JustifyMethod, NewLine, RenderableType
from rich.table import Table
from rich.text import Text

from mhacli.views.terminal.common import one_line
from mhacli.views.terminal.grid import Cell, grid_lines, scale_legend
from mhacli.views.terminal.heatmap import uses_color

COPYING_CELL = 7  # "C +0.86"


def copying_cell(h: dict | None) -> Cell | None:
    """A head's copying score, -1..1, drawn on the 0-1 ramp as (score + 1) / 2; the letter: C where it copies."""
    if h is None:
        return None
    v = h["copying"]
    if v is None:
        return Cell(" ", "dim", None, "–")
    return Cell("C" if v > 0 else "·", "bold magenta" if v > 0 else "dim", (v + 1) / 2, f"{v:+.2f}")


def circuits_view(console: Console, doc: dict) -> Group:
    """The header lines, each mode's strongest compositions, the copying grid and each head's token pairs."""
    from mhacli.views.plain import circuits_header, head_pairs_lines, ranked_compositions

    parts: list[RenderableType] = [
        Text(line, style="bold" if k == 0 else "dim") for k, line in enumerate(circuits_header(doc))
    ]
    parts += [NewLine(), one_line(Text("strongest compositions (earlier head → later head)", style="bold"))]
    table = Table()
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("mode", "left"), ("from", "left"), ("to", "left"), ("score", "right"), ("vs baseline", "right"),
    )  # fmt: skip
    for name, justify in columns:
        table.add_column(name, justify=justify)
    last = None
    for row in ranked_compositions(doc):
        table.add_row(row[0] if row[0] != last else "", *row[1:])
        last = row[0]
    parts.append(table)
    heads = doc["heads"]
    if not heads:
        return Group(*parts)
    parts.append(NewLine())
    by_pos = {(h["layer"], h["head"]): h for h in heads}
    layers = sorted({h["layer"] for h in heads})
    cols = sorted({h["head"] for h in heads})
    color = uses_color(console)
    lines, used = grid_lines(
        lambda layer, head: copying_cell(by_pos.get((layer, head))),
        layers,
        cols,
        width=console.width,
        color=color,
        cell_w=COPYING_CELL,
    )
    parts.append(
        one_line(Text("copying score of every head (C: positive, it copies what it attends to)", style="bold"))
    )
    parts += map(one_line, lines)
    says = "Re(Σλ)/Σ|λ| over the eigenvalues of W_E·W_OV·W_U, -1..+1, drawn as (score + 1) / 2"
    parts.append(scale_legend(color, says, used))
    if any(h["ov_top"] or h["qk_top"] for h in heads):
        parts += [NewLine(), one_line(Text("token pairs of the leading singular directions", style="bold"))]
        for h in heads:
            parts.append(one_line(Text(f"L{h['layer']}H{h['head']}", style="bold")))
            parts += [one_line(Text(pairs)) for pairs in head_pairs_lines(h)]
    return Group(*parts)
