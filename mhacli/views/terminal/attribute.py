"""`mha attribute` on a terminal: the header, the completeness check, the grid and the ranking.

A layer x head grid on a diverging scale centred at 0 (each layer's MLP beside its heads), then the ranking with
each head's kind and the tokens it promotes and suppresses."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, Group, JustifyMethod, NewLine, RenderableType
from rich.table import Table
from rich.text import Text

from mhacli.views.display import token_label
from mhacli.views.readout import (
    attribute_header,
    check_line,
    component_name,
    kind_letter,
    number,
    others_text,
    ranked,
)
from mhacli.views.terminal.common import KIND_STYLE, kinds_legend, one_line
from mhacli.views.terminal.heatmap import uses_color

NEGATIVE, ZERO, POSITIVE = (33, 102, 172), (247, 247, 247), (178, 24, 43)  # RdBu's ends and middle
CELL = 6  # "I+1.23": the kind letter and the number
GAP = 1
STEPS = 11  # colour steps each side of 0 in the legend


def diverging(v: float, top: float) -> str:
    """The colour of v on a scale from -top (blue) through 0 (near white) to +top (red)."""
    x = min(abs(v) / top, 1.0) if top > 0 else 0.0
    end = POSITIVE if v > 0 else NEGATIVE
    return "#{:02x}{:02x}{:02x}".format(*(round(z + (e - z) * x) for z, e in zip(ZERO, end, strict=True)))


def _ink(v: float, top: float) -> str:
    return "white" if top > 0 and abs(v) / top > 0.55 else "black"


def _cell(r: dict | None, top: float, color: bool, width: int) -> Text:
    if r is None:
        return Text(" " * width)
    letter = kind_letter(r.get("kind")) if r["component"] == "head" else "M"
    v = r["attribution"]
    body = (letter + number(v).rjust(width - 1)) if width > 1 else letter
    style = KIND_STYLE.get(r.get("kind") or "", ("", ""))[1] if not color else ""
    if color:
        return Text(body, style=f"{_ink(v, top)} on {diverging(v, top)}")
    if width == 1:  # no colour, one character: the sign of a large contribution
        share = abs(v) / top if top > 0 else 0.0
        return Text("+" if v > 0 and share > 0.1 else "-" if v < 0 and share > 0.1 else "·", style=style)
    return Text(body, style=style)


def grid(console: Console, doc: dict) -> list[Text]:
    """Layer x head cells (and each layer's MLP, `M`), full width where it fits, else one character per cell."""
    n_layer, n_head = doc["model"]["n_layer"], doc["model"]["n_head"]
    by_pos = {(r["layer"], r.get("head", "mlp")): r for r in doc["components"] if r["component"] in ("head", "mlp")}
    cols: Sequence[int | str] = [*range(n_head), "mlp"]
    top = max((abs(r["attribution"]) for r in by_pos.values()), default=0.0)
    color = uses_color(console)
    label_w = max(5, len(str(n_layer - 1))) + 1
    full = label_w + len(cols) * (CELL + GAP) <= console.width
    width = CELL if full else 1
    gap = " " * (GAP if full else 0)
    header = Text("layer".ljust(label_w), style="bold")
    for c in cols:
        name = f"H{c}" if c != "mlp" else "MLP"
        header.append((name.center(width) if full else (str(c)[-1] if c != "mlp" else "M")) + gap, style="bold")
    lines = [header]
    for layer in range(n_layer):
        line = Text()
        line.append(str(layer).rjust(label_w - 1) + " ", style="bold")
        for c in cols:
            line.append_text(_cell(by_pos.get((layer, c)), top, color, width))
            line.append(gap)
        lines.append(line)
    legend = Text()
    if color:
        for k in range(-STEPS, STEPS + 1):
            legend.append(" ", style=f"on {diverging(k / STEPS, 1.0)}")
        legend.append(f" −{top:.3g} … 0 … +{top:.3g}  ")
    legend.append("each head's direct share of the metric (its write through the frozen final norm); M: the MLP")
    return [*lines, legend]


def shown_tokens(effects: list[dict]) -> str:
    """A head's tokens made visible (spaces as ·), compact: `·Mary Mary MAS`."""
    return " ".join(token_label(e["token"], 10) for e in effects[:3])


def ranking(doc: dict, top: int, width: int = 80) -> Table:
    table = Table()
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("#", "right"), ("component", "left"), ("kind", "left"), ("share", "right"), ("promotes", "left"),
        ("suppresses", "left"),
    )  # fmt: skip
    has_tokens = any("promotes" in r for r in doc["components"])
    for k, (name, justify) in enumerate(columns if has_tokens else columns[:4]):
        least = (2, 9, 4, 7)[k] if k < 4 else None  # the rank, name and share are never cut; the tokens are
        most = max(8, (width - 52) // 2) if k >= 4 else None
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis", min_width=least, max_width=most)
    best = max((abs(r["attribution"]) for r in doc["components"]), default=0.0)
    for rank, r in enumerate(ranked(doc, top), start=1):
        kind = r.get("kind") or ""
        v = r["attribution"]
        cells: list[str | Text] = [
            str(rank),
            component_name(r),
            Text(kind, style=KIND_STYLE.get(kind, ("", ""))[1]),
            Text(f"{v:+.4f}", style="bold red" if v > 0.25 * best else "bold blue" if v < -0.25 * best else ""),
        ]
        if has_tokens:
            cells += [shown_tokens(r.get("promotes", [])), shown_tokens(r.get("suppresses", []))]
        table.add_row(*cells)
    return table


def attribute_view(console: Console, doc: dict, top: int) -> Group:
    """The header, the check line, the grid, the other components, and the `top` components by |share|."""
    check = check_line(doc)
    shown: list[RenderableType] = [one_line(Text(f"{k}: ", style="bold") + Text(v)) for k, v in attribute_header(doc)]
    shown.append(Text(check, style="bold green" if "✓" in check else "bold red"))
    shown += [NewLine(), one_line(Text(f"direct contributions to {doc['metric']}", style="bold"))]
    shown += [one_line(line, "crop") for line in grid(console, doc)]
    shown += [*map(one_line, kinds_legend(console.width)), Text(others_text(doc)), NewLine()]
    shown.append(one_line(Text(f"top {min(top, len(doc['components']))} components by |share|", style="bold")))
    shown.append(ranking(doc, top, console.width))
    return Group(*shown)
