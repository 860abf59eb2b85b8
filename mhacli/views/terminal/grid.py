"""The layer x head overview for the terminal, with rich: one value per head on a 0-1 scale, its kind as a letter.

Two layouts, both a list of Text lines no wider than the terminal (never wrapped):
- full: `I 0.71` per head, the number on a background coloured by its value (viridis, as the maps);
- compact: one character per head, the kind letter on its value's colour; without colour the letters and the
  values in tenths (`0`-`9`, `X` for 1.0) are two grids side by side.
`auto` picks full when it fits the width, else compact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.text import Text

from mhacli.views.terminal.heatmap import GAP, HEX, level, ruler

FULL_CELL = 6  # "I 0.71"
CELL_GAP = 2
LABEL = "layer"


@dataclass(frozen=True)
class Cell:
    letter: str  # the head's kind, one character
    style: str  # the letter's style
    value: float | None  # 0-1, the colour (and, unless `shown` is given, the number); None where undefined
    shown: str | None = None  # the number as printed, when it is not `value` (a Δloss coloured by its share)


def full_width(n_head: int, n_layer: int, cell_w: int = FULL_CELL) -> int:
    return _label_w(n_layer) + n_head * (cell_w + CELL_GAP)


def _label_w(n_layer: int) -> int:
    return max(len(LABEL), len(str(n_layer - 1))) + CELL_GAP


def _row_label(layer: int, label_w: int) -> Text:
    """A grid row's start: its layer index, right-aligned under `layer`, then the gap."""
    return Text(str(layer).rjust(label_w - CELL_GAP) + " " * CELL_GAP, style="bold")


def tenths(v: float | None) -> str:
    """A 0-1 value in one character: 0-9 for [0, 0.1) .. [0.9, 1), X for 1 (after rounding to 2 decimals)."""
    if v is None:
        return "-"
    v = round(min(max(v, 0.0), 1.0), 2)
    return "X" if v >= 1.0 else str(int(v * 10))


def _ink(v: float) -> str:
    return "black" if v > 0.6 else "white"


def grid_lines(
    cell: Callable[[int, int], Cell | None],
    layers: Sequence[int],
    heads: Sequence[int],
    *,
    width: int,
    color: bool,
    layout: str = "auto",
    cell_w: int = FULL_CELL,
) -> tuple[list[Text], str]:
    """The grid's lines and the layout used ('full' or 'compact').

    `cell(layer, head)` is None for a head not shown; a full cell is `cell_w` wide (the letter, then the number
    right-aligned).
    """
    n_layer = max(layers) + 1 if layers else 1
    if layout == "auto":
        layout = "full" if full_width(len(heads), n_layer, cell_w) <= width else "compact"
    label_w = _label_w(n_layer)
    lines = []
    if layout == "full":
        header = Text(LABEL.ljust(label_w), style="bold")
        for h in heads:
            header.append(f"H{h}".center(cell_w) + " " * CELL_GAP, style="bold")
        lines.append(header)
        for layer in layers:
            line = _row_label(layer, label_w)
            for h in heads:
                c = cell(layer, h)
                line.append_text(_full_cell(c, color, cell_w))
                line.append(" " * CELL_GAP)
            lines.append(line)
    else:
        head_ruler = "".join(str(h) for h in heads) if max(heads) < 10 else ruler(list(heads), False, 1)
        header = Text(LABEL.ljust(label_w), style="bold")
        header.append(head_ruler, style="dim")
        if not color:
            header.append(" " * (GAP + 1) + head_ruler, style="dim")
        lines.append(header)
        for layer in layers:
            line = _row_label(layer, label_w)
            cells = [cell(layer, h) for h in heads]
            for c in cells:
                if c is None:
                    line.append(" ")
                elif color and c.value is not None:
                    line.append(c.letter, style=f"bold {_ink(c.value)} on {HEX[level(c.value)]}")
                else:
                    line.append(c.letter, style=c.style)
            if not color:
                line.append(" " * (GAP + 1))
                line.append("".join(" " if c is None else tenths(c.value) for c in cells))
            lines.append(line)
    return [_crop(line, width) for line in lines], layout


def _full_cell(c: Cell | None, color: bool, cell_w: int) -> Text:
    if c is None:
        return Text(" " * cell_w)
    number = c.shown if c.shown is not None else "–" if c.value is None else f"{c.value:.2f}"
    number = " " + number.rjust(cell_w - 2)[: cell_w - 2]
    text = Text(c.letter, style=c.style)
    if color and c.value is not None:
        text.append(number, style=f"{_ink(c.value)} on {HEX[level(c.value)]}")
    else:
        text.append(number)
    return text


def _crop(line: Text, width: int) -> Text:
    line.rstrip()
    if line.cell_len > width:
        line.truncate(width)
    return line


def scale_legend(color: bool, what: str, layout: str) -> Text:
    """What the numbers are, and (with colour) the colour ramp they are drawn on."""
    text = Text()
    if color:
        for k in range(0, len(HEX), max(1, len(HEX) // 16)):
            text.append(" ", style=f"on {HEX[k]}")
        text.append(" 0→1  ")
    text.append(what)
    if layout == "compact" and not color:
        text.append("; right: in tenths (0-9, X = 1)")
    return text
