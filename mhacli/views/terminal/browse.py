"""`mha browse`'s panes as lines of rich Text, drawn with the terminal views' primitives.

The layer x head grid (terminal.grid, kind letters and styles of terminal.common), half-block maps with key 0 pinned
(terminal.heatmap), explain's steps (terminal.explain). Nothing here imports Textual: the app (mhacli.browse.app) places
these lines, and reads the numbers from the Python API (mhacli.browse.state).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.text import Text

from mhacli.io.tokenizer import quoted
from mhacli.views.terminal.common import KIND_STYLE, fmt_stat, kind_evidence, kinds_legend, weight_colour
from mhacli.views.terminal.explain import explain_lines
from mhacli.views.terminal.grid import FULL_CELL, Cell, full_width, grid_lines, scale_legend
from mhacli.views.terminal.heatmap import MapWindow, fit, map_lines, map_window, row_labels, ruler
from mhacli.views.terminal.text import cell_label

KINDS = tuple(KIND_STYLE)  # the kinds, in the order of their rules
# Every key, in the order `?` lists them (the README's table is checked against this list).
KEYS: tuple[tuple[str, str], ...] = (
    ("↑ ↓ ← →", "grid: move the selected head (or click one)"),
    ("Tab Shift+Tab", "next / previous pane: grid, tokens, map"),
    ("← → Home End", "tokens: move the query token (top keys below)"),
    ("↑ ↓ ← → PgUp PgDn", "map: scroll rows and keys (key 0 stays pinned)"),
    ("[ ]", "previous / next query token, in any pane"),
    ("/", "filter heads: a kind (induction, prev) or induction>0.5"),
    ("d", "diff: A, B, |A−B| and a divergence grid (--diff B)"),
    ("e", "explain the selected head for the query, step by step"),
    ("s", "the selected head's statistics"),
    ("a", "ablate the selected head: later heads' maps change"),
    ("t", "edit the text and run it again (model stays loaded)"),
    ("Esc", "cancel running work (a d t), close a box, or back to kinds"),
    ("?", "this help"),
    ("q Ctrl+C", "quit"),
)


def grid_view(
    cells, n_layer: int, n_head: int, selected: tuple[int, int], width: int, color: bool, says: str
) -> list[Text]:
    """The layer x head grid (mhacli.views.terminal.grid), the selected head marked, then the legends.

    Full cells when they fit `width`, else one character per head; the selected head between brackets (full) or
    underlined (compact). `cells(layer, head)` gives a grid.Cell, or None for a head the filter hides.
    """
    layout = "full" if full_width(n_head, n_layer) + 1 <= width else "compact"
    sel_layer, sel_head = selected

    def cell(layer: int, head: int) -> Cell | None:
        c = cells(layer, head)
        if c is not None and (layer, head) == selected and layout == "compact":
            return Cell(c.letter, c.style + " underline reverse", c.value, c.shown)
        return c

    lines, used = grid_lines(cell, range(n_layer), range(n_head), width=width, color=color, layout=layout)
    if layout == "full":
        row = 1 + sel_layer
        x = full_width(0, n_layer) + sel_head * (FULL_CELL + 2)
        lines[row] = _bracket(lines[row], x, FULL_CELL)
    lines.append(Text(""))
    legend = scale_legend(color, says, used)
    legend.truncate(width * 2, overflow="ellipsis")
    lines += _wrap(legend, width)
    lines += kinds_legend(width)
    return lines


def _bracket(line: Text, x: int, w: int) -> Text:
    """`[I 0.71]`: the cell at columns x..x+w-1 between brackets, in the gaps beside it."""
    line = line.copy()
    if line.cell_len < x + w + 1:
        line.pad_right(x + w + 1 - line.cell_len)
    return Text.assemble(line[: x - 1], ("[", "bold"), line[x : x + w], ("]", "bold"), line[x + w + 1 :])


def _wrap(text: Text, width: int) -> list[Text]:
    from rich.console import Console

    return list(text.wrap(Console(width=width), width))


def kind_cells(stats: dict, shown: set[tuple[int, int]]):
    """Cells of the kinds view: the kind letter and the kind score, as `mha stats` draws them."""

    def cell(layer: int, head: int) -> Cell | None:
        s = stats.get((layer, head))
        if s is None or (layer, head) not in shown:
            return None
        letter, style = KIND_STYLE[s.kind]
        return Cell(letter, style, s.score)

    return cell


def divergence_cells(report, shown: set[tuple[int, int]]):
    """Cells of a divergence grid (diff, ablate).

    MODEL_B's kind letter, the divergence coloured by its share of the largest (as `mha diff` draws its grid).
    """
    top = report.max_divergence
    rows = {(r.layer_a, r.head_a): r for r in report.heads}

    def cell(layer: int, head: int) -> Cell | None:
        r = rows.get((layer, head))
        if r is None or (layer, head) not in shown:
            return None
        letter, style = KIND_STYLE[r.kind_b]
        return Cell(letter, style, r.divergence / top if top > 0 else 0.0, f"{r.divergence:.2f}")

    return cell


def map_panel(
    attention: np.ndarray,
    title: Text,
    tokens: Sequence[str],
    query: int,
    start: int,
    keys: tuple[int, int] | None,
    width: int,
    height: int,
    color: bool,
    *,
    labels: bool = True,
) -> tuple[list[Text], MapWindow]:
    """One head's map in `width` x `height` cells.

    Title, key ruler, then the rows from `start` (two a line with colour), key 0 pinned when the key window starts
    later, the query's row marked `▶` and highlighted. Rows are labelled with their index and (labels=True) their
    tokens.
    """
    n_seq = len(tokens)
    token_w = min(12, max(4, width // 5)) if labels else 0
    idx_w = len(str(n_seq - 1))
    label_w = idx_w + token_w + (2 if labels else 1)
    cell = 2 if (n_seq + 1) * 2 <= width - label_w else 1
    n_keys = max(2, (width - label_w) // cell - 1)
    n_rows = max(1, (height - 2) * (2 if color else 1))
    win = map_window(n_seq, start, n_rows, n_keys, keys)
    row_names = row_labels(win, tokens if labels else None, color, token_w)
    body = map_lines(attention, win, cell=cell, color=color)
    lines = [fit(title, width), fit(Text(" " * label_w + ruler(win.keys, win.pinned, cell), style="dim"), width)]
    step = 2 if color else 1
    for k, (label, row) in enumerate(zip(row_names, body)):
        first = win.lo + k * step
        here = first <= query < first + step
        line = Text()
        line.append(label[:-1] + ("▶" if here else " "), style="bold reverse" if here else "dim")
        line.append_text(row)
        lines.append(fit(line, width))
    return lines, win


def fit_line(text: Text, width: int) -> Text:
    """A line of exactly `width` cells (terminal.heatmap.fit)."""
    return fit(text, width)


def joined(lines: list[Text]) -> Text:
    """Lines as one Text for a widget, never wrapped (every line fits already)."""
    text = Text("\n").join(lines)
    text.no_wrap = True
    text.overflow = "crop"
    return text


def pane_header(label: str, extra: str, focused: bool, width: int) -> Text:
    """A pane's first line: its name (reversed while it has the focus), then what it shows."""
    return fit(Text.assemble((f" {label} ", "bold reverse" if focused else "bold"), (f" {extra}", "dim")), width)


def top_line(source: str, n_seq: int, mode: str, width: int, *, source_b: str | None = None, removed=()) -> Text:
    """The app's first line: the model(s), the text's length, heads removed by --ablate, the mode."""
    b = f"  vs {source_b}" if source_b is not None else ""
    gone = f"  without {', '.join(f'L{lay}H{h}' for lay, h in removed)}" if removed else ""
    line = Text.assemble(
        ("mha browse ", "bold"),
        source + b,
        f"  {n_seq} tokens{gone}",
        ("  mode ", "dim"),
        (mode, "bold"),
        ("   ? help  q quit", "dim"),
    )
    return fit(line, width)


def message_line(message: str, width: int, error: bool = False) -> Text:
    return fit(Text(message, style="bold red" if error else ""), width)


def map_window_note(win: MapWindow) -> Text:
    """Which rows and keys the map shows, when it does not show them all."""
    if not win.clipped:
        return Text("")
    keys = f"key 0, {win.keys[1]}–{win.keys[-1]}" if win.pinned else f"keys {win.keys[0]}–{win.keys[-1]}"
    return Text(f"rows {win.lo}–{win.hi - 1}, {keys} of {win.n_seq}", style="dim")


def side_panels(panels: Sequence[list[Text]], width: int) -> list[Text]:
    """Panels side by side, each already `width // len(panels)` wide or less, joined row for row."""
    out = []
    for r in range(max(len(p) for p in panels)):
        line = Text()
        for k, p in enumerate(panels):
            w = max(x.cell_len for x in p)
            if k:
                line.append(" ")
            line.append_text(fit(p[r], w) if r < len(p) else Text(" " * w))
        out.append(fit(line, width))
    return out


def head_title(s, suffix: str = "") -> Text:
    """`L1H2 induction 0.71 (9 rows)`: a head's name, kind and the score behind it, as inspect titles its panels."""
    title = Text.assemble(
        (f"L{s.layer}H{s.head} ", "bold"), (s.kind + kind_evidence(s, short=True), KIND_STYLE[s.kind][1])
    )
    if suffix:
        title.append(suffix, style="dim")
    return title


def token_strip(tokens: Sequence[str], query: int, width: int, n_lines: int) -> list[Text]:
    """The text as tokens (`·` for spaces, `↵` for newlines), the query token highlighted, later tokens dim.

    At most n_lines lines of `width` cells, around the query.
    """
    labels = [cell_label(t, 16).rstrip() or "·" for t in tokens]
    lines: list[tuple[int, Text]] = []  # (first token, line)
    line, first = Text(), 0
    for j, label in enumerate(labels):
        item = f"{label}"
        if line.cell_len and line.cell_len + 1 + len(item) > width:
            lines.append((first, line))
            line, first = Text(), j
        if line.cell_len:
            line.append("│", style="dim")
        line.append(item, style="bold reverse" if j == query else ("dim" if j > query else ""))
    lines.append((first, line))
    at = max(k for k, (f, _) in enumerate(lines) if f <= query)
    lo = max(0, min(at - n_lines // 2, len(lines) - n_lines))
    return [fit(t, width) for _, t in lines[lo : lo + n_lines]]


def top_keys_line(tokens: Sequence[str], query: int, top: list[tuple[int, float]], color: bool, width: int) -> Text:
    """`query 17 ' mat' → 11:' the' 0.82  0:'The' 0.10 ...`: where the query token looks in the selected head."""
    line = Text.assemble(
        ("query ", "dim"), (f"{query} {quoted(cell_label(tokens[query], 12).rstrip())}", "bold"), " → "
    )
    for rank, (j, w) in enumerate(top):
        if rank:
            line.append("  ")
        if color:
            line.append("█", style=weight_colour(w))
        line.append(f"{j}:{quoted(cell_label(tokens[j], 12).rstrip())}", style="bold" if w >= 0.5 else "")
        line.append(f" {w:.2f}")
    return fit(line, width)


def stats_lines(s, n_seq: int) -> list[Text]:
    """The selected head's statistics (`mha stats -f json`'s numbers), each with its 0-1 value where it has one."""
    lines = [
        head_title(s),
        Text(f"{n_seq} tokens; kind from the first rule that holds (README: head kinds)", style="dim"),
        Text(""),
    ]
    lines.append(Text(f"{'statistic':<17}{'value':>9}{'0–1':>8}  rows", style="bold"))
    for name, value in s.values.items():
        unit = s.unit_value(name)
        rows = s.support.get(name)
        shown = fmt_stat(value) if name not in ("entropy", "mean_distance") or value is None else f"{value:.3f}"
        line = Text(f"{name:<17}{shown:>9}")
        line.append(f"{fmt_stat(unit):>8}", style=weight_colour(unit) if unit is not None else "dim")
        line.append(f"  {rows}" if rows is not None else "")
        lines.append(line)
    lines += [Text(""), Text.assemble("kind ", (s.kind, KIND_STYLE[s.kind][1]), kind_evidence(s))]
    return lines


def explain_view(ex, tokens: Sequence[str], width: int) -> list[Text]:
    """`mha explain`'s steps, laid out for `width` columns (terminal.explain)."""
    return [Text.assemble(*line) for line in explain_lines(ex, tokens, width)]


def help_lines() -> list[Text]:
    lines = [Text("mha browse: every key", style="bold"), Text("")]
    key_w = max(len(k) for k, _ in KEYS) + 2
    for key, what in KEYS:
        lines.append(Text.assemble((key.ljust(key_w), "bold"), what))
    lines += [Text(""), Text("Esc or ? closes this help", style="dim")]
    return lines


def pane_title(title: str) -> Text:
    return Text(title, style="bold")
