"""Terminal views with rich: attention maps, query bars, top keys, the stats grid. The only module that imports rich."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.box import SIMPLE_HEAD
from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from mhacli.display import token_label
from mhacli.grid import FULL_CELL, Cell, grid_lines, scale_legend
from mhacli.heatmap import GAP, MapWindow, map_window, panel, ramp, side_by_side, uses_color
from mhacli.heatmap import legend as heat_legend
from mhacli.heads import HeadView
from mhacli.stats import KINDS, TOO_PLAIN, HeadStats, undecidable

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
        """The reader went away (`| head -1`): raise BrokenPipeError for the CLI to end quietly with exit 0, as the
        text and JSON formats do (rich's own handler exits 1)."""
        self.quiet = True
        raise BrokenPipeError


def make_console(file=None, width: int | None = None) -> Console:
    return _Console(file=file, width=width, highlight=False, soft_wrap=False)


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
    name = f"L{s.layer} H{s.head}" + (f" (K/V head {view.kv_head})" if show_kv else "")
    title = Text.assemble((name, "bold"), " ", (s.kind, style), (kind_evidence(s), style))
    for short, name in KEY_STATS:
        title.append(f"  {short} {fmt_stat(s.values[name])}", style="dim")
    return title


def kind_evidence(s: HeadStats, short: bool = False) -> str:
    """' 0.92 (38 rows)' for the kinds that need support, ' 0.92' for the others: the score behind the kind
    (short: ' 0.92 (38)')."""
    rows = s.kind_support
    return f" {fmt_stat(s.score)}" + (f" ({rows}{'' if short else ' rows'})" if rows is not None else "")


def inspect_title(view: HeadView, show_kv: bool = False, short: bool = False) -> Text:
    """A panel's title: `L1H2 induction 0.85 (5 rows)` (short: `(5)`), the K/V head where heads share one."""
    s = view.stats
    style = KIND_STYLE[s.kind][1]
    kv = f"/kv{view.kv_head}" if show_kv else ""
    return Text.assemble((f"L{s.layer}H{s.head}{kv} ", "bold"), (s.kind + kind_evidence(s, short), style))


def auto_panel_keys(n_seq: int, width: int, per_row: int) -> int:
    """Keys per panel so that `per_row` panels fit side by side in `width` columns, within [12, 64] (never more than
    the text has)."""
    label = len(str(n_seq - 1)) + 1
    fits = (width + GAP) // max(1, per_row) - GAP - label - 1
    return min(n_seq, max(min(n_seq, 12), min(64, fits)))


def screen_keys(height: int, panel_rows: int, color: bool) -> int:
    """The largest square window whose `panel_rows` rows of panels (a blank line, title, ruler and the map's
    lines each: two query rows a line with colour), the window note and the next prompt fit `height` lines."""
    lines = (height - 2) // max(1, panel_rows) - 3  # and a line for the prompt after
    return max(1, lines * (2 if color else 1))


def map_panels(
    console: Console, views: Sequence[HeadView], tokens: Sequence[str], *, start: int = 0,
    keys: tuple[int, int] | None = None, panel_keys: int | None = None, used_lines: int = 2,
) -> None:
    """Every selected head's map (`used_lines`: what is above it on the screen): one head drawn large (token labels, wider cells when they fit); several heads as
    small multiples, a layer per row of panels (wrapping when a layer does not fit), all with the same window."""
    n_seq = len(tokens)
    color = uses_color(console)
    width = console.width
    show_kv = shares_kv(views)
    if len(views) == 1:
        token_w = min(12, max(len(token_label(t)) for t in tokens)) * (2 if color else 1) + (1 if color else 0)
        label_w = len(str(n_seq - 1)) + token_w + 2
        n_keys = panel_keys or max(2, width - label_w - 1)
        cell = 2 if (min(n_seq, n_keys) + 1) * 2 <= width - label_w else 1
        n_keys = min(n_keys, (width - label_w) // cell - 1)
        win = map_window(n_seq, start, n_keys, n_keys, keys)
        lines = panel(views[0].attention, inspect_title(views[0], show_kv), win, cell=cell, color=color, tokens=tokens, token_w=token_w)
        window_note(console, win)
        for line in lines:
            console.print(line, no_wrap=True, overflow="crop")
        return
    by_layer: dict[int, list[HeadView]] = {}
    for v in views:
        by_layer.setdefault(v.layer, []).append(v)
    per_row = max(len(vs) for vs in by_layer.values())
    n_keys = panel_keys or auto_panel_keys(n_seq, width, per_row)
    if panel_keys is None and console.is_terminal:  # on a screen: every head on it, where 12-key windows allow
        n_keys = min(n_keys, max(min(n_seq, 12), screen_keys(console.height - used_lines, len(by_layer), color)))
    win = map_window(n_seq, start, n_keys, n_keys, keys)
    window_note(console, win)
    # Every panel as wide: the longest whole title where a layer's panels still fit side by side, else the head names.
    name_w = 1 + max(len(inspect_title(v, show_kv).plain.split(" ", 1)[0]) for v in views)
    room = (width + GAP) // per_row - GAP
    short = max(inspect_title(v, show_kv).cell_len for v in views) > room  # `(111)` for `(111 rows)` where tight
    title_w = max(inspect_title(v, show_kv, short).cell_len for v in views)
    panels = [(v.layer, panel(v.attention, inspect_title(v, show_kv, short), win, cell=1, color=color, min_width=max(name_w, min(title_w, room)))) for v in views]
    panel_w = panels[0][1][0].cell_len
    fit_n = max(1, (width + GAP) // (panel_w + GAP))
    for layer in by_layer:
        row = [p for lay, p in panels if lay == layer]
        for k in range(0, len(row), fit_n):
            console.print()
            for line in side_by_side(row[k : k + fit_n]):
                console.print(line, no_wrap=True, overflow="crop")


def window_note(console: Console, win: MapWindow) -> None:
    if not win.clipped:
        return
    keys = f"key 0 and keys {win.keys[1]}–{win.keys[-1]}" if win.pinned else f"keys {win.keys[0]}–{win.keys[-1]}"
    more = "; --from I and --keys A:B move the window" if win.hi < win.n_seq or win.pinned or win.lo > 0 else ""
    console.print(Text(f"showing query rows {win.lo}–{win.hi - 1} and {keys} of {win.n_seq} tokens{more}", style="dim"),
                  no_wrap=True, overflow="ellipsis")  # fmt: skip


def query_bars(
    view: HeadView, tokens: Sequence[str], query: int, width: int, limit: int = 40, show_kv: bool = False
) -> Group:
    """Where query token `query` looks in this head: one bar per key."""
    row = view.attention[query, : query + 1]
    keys = list(range(query + 1))
    note = None
    if len(keys) > limit:
        keys = sorted(np.argsort(row)[::-1][:limit].tolist())
        note = Text(f"the {limit} strongest of {query + 1} keys, in text order", style="dim")
    label_w = 14
    bar_w = max(10, width - label_w - 16)
    lines: list = [head_title(view, show_kv), Text(f"query {query} {token_label(tokens[query], 20)!r}", style="bold")]
    if note:
        lines.append(note)
    for j in keys:
        w = float(row[j])
        n = int(round(w * bar_w))
        line = Text(f"{j:>5} {token_label(tokens[j], label_w - 1):<{label_w - 1}} ")
        line.append("█" * n, style=weight_colour(w))
        line.append(f" {w:.3f}")
        lines.append(line)
    return Group(*lines)


def top_keys(view: HeadView, tokens: Sequence[str], k: int, show_kv: bool = False) -> Group:
    """The k strongest keys of every query row, as text."""
    lines: list = [head_title(view, show_kv)]
    for i in range(view.attention.shape[0]):
        row = view.attention[i, : i + 1]
        best = np.argsort(row)[::-1][:k]
        line = Text(f"{i:>5} {token_label(tokens[i], 12):<12} → ")
        for rank, j in enumerate(best):
            if rank:
                line.append(", ")
            line.append(f"{j}:{token_label(tokens[j], 12)}", style=weight_colour(float(row[j])) if row[j] >= 0.01 else "dim")
            line.append(f" {row[j]:.2f}")
        lines.append(line)
    return Group(*lines)


def render_inspect(
    console: Console,
    views: Sequence[HeadView],
    tokens: Sequence[str],
    *,
    query: int | None = None,
    top: int | None = None,
    start: int = 0,
    keys: tuple[int, int] | None = None,
    panel_keys: int | None = None,
) -> None:
    if views and undecidable(views[0].stats.support):
        console.print(Text(TOO_PLAIN, style="dim"))
    listed = Text(f"{len(tokens)} tokens: ", style="bold") + Text(" ".join(f"{i}:{token_label(t)}" for i, t in enumerate(tokens[:60]))) + Text(" …" if len(tokens) > 60 else "")
    console.print(listed)
    if query is None and top is None:
        console.print(heat_legend(uses_color(console)), no_wrap=True, overflow="ellipsis")
        used = len(listed.wrap(console, console.width)) + 1 + bool(views and undecidable(views[0].stats.support))
        map_panels(console, views, tokens, start=start, keys=keys, panel_keys=panel_keys, used_lines=used)
        return
    show_kv = shares_kv(views)
    for view in views:
        console.print()
        if query is not None:
            console.print(query_bars(view, tokens, query, console.width, show_kv=show_kv))
        else:
            console.print(top_keys(view, tokens, top, show_kv=show_kv))


GRID_SAYS = {
    "auto": "each head's kind score, 0–1: the fraction of attention on its pattern (broad: entropy ÷ its maximum; "
            "mixed: max_weight)",
    "entropy": "entropy ÷ its maximum (uniform attention over the visible keys), 0–1",
    "mean_distance": "mean_distance ÷ its maximum (every query on key 0), 0–1",
}  # fmt: skip


def grid_value(s: HeadStats, stat: str) -> float | None:
    """The number a head shows in the stats grid: its kind score, or statistic `stat`, on a 0-1 scale."""
    return s.score if stat == "auto" else s.unit_value(stat)


def packed(entries: Sequence[Text], width: int, *, indent: int = 0, first: Text | None = None) -> list[Text]:
    """Entries two spaces apart, packed into lines of at most `width` cells; an entry is never split (one longer
    than a line is cropped). `first` starts the first line, later lines are indented as far."""
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
    console: Console, title: str, cell, layers: Sequence[int], heads: Sequence[int], says: str, *,
    layout: str = "auto", cell_w: int = FULL_CELL,
) -> None:  # fmt: skip
    """A layer x head overview (mhacli.grid) with its title, the scale legend (`says`: what the numbers are) and the
    kind letters; every line fits the terminal."""
    color = uses_color(console)
    lines, used = grid_lines(cell, layers, heads, width=console.width, color=color, layout=layout, cell_w=cell_w)
    one_line(console, Text(title, style="bold"))
    for line in lines:
        one_line(console, line)
    one_line(console, scale_legend(color, says, used), wrap=True)
    for line in kinds_legend(console.width):
        one_line(console, line)


def render_stats(
    console: Console, views: Sequence[HeadView], n_layer: int, n_head: int, stat: str, n_tokens: int, *,
    layout: str = "auto",
) -> None:  # fmt: skip
    """The one-screen overview: a layer x head grid (kind letter and one statistic on a 0-1 scale), then the most
    distinctive heads of each kind."""
    by_pos = {(v.layer, v.head): v.stats for v in views}
    layers = sorted({v.layer for v in views}) or list(range(n_layer))
    heads = sorted({v.head for v in views}) or list(range(n_head))

    def cell(layer: int, h: int) -> Cell | None:
        s = by_pos.get((layer, h))
        if s is None:
            return None
        letter, style = KIND_STYLE[s.kind]
        return Cell(letter, style, grid_value(s, stat))

    width = console.width
    what = "kind scores" if stat == "auto" else stat
    says = GRID_SAYS.get(stat, f"{stat}, a fraction of attention, 0–1")
    print_grid(console, f"kinds and {what} ({n_tokens} tokens)", cell, layers, heads, says, layout=layout)
    console.print()
    one_line(console, Text("strongest heads of each kind", style="bold"))
    label_w = max(len(k) for k in KINDS) + 2
    shown = 0
    for kind in KINDS[:-1]:
        scored = sorted((s for s in by_pos.values() if s.kind == kind and s.score is not None), key=lambda s: -s.score)
        if not scored:
            continue
        shown += 1
        entries = [Text(f"L{s.layer}H{s.head}{kind_evidence(s)}") for s in scored[:5]]
        first = Text(kind.ljust(label_w), style=KIND_STYLE[kind][1])
        for line in packed(entries, width, first=first if label_w + 12 <= width else Text(kind + " ", style=KIND_STYLE[kind][1])):
            one_line(console, line)
    if not shown:
        one_line(console, Text("no head reaches a kind threshold on this text (all mixed)", style="dim"), wrap=True)
    if views and undecidable(views[0].stats.support):
        one_line(console, Text(TOO_PLAIN, style="dim"), wrap=True)


def one_line(console: Console, text: Text, *, wrap: bool = False) -> None:
    """Print a line cropped to the terminal (or, with wrap, wrapped at spaces for prose)."""
    if wrap:
        console.print(text)
    else:
        console.print(text, no_wrap=True, overflow="ellipsis")


def render_info(console: Console, lines: Sequence[tuple[str, str]]) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in lines:
        table.add_row(key, Text(value))  # Text: a file name like "[red]x" is not rich markup
    console.print(table)


def render_verify(console: Console, lines: Sequence[str], passed: bool) -> None:
    for line in lines[:-1]:
        console.print(Text(line, style="red" if line.endswith("FAIL") else ""))
    console.print(Text(lines[-1], style="bold green" if passed else "bold red"))


# --- mha diff ---------------------------------------------------------------------------------------------------

from mhacli.divergence import METRICS, DiffReport  # noqa: E402

DIFF_KEY_STATS = (("Δprev", "previous_token"), ("Δind", "induction"), ("Δsink", "first_token"), ("Δentropy", "entropy"))


def _divergence_cell(value: float, top: float, label: str = "") -> Text:
    """A divergence on a background coloured by its size relative to the largest (`top`)."""
    x = value / top if top > 0 else 0.0
    colour = weight_colour(x)
    ink = "black" if x > 0.6 else "white"
    return Text(f"{label}{value:.3g}", style=f"{ink} on {colour}")


def fmt_delta(v: float | None) -> str:
    return "–" if v is None else f"{v:+.2f}"


def diff_grid(console: Console, report: DiffReport) -> None:
    """Layer x head grid of the compared heads, coloured by divergence, with B's kind letter (matched: B's layout,
    each B head against its matched A head)."""
    top = report.max_divergence
    n_layer, n_head = report.shape_b
    by_b = {(r.layer_b, r.head_b): r for r in report.heads}

    def cell(layer: int, h: int) -> Cell | None:
        r = by_b.get((layer, h))
        if r is None:
            return Cell("-", "dim", None, "unmatched"[:6])
        letter, style = KIND_STYLE[r.kind_b]
        return Cell(letter, style, r.divergence / top if top > 0 else 0.0, f"{r.divergence:.3g}")

    if report.mode == "paired":
        title = f"{report.metric} per head, kind in MODEL_B"
    else:
        title = f"{report.metric} of each MODEL_B head from its matched MODEL_A head, kind in MODEL_B"
    says = f"{report.metric} ({METRICS[report.metric].split(' (')[0]}); colour: its share of the largest, {top:.3g}"
    print_grid(console, title, cell, range(n_layer), range(n_head), says, cell_w=9)


def diff_ranking(console: Console, report: DiffReport, top: int) -> Table:
    """The `top` most changed heads with their kinds in A and B and the change of the key statistics (as many of
    those as the terminal has room for)."""
    best = report.max_divergence
    rows = report.heads[:top]
    paired = report.mode == "paired"
    layouts = [(n, True) for n in range(len(DIFF_KEY_STATS), -1, -1)] + [(0, False)]  # widest first
    for n_stats, kind_names in layouts:
        stats = DIFF_KEY_STATS[:n_stats]
        table = Table(box=SIMPLE_HEAD, pad_edge=False)
        for name, justify in (("#", "right"), ("head" if paired else "A head → B head", "left"), (report.metric, "right"),
                              ("kind in A → in B", "left"), *((short, "right") for short, _ in stats)):  # fmt: skip
            table.add_column(name, justify=justify, no_wrap=True)
        for rank, r in enumerate(rows, start=1):
            name = f"L{r.layer_b}H{r.head_b}" if paired else f"L{r.layer_a}H{r.head_a} → L{r.layer_b}H{r.head_b}"
            (la, sa), (lb, sb) = KIND_STYLE[r.kind_a], KIND_STYLE[r.kind_b]
            kinds = Text.assemble((r.kind_a if kind_names else la, sa), " → ", (r.kind_b if kind_names else lb, sb))
            table.add_row(str(rank), name, _divergence_cell(r.divergence, best), kinds,
                          *(fmt_delta(r.stat_deltas[key]) for _, key in stats))  # fmt: skip
        unbounded = console.options.update_width(10_000)
        if Measurement.get(console, unbounded, table).maximum <= console.width:
            break
    return table


def render_diff(
    console: Console,
    report: DiffReport,
    model_a: str,
    model_b: str,
    tokens: Sequence[str],
    maps: tuple[HeadView, HeadView] | None,
    *,
    top: int = 10,
    start: int = 0,
) -> None:
    """Terminal view of `mha diff`: the grid, the ranking, then the most changed head's two maps side by side."""
    (la, ha), (lb, hb) = report.shape_a, report.shape_b
    console.print(Text.assemble(("MODEL_A ", "bold"), model_a, f"  ({la} layers x {ha} heads)"))
    console.print(Text.assemble(("MODEL_B ", "bold"), model_b, f"  ({lb} layers x {hb} heads)"))
    mode = "paired head by head" if report.mode == "paired" else "heads matched one-to-one (Hungarian assignment)"
    texts = "1 text" if report.n_texts == 1 else f"mean over {report.n_texts} texts"
    console.print(Text(f"{METRICS[report.metric]}; {mode}; {texts}", style="dim"))
    diff_grid(console, report)
    console.print()
    one_line(console, Text(f"most changed heads ({min(top, len(report.heads))} of {len(report.heads)})", style="bold"))
    console.print(diff_ranking(console, report, top))
    if report.mode == "matched":
        partner = {(r.layer_b, r.head_b): (r.layer_a, r.head_a) for r in report.heads}
        moved = [n for n in report.nearest or [] if partner.get((n.layer_b, n.head_b)) != (n.layer_a, n.head_a)]
        if moved:
            one_line(console, Text("MODEL_B heads whose nearest MODEL_A head is not their match", style="bold"))
            near = Table(box=SIMPLE_HEAD, pad_edge=False)
            for name in ("B head", "nearest A head", report.metric):
                near.add_column(name)
            for n in moved[:top]:
                near.add_row(f"L{n.layer_b}H{n.head_b}", f"L{n.layer_a}H{n.head_a}", f"{n.divergence:.3g}")
            console.print(near)
    if maps is None:
        console.print(Text("no head differs: the two models' attention is identical on this text", style="bold green"))
        return
    first = report.heads[0]
    console.print()
    console.print(Text(f"most changed head, on the first text ({first.divergence:.3g} {report.metric}):", style="bold"))
    color = uses_color(console)
    n_keys = auto_panel_keys(len(tokens), console.width, 2)
    win = map_window(len(tokens), start, n_keys, n_keys)
    window_note(console, win)
    pair = [panel(v.attention, Text.assemble((name + " ", "bold"), inspect_title(v)), win, cell=1, color=color)
            for name, v in (("MODEL_A", maps[0]), ("MODEL_B", maps[1]))]  # fmt: skip
    for line in side_by_side(pair):
        console.print(line, no_wrap=True, overflow="crop")
    console.print(heat_legend(color), no_wrap=True, overflow="ellipsis")


# --- mha explain ------------------------------------------------------------------------------------------------
# The explain view is laid out once, as lines of (text, style) segments that fit `width` columns, then drawn with
# rich (render_explain) or as plain text (explain_text): both formats show the same steps, aligned the same way.

import re  # noqa: E402

from rich.cells import cell_len  # noqa: E402

from mhacli.explain import Explanation  # noqa: E402

Segment = tuple[str, str]  # (text, rich style; the style is dropped in plain text)
EXPLAIN_KEYS = 12  # keys listed without --full: those with the largest weights, in text order
EXPLAIN_TOKENS = 60  # tokens listed in the header
PLAIN_WIDTH = 100  # the layout width of plain text, where there is no terminal to measure
MIN_VEC = 24  # the narrowest room for a compact vector beside its label; below this it gets a line of its own
EXPLAIN_BAR = 50  # the widest attention bar (weight 1)
NBSP = "\u00a0"  # a space `wrapped` does not break at
VEC_CELL = 8  # columns per component in a compact vector: -0.01234, 1.235e+04 and most others fit


def cell_label(token: str, width: int) -> str:
    """token_label cut to `width` terminal cells (wide characters take two), padded to exactly `width`."""
    label = token_label(token, width)
    while cell_len(label) > width:
        label = label[:-2] + "…"
    return label + " " * (width - cell_len(label))


def num(x: float) -> str:
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
    """Prose wrapped at spaces (not at glued ones) to `width` terminal cells; continuation lines indented `hang`
    more; a word wider than a line is cut."""
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


def labelled_vectors(prefix: str, vectors: Sequence[tuple[str, np.ndarray]], width: int, style: str = "") -> list[list[Segment]]:
    """A row label followed by named compact vectors: all on one line if they fit, else one line each."""
    tags = sum(len(name) + 3 for name, _ in vectors)
    each = (width - cell_len(prefix) - tags) // len(vectors)
    if each >= (MIN_VEC if len(vectors) == 1 else 2 * MIN_VEC - 8):
        line: list[Segment] = [(prefix, style)]
        for n, (name, v) in enumerate(vectors):
            line += [((" " if n else "") + name + " ", "dim"), (vec_compact(v, each).ljust(each if n < len(vectors) - 1 else 0), style)]
        return [line]
    indent = cell_len(prefix) if width - cell_len(prefix) - 2 >= MIN_VEC + 8 else 6
    lines: list[list[Segment]] = [] if indent == cell_len(prefix) else [[(prefix.rstrip(), style)]]
    for n, (name, v) in enumerate(vectors):
        lead = prefix if n == 0 and indent == cell_len(prefix) else " " * indent
        tag = name.ljust(max(len(m) for m, _ in vectors)) + " "
        lines.append([(lead, style), (tag, "dim"), (vec_compact(v, width - indent - len(tag)), style)])
    return lines


def shown_keys(ex: Explanation, full: bool) -> list[int]:
    """Every key with --full; else the keys inside the window (all up to the query without one), at most
    EXPLAIN_KEYS of them: those with the largest weights."""
    n_key = ex.query_index + 1
    if full:
        return list(range(n_key))
    first = len(ex.window_masked_keys)
    if n_key - first <= EXPLAIN_KEYS:
        return list(range(first, n_key))
    return sorted((first + np.argsort(-ex.step.attention[first:], kind="stable")[:EXPLAIN_KEYS]).tolist())


def scale_text(ex: Explanation) -> str:
    if ex.scale_attn_weights and ex.scale_attn_by_inverse_layer_idx:
        return f"scale = 1/√d_head · 1/(layer+1) = 1/√{ex.d_head} · 1/{ex.layer + 1} = {num(ex.scale)}"
    if ex.scale_attn_weights:
        return f"scale = 1/√d_head = 1/√{ex.d_head} = {num(ex.scale)}"
    if ex.scale_attn_by_inverse_layer_idx:
        return f"scale = 1/(layer+1) = 1/{ex.layer + 1} = {num(ex.scale)} (scale_attn_weights is false: no 1/√d_head)"
    return "scale = 1 (scale_attn_weights is false: the scores are not scaled)"


def mask_text(ex: Explanation) -> str:
    i, n = ex.query_index, ex.n_seq
    if n == 1:
        hidden = "nothing is hidden: it is the only token"
    elif i == n - 1:
        hidden = "nothing is hidden: it is the last token"
    elif i == n - 2:
        hidden = f"{glue(f'key {n - 1} is hidden')} (score −∞, weight 0): it comes after token {i}, in the future"
    else:
        hidden = f"{glue(f'keys {i + 1}..{n - 1} are hidden')} (score −∞, weight 0): they come after token {i}, in the future"
    outside = ex.window_masked_keys
    first = len(outside)
    sees = f"key {i}" if first == i else f"keys {first}..{i}"
    if ex.window is None:
        return f"causal mask: token {i} sees {sees}; {hidden}"
    if not outside:
        window = f"sliding window of {ex.window} keys: every key up to token {i} is inside it"
    else:
        gone = glue("key 0 is") if first == 1 else glue(f"keys 0..{first - 1} are")
        window = f"sliding window of {ex.window} keys: {gone} too far back (score −∞, weight 0)"
    return f"causal mask: token {i} sees {sees}; {window}; {hidden}"


def norm_label(ex: Explanation, j: int | str) -> str:
    """What the projections read at token j: LN(x_j), RMS(x_j), or x_j itself (OLMo)."""
    return {"layer_norm": f"LN(x_{j})", "rms_norm": f"RMS(x_{j})"}.get(ex.norm or "", f"x_{j}")


def projection_formula(ex: Explanation, what: str, j: int | str) -> str:
    """e.g. `LN(x_5) · W_Q + b_Q`, `RMS(x_j) · W_Kᵀ`, OLMo's `k_norm(x_j · W_Kᵀ)[8:16]`."""
    proj = ex.projections[what]
    w = f"W_{what.upper()}" + ("" if proj.in_out else "ᵀ")
    text = f"{norm_label(ex, j)} · {w}" + ("" if proj.bias is None else f" + b_{what.upper()}")
    if ex.qk_norm is not None and what in ("q", "k"):
        text = f"{what}_norm({text})[{proj.start}:{proj.end}]"
    return text


def gqa_text(ex: Explanation) -> str:
    g = ex.kv_head
    if ex.layout == "MHA":
        return f"head {ex.head} has its own K/V head (MHA)"
    if ex.layout == "MQA":
        return f"MQA: query head {ex.head} reads K/V head {g}, the one every query head shares"
    group = ex.kv_group
    return (
        f"GQA: query head {ex.head} reads {glue(f'K/V head {g}')} = {glue(f'{ex.head} // {ex.group_size}')}, "
        f"shared by query heads {group[0]}..{group[-1]} (group size {ex.group_size}); its k and v are that K/V "
        f"head's rows of {ex.projections['k'].weight.split('.')[-2]} and {ex.projections['v'].weight.split('.')[-2]}"
    )


def explain_lines(
    ex: Explanation, tokens: Sequence[str], width: int, *, full: bool = False, plain: bool = False
) -> list[list[Segment]]:
    """The whole explanation as lines of (text, style) segments, none wider than `width` (at least 40) columns."""
    width = max(width, 40)
    i, h, d, L, s = ex.query_index, ex.head, ex.d_head, ex.layer, ex.step
    x_i, ln_x = f"x_{i}", norm_label(ex, i)
    out: list[list[Segment]] = []

    def section(title: str) -> None:
        out.append([])
        out.extend(wrapped(title, width, indent=0, style="bold underline", hang=3))

    def note(text: str, style: str = "dim") -> None:
        out.extend(wrapped(text, width, style=style))

    keys_range = "0" if i == 0 else f"0..{i}"
    title = f"layer {L}, head {h}, query token {i} {cell_label(tokens[i], 20).rstrip()!r} (of {ex.n_seq} token{'s' if ex.n_seq > 1 else ''})"
    out.extend(wrapped(title, width, 0, "bold"))
    if not full:
        note(f"vectors: first and last components, then {glue('‖L2 norm‖;')} --full shows all")
    items = [f"{j}:{cell_label(t, 12).rstrip()}" for j, t in enumerate(tokens[:EXPLAIN_TOKENS])]
    line: list[Segment] = [("tokens:", "dim")]
    for j, item in enumerate(items + (["…"] if len(tokens) > EXPLAIN_TOKENS else [])):
        if sum(cell_len(t) for t, _ in line) + 1 + cell_len(item) > width:
            out.append(line)
            line = [(" " * 7, "")]
        line += [(" ", ""), (item, "bold reverse" if j == i else ("dim" if j > i else ""))]
    out.append(line)

    section(f"1. input to layer {L} at token {i}")
    if L == 0 and ex.rope is None:
        note(f"{x_i} = {glue(f'wte[{ex.token_id}] + wpe[{i}]')}: the token and position embeddings")
    elif L == 0:
        note(f"{x_i} = {glue(f'embed_tokens[{ex.token_id}]')}: the token embedding (positions enter in step 2, as rotations of q and k)")
    else:
        note(f"{x_i}: the residual stream after {glue(f'layer {L - 1}')}")
    out.extend(equation(x_i, "", ex.input, width, full))
    if ex.norm == "layer_norm":
        out.extend(equation(ln_x, f"({x_i} − μ)/√(σ² + ε) · γ + β", ex.ln_input, width, full))
        weight = ex.norm_weight or ""
        note(
            f"{glue(f'μ = {num(ex.ln_mean)},')} {glue(f'σ² = {num(ex.ln_var)},')} {glue(f'ε = {ex.layer_norm_epsilon:g};')} "
            f"{glue(f'γ, β = {weight}, .bias')}"
        )
    elif ex.norm == "rms_norm":
        out.extend(equation(ln_x, f"{x_i} / √(mean({x_i}²) + ε) · γ", ex.ln_input, width, full))
        note(f"{glue(f'mean({x_i}²) = {num(ex.ln_var)},')} {glue(f'ε = {ex.layer_norm_epsilon:g};')} {glue(f'γ = {ex.norm_weight}')}")
    else:
        note(
            f"no norm before attention: the projections read {x_i} itself (this model's RMSNorms come after "
            "attention and after the MLP, on each branch before it is added to the residual stream)"
        )

    section(f"2. query, keys and values (d_head = {d})")
    if ex.layout != "MHA":
        note(gqa_text(ex), "")
    in_out = ex.projections["q"].in_out
    if ex.model_type == "gpt2":
        note(f"head {h}'s slices of c_attn.weight [{ex.n_embd}, {3 * ex.n_embd}] and of c_attn.bias:")
    elif in_out:
        note(f"head {h}'s columns of the projection weights [in, out]:")
    else:
        note(f"the projection weights are [out, in] (x · Wᵀ); the rows of head {h} and of K/V head {ex.kv_head}:")
    for k, proj in ex.projections.items():
        w_part = glue(f"W_{k.upper()} = {proj.where()}")
        b_part = "" if proj.bias is None else "   " + glue(f"b_{k.upper()} = {proj.bias_where()}")
        out.extend(wrapped(w_part + b_part, width, hang=4))
    if ex.qk_norm is not None:
        qk = ex.qk_norm
        note(
            f"QK-norm: q_norm and k_norm are RMSNorms over the whole q_proj / k_proj output (every head), taken "
            f"before the head's slice: {glue(f'rms(q_proj({x_i})) = {num(qk.query_rms)};')} "
            f"{glue(f'γ_q = {ex.layer_prefix}{qk.q_weight},')} {glue(f'γ_k = {ex.layer_prefix}{qk.k_weight}')}"
        )
    if ex.rope is None:
        out.extend(equation(f"q_{i}", projection_formula(ex, "q", i), s.query, width, full))
        note(f"{glue('k_j = ' + projection_formula(ex, 'k', 'j'))} and {glue('v_j = ' + projection_formula(ex, 'v', 'j'))}, for the visible keys j = {keys_range}:", "")
    else:
        r = ex.rope
        out.extend(equation(f"q_{i} before RoPE", projection_formula(ex, "q", i), s.query_pre_rope, width, full))
        scaled = "" if r.attention_scaling == 1.0 else f"; cos and sin are scaled by {num(r.attention_scaling)}"
        note(
            f"RoPE ({r.rope_type}, {glue(f'θ = {r.rope_theta:g}):')} coordinates c and c + {d // 2} of q and of every "
            f"k form a pair, turned by the angle {glue('position × inv_freq[c]')} (inv_freq = θ^(−2c/{d}) for the "
            f"default type){scaled}"
        )
        out.extend(equation(f"angles at {i}", f"{i} · inv_freq", r.angles[i], width, full))
        out.extend(equation(f"q_{i}", f"q_{i} before RoPE, rotated by the angles at {i}", s.query, width, full))
        note(
            f"{glue('k_j = ' + projection_formula(ex, 'k', 'j'))}, rotated by the angles at j, and "
            f"{glue('v_j = ' + projection_formula(ex, 'v', 'j'))} (not rotated), for the keys j = {keys_range}:",
            "",
        )
    keys = shown_keys(ex, full)
    j_w = len(str(i))
    tok_w = min(12, max(cell_len(token_label(tokens[j], 12)) for j in keys))
    for j in keys:
        prefix = f"  {j:>{j_w}} {cell_label(tokens[j], tok_w)} "
        if full:
            out.append([(prefix.rstrip(), "bold")])
            if s.keys_pre_rope is not None:
                out.extend(equation(f"k_{j} before RoPE", "", s.keys_pre_rope[j], width, True, indent=4, style=""))
            out.extend(equation(f"k_{j}", "", s.keys[j], width, True, indent=4, style=""))
            out.extend(equation(f"v_{j}", "", s.values[j], width, True, indent=4, style=""))
        else:
            out.extend(labelled_vectors(prefix, [("k", s.keys[j]), ("v", s.values[j])], width))
    if len(keys) < i + 1:
        outside = len(ex.window_masked_keys)
        why = "those with the largest weights in step 3" if len(keys) < i + 1 - outside else "those inside the window"
        note(f"{len(keys)} of {i + 1} keys shown: {why}; --full lists all")

    section("3. scores, scaling, causal mask, softmax" if ex.window is None else "3. scores, scaling, causal and sliding-window mask, softmax")
    note(f"{glue(f's_j = q_{i} · k_j:')} the raw score of {glue('key j')}", "")
    note(scale_text(ex), "")
    note(mask_text(ex), "")
    note(f"a_j = {glue('softmax(scale · s)_j')} = {glue('exp(scale · s_j)')} / {glue('Σ_i exp(scale · s_i)')}", "")
    s_w = max(5, *(len(num(s.scores[j])) for j in keys))
    c_w = max(6, *(len(num(s.scaled_scores[j])) for j in keys))
    fixed = 2 + j_w + 1 + 1 + s_w + 1 + c_w + 1 + 6 + 1  # everything but the token label and the bar
    tok_w = max(4, min(tok_w, width - fixed - 8))
    bar_w = max(0, min(EXPLAIN_BAR, width - fixed - tok_w))
    out.append([(f"  {'j':>{j_w}} {'token':<{tok_w}} {'q·k':>{s_w}} {'scaled':>{c_w}} {'a_j':>6}", "dim")])
    for j in keys:
        a = float(s.attention[j])
        row = f"  {j:>{j_w}} {cell_label(tokens[j], tok_w)} {num(s.scores[j]):>{s_w}} {num(s.scaled_scores[j]):>{c_w}} {a:6.4f} "
        out.append([(row, ""), (("#" if plain else "█") * int(round(a * bar_w)), weight_colour(a))])
    if len(keys) < i + 1:
        rest = max(0.0, 1.0 - float(s.attention[keys].sum()))
        outside = len(ex.window_masked_keys)
        hidden = [f"{i + 1 - outside - len(keys)} other keys share a weight of {rest:.4f}"] if i + 1 - outside > len(keys) else []
        hidden += [f"the {outside} keys outside the window have weight 0"] if outside else []
        note(f"{'; '.join(hidden)}; --full lists them")

    section(f"4. head {h}'s output")
    out.extend(equation(f"z_{h}", "Σ_j a_j v_j", s.output, width, full))
    note(f"the values v_0..v_{i}, averaged with the weights a_j" if i else "the value v_0 itself: the one visible key has weight 1")

    r0, r1 = ex.head_rows
    n_cat = ex.n_head * d
    o = ex.out_projection
    o_name = ".".join(o.weight.split(".")[-2:])
    section(f"5. all {ex.n_head} heads at token {i}, concatenated, then W_O")
    note(f"concat = [z_0 | … | z_{ex.n_head - 1}], {ex.n_head} × {d} = {n_cat} values; ▶ marks head {h}:", "")
    h_w, span_w = len(str(ex.n_head - 1)), len(f"{n_cat - d}:{n_cat}")
    for g in range(ex.n_head):
        prefix = f"{'▶' if g == h else ' '} z_{g:<{h_w}} [{f'{g * d}:{(g + 1) * d}':>{span_w}}] "
        style = "bold yellow" if g == h else ""
        if full:
            out.append([("  " + prefix.rstrip(), style)])
            out.extend([[(" " * 6 + row, style)] for row in vec_rows(ex.heads_output[g], width - 6)])
        else:
            out.extend(labelled_vectors("  " + prefix, [("=", ex.heads_output[g])], width, style))
    shape = f"[{n_cat}, {ex.n_embd}]" if o.in_out else f"[{ex.n_embd}, {n_cat}]"
    if o.bias is None:
        note(f"{glue(f'W_O = {o_name} {shape}')}, no bias", "")
    else:
        b_name = ".".join(o.bias.split(".")[-2:])
        note(f"{glue(f'W_O = {o_name} {shape},')} {glue(f'b_O = {b_name} [{ex.n_embd}]')}", "")
    formula = ("concat · W_O" if o.in_out else "concat · W_Oᵀ") + ("" if o.bias is None else " + b_O")
    out.extend(equation(f"out_{i}", formula, ex.output, width, full))
    note(f"the attention block's output at token {i}: it is added to the residual stream {x_i}" + (
        ", after the post_attention_layernorm" if ex.norm is None and ex.qk_norm is not None else ""))
    part = f"z_{h} · W_O[{r0}:{r1}, :]" if o.in_out else f"z_{h} · W_O[:, {r0}:{r1}]ᵀ"
    out.extend(equation(f"head {h}'s part", part, ex.head_share, width, full))

    section("6. check")
    if ex.matches:
        out.extend(wrapped(f"matches the model's forward pass: {glue(f'max |diff| {ex.max_abs_diff:.1e}')}", width, 2, "bold green"))
    else:
        worst = max(ex.diffs, key=lambda k: ex.diffs[k] / ex.bounds[k])
        text = (
            f"DOES NOT match the model's forward pass: max |diff| {ex.max_abs_diff:.1e}; "
            f"{worst} differs by {ex.diffs[worst]:.1e} (allowed {ex.bounds[worst]:.1e})"
        )
        out.extend(wrapped(text, width, 2, "bold red"))
    return out


def render_explain(console: Console, ex: Explanation, tokens: Sequence[str], *, full: bool = False) -> None:
    for line in explain_lines(ex, tokens, console.width, full=full):
        console.print(Text.assemble(*line, no_wrap=True, overflow="ellipsis"))


def explain_text(ex: Explanation, tokens: Sequence[str], *, full: bool = False, width: int = PLAIN_WIDTH) -> str:
    """The explanation as plain aligned text: no colour, no ANSI."""
    lines = explain_lines(ex, tokens, width, full=full, plain=True)
    return "".join("".join(text for text, _ in line).rstrip() + "\n" for line in lines)


# --- mha ablate / mha prune ---------------------------------------------------------------------------------------


def _delta_cell(delta: float, top: float, label: str = "") -> Text:
    """A loss change on a background coloured by its size relative to the largest increase (`top`); decreases dim."""
    if delta <= 0 or top <= 0:
        return Text(f"{label}{delta:+.3f}", style="dim")
    x = min(delta / top, 1.0)
    return Text(f"{label}{delta:+.3f}", style=f"{'black' if x > 0.6 else 'white'} on {weight_colour(x)}")


def render_ablate(console: Console, doc: dict, top: int) -> None:
    """Layer x head grid of Δloss (each head removed alone), then the `top` heads that matter most."""
    from mhacli.plain import ablate_header

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
    one_line(console, Text(f"heads that matter most ({min(top, len(doc['heads']))} of {len(doc['heads'])})", style="bold"))
    ranking = Table()
    for name, justify in (("#", "right"), ("head", "left"), ("kind", "left"), ("loss", "right"), ("Δloss", "right"), ("Δ%", "right")):
        ranking.add_column(name, justify=justify)
    for rank, r in enumerate(doc["heads"][:top], start=1):
        ranking.add_row(
            str(rank), f"L{r['layer']}H{r['head']}", Text(r["kind"], style=KIND_STYLE[r["kind"]][1]), f"{r['loss']:.4f}",
            _delta_cell(r["delta"], best), f"{r['delta_pct']:+.1f}%",
        )  # fmt: skip
    console.print(ranking)


def render_prune(console: Console, doc: dict) -> None:
    """The two pruning curves as a chart, then the prunable fractions and the pruned heads."""
    from mhacli.plain import ablate_header, prune_chart, prune_summary

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


def render_census(console: Console, doc: dict, top: int) -> None:
    """The census: what ran, a layer x head grid of kinds with their confidence, the strongest heads of each kind."""
    from mhacli.plain import census_sources, evidence_text

    for line in census_sources(doc):
        console.print(Text(line, style="dim"))
    n_layer, n_head = doc["model"]["n_layer"], doc["model"]["n_head"]
    by_pos = {(h["layer"], h["head"]): h for h in doc["heads"]}

    def cell(layer: int, h: int) -> Cell | None:
        head = by_pos.get((layer, h))
        if head is None:
            return None
        letter, style = KIND_STYLE[head["kind"]]
        return Cell(letter, style, head["confidence"])

    says = "confidence, 0–1: the share of the evidence's texts on which the head's kind rule holds"
    print_grid(console, "kind of every head and its confidence", cell, range(n_layer), range(n_head), says)
    console.print()
    one_line(console, Text("strongest heads of each kind", style="bold"))
    table = Table()
    for name, justify in (("kind", "left"), ("head", "left"), ("confidence", "right"), ("evidence", "left")):
        table.add_column(name, justify=justify)
    for kind in KINDS:
        heads = [h for h in doc["heads"] if h["kind"] == kind]
        heads.sort(key=lambda h: (-(h["evidence"]["mean"] or 0.0), h["layer"], h["head"]))
        for k, h in enumerate(heads[:top]):
            table.add_row(Text(kind, style=KIND_STYLE[kind][1]) if k == 0 else "", f"L{h['layer']}H{h['head']}",
                          f"{h['confidence']:.2f}", evidence_text(h))  # fmt: skip
        if len(heads) > top:
            table.add_row("", Text(f"… {len(heads) - top} more", style="dim"), "", "")
    console.print(table)
