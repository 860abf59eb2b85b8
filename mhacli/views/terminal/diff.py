"""`mha diff` on a terminal: the divergence grid, the most changed heads, and the most changed head's two maps."""

from __future__ import annotations

from collections.abc import Sequence

from rich.box import SIMPLE_HEAD
from rich.console import Console, Group, JustifyMethod, NewLine, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from mhacli.analyses.diff import METRICS, DiffReport
from mhacli.analyses.heads import HeadView
from mhacli.views.terminal.common import (
    KIND_STYLE,
    auto_panel_keys,
    grid_view,
    inspect_title,
    one_line,
    weight_colour,
    window_note,
)
from mhacli.views.terminal.grid import Cell
from mhacli.views.terminal.heatmap import GAP, map_window, panel, side_by_side, uses_color
from mhacli.views.terminal.heatmap import legend as heat_legend

DIFF_KEY_STATS = (("Δprev", "previous_token"), ("Δind", "induction"), ("Δsink", "first_token"), ("Δentropy", "entropy"))


def _divergence_cell(value: float, top: float, label: str = "") -> Text:
    """A divergence on a background coloured by its size relative to the largest (`top`)."""
    x = value / top if top > 0 else 0.0
    colour = weight_colour(x)
    ink = "black" if x > 0.6 else "white"
    return Text(f"{label}{value:.3g}", style=f"{ink} on {colour}")


def fmt_delta(v: float | None) -> str:
    return "–" if v is None else f"{v:+.2f}"


def diff_grid(console: Console, report: DiffReport) -> list[Text]:
    """Layer x head grid of the compared heads, coloured by divergence, with B's kind letter.

    Matched: B's layout, each B head against its matched A head.
    """
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
    return grid_view(console, title, cell, range(n_layer), range(n_head), says, cell_w=9)


def diff_ranking(console: Console, report: DiffReport, top: int) -> Table:
    """The `top` most changed heads with their kinds in A and B and the change of the key statistics.

    As many of those statistics as the terminal has room for.
    """
    best = report.max_divergence
    rows = report.heads[:top]
    paired = report.mode == "paired"
    layouts = [(n, True) for n in range(len(DIFF_KEY_STATS), -1, -1)] + [(0, False)]  # widest first
    for n_stats, kind_names in layouts:
        stats = DIFF_KEY_STATS[:n_stats]
        table = Table(box=SIMPLE_HEAD, pad_edge=False)
        right: JustifyMethod = "right"
        columns: tuple[tuple[str, JustifyMethod], ...] = (
            ("#", "right"),
            ("head" if paired else "A head → B head", "left"),
            (report.metric, "right"),
            ("kind in A → in B", "left"),
            *((short, right) for short, _ in stats),
        )
        for name, justify in columns:
            table.add_column(name, justify=justify, no_wrap=True)
        for rank, r in enumerate(rows, start=1):
            name = f"L{r.layer_b}H{r.head_b}" if paired else f"L{r.layer_a}H{r.head_a} → L{r.layer_b}H{r.head_b}"
            (la, sa), (lb, sb) = KIND_STYLE[r.kind_a], KIND_STYLE[r.kind_b]
            kinds = Text.assemble((r.kind_a if kind_names else la, sa), " → ", (r.kind_b if kind_names else lb, sb))
            table.add_row(
                str(rank),
                name,
                _divergence_cell(r.divergence, best),
                kinds,
                *(fmt_delta(r.stat_deltas[key]) for _, key in stats),
            )
        unbounded = console.options.update_width(10_000)
        if Measurement.get(console, unbounded, table).maximum <= console.width:
            break
    return table


def diff_view(
    console: Console,
    report: DiffReport,
    model_a: str,
    model_b: str,
    tokens: Sequence[str],
    maps: tuple[HeadView, HeadView] | None,
    *,
    top: int = 10,
    start: int | None = None,
) -> Group:
    """Terminal view of `mha diff`: the grid, the ranking, then the most changed head's two maps side by side."""
    (la, ha), (lb, hb) = report.shape_a, report.shape_b
    mode = "paired head by head" if report.mode == "paired" else "heads matched one-to-one (Hungarian assignment)"
    texts = "1 text" if report.n_texts == 1 else f"mean over {report.n_texts} texts"
    shown: list[RenderableType] = [
        Text.assemble(("MODEL_A ", "bold"), model_a, f"  ({la} layers x {ha} heads)"),
        Text.assemble(("MODEL_B ", "bold"), model_b, f"  ({lb} layers x {hb} heads)"),
        Text(f"{METRICS[report.metric]}; {mode}; {texts}", style="dim"),
        *diff_grid(console, report),
        NewLine(),
        one_line(Text(f"most changed heads ({min(top, len(report.heads))} of {len(report.heads)})", style="bold")),
        diff_ranking(console, report, top),
        *nearest_heads(report, top),
    ]
    if maps is None:
        shown.append(Text("no head differs: the two models' attention is identical on this text", style="bold green"))
        return Group(*shown)
    first = report.heads[0]
    shown.append(NewLine())
    shown.append(Text(f"most changed head, on the first text ({first.divergence:.3g} {report.metric}):", style="bold"))
    color = uses_color(console)
    n_keys = auto_panel_keys(len(tokens), console.width, 2)
    win = map_window(len(tokens), start, n_keys, n_keys)
    titles = [
        Text.assemble((name + " ", "bold"), inspect_title(v))
        for name, v in (("MODEL_A", maps[0]), ("MODEL_B", maps[1]))
    ]
    # as wide as `MODEL_A L1H2 induction` at least: a kind is never cut inside its word (the figures go first)
    kind_w = max(len(" ".join(t.plain.split(" ")[:3])) for t in titles)
    room = (console.width - GAP) // 2
    pair = [
        panel(v.shown_map(), t, win, cell=1, color=color, min_width=min(max(kind_w, t.cell_len), max(kind_w, room)))
        for t, v in zip(titles, maps, strict=True)
    ]
    shown += window_note(win, moves="--from I moves the window (its keys end at its last row)")
    shown += (one_line(line, "crop") for line in side_by_side(pair))
    shown.append(one_line(heat_legend(color)))
    return Group(*shown)


def nearest_heads(report: DiffReport, top: int) -> list[RenderableType]:
    """Matched heads: the MODEL_B heads whose nearest MODEL_A head is not the one they were matched with (a table)."""
    if report.mode != "matched":
        return []
    partner = {(r.layer_b, r.head_b): (r.layer_a, r.head_a) for r in report.heads}
    moved = [n for n in report.nearest or [] if partner.get((n.layer_b, n.head_b)) != (n.layer_a, n.head_a)]
    if not moved:
        return []
    near = Table(box=SIMPLE_HEAD, pad_edge=False)
    for name in ("B head", "nearest A head", report.metric):
        near.add_column(name)
    for n in moved[:top]:
        near.add_row(f"L{n.layer_b}H{n.head_b}", f"L{n.layer_a}H{n.head_a}", f"{n.divergence:.3g}")
    return [one_line(Text("MODEL_B heads whose nearest MODEL_A head is not their match", style="bold")), near]
