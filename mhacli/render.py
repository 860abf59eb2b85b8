"""Terminal views with rich: attention maps, query bars, top keys, the stats grid. The only module that imports rich."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from mhacli.display import key_window, token_label, window
from mhacli.heads import HeadView
from mhacli.stats import KIND_RULES, KINDS, STAT_NAMES

SHADES = " ░▒▓█"
# viridis anchors, low -> high
_RAMP = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
KIND_STYLE = {
    "induction": ("I", "bold magenta"),
    "previous-token": ("P", "bold cyan"),
    "duplicate-token": ("D", "bold blue"),
    "self": ("S", "bold green"),
    "sink": ("K", "bold yellow"),
    "broad": ("B", "white"),
    "mixed": ("·", "dim"),
}
KEY_STATS = ("previous_token", "induction", "first_token", "entropy")


def make_console(file=None, width: int | None = None) -> Console:
    return Console(file=file, width=width, highlight=False, soft_wrap=False)


def weight_colour(w: float) -> str:
    w = float(min(max(w, 0.0), 1.0)) * (len(_RAMP) - 1)
    i = min(int(w), len(_RAMP) - 2)
    f = w - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(_RAMP[i], _RAMP[i + 1]))
    return f"#{r:02x}{g:02x}{b:02x}"


def shade(w: float) -> str:
    if w < 0.01:
        return " "
    return SHADES[min(len(SHADES) - 1, 1 + int(w * (len(SHADES) - 1)))]


def fmt_stat(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def head_title(view: HeadView) -> Text:
    s = view.stats
    letter, style = KIND_STYLE[s.kind]
    title = Text.assemble((f"layer {s.layer} head {s.head}", "bold"), "  ", (s.kind, style))
    for name in KEY_STATS:
        title.append(f"  {name} {fmt_stat(s.values[name])}", style="dim")
    return title


def legend() -> Text:
    text = Text("weight ")
    for w in np.linspace(0, 1, 11):
        text.append(shade(w) * 2 if w >= 0.01 else "  ", style=f"{weight_colour(w)} on {weight_colour(w)}" if w >= 0.01 else "")
    text.append(" 0 → 1   (rows: query token, columns: key token index)")
    return text


def attention_map(view: HeadView, tokens: Sequence[str], width: int, start: int = 0) -> Group:
    """One head's map, windowed to fit `width` columns: rows are queries, columns keys (2 cells per key)."""
    attn = view.attention
    n_seq = attn.shape[0]
    label_w = min(12, max(len(token_label(t)) for t in tokens)) + len(str(n_seq - 1)) + 2
    n_cols = max(4, (width - label_w - 1) // 2)
    lo, hi = window(n_seq, start, n_cols)
    klo, khi = key_window(hi, n_cols)
    parts: list = [head_title(view)]
    if (lo, hi) != (0, n_seq) or klo > 0:
        more = f"; --from {hi} shows the next rows" if hi < n_seq else ""
        parts.append(Text(f"showing query rows {lo}–{hi - 1} and keys {klo}–{khi - 1} of {n_seq} tokens{more}", style="dim"))
    tens = Text(" " * label_w)
    ones = Text(" " * label_w)
    for j in range(klo, khi):
        tens.append(f"{(j // 10) % 10 if j % 10 == 0 else ' ':<2}", style="dim")
        ones.append(f"{j % 10:<2}", style="dim")
    parts += [tens, ones]
    idx_w = len(str(n_seq - 1))
    for i in range(lo, hi):
        row = Text(f"{i:>{idx_w}} {token_label(tokens[i], label_w - idx_w - 2):<{label_w - idx_w - 2}} ")
        for j in range(klo, khi):
            if j > i:
                row.append("  ")
                continue
            w = float(attn[i, j])
            cell = shade(w) * 2
            row.append(cell, style=f"{weight_colour(w)} on {weight_colour(w)}" if w >= 0.01 else "")
        parts.append(row)
    return Group(*parts)


def query_bars(view: HeadView, tokens: Sequence[str], query: int, width: int, limit: int = 40) -> Group:
    """Where query token `query` looks in this head: one bar per key."""
    row = view.attention[query, : query + 1]
    keys = list(range(query + 1))
    note = None
    if len(keys) > limit:
        keys = sorted(np.argsort(row)[::-1][:limit].tolist())
        note = Text(f"the {limit} strongest of {query + 1} keys, in text order", style="dim")
    label_w = 14
    bar_w = max(10, width - label_w - 16)
    lines: list = [head_title(view), Text(f"query {query} {token_label(tokens[query], 20)!r}", style="bold")]
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


def top_keys(view: HeadView, tokens: Sequence[str], k: int) -> Group:
    """The k strongest keys of every query row, as text."""
    lines: list = [head_title(view)]
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
) -> None:
    console.print(Text(f"{len(tokens)} tokens: ", style="bold") + Text(" ".join(f"{i}:{token_label(t)}" for i, t in enumerate(tokens[:60]))) + Text(" …" if len(tokens) > 60 else ""))
    if query is None and top is None:
        console.print(legend())
    for view in views:
        console.print()
        if query is not None:
            console.print(query_bars(view, tokens, query, console.width))
        elif top is not None:
            console.print(top_keys(view, tokens, top))
        else:
            console.print(attention_map(view, tokens, console.width, start))


def render_stats(console: Console, views: Sequence[HeadView], n_layer: int, n_head: int, stat: str, n_tokens: int) -> None:
    """The one-screen overview: a layer x head grid (kind letter and one statistic), then the top heads of each kind."""
    by_pos = {(v.layer, v.head): v for v in views}
    grid = Table(title=f"kind and {stat} of every head ({n_tokens} tokens)", show_lines=False, pad_edge=False)
    grid.add_column("layer", justify="right", style="bold")
    for h in range(n_head):
        grid.add_column(f"H{h}", justify="center")
    for layer in range(n_layer):
        cells = []
        for h in range(n_head):
            v = by_pos.get((layer, h))
            if v is None:
                cells.append("")
                continue
            letter, style = KIND_STYLE[v.stats.kind]
            cells.append(Text.assemble((letter, style), " ", fmt_stat(v.stats.values[stat])))
        grid.add_row(str(layer), *cells)
    console.print(grid)
    console.print(Text("  ".join(f"{KIND_STYLE[k][0]} {k}" for k in KINDS), style="dim"))
    top = Table(title="most distinctive heads of each kind")
    top.add_column("kind")
    top.add_column("heads (score)")
    for kind, stat_name, threshold in KIND_RULES:
        if stat_name not in STAT_NAMES:
            continue
        scored = [(v.stats.values[stat_name], v) for v in views if v.stats.kind == kind and v.stats.values[stat_name] is not None]
        scored.sort(key=lambda t: -t[0])
        if scored:
            top.add_row(Text(kind, style=KIND_STYLE[kind][1]), ", ".join(f"L{v.layer}H{v.head} ({s:.2f})" for s, v in scored[:5]))
    if top.row_count:
        console.print(top)
    else:
        console.print(Text("no head reaches a kind threshold on this text (all mixed or broad)", style="dim"))


def render_info(console: Console, lines: Sequence[tuple[str, str]]) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in lines:
        table.add_row(key, value)
    console.print(table)


def render_verify(console: Console, lines: Sequence[str], passed: bool) -> None:
    for line in lines[:-1]:
        console.print(Text(line, style="red" if line.endswith("FAIL") else ""))
    console.print(Text(lines[-1], style="bold green" if passed else "bold red"))
