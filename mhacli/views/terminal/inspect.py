"""`mha inspect` on a terminal.

The heads' maps (one large, or small multiples a layer per row), a query's bars, every query's strongest keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.console import Console, Group, NewLine, RenderableType
from rich.text import Text

from mhacli.analyses.heads import HeadView
from mhacli.analyses.partial import MapRequest, strongest
from mhacli.analyses.stats import STAT_NAMES, TOO_PLAIN, undecidable
from mhacli.io.tokenizer import quoted
from mhacli.views.display import token_label
from mhacli.views.terminal.common import (
    KIND_STYLE,
    auto_panel_keys,
    head_title,
    inspect_title,
    kind_evidence,
    one_line,
    shares_kv,
    weight_colour,
    window_note,
)
from mhacli.views.terminal.heatmap import GAP, MapWindow, fit, map_window, panel, side_by_side, uses_color
from mhacli.views.terminal.heatmap import legend as heat_legend


def screen_keys(height: int, panel_rows: int, color: bool) -> int:
    """The largest square window for which `panel_rows` rows of panels fit `height` lines.

    Each panel: a blank line, title, ruler and the map's lines (two query rows a line with colour); then the window
    note and the next prompt.
    """
    lines = (height - 2) // max(1, panel_rows) - 3  # and a line for the prompt after
    return max(1, lines * (2 if color else 1))


def map_request(
    n_seq: int,
    *,
    width: int,
    query: int | None = None,
    top: int | None = None,
    start: int | None = None,
    keys: tuple[int, int] | None = None,
    panel_keys: int | None = None,
) -> MapRequest:
    """What inspect_view will draw of each map on a console `width` wide, so only that is computed.

    Query row `query` (keys 0..query), every row's `top` keys, or the largest window map_panels can choose (its rows
    and keys are never more than max(width, panel_keys); any smaller window from the same start and keys lies
    inside; start None: the windows end at the last token, and a smaller one ending there lies inside too), and at
    least 12, the fewest keys map_panels shows on a narrow console.
    """
    if query is not None:
        return MapRequest(rows=(query,), keys=tuple(range(query + 1)))
    if top is not None:
        return MapRequest(top=top)
    # map_panels never shows fewer than min(n_seq, 12) keys a panel nor fewer than 2 (map_window), however narrow
    # the console (COLUMNS=1): the request covers those windows too
    most = max(width, panel_keys or 0, 12)
    win = map_window(n_seq, start, most, most, keys)
    return MapRequest(rows=tuple(range(win.lo, win.hi)), keys=tuple(sorted({0, *win.keys})))


def map_panels(
    console: Console,
    views: Sequence[HeadView],
    tokens: Sequence[str],
    *,
    start: int | None = None,
    keys: tuple[int, int] | None = None,
    panel_keys: int | None = None,
    used_lines: int = 2,
) -> list[RenderableType]:
    """Every selected head's map as panels, all with the same window: the window's note, then the panels' lines.

    One head is drawn large (token labels, wider cells when they fit); several heads as small multiples, a layer
    per row of panels (wrapping when a layer does not fit). `used_lines`: what is above them on the screen.
    """
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
        lines = panel(
            views[0].shown_map(),
            inspect_title(views[0], show_kv),
            win,
            cell=cell,
            color=color,
            tokens=tokens,
            token_w=token_w,
        )
        return [*window_note(win), *(one_line(line, "crop") for line in beside(lines, views[0], tokens, win, width))]
    by_layer: dict[int, list[HeadView]] = {}
    for v in views:
        by_layer.setdefault(v.layer, []).append(v)
    per_row = max(len(vs) for vs in by_layer.values())
    n_keys = panel_keys or auto_panel_keys(n_seq, width, per_row)
    if panel_keys is None and console.is_terminal:  # on a screen: every head on it, where 12-key windows allow
        n_keys = min(n_keys, max(min(n_seq, 12), screen_keys(console.height - used_lines, len(by_layer), color)))
    win = map_window(n_seq, start, n_keys, n_keys, keys)
    # Every panel as wide: the longest whole title where a layer's panels still fit side by side, else the head names
    # and kinds (`L0H3 previous-token`, never cut inside a word: the figures after them go first).
    name_w = 1 + max(len(" ".join(inspect_title(v, show_kv).plain.split(" ", 2)[:2])) for v in views)
    room = (width + GAP) // per_row - GAP
    short = max(inspect_title(v, show_kv).cell_len for v in views) > room  # `(111)` for `(111 rows)` where tight
    title_w = max(inspect_title(v, show_kv, short).cell_len for v in views)
    panels = [
        (
            v.layer,
            panel(
                v.shown_map(),
                inspect_title(v, show_kv, short),
                win,
                cell=1,
                color=color,
                min_width=max(name_w, min(title_w, room)),
            ),
        )
        for v in views
    ]
    panel_w = panels[0][1][0].cell_len
    fit_n = max(1, (width + GAP) // (panel_w + GAP))
    shown: list[RenderableType] = [*window_note(win)]
    for layer in by_layer:
        row = [p for lay, p in panels if lay == layer]
        for k in range(0, len(row), fit_n):
            shown.append(NewLine())
            shown += (one_line(line, "crop") for line in side_by_side(row[k : k + fit_n]))
    return shown


SIDE_MIN = 24  # columns a side panel needs; narrower, it goes under the map
SIDE_MAX = 72
SIDE_KEYS = 8


def head_side(view: HeadView, tokens: Sequence[str], win: MapWindow, width: int) -> list[Text]:
    """What the map of one head leaves room for: its statistics, and where the last shown query looks (bars).

    The last shown query is the text's last token in the default window, the position that predicts the next one.
    Its keys are those of the window (all of them when the map is whole).
    """
    s = view.stats
    lines = [Text("statistics", style="bold")]
    lines.append(Text.assemble(f"{'kind':<16}", (s.kind, KIND_STYLE[s.kind][1]), kind_evidence(s)))
    for name in STAT_NAMES:
        value = s.values[name]
        lines.append(Text(f"{name.replace('_', ' '):<16}" + ("–" if value is None else f"{value:.3f}")))
    q = win.hi - 1
    keys = [j for j in dict.fromkeys(win.keys) if j <= q]
    attention = view.shown_map()
    weights = np.array([float(attention[q, j]) for j in keys])
    ranked = np.argsort(-weights, kind="stable")[:SIDE_KEYS].tolist()
    order = [n for k, n in enumerate(ranked) if k == 0 or weights[n] >= 0.01]  # the strongest first; none under 0.01
    lines += [Text(""), Text(f"query {q} {quoted(token_label(tokens[q], 20))}: its strongest keys", style="bold")]
    bar_w = max(4, width - 20)
    for n in order:
        w = float(weights[n])
        line = Text(f"{keys[n]:>5} {token_label(tokens[keys[n]], 8):<8} {w:.2f} ")
        line.append("█" * int(round(w * bar_w)), style=weight_colour(w))
        lines.append(line)
    if len(keys) < q + 1:
        lines.append(Text(f"among the {len(keys)} keys shown of {q + 1}", style="dim"))
    return [fit(line, width) for line in lines]


def beside(lines: list[Text], view: HeadView, tokens: Sequence[str], win: MapWindow, width: int) -> list[Text]:
    """One head's map with its side panel: to the right where the width leaves SIDE_MIN columns, else under it."""
    room = width - lines[0].cell_len - GAP
    if room >= SIDE_MIN:
        return side_by_side([lines, head_side(view, tokens, win, min(room, SIDE_MAX))])
    return [*lines, Text(""), *head_side(view, tokens, win, min(width, SIDE_MAX))]


def query_bars(
    view: HeadView, tokens: Sequence[str], query: int, width: int, limit: int = 40, show_kv: bool = False
) -> Group:
    """Where query token `query` looks in this head: one bar per key."""
    row = view.shown_map()[query, : query + 1]
    keys = list(range(query + 1))
    note = None
    if len(keys) > limit:
        keys = sorted(np.argsort(row)[::-1][:limit].tolist())
        note = Text(f"the {limit} strongest of {query + 1} keys, in text order", style="dim")
    label_w = 14
    bar_w = max(10, width - label_w - 16)
    lines: list = [
        head_title(view, show_kv),
        Text(f"query {query} {quoted(token_label(tokens[query], 20))}", style="bold"),
    ]
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
    attention = view.shown_map()
    for i in range(attention.shape[0]):
        best, weights = strongest(attention, i, k)
        line = Text(f"{i:>5} {token_label(tokens[i], 12):<12} → ")
        for rank, (j, w) in enumerate(zip(best, weights)):
            if rank:
                line.append(", ")
            line.append(f"{j}:{token_label(tokens[j], 12)}", style=weight_colour(float(w)) if w >= 0.01 else "dim")
            line.append(f" {w:.2f}")
        lines.append(line)
    return Group(*lines)


def inspect_view(
    console: Console,
    views: Sequence[HeadView],
    tokens: Sequence[str],
    *,
    query: int | None = None,
    top: int | None = None,
    start: int | None = None,
    keys: tuple[int, int] | None = None,
    panel_keys: int | None = None,
) -> Group:
    """`mha inspect` on `console`: the tokens, then the maps (map_panels), a query's bars or every query's top keys."""
    too_plain = bool(views) and undecidable(views[0].stats.support)
    listed = (
        Text(f"{len(tokens)} tokens: ", style="bold")
        + Text(" ".join(f"{i}:{token_label(t)}" for i, t in enumerate(tokens[:60])))
        + Text(" …" if len(tokens) > 60 else "")
    )
    shown: list[RenderableType] = [Text(TOO_PLAIN, style="dim")] if too_plain else []
    shown.append(listed)
    if query is None and top is None:
        shown.append(one_line(heat_legend(uses_color(console))))
        used = len(listed.wrap(console, console.width)) + 1 + too_plain
        shown += map_panels(console, views, tokens, start=start, keys=keys, panel_keys=panel_keys, used_lines=used)
        return Group(*shown)
    show_kv = shares_kv(views)
    for view in views:
        shown.append(NewLine())
        if query is not None:
            shown.append(query_bars(view, tokens, query, console.width, show_kv=show_kv))
        elif top is not None:  # one of query and top is given (both None returned above)
            shown.append(top_keys(view, tokens, top, show_kv=show_kv))
    return Group(*shown)
