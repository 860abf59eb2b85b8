"""`mha census` on a terminal: what ran, the grid of kinds and confidences, the strongest heads of each kind."""

from __future__ import annotations

from rich.console import Console, Group, JustifyMethod, NewLine
from rich.table import Table
from rich.text import Text

from mhacli.analyses.stats import KINDS
from mhacli.views.terminal.common import KIND_STYLE, grid_view, one_line
from mhacli.views.terminal.grid import Cell


def census_view(console: Console, doc: dict, top: int) -> Group:
    """The census: what ran, a layer x head grid of kinds with their confidence, the strongest heads of each kind."""
    from mhacli.views.plain import census_sources, evidence_text

    n_layer, n_head = doc["model"]["n_layer"], doc["model"]["n_head"]
    by_pos = {(h["layer"], h["head"]): h for h in doc["heads"]}

    def cell(layer: int, h: int) -> Cell | None:
        head = by_pos.get((layer, h))
        if head is None:
            return None
        letter, style = KIND_STYLE[head["kind"]]
        return Cell(letter, style, head["confidence"])

    says = "confidence, 0–1: the share of the evidence's texts on which the head's kind rule holds"
    grid = grid_view(console, "kind of every head and its confidence", cell, range(n_layer), range(n_head), says)
    table = Table()
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("kind", "left"), ("head", "left"), ("confidence", "right"), ("evidence", "left"),
    )  # fmt: skip
    for name, justify in columns:
        table.add_column(name, justify=justify)
    for kind in KINDS:
        heads = [h for h in doc["heads"] if h["kind"] == kind]
        heads.sort(key=lambda h: (-(h["evidence"]["mean"] or 0.0), h["layer"], h["head"]))
        for k, h in enumerate(heads[:top]):
            table.add_row(
                Text(kind, style=KIND_STYLE[kind][1]) if k == 0 else "",
                f"L{h['layer']}H{h['head']}",
                f"{h['confidence']:.2f}",
                evidence_text(h),
            )
        if len(heads) > top:
            table.add_row("", Text(f"… {len(heads) - top} more", style="dim"), "", "")
    return Group(
        *(Text(line, style="dim") for line in census_sources(doc)),
        *grid,
        NewLine(),
        one_line(Text("strongest heads of each kind", style="bold")),
        table,
    )
