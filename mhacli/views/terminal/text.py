"""Lines of (text, style) segments that fit a width, for views drawn both with rich and as plain text (explain).

Prose wrapped at spaces, equations with their vectors, compact and full vectors, token labels by terminal cells.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from rich.cells import cell_len

from mhacli.views.display import token_label

Segment = tuple[str, str]  # (text, rich style; the style is dropped in plain text)
MIN_VEC = 24  # the narrowest room for a compact vector beside its label; below this it gets a line of its own
NBSP = "\u00a0"  # a space `wrapped` does not break at
VEC_CELL = 8  # columns per component in a compact vector: -0.01234, 1.235e+04 and most others fit


def cell_label(token: str, width: int) -> str:
    """token_label cut to `width` terminal cells (wide characters take two), padded to exactly `width`."""
    label = token_label(token, width)
    while cell_len(label) > width:
        label = label[:-2] + "…"
    return label + " " * (width - cell_len(label))


def num(x: float | np.floating) -> str:
    return f"{float(x):.4g}"


def vec_norm(v: np.ndarray) -> str:
    return f"‖{num(np.linalg.norm(v.astype(np.float64)))}‖"


def vec_compact(v: np.ndarray, budget: int) -> str:
    """`[a b … y z]  ‖N‖`: as many of the first and last components as fit in `budget` columns, and the L2 norm.

    Components are right-aligned in cells of VEC_CELL columns while two or more fit that way, so rows of vectors
    line up; narrower budgets drop the padding, then components.
    """
    norm = "  " + vec_norm(v)
    raw = [num(x) for x in v]
    n = len(raw)
    counts = ([n] if n <= 8 else []) + list(range(min(8, n - 1), 0, -1))
    tries = [(k, True) for k in counts if k >= 2] + [(k, False) for k in counts if k >= 2] + [(1, True), (1, False)]
    for k, pad in tries:
        cells = [c.rjust(VEC_CELL) for c in raw] if pad else raw
        shown = cells if k == n else [*cells[: (k + 1) // 2], "…", *cells[n - k // 2 :]]
        text = "[" + " ".join(shown) + "]" + norm
        if len(text) <= budget:
            return text
    return "[…]" + norm if len(norm) + 3 <= budget else norm.strip()


def vec_rows(v: np.ndarray, width: int) -> list[str]:
    """Every component, right-aligned in columns; each row starts with the index of its first component."""
    cells = [num(x) for x in v]
    cell_w = max(len(c) for c in cells)
    idx_w = len(str(len(cells) - 1))
    per_row = max(1, (width - idx_w - 3) // (cell_w + 1))
    return [
        f"[{start:>{idx_w}}] " + " ".join(c.rjust(cell_w) for c in cells[start : start + per_row])
        for start in range(0, len(cells), per_row)
    ]


def glue(text: str) -> str:
    """Join the words of `text` with no-break spaces: `wrapped` keeps them on one line when it can."""
    return text.replace(" ", NBSP)


def wrapped(text: str, width: int, indent: int = 2, style: str = "", hang: int = 2) -> list[list[Segment]]:
    """Prose wrapped at spaces (not at glued ones) to `width` terminal cells.

    Continuation lines indented `hang` more; a word wider than a line is cut.
    """
    lines: list[str] = []
    line, gap = " " * indent, ""
    fresh = True  # nothing on `line` yet but its indent
    for piece in re.findall(r"[^ ]+| +", text):
        if piece[0] == " ":
            gap = "" if fresh else piece
            continue
        if not fresh and cell_len(line + gap + piece) > width:
            lines.append(line)
            line, fresh = " " * (indent + hang), True
        if not fresh:
            line += gap
        while cell_len(line + piece) > width:  # a word that fits no line: cut it by cells
            cut = len(piece)
            while cut > 1 and cell_len(line + piece[:cut]) > width:
                cut -= 1
            lines.append(line + piece[:cut])
            line, piece = " " * (indent + hang), piece[cut:]
        line, gap, fresh = line + piece, "", False
    lines.append(line)
    return [[(line.replace(NBSP, " "), style)] for line in lines]


def equation(
    lhs: str, formula: str, v: np.ndarray, width: int, full: bool, *, indent: int = 2, style: str = ""
) -> list[list[Segment]]:
    """`lhs = formula = [vector]` on one line when it fits; else the vector goes on the next line, under the `=`."""
    text = lhs + (f" = {formula}" if formula else "")
    if indent + len(text) <= width:
        head = [[(" " * indent + lhs, style or "bold"), (text[len(lhs) :], style)]]
    else:
        head = wrapped(f"{glue(lhs)} = {glue(formula)}", width, indent, style)
    if full:
        what = f"= ({len(v)} components, {vec_norm(v)}):"
        if len(head) == 1 and indent + len(text) + 1 + len(what) <= width:
            head = [head[0] + [(" " + what, "dim")]]
        else:
            head.append([(" " * (indent + 2) + what, "dim")])
        return head + [[(" " * (indent + 4) + row, style)] for row in vec_rows(v, width - indent - 4)]
    room = width - indent - len(text) - 3
    if len(head) == 1 and room >= MIN_VEC:
        return [head[0] + [(" = ", ""), (vec_compact(v, room), style)]]
    under = indent + len(lhs) + 1
    if width - under - 2 < MIN_VEC + 8:
        under = indent + 2
    return [*head, [(" " * under + "= ", ""), (vec_compact(v, width - under - 2), style)]]


def labelled_vectors(
    prefix: str, vectors: Sequence[tuple[str, np.ndarray]], width: int, style: str = ""
) -> list[list[Segment]]:
    """A row label followed by named compact vectors: all on one line if they fit, else one line each."""
    tags = sum(len(name) + 3 for name, _ in vectors)
    each = (width - cell_len(prefix) - tags) // len(vectors)
    if each >= (MIN_VEC if len(vectors) == 1 else 2 * MIN_VEC - 8):
        line: list[Segment] = [(prefix, style)]
        for n, (name, v) in enumerate(vectors):
            line += [
                ((" " if n else "") + name + " ", "dim"),
                (vec_compact(v, each).ljust(each if n < len(vectors) - 1 else 0), style),
            ]
        return [line]
    indent = cell_len(prefix) if width - cell_len(prefix) - 2 >= MIN_VEC + 8 else 6
    lines: list[list[Segment]] = [] if indent == cell_len(prefix) else [[(prefix.rstrip(), style)]]
    for n, (name, v) in enumerate(vectors):
        lead = prefix if n == 0 and indent == cell_len(prefix) else " " * indent
        tag = name.ljust(max(len(m) for m, _ in vectors)) + " "
        lines.append([(lead, style), (tag, "dim"), (vec_compact(v, width - indent - len(tag)), style)])
    return lines
