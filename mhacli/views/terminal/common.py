"""What every terminal view shares.

The console, kind letters and styles, head titles, one-line printing, packed entries and the layer x head grid with its
legends. Rich is imported here and in the views, nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rich.console import Console, ConsoleOptions, NewLine
from rich.segment import Segment
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


class Canvas:
    """A console stand-in that keeps what a view prints instead of writing it.

    Everything a view asks of its console (width, height, colour, options, measuring) is the real console's; each
    `print` is recorded, and `drawing()` returns the renderable that prints exactly what those prints would have.
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        self._prints: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._console, name)

    def print(self, *objects: Any, **options: Any) -> None:
        self._prints.append((objects, options))

    def drawing(self) -> Drawing:
        return Drawing(self._prints)


class Drawing:
    """What a view drew on a Canvas, as a renderable: each print rendered as Console.print renders it."""

    def __init__(self, prints: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
        self.prints = prints

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        for objects, kw in self.prints:
            yield from printed(console, objects, **kw)


def printed(
    console: Console, objects: tuple[Any, ...], *, no_wrap: bool | None = None, overflow: Any = None
) -> Iterator[Segment]:
    """The segments `console.print(*objects, no_wrap=..., overflow=...)` writes (rich's Console.print, cropped)."""
    renderables = console._collect_renderables(objects or (NewLine(),), " ", "\n")  # noqa: SLF001 - print's own step
    render_options = console.options.update(overflow=overflow, no_wrap=no_wrap)
    segments = [segment for r in renderables for segment in console.render(r, render_options)]
    for line in Segment.split_and_crop_lines(segments, console.width, pad=False):
        yield from line


def drawn(draw: Callable[..., None]) -> Callable[..., Drawing]:
    """A view that returns its renderable, from a function that draws on a console: draw(console, *args)."""

    def view(console: Console, *args: Any, **kwargs: Any) -> Drawing:
        canvas = Canvas(console)
        draw(canvas, *args, **kwargs)
        return canvas.drawing()

    return view


def make_console(file=None, width: int | None = None, **options: Any) -> Console:
    """The console every view draws on (`options`: rich's, e.g. force_terminal, no_color, color_system)."""
    return _Console(file=file, width=width, highlight=False, soft_wrap=False, **options)


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


def window_note(console: Console, win: MapWindow) -> None:
    if not win.clipped:
        return
    keys = f"key 0 and keys {win.keys[1]}–{win.keys[-1]}" if win.pinned else f"keys {win.keys[0]}–{win.keys[-1]}"
    more = "; --from I and --keys A:B move the window" if win.hi < win.n_seq or win.pinned or win.lo > 0 else ""
    console.print(
        Text(f"showing query rows {win.lo}–{win.hi - 1} and {keys} of {win.n_seq} tokens{more}", style="dim"),
        no_wrap=True,
        overflow="ellipsis",
    )


def one_line(console: Console, text: Text, *, wrap: bool = False) -> None:
    """Print a line cropped to the terminal (or, with wrap, wrapped at spaces for prose)."""
    if wrap:
        console.print(text)
    else:
        console.print(text, no_wrap=True, overflow="ellipsis")


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


def print_grid(
    console: Console,
    title: str,
    cell,
    layers: Sequence[int],
    heads: Sequence[int],
    says: str,
    *,
    layout: str = "auto",
    cell_w: int = FULL_CELL,
) -> None:
    """A layer x head overview (mhacli.views.terminal.grid) with its title, the scale legend and the kind letters.

    `says`: what the numbers are. Every line fits the terminal.
    """
    color = uses_color(console)
    lines, used = grid_lines(cell, layers, heads, width=console.width, color=color, layout=layout, cell_w=cell_w)
    one_line(console, Text(title, style="bold"))
    for line in lines:
        one_line(console, line)
    one_line(console, scale_legend(color, says, used), wrap=True)
    for line in kinds_legend(console.width):
        one_line(console, line)
