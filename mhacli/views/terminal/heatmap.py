"""Attention maps for the terminal, with rich.

Half-block cells (two query rows per line, so cells are square), small multiples side by side, key windows with key 0
pinned, column rulers that stay readable at any width.

Layout (which rows and keys a map shows) is computed here from plain numbers; colours are quantised to LEVELS steps
of the viridis ramp, so what is drawn can be read back (tests decode the half-blocks to the same levels). Under
NO_COLOR (a console without colour) maps fall back to shade characters, one query row per line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.text import Text

from mhacli.analyses.partial import PartialMap
from mhacli.views.display import token_label, window

LEVELS = 32  # colours of the weight ramp, 0 -> 1
_RAMP = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]  # viridis anchors
SHADES = " ░▒▓█"
UPPER, LOWER = "▀", "▄"
PIN = "│"  # between the pinned key 0 and the window of keys
GAP = 2  # columns between panels


def ramp(w: float) -> tuple[int, int, int]:
    w = float(min(max(w, 0.0), 1.0)) * (len(_RAMP) - 1)
    i = min(int(w), len(_RAMP) - 2)
    f = w - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(_RAMP[i], _RAMP[i + 1]))
    return r, g, b


PALETTE = [ramp(k / (LEVELS - 1)) for k in range(LEVELS)]
HEX = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in PALETTE]


def level(w: float) -> int:
    """The colour step of weight w (clipped to [0, 1])."""
    return int(round(min(max(float(w), 0.0), 1.0) * (LEVELS - 1)))


def shade(w: float) -> str:
    if w < 0.01:
        return " "
    return SHADES[min(len(SHADES) - 1, 1 + int(w * (len(SHADES) - 1)))]


@dataclass(frozen=True)
class MapWindow:
    """Query rows [lo, hi) and the key columns, in drawing order.

    `pinned`: column 0 is key 0 kept in front of a window that starts later (a separator follows it).
    """

    lo: int
    hi: int
    keys: tuple[int, ...]
    pinned: bool
    n_seq: int
    asked: tuple[int, int] | None = None  # --keys A:B as given, clamped to the text: keys A..B-1 were asked for

    @property
    def clipped(self) -> bool:
        return (self.lo, self.hi) != (0, self.n_seq) or len(self.keys) - self.pinned < self.n_seq


def map_window(
    n_seq: int, start: int | None, n_rows: int, n_keys: int, keys: tuple[int, int] | None = None
) -> MapWindow:
    """The rows from `start` (n_rows of them) and n_keys key columns.

    start None: the last n_rows, ending at the text's last token.
    `keys` = (a, b) shows keys a..b-1 (cut to n_keys; `asked` keeps (a, b) so the note can say how many were left
    out), else the keys ending at the last shown row. Key 0 stays in front (pinned) whenever the keys start later.
    """
    lo, hi = window(n_seq, start, n_rows)
    n_keys = max(2, n_keys)
    if keys is not None:
        a = min(max(0, keys[0]), n_seq - 1)
        b = min(max(a + 1, keys[1]), n_seq)
        cols = list(range(a, b))
        asked: tuple[int, int] | None = (a, b)
    else:
        asked = None
        cols = list(range(max(0, hi - n_keys), hi))
    if cols[0] > 0:
        cols = [0] + cols[-(n_keys - 1) :] if keys is None else [0] + cols[: n_keys - 1]
        return MapWindow(lo, hi, tuple(cols), True, n_seq, asked)
    return MapWindow(lo, hi, tuple(cols[:n_keys]), False, n_seq, asked)


def ruler(cols: Sequence[int], pinned: bool, cell: int) -> str:
    """Column indices above a map.

    The first column's index, then every multiple of 10 where it fits (ticks `·` at multiples of 5 and at tens that
    do not fit), `cell` characters per key.
    """
    width = (len(cols) + pinned) * cell
    line = [" "] * width
    end = -1  # last column used by a label
    for p, j in enumerate(cols):
        x = (p + (pinned and p > 0)) * cell
        label = str(j)
        if (p == 0 or j % 10 == 0) and x > end and x + len(label) <= width:
            line[x : x + len(label)] = label
            end = x + len(label)
        elif j % 5 == 0 and x > end:
            line[x] = "·"
    if pinned:
        line[cell] = PIN
    return "".join(line)


def map_lines(attention: np.ndarray | PartialMap, win: MapWindow, *, cell: int, color: bool) -> list[Text]:
    """The map's rows as Text lines (no row labels): half-blocks with colour, else one shade row per line."""
    lines = []
    step = 2 if color else 1
    for i in range(win.lo, win.hi, step):
        line = Text()
        for p, j in enumerate(win.keys):
            if p == 1 and win.pinned:
                line.append(PIN, style="dim")
            if color:
                line.append(*_half_block(attention, i, j, win.hi, cell))
            else:
                line.append((shade(float(attention[i, j])) if j <= i else " ") * cell)
        lines.append(line)
    return lines


def _half_block(attention: np.ndarray | PartialMap, i: int, j: int, hi: int, cell: int) -> tuple[str, str]:
    top = j <= i
    bottom = i + 1 < hi and j <= i + 1
    if top and bottom:
        return UPPER * cell, f"{HEX[level(attention[i, j])]} on {HEX[level(attention[i + 1, j])]}"
    if top:
        return UPPER * cell, HEX[level(attention[i, j])]
    if bottom:
        return LOWER * cell, HEX[level(attention[i + 1, j])]
    return " " * cell, ""


def row_labels(win: MapWindow, tokens: Sequence[str] | None, color: bool, token_w: int) -> list[str]:
    """The label of each drawn line.

    The query index (the pair's first row for half-blocks) and, when asked, the token(s).
    """
    idx_w = len(str(win.n_seq - 1))
    labels = []
    step = 2 if color else 1
    for i in range(win.lo, win.hi, step):
        label = f"{i:>{idx_w}}"
        if tokens is not None:
            pair = token_label(tokens[i], token_w)
            if color and i + 1 < win.hi:
                pair = (
                    token_label(tokens[i], token_w // 2) + "/" + token_label(tokens[i + 1], token_w - token_w // 2 - 1)
                )
            label += f" {pair:<{token_w}}"
        labels.append(label + " ")
    return labels


def fit(text: Text, width: int) -> Text:
    """Exactly `width` cells: cut with an ellipsis, or padded."""
    text = text.copy()
    text.truncate(width, overflow="ellipsis", pad=True)
    return text


def fit_words(text: Text, width: int) -> Text:
    """Exactly `width` cells, cut between words (never inside one: `L1H2 induction`, not `L1H2 inducti…`), padded."""
    if text.cell_len > width:
        cut = text.plain.rfind(" ", 0, width + 1)
        text = text[: cut if cut > 0 else width]
        text.rstrip()
    return fit(text, width)


def panel(
    attention: np.ndarray | PartialMap,
    title: Text,
    win: MapWindow,
    *,
    cell: int,
    color: bool,
    tokens: Sequence[str] | None = None,
    token_w: int = 0,
    min_width: int = 0,
) -> list[Text]:
    """A titled map as lines of equal width: title, ruler, rows with their labels."""
    labels = row_labels(win, tokens, color, token_w)
    label_w = len(labels[0]) if labels else len(str(win.n_seq - 1)) + 1
    body = map_lines(attention, win, cell=cell, color=color)
    width = max(label_w + (len(win.keys) + win.pinned) * cell, min_width, 1 + len(title.plain.split(" ", 1)[0]))
    lines = [fit_words(title, width), fit(Text(" " * label_w + ruler(win.keys, win.pinned, cell), style="dim"), width)]
    for label, row in zip(labels, body):
        line = Text()
        line.append(label, style="dim")
        line.append_text(row)
        lines.append(fit(line, width))
    return lines


def side_by_side(panels: Sequence[list[Text]]) -> list[Text]:
    """Panels joined row for row (the shorter ones padded with blank lines), GAP columns apart."""
    height = max(len(p) for p in panels)
    widths = [p[0].cell_len for p in panels]
    out = []
    for r in range(height):
        line = Text()
        for k, (p, w) in enumerate(zip(panels, widths)):
            if k:
                line.append(" " * GAP)
            line.append_text(p[r] if r < len(p) else Text(" " * w))
        out.append(line)
    return out


def legend(color: bool) -> Text:
    text = Text("weight ")
    if color:
        for k in range(0, LEVELS, max(1, LEVELS // 16)):
            text.append(" ", style=f"on {HEX[k]}")
        text.append(" 0→1; each character is two query rows (upper ▀ and lower half); rows: queries, columns: keys")
    else:
        text.append(" ░▒▓█ 0→1; rows: queries, columns: keys")
    return text


def uses_color(console: Console) -> bool:
    return console.color_system is not None and not console.no_color
