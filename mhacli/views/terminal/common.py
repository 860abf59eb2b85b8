"""What every terminal view shares.

The console, kind letters and styles, head titles, lines cropped to the terminal, packed entries and the layer x head
grid with its legends. Rich is imported here and in the views, nowhere else. A view returns a renderable (a Group of
lines and tables) and never prints; `one_line` is how a line is kept from wrapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console, OverflowMethod
from rich.text import Text

from mhacli.analyses.heads import HeadView
from mhacli.analyses.stats import KINDS, HeadStats
from mhacli.views.terminal.grid import FULL_CELL, grid_lines, scale_legend
from mhacli.views.terminal.heatmap import GAP, MapWindow, ramp, uses_color

KIND_STYLE = {
    "induction": ("I", "bold magenta"),
    "previous-token": ("P", "bold cyan"),
    "duplicate-token": ("D", "bold blue"),
    "self": ("S", "bold green"),
    "sink": ("K", "bold yellow"),
    "broad": ("B", "white"),
    "mixed": ("·", "dim"),
}
KEY_STATS = (("prev", "previous_token"), ("ind", "induction"), ("sink", "first_token"), ("entropy", "entropy"))


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader went away (`| head -1`).

        Raise BrokenPipeError for the CLI to end quietly with exit 0, as the text and JSON formats do (rich's
        own handler exits 1).
        """
        self.quiet = True
        raise BrokenPipeError


# The sizes a view is drawn for, whatever $COLUMNS/$LINES or the terminal say (0, 1, 10**9, garbage): a narrower
# screen gets lines that wrap, a wider one lines that end early, never a view laid out for no room or for gigabytes.
MIN_WIDTH, MAX_WIDTH = 20, 4096
MIN_HEIGHT, MAX_HEIGHT = 5, 4096


def make_console(file=None, width: int | None = None, **options: Any) -> Console:
    """The console every view draws on (`options`: rich's, e.g. force_terminal, no_color, color_system).

    Its width and height are clamped to [MIN_WIDTH, MAX_WIDTH] and [MIN_HEIGHT, MAX_HEIGHT].
    """
    console = _Console(file=file, width=width, highlight=False, soft_wrap=False, **options)
    console.width = min(max(console.width, MIN_WIDTH), MAX_WIDTH)
    console.height = min(max(console.height, MIN_HEIGHT), MAX_HEIGHT)
    return console


def weight_colour(w: float) -> str:
    return "#{:02x}{:02x}{:02x}".format(*ramp(w))


def fmt_stat(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def shares_kv(views: Sequence[HeadView]) -> bool:
    """Whether query heads share K/V heads (MQA/GQA): then each head's title names the K/V head it reads."""
    return any(v.kv_head is not None and v.kv_head != v.head for v in views)


def head_title(view: HeadView, show_kv: bool = False) -> Text:
    s = view.stats
    letter, style = KIND_STYLE[s.kind]
    name = f"L{s.layer}H{s.head}" + (f" (K/V head {view.kv_head})" if show_kv else "")
    title = Text.assemble((name, "bold"), " ", (s.kind, style), (kind_evidence(s), style))
    for short, name in KEY_STATS:
        title.append(f"  {short} {fmt_stat(s.values[name])}", style="dim")
    return title


def kind_evidence(s: HeadStats, short: bool = False) -> str:
    """' 0.92 (38 rows)' for the kinds that need support, ' 0.92' for the others.

    The score behind the kind (short: ' 0.92 (38)').
    """
    rows = s.kind_support
    return f" {fmt_stat(s.score)}" + (f" ({rows}{'' if short else ' rows'})" if rows is not None else "")


def inspect_title(view: HeadView, show_kv: bool = False, short: bool = False) -> Text:
    """A panel's title: `L1H2 induction 0.85 (5 rows)` (short: `(5)`), the K/V head where heads share one."""
    s = view.stats
    style = KIND_STYLE[s.kind][1]
    kv = f"/kv{view.kv_head}" if show_kv else ""
    return Text.assemble((f"L{s.layer}H{s.head}{kv} ", "bold"), (s.kind + kind_evidence(s, short), style))


def auto_panel_keys(n_seq: int, width: int, per_row: int) -> int:
    """Keys per panel so that `per_row` panels fit side by side in `width` columns.

    Within [12, 64], and never more than the text has.
    """
    label = len(str(n_seq - 1)) + 1
    fits = (width + GAP) // max(1, per_row) - GAP - label - 1
    return min(n_seq, max(min(n_seq, 12), min(64, fits)))


def window_note(win: MapWindow, moves: str = "--from I and --keys A:B move the window") -> list[Text]:
    """The lines saying which part of the maps is shown and which flags show the rest (none when they are whole).

    Wrapped, never cropped: the flags at its end are what a narrow terminal must not lose. `moves`: the command's
    own flags that move the window.
    """
    if not win.clipped:
        return []
    keys = f"key 0 and keys {win.keys[1]}–{win.keys[-1]}" if win.pinned else f"keys {win.keys[0]}–{win.keys[-1]}"
    more = f"; {moves}" if win.hi < win.n_seq or win.pinned or win.lo > 0 else ""
    lines = [Text(f"showing query rows {win.lo}–{win.hi - 1} and {keys} of {win.n_seq} tokens{more}", style="dim")]
    if win.asked is not None:
        a, b = win.asked
        inside = [k for k in win.keys if a <= k < b]
        left = (b - a) - len(inside)
        if left:
            first = max(inside) + 1
            lines.append(
                Text(
                    f"--keys {a}:{b}: {left} of its {b - a} keys left out for width ({first}–{b - 1}); "
                    f"--keys {first}:{b} shows them, or a wider terminal",
                    style="yellow",
                )
            )
    return lines


def one_line(text: Text, overflow: OverflowMethod = "ellipsis") -> Text:
    """`text` as one line cropped to the terminal: with an ellipsis, or (overflow="crop") cut, as a map's lines are."""
    line = text.copy()
    line.no_wrap, line.overflow = True, overflow
    return line


def packed(entries: Sequence[Text], width: int, *, indent: int = 0, first: Text | None = None) -> list[Text]:
    """Entries two spaces apart, packed into lines of at most `width` cells.

    An entry is never split (one longer than a line is cropped). `first` starts the first line, later lines are
    indented as far.
    """
    lead = first.cell_len if first is not None else indent
    lines, line = [], (first.copy() if first is not None else Text(" " * indent))
    for entry in entries:
        if line.cell_len > lead and line.cell_len + 2 + entry.cell_len > width:
            lines.append(line)
            line = Text(" " * lead)
        if line.cell_len > lead:
            line.append("  ")
        line.append_text(entry)
    lines.append(line)
    for line in lines:
        line.truncate(width, overflow="ellipsis")
    return lines


def kinds_legend(width: int) -> list[Text]:
    """`I induction  P previous-token ...`, never split inside an entry."""
    entries = [Text.assemble((KIND_STYLE[k][0], KIND_STYLE[k][1]), (f" {k}", "dim")) for k in KINDS]
    return packed(entries, width)


def grid_view(
    console: Console,
    title: str,
    cell,
    layers: Sequence[int],
    heads: Sequence[int],
    says: str,
    *,
    layout: str = "auto",
    cell_w: int = FULL_CELL,
) -> list[Text]:
    """A layer x head overview (mhacli.views.terminal.grid) with its title, the scale legend and the kind letters.

    `says`: what the numbers are. Every line fits the terminal (the legend wraps at spaces).
    """
    color = uses_color(console)
    lines, used = grid_lines(cell, layers, heads, width=console.width, color=color, layout=layout, cell_w=cell_w)
    return [
        one_line(Text(title, style="bold")),
        *map(one_line, lines),
        scale_legend(color, says, used),
        *map(one_line, kinds_legend(console.width)),
    ]
