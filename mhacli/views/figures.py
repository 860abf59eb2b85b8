"""Static figures (`--save FILE.png|.svg|.pdf`) with matplotlib: the only module that imports it, inside functions.

One function per command view, taking what the terminal view gets (HeadViews, a DiffReport, the ablate / prune /
census documents). Figures are built on `matplotlib.figure.Figure` directly (no pyplot, no GUI backend, no display:
Agg for PNG); text stays text in SVG (`svg.fonttype: none`) and no dates or software versions are written, so the
same input gives the same bytes. Maps use viridis on a fixed 0-1 scale shared by every panel; differences a
diverging map centred on 0.

Many heads (SmolLM2-135M: 30 layers x 9 heads; docs/pictures-many-heads.md):
- no text smaller than MIN_PT (5 pt) at the saved size; panels too small for full titles get `L1H2 I 0.71` (the
  kind's letter, its key in the caption);
- one colour bar a figure (a page), shared by every panel;
- the canvas grows with the grid up to PAGE_IN (7.5 x 10 in); a grid of maps taller than that is split by layers
  into pages (a `Pages`, PANEL_MIN_IN the smallest panel): a PDF holds every page, a PNG or SVG the first page,
  whose caption names the pages and the layers on it (`-l LAYER` picks layers; `to_pages` gives every page's bytes
  for a writer of NAME-1.png, NAME-2.png, ...).
"""

from __future__ import annotations

import atexit
import io
import math
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mhacli.analyses.heads import HeadView
from mhacli.analyses.stats import KINDS, HeadStats
from mhacli.io.tokenizer import quoted
from mhacli.views.display import KIND_HEX, KIND_LETTER, token_label

if TYPE_CHECKING:  # matplotlib is imported inside functions only, at run time
    from matplotlib.typing import RcKeyType

COLUMN_IN = 3.4  # a paper column
WIDE_IN = 7.0  # a full page width
MIN_PT = 5.0  # the smallest text on any figure, in points at the saved size
PAGE_IN = (7.5, 10.0)  # the largest canvas (inches, width x height): Letter inside half-inch margins (fits A4)
PANEL_MIN_IN = 0.6  # the smallest map panel of a grid of maps
GRID_CELL_MIN_IN = 0.25  # the smallest cell of a layer x head grid (stats, diff, ablate, census)
MAP_CMAP = "viridis"
DIFF_CMAP = "RdBu_r"
ABLATED_INK = "#b2182b"  # the title naming the heads a run removed (--ablate)
RC: dict[RcKeyType, Any] = {
    "svg.hashsalt": "mha",  # ids in the SVG: the same every run
    "svg.fonttype": "none",  # text stays text (searchable, checkable)
    "pdf.fonttype": 42,  # TrueType in the PDF: text selectable
    "text.parse_math": False,  # a token `$x$` is shown as it is
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "figure.dpi": 100,
    "image.interpolation": "nearest",
    "axes.unicode_minus": True,
}
METADATA = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
    "pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
}


def _default_config_dirs() -> list[Path]:
    """The directories matplotlib makes its config and cache in when MPLCONFIGDIR is unset (matplotlib.__init__)."""
    if sys.platform.startswith(("linux", "freebsd")):
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return [Path(config, "matplotlib"), Path(cache, "matplotlib")]
    return [Path.home() / ".matplotlib"]


def _usable(directory: Path) -> bool:
    try:
        directory = directory.resolve()
        directory.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):
        return False
    return directory.is_dir() and os.access(directory, os.W_OK)


def _private_dir() -> str | None:
    """This user's own directory under the temporary one, kept between runs (matplotlib's font cache lives there).

    Used only when it is a directory of this user's that nobody else may enter; otherwise a fresh one, removed at
    exit, as matplotlib's own fallback is.
    """
    getuid = getattr(os, "getuid", None)
    if getuid is not None:
        kept = Path(tempfile.gettempdir(), f"mha-matplotlib-{getuid()}")
        try:
            kept.mkdir(mode=0o700, exist_ok=True)
            st = kept.lstat()
            if stat.S_ISDIR(st.st_mode) and st.st_uid == getuid() and not st.st_mode & 0o077:
                return str(kept)
        except OSError:
            pass
    try:
        fresh = tempfile.mkdtemp(prefix="mha-matplotlib-")
    except OSError:
        return None
    atexit.register(shutil.rmtree, fresh, ignore_errors=True)
    return fresh


def quiet_config_dir() -> None:
    """Point MPLCONFIGDIR at a private directory when matplotlib's default one is unusable.

    With HOME read-only, a file or unset, matplotlib makes a temporary directory itself but logs two multi-line
    warnings about it (the CLI showed them as `warning:` lines on every --save), and rebuilds its font cache on every
    run. A user's own MPLCONFIGDIR is kept, and so is a matplotlib already imported.
    """
    if os.environ.get("MPLCONFIGDIR") or "matplotlib" in sys.modules:
        return
    try:
        if all(_usable(d) for d in _default_config_dirs()):
            return
    except RuntimeError:  # Path.home(): no HOME and no password entry
        pass
    private = _private_dir()
    if private is not None:  # else no temporary directory either: matplotlib says why, as it would have
        os.environ["MPLCONFIGDIR"] = private


@contextmanager
def style() -> Iterator[Any]:
    quiet_config_dir()
    import matplotlib

    with matplotlib.rc_context(RC):
        yield matplotlib


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


class Pages(list):
    """A figure too tall for one page (PAGE_IN): its pages, each a Figure with its own colour bar."""


def to_bytes(fig, kind: str, dpi: int) -> bytes:
    """The figure as PNG (at `dpi`), SVG or PDF bytes, without dates or versions.

    `Pages`: every page in one PDF; a PNG or SVG holds the first page, whose caption says so (`to_pages` gives
    every page's bytes for a writer that writes NAME-1.png, NAME-2.png, ...).
    """
    if isinstance(fig, Pages):
        if kind != "pdf":
            return to_bytes(fig[0], kind, dpi)
        from matplotlib.backends.backend_pdf import PdfPages

        buf = io.BytesIO()
        with style(), PdfPages(buf, metadata=METADATA["pdf"]) as pdf:
            for page in fig:
                pdf.savefig(page, dpi=dpi, facecolor="white")
        return buf.getvalue()
    buf = io.BytesIO()
    with style():
        fig.savefig(buf, format=kind, dpi=dpi, metadata=METADATA[kind], facecolor="white")
    return buf.getvalue()


def to_pages(fig, kind: str, dpi: int) -> list[bytes]:
    """Each page's bytes (one for a one-page figure)."""
    return [to_bytes(page, kind, dpi) for page in (fig if isinstance(fig, Pages) else [fig])]


def close(fig) -> None:
    for page in fig if isinstance(fig, Pages) else [fig]:
        page.clear()


def figure_for(picture) -> Any:
    """The figure of a save.Picture: the builder its result names (Pictures.figure), in this module.

    A run with heads removed is titled with them (every page).
    """
    with style():
        fig = globals()[picture.of.figure](caption=picture.caption, **picture.data)
        if picture.ablated is not None:
            for page in fig if isinstance(fig, Pages) else [fig]:
                page.suptitle(picture.ablated.describe(), fontsize=7, color=ABLATED_INK, fontweight="bold")
        return fig


# --- shared pieces --------------------------------------------------------------------------------------------------


def map_title(view: HeadView) -> str:
    """`L1H2 induction 0.71 (9 rows)`: the head, its kind and the score behind the kind (rows where it needs them)."""
    s = view.stats
    score = "–" if s.score is None else f"{s.score:.2f}"
    rows = f" ({s.kind_support} rows)" if s.kind_support is not None else ""
    return f"L{s.layer}H{s.head} {s.kind} {score}{rows}"


def tick_step(n: int, room_pt: float, font_pt: float) -> int:
    """Label every k-th of n positions so that labels `font_pt` high fit into `room_pt`."""
    fits = max(1, int(room_pt / (font_pt * 1.15)))
    return max(1, math.ceil(n / fits))


def token_ticks(ax, tokens: Sequence[str], size_in: float, font_pt: float, *, rows: bool, cols: bool) -> None:
    """Token labels on the map's axes where they fit, every k-th (with its position) otherwise."""
    n = len(tokens)
    k = tick_step(n, size_in * 72, font_pt)
    pos = list(range(0, n, k))
    labels = [token_label(tokens[i], 8) if k == 1 else f"{i} {token_label(tokens[i], 6)}" for i in pos]
    if rows:
        ax.set_yticks(pos, labels, fontsize=font_pt)
    else:
        ax.set_yticks([])
    if cols:
        ax.set_xticks(pos, labels, fontsize=font_pt, rotation=90)
    else:
        ax.set_xticks([])
    ax.tick_params(length=1.5, pad=1)


def draw_map(ax, attention: np.ndarray, *, cmap: str = MAP_CMAP, vmin: float = 0.0, vmax: float = 1.0):
    """[n_seq, n_seq] -> the image; the upper triangle (no key visible) left white."""
    n = attention.shape[0]
    masked = np.ma.masked_array(attention, mask=np.triu(np.ones((n, n), dtype=bool), k=1))
    import matplotlib

    cm = matplotlib.colormaps[cmap].with_extremes(bad="white")
    im = ax.imshow(masked, cmap=cm, vmin=vmin, vmax=vmax, interpolation="nearest", aspect="equal")
    for side in ax.spines.values():
        side.set_linewidth(0.4)
    return im


def add_caption(fig, caption: str, extra: str = "") -> None:
    """The model and the text under the figure, wrapped to its width (6 pt: about 20 characters an inch)."""
    import textwrap

    width = max(30, int(fig.get_figwidth() * 20))
    lines = textwrap.wrap(caption, width) + (textwrap.wrap(extra, width) if extra else [])
    fig.supxlabel("\n".join(lines), fontsize=6, color="#444444")


# --- inspect --------------------------------------------------------------------------------------------------------


def inspect_figure(*, views: Sequence[HeadView], tokens: Sequence[str], caption: str, **_: Any):
    """One head large (a column wide), or the selected heads as small multiples.

    Layers down, heads across (one layer: up to four across), one shared 0-1 colour scale and one colour bar per
    page. The canvas grows with the grid up to PAGE_IN; a grid taller than a page is split by layers into pages
    (a `Pages`: every page in a PDF, the first in a PNG or SVG, which says so).
    """
    if len(views) == 1:
        return one_map_figure(views[0], tokens, caption)
    layers = sorted({v.layer for v in views})
    heads = sorted({v.head for v in views})
    cols = len(heads) if len(layers) > 1 else min(len(views), 4)
    label_room = 0.45 if len(tokens) <= 40 else 0.3
    fixed_w = label_room + 0.6  # row labels, colour bar
    panel = min(1.7, max(0.85, 6.6 / cols), max(PANEL_MIN_IN, (PAGE_IN[0] - fixed_w) / cols))
    compact = panel < 1.2
    title_in = (MIN_PT + 3) / 72  # a title line and its pad
    fixed_h = label_room + 0.75  # x labels, caption
    per_page = max(1, int((PAGE_IN[1] - fixed_h) // (panel + title_in)))
    if len(layers) > 1:
        rows_of = [[v for v in views if v.layer == layer] for layer in layers]
        grid = [[next((v for v in row if v.head == h), None) for h in heads] for row in rows_of]
    else:
        grid = [
            list(views[i : i + cols]) + [None] * (cols - len(views[i : i + cols])) for i in range(0, len(views), cols)
        ]
    chunks = [grid[i : i + per_page] for i in range(0, len(grid), per_page)]
    if len(chunks) == 1:
        return small_multiples(chunks[0], tokens, caption, panel, label_room, compact, "")
    figs = []
    for n, chunk in enumerate(chunks, 1):
        shown = sorted({v.layer for row in chunk for v in row if v is not None})
        note = (
            f"page {n} of {len(chunks)}: layers {shown[0]}–{shown[-1]} of {layers[0]}–{layers[-1]} "
            f"({per_page} layers a page; a .pdf has every page, -l LAYER picks layers)"
        )
        figs.append(small_multiples(chunk, tokens, caption, panel, label_room, compact, note))
    return Pages(figs)


def small_multiples(grid, tokens, caption, panel, label_room, compact, note):
    """One page of maps: `grid` rows of HeadViews (None: an empty place), one colour bar."""
    rows, cols = len(grid), len(grid[0])
    title_in = (MIN_PT + 3) / 72
    fig = new_figure(panel * cols + label_room + 0.6, (panel + title_in) * rows + label_room + 0.75)
    axes = fig.subplots(rows, cols, squeeze=False)
    font = MIN_PT if compact else 5.5
    im = None
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax = axes[i, j]
            if v is None:
                ax.set_axis_off()
                continue
            im = draw_map(ax, v.attention)
            title = compact_title(v) if compact else map_title(v)
            ax.set_title(title, fontsize=MIN_PT if compact else 6, color=_title_colour(v.stats.kind), pad=2)
            last_row = i + 1 == rows or grid[i + 1][j] is None
            token_ticks(ax, tokens, panel, font, rows=j == 0, cols=last_row)
    bar = fig.colorbar(im, ax=axes, shrink=min(1.0, 2.2 / (panel * rows)) if rows > 1 else 0.9, aspect=25, pad=0.01)
    bar.set_label("attention weight (query row → key)", fontsize=6)
    bar.ax.tick_params(labelsize=5.5)
    key = "rows: queries, columns: keys; white: keys after the query (masked)"
    if compact:
        key += "; " + KIND_KEY
    add_caption(fig, caption, key + (f"; {note}" if note else ""))
    return fig


def compact_title(view: HeadView) -> str:
    """`L1H2 I 0.71`: the head, its kind's letter and score (the key in the caption), for small panels."""
    s = view.stats
    return f"L{s.layer}H{s.head} {KIND_LETTER[s.kind]} {'–' if s.score is None else f'{s.score:.2f}'}"


def one_map_figure(view: HeadView, tokens: Sequence[str], caption: str):
    n_seq = len(tokens)
    labels = n_seq <= 48
    side = COLUMN_IN - (0.95 if labels else 0.75)
    fig = new_figure(COLUMN_IN, side + (1.05 if labels else 0.8))
    ax = fig.add_subplot()
    im = draw_map(ax, view.whole_map())
    ax.set_title(map_title(view), fontsize=7.5, color=_title_colour(view.stats.kind))
    token_ticks(ax, tokens, side, 6 if n_seq <= 24 else 5, rows=True, cols=True)
    ax.set_ylabel("query", fontsize=6)
    ax.set_xlabel("key", fontsize=6)
    bar = fig.colorbar(im, ax=ax, shrink=0.8, aspect=25, pad=0.02)
    bar.set_label("attention weight", fontsize=6)
    bar.ax.tick_params(labelsize=5.5)
    add_caption(fig, caption)
    return fig


def _title_colour(kind: str) -> str:
    """Titles in dark ink, except a kind's own colour for the kinds that stand out (never the light greys)."""
    return "#222222" if kind in ("broad", "mixed") else _darker(KIND_HEX[kind])


def _darker(hex_colour: str, f: float = 0.72) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return "#{:02x}{:02x}{:02x}".format(*(round(c * f) for c in (r, g, b)))


# --- grids: stats, diff, ablate, census -----------------------------------------------------------------------------


def grid_axes(
    fig, ax, n_layer: int, n_head: int, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None
) -> None:
    layers = list(layers if layers is not None else range(n_layer))
    heads = list(heads if heads is not None else range(n_head))
    ax.set_xticks(range(len(heads)), [str(h) for h in heads])
    ax.set_yticks(range(len(layers)), [str(lay) for lay in layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)


def cell_texts(ax, values: np.ndarray, texts: list[list[str]], cmap, norm, font: float) -> None:
    """Write `texts` in the cells, black or white by the cell colour's lightness."""
    for i, row in enumerate(texts):
        for j, t in enumerate(row):
            if not t:
                continue
            v = values[i, j]
            if np.ma.is_masked(v) or v is None or (isinstance(v, float) and math.isnan(v)):
                ink = "#222222"
            else:
                r, g, b, _ = cmap(norm(v))
                ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"
            ax.text(j, i, t, ha="center", va="center", fontsize=font, color=ink, linespacing=1.0)


def grid_cell(n_layer: int, n_head: int, cell: float = 0.42, below: float = 0.0) -> float:
    """The side (inches) of a grid's square cell: 0.42-0.6 in, smaller for a grid taller or wider than PAGE_IN.

    `below`: inches the figure needs under the grid (diff's maps). Never under GRID_CELL_MIN_IN, where two lines
    of MIN_PT text still fit: a grid beyond that (over ~33 layers or ~24 heads) grows past the cap.
    """
    width = max(COLUMN_IN, n_head * cell + 1.4)
    cell = min(0.6, (width - 1.4) / max(1, n_head))
    fit = min((PAGE_IN[1] - 1.75 - below) / max(1, n_layer), (PAGE_IN[0] - 1.4) / max(1, n_head))
    return max(GRID_CELL_MIN_IN, min(cell, fit))


def grid_size(n_layer: int, n_head: int, cell: float = 0.42, below: float = 0.0) -> tuple[float, float]:
    """Width and height (inches) of a layer x head grid with square cells, its labels, colour bar and caption."""
    side = grid_cell(n_layer, n_head, cell, below)
    return max(COLUMN_IN, n_head * side + 1.4) + (0.5 if side < 0.4 else 0.0), n_layer * side + 1.75


def bar_shrink(ax) -> float:
    """A grid's colour bar: 90% of a short grid's height, at most about 3.5 in beside a tall one."""
    rows = len(ax.get_yticks()) or 1
    return min(0.9, 3.5 / (rows * GRID_CELL_MIN_IN * 1.1))


def cell_font(n_layer: int, n_head: int, below: float = 0.0) -> float:
    """The cells' text size: smaller cells (many heads or layers) get MIN_PT."""
    if grid_cell(n_layer, n_head, below=below) < 0.4:
        return MIN_PT
    return 5.5 if n_head > 8 else 6.5


KIND_KEY = " · ".join(f"{KIND_LETTER[k]} {k}" for k in KINDS)


def stats_figure(*, views: Sequence[HeadView], n_layer: int, n_head: int, stat: str, caption: str, **_: Any):
    """The layer x head grid of one statistic on its 0-1 scale (`auto`: each head's kind score).

    Kind letters in the cells.
    """
    import matplotlib

    values = np.full((n_layer, n_head), np.nan)
    texts = [["" for _ in range(n_head)] for _ in range(n_layer)]
    for v in views:
        x = grid_value(v.stats, stat)
        values[v.layer, v.head] = np.nan if x is None else x
        texts[v.layer][v.head] = f"{KIND_LETTER[v.stats.kind]}\n{'–' if x is None else f'{x:.2f}'}"
    fig = new_figure(*grid_size(n_layer, n_head))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps[MAP_CMAP].with_extremes(bad="#eeeeee")
    norm = matplotlib.colors.Normalize(0, 1)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="equal")
    grid_axes(fig, ax, n_layer, n_head)
    cell_texts(ax, values, texts, cmap, norm, cell_font(n_layer, n_head))
    what = "kind score" if stat == "auto" else stat
    ax.set_title(f"{what} per head (0–1), kind letter in each cell", fontsize=7)
    bar = fig.colorbar(im, ax=ax, shrink=bar_shrink(ax), aspect=20, pad=0.02)
    bar.set_label(stat_unit(stat), fontsize=6)
    add_caption(fig, caption, KIND_KEY)
    return fig


def grid_value(s: HeadStats, stat: str) -> float | None:
    return s.score if stat == "auto" else s.unit_value(stat)


def stat_unit(stat: str) -> str:
    if stat == "auto":
        return "kind score (0–1)"
    if stat == "entropy":
        return "entropy / uniform's"
    if stat == "mean_distance":
        return "distance / largest"
    return f"{stat} (0–1)"


def diff_figure(*, report, maps, tokens: Sequence[str], caption: str, **_: Any):
    """The divergence grid (B's layout, B's kind letters), then the most changed head on the first text.

    The head is shown as A's map, B's map and B - A on a diverging scale.
    """
    import matplotlib

    n_layer, n_head = report.shape_b
    values = np.full((n_layer, n_head), np.nan)
    texts = [["" for _ in range(n_head)] for _ in range(n_layer)]
    for r in report.heads:
        values[r.layer_b, r.head_b] = r.divergence
        texts[r.layer_b][r.head_b] = f"{KIND_LETTER[r.kind_b]}\n{r.divergence:.2g}"
    top = report.max_divergence
    map_side = 1.9
    below = map_side + 0.6 if maps else 0.0
    grid_w, grid_h = grid_size(n_layer, n_head, below=below)
    grid_h -= 0.4  # one caption for the whole figure
    width = max(WIDE_IN, grid_w)
    fig = new_figure(width, grid_h + (map_side + 1.0 if maps else 0.3))
    figs = fig.subfigures(2 if maps else 1, 1, height_ratios=[grid_h, map_side + 1.0] if maps else None, squeeze=False)
    pad = max(0.01, (width - grid_w) / 2)  # the grid centred over the maps
    ax = figs[0, 0].add_subplot(figs[0, 0].add_gridspec(1, 3, width_ratios=[pad, grid_w, pad])[0, 1])
    cmap = matplotlib.colormaps[MAP_CMAP].with_extremes(bad="#eeeeee")
    norm = matplotlib.colors.Normalize(0, top if top > 0 else 1)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="equal")
    grid_axes(fig, ax, n_layer, n_head)
    cell_texts(ax, values, texts, cmap, norm, cell_font(n_layer, n_head, below))
    which = "per head" if report.mode == "paired" else "of each MODEL_B head from its matched MODEL_A head"
    ax.set_title(f"{report.metric} divergence {which}; kind letter in MODEL_B", fontsize=7)
    bar = figs[0, 0].colorbar(im, ax=ax, shrink=bar_shrink(ax), aspect=20, pad=0.02)
    from mhacli.analyses.diff import METRICS

    bar.set_label(f"{METRICS[report.metric].split(' (')[0]}{' (bits)' if report.metric == 'js' else ''}", fontsize=5.5)
    if maps:
        a, b = maps
        r = report.heads[0]
        axes = figs[1, 0].subplots(1, 3)
        delta = b.attention.astype(np.float64) - a.attention.astype(np.float64)
        lim = float(np.abs(delta).max()) or 1.0
        im_a = draw_map(axes[0], a.attention)
        draw_map(axes[1], b.attention)
        im_d = draw_map(axes[2], delta, cmap=DIFF_CMAP, vmin=-lim, vmax=lim)
        axes[0].set_title(f"MODEL_A L{r.layer_a}H{r.head_a} {r.kind_a}", fontsize=6.5)
        axes[1].set_title(f"MODEL_B L{r.layer_b}H{r.head_b} {r.kind_b}", fontsize=6.5)
        axes[2].set_title("B − A", fontsize=6.5)
        for k, ax_ in enumerate(axes):
            token_ticks(ax_, tokens, map_side, 4.5, rows=k == 0, cols=True)
        cb = figs[1, 0].colorbar(im_a, ax=axes[:2], shrink=0.8, aspect=20, pad=0.01)
        cb.set_label("attention weight", fontsize=5.5)
        cd = figs[1, 0].colorbar(im_d, ax=axes[2], shrink=0.8, aspect=20, pad=0.02)
        cd.set_label("weight in B − weight in A", fontsize=5.5)
        figs[1, 0].suptitle(f"most changed head, on the first text ({r.divergence:.3g} {report.metric})", fontsize=7)
    add_caption(fig, caption, KIND_KEY)
    return fig


def ablate_figure(*, doc: dict, caption: str, **_: Any):
    """The Δloss grid (each head removed alone), on a diverging scale centred on no change; kind letters in cells."""
    import matplotlib

    heads = doc["heads"]
    layers = sorted({r["layer"] for r in heads})
    head_ids = sorted({r["head"] for r in heads})
    values = np.full((len(layers), len(head_ids)), np.nan)
    texts = [["" for _ in head_ids] for _ in layers]
    for r in heads:
        i, j = layers.index(r["layer"]), head_ids.index(r["head"])
        values[i, j] = r["delta"]
        texts[i][j] = f"{KIND_LETTER[r['kind']]}\n{r['delta']:+.2f}"
    lim = float(np.nanmax(np.abs(values))) if heads else 1.0
    lim = lim if lim > 0 else 1.0
    fig = new_figure(*grid_size(len(layers), len(head_ids)))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps[DIFF_CMAP].with_extremes(bad="#eeeeee")
    norm = matplotlib.colors.Normalize(-lim, lim)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="equal")
    grid_axes(fig, ax, 0, 0, layers, head_ids)
    cell_texts(ax, values, texts, cmap, norm, cell_font(len(layers), len(head_ids)))
    ax.set_title(f"Δloss with each head removed ({doc['method']}); baseline {doc['baseline_loss']:.3f}", fontsize=7)
    bar = fig.colorbar(im, ax=ax, shrink=bar_shrink(ax), aspect=20, pad=0.02)
    bar.set_label("Δloss (nats/token)", fontsize=6)
    add_caption(fig, caption, KIND_KEY)
    return fig


def prune_figure(*, doc: dict, caption: str, **_: Any):
    """Loss against the fraction of heads removed.

    The importance order, and the random orders' mean with ±1 std as a band; the allowed loss as a dashed line.
    """
    imp = doc["importance"]["curve"]
    rnd = doc["random"]["curve"]
    base = doc["baseline_loss"]
    limit = base * (1 + doc["max_increase"])
    fig = new_figure(COLUMN_IN, 2.7)
    ax = fig.add_subplot()
    x_r = np.array([s["fraction"] for s in rnd])
    mean = np.array([s["loss_mean"] for s in rnd])
    std = np.array([s["loss_std"] for s in rnd])
    ax.fill_between(x_r, mean - std, mean + std, color="#56B4E9", alpha=0.3, linewidth=0, label="random ±1 std")
    ax.plot(
        x_r,
        mean,
        color="#0072B2",
        marker="o",
        markersize=2.5,
        linewidth=1,
        label=f"random order (mean of {doc['random']['seeds']})",
    )
    ax.plot(
        [s["fraction"] for s in imp],
        [s["loss"] for s in imp],
        color="#CC79A7",
        marker="o",
        markersize=2.5,
        linewidth=1.2,
        label="least important first",
    )
    ax.axhline(
        limit, color="#444444", linestyle="--", linewidth=0.7, label=f"allowed: baseline +{doc['max_increase']:.0%}"
    )
    ax.set_xlabel("fraction of heads removed")
    ax.set_ylabel("loss (nats/token)")
    ax.set_xlim(0, 1)
    ax.grid(True, linewidth=0.3, color="#dddddd")
    ax.legend(fontsize=5.5, frameon=False)
    ax.set_title(
        f"prunable: {doc['importance']['prunable_fraction']:.0%} by importance, "
        f"{doc['random']['prunable_fraction']:.0%} at random",
        fontsize=7,
    )
    add_caption(fig, caption)
    return fig


def census_figure(*, doc: dict, caption: str, **_: Any):
    """Every head's kind (colour) and its confidence (how strongly the colour shows; the number in the cell)."""
    import matplotlib
    from matplotlib.patches import Patch

    n_layer, n_head = doc["model"]["n_layer"], doc["model"]["n_head"]
    rgb = np.ones((n_layer, n_head, 3))
    conf = np.full((n_layer, n_head), np.nan)
    texts = [["" for _ in range(n_head)] for _ in range(n_layer)]
    to_rgb = matplotlib.colors.to_rgb
    for h in doc["heads"]:
        c = np.array(to_rgb(KIND_HEX[h["kind"]]))
        a = 0.25 + 0.75 * float(h["confidence"])
        rgb[h["layer"], h["head"]] = 1 - a * (1 - c)
        conf[h["layer"], h["head"]] = h["confidence"]
        texts[h["layer"]][h["head"]] = f"{KIND_LETTER[h['kind']]}\n{h['confidence']:.2f}"
    w, hgt = grid_size(n_layer, n_head)
    fig = new_figure(w + 0.4, hgt + 0.3)
    ax = fig.add_subplot()
    ax.imshow(rgb, aspect="equal")
    grid_axes(fig, ax, n_layer, n_head)
    for i, row in enumerate(texts):
        for j, t in enumerate(row):
            ax.text(
                j, i, t, ha="center", va="center", fontsize=cell_font(n_layer, n_head), color="#111111", linespacing=1.0
            )
    ax.set_title("kind per head; shade and number: confidence", fontsize=7)
    present = [k for k in KINDS if any(h["kind"] == k for h in doc["heads"])] or list(KINDS)
    handles = [
        Patch(facecolor=KIND_HEX[k], edgecolor="#888888", linewidth=0.3, label=f"{KIND_LETTER[k]} {k}") for k in present
    ]
    fig.legend(handles=handles, loc="outside right center", fontsize=5.5, frameon=False)
    add_caption(fig, caption, "confidence: share of the evidence source's texts on which the kind's rule holds")
    return fig


def composition_matrix(doc: dict, mode: str) -> np.ndarray:
    """One mode's scores, [n_layer * n_head, n_layer * n_head]: earlier head (row) x later head (column).

    NaN where no pair was computed or kept."""
    n_layer, n_head = doc["model"]["n_layer"], doc["model"]["n_head"]
    m = np.full((n_layer * n_head, n_layer * n_head), np.nan)
    for r in doc["composition"]:
        if r["mode"] == mode:
            f, t = r["from"], r["to"]
            m[f["layer"] * n_head + f["head"], t["layer"] * n_head + t["head"]] = r["score"]
    return m


def layer_ticks(ax, n_head: int, axis: str, layers: range) -> None:
    """Every head labelled (L1H2) where they fit, else one tick per layer at its first head; lines between layers."""
    first = layers.start
    starts = [(layer - first) * n_head for layer in layers]
    if len(layers) * n_head <= 24:
        where = list(range(len(layers) * n_head))
        labels = [f"L{layer}H{h}" for layer in layers for h in range(n_head)]
    else:
        step = max(1, len(starts) // 12)
        where, labels = starts[::step], [f"L{layer}" for layer in layers][::step]
    if axis == "x":
        ax.set_xticks(where, labels, rotation=90)
    else:
        ax.set_yticks(where, labels)
    for w in starts[1:]:
        (ax.axvline if axis == "x" else ax.axhline)(
            w - 0.5, color="#ffffff", linewidth=0.6 if len(layers) <= 8 else 0.15
        )


def circuits_figure(*, doc: dict, caption: str, **_: Any):
    """Each requested mode's composition matrix: earlier heads (rows, layers 0..L-2) x later heads (columns)."""
    import matplotlib

    n_layer, n_head = doc["model"]["n_layer"], doc["model"]["n_head"]
    modes = doc["modes"]
    earlier, later = range(0, max(1, n_layer - 1)), range(1, max(2, n_layer))
    mats = [composition_matrix(doc, m)[: len(earlier) * n_head, n_head : n_head * (1 + len(later))] for m in modes]
    top = max((float(np.nanmax(m)) for m in mats if np.isfinite(m).any()), default=1.0)
    panel = min(3.0, (WIDE_IN - 1.0) / len(modes))
    fig = new_figure(max(COLUMN_IN, panel * len(modes) + 1.0), panel + 1.6)
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    cmap = matplotlib.colormaps[MAP_CMAP].with_extremes(bad="#eeeeee")
    im = None
    for ax, mode, m in zip(axes, modes, mats, strict=True):
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=0.0, vmax=top, aspect="equal")
        ax.set_title(f"{mode}-composition (baseline {doc['baseline'][mode]:.3f})", fontsize=7)
        layer_ticks(ax, n_head, "x", later)
        layer_ticks(ax, n_head, "y", earlier)
        ax.set_xlabel("later head (reads)")
        ax.set_ylabel("earlier head (writes)")
        ax.tick_params(length=0)
    if im is not None:
        bar = fig.colorbar(im, ax=list(axes), shrink=0.8, aspect=20, pad=0.02)
        bar.set_label("composition score", fontsize=6)
    weights = "norms folded (--fold-ln)" if doc["fold_ln"] else "raw weights"
    add_caption(fig, caption, f"‖W_OV(h1)·R(h2)‖ / (‖W_OV(h1)‖ ‖R(h2)‖), {weights}; grey: not computed or not kept")
    return fig


def attribute_figure(*, doc: dict, caption: str, **_: Any):
    """Each head's direct share of the metric (and each layer's MLP, the last column), diverging around 0."""
    import matplotlib

    n_layer, n_head = doc["model"]["n_layer"], doc["model"]["n_head"]
    values = np.full((n_layer, n_head + 1), np.nan)
    texts = [["" for _ in range(n_head + 1)] for _ in range(n_layer)]
    for r in doc["components"]:
        if r["component"] in ("head", "mlp"):
            j = r["head"] if r["component"] == "head" else n_head
            values[r["layer"], j] = r["attribution"]
            letter = KIND_LETTER.get(r.get("kind") or "", "") if r["component"] == "head" else "M"
            texts[r["layer"]][j] = f"{letter}\n{r['attribution']:+.2f}"
    lim = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    lim = lim if lim > 0 else 1.0
    fig = new_figure(*grid_size(n_layer, n_head + 1))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps[DIFF_CMAP].with_extremes(bad="#eeeeee")
    norm = matplotlib.colors.Normalize(-lim, lim)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="equal")
    grid_axes(fig, ax, n_layer, n_head + 1)
    ax.set_xticks(range(n_head + 1), [str(h) for h in range(n_head)] + ["MLP"])
    cell_texts(ax, values, texts, cmap, norm, cell_font(n_layer, n_head + 1))
    metric = "logit difference" if doc["wrong"] else "logit"
    wrong = f" − {quoted(doc['wrong']['token'])}" if doc["wrong"] else ""
    ax.set_title(
        f"direct {metric} attribution at position {doc['pos']}: {quoted(doc['answer']['token'])}{wrong}\n"
        f"sum of every component {doc['sum']:.4f}, the model's {metric} {doc['value']:.4f}",
        fontsize=7,
    )
    bar = fig.colorbar(im, ax=ax, shrink=bar_shrink(ax), aspect=20, pad=0.02)
    bar.set_label(f"share of the {metric}", fontsize=6)
    add_caption(fig, caption, KIND_KEY + " · M the layer's MLP")
    return fig


def lens_figure(*, doc: dict, caption: str, **_: Any):
    """The logit lens: layers (rows, the embeddings first) x positions, the top token's probability and the token."""
    layers = doc["layers"]
    positions = [c["pos"] for c in layers[0]["positions"]][-24:]  # at most the last 24 positions fit a page
    index = {c["pos"]: k for k, c in enumerate(layers[0]["positions"])}
    probs = np.array([[layer["positions"][index[p]]["top"][0]["prob"] for p in positions] for layer in layers])
    texts = [[token_label(layer["positions"][index[p]]["top"][0]["token"], 6) for p in positions] for layer in layers]
    cell = min(0.5, (PAGE_IN[0] - 1.4) / max(1, len(positions)), (PAGE_IN[1] - 2.0) / max(1, len(layers)))
    fig = new_figure(max(COLUMN_IN, len(positions) * cell + 1.6), len(layers) * cell * 0.6 + 2.0)
    ax = fig.add_subplot()
    import matplotlib

    cmap = matplotlib.colormaps[MAP_CMAP]
    norm = matplotlib.colors.Normalize(0.0, 1.0)
    im = ax.imshow(probs, cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(len(positions)), [token_label(doc["tokens"][p], 8) for p in positions], rotation=90)
    ax.set_yticks(range(len(layers)), ["emb" if x["layer"] == -1 else str(x["layer"]) for x in layers])
    ax.set_xlabel("position (its token)")
    ax.set_ylabel("layer (the residual stream after it)")
    ax.tick_params(length=0)
    cell_texts(ax, probs, texts, cmap, norm, MIN_PT)
    ax.set_title("logit lens: each layer's most likely next token, coloured by its probability", fontsize=7)
    bar = fig.colorbar(im, ax=ax, shrink=0.8, aspect=20, pad=0.02)
    bar.set_label("probability of the top token", fontsize=6)
    add_caption(fig, caption, "the last row is the model's own prediction")
    return fig


def _patch_grid(doc: dict) -> tuple[np.ndarray, list[str], str, list[str] | None]:
    """The scores as a grid (NaN: no score), its row labels, the x axis' name and, for resid, its token labels."""
    rows = doc["heads"]

    def score(r: dict) -> float:
        return np.nan if r["score"] is None else r["score"]

    if doc["site"] == "resid":  # layers x positions
        layers = sorted({r["layer"] for r in rows})
        tokens = doc["clean"]["tokens"]
        grid = np.full((len(layers), max(len(tokens), 1 + max(r["pos"] for r in rows))), np.nan)
        for r in rows:
            grid[layers.index(r["layer"]), r["pos"]] = score(r)
        return grid, [f"L{layer}" for layer in layers], "position (clean token)", [token_label(t, 8) for t in tokens]
    keys = sorted({(r["layer"], r["head"] if r["head"] is not None else r["kv_head"]) for r in rows})
    if any(r["pos"] is not None for r in rows):
        grid = np.full((len(keys), 1 + max(r["pos"] for r in rows)), np.nan)
        for r in rows:
            grid[keys.index((r["layer"], r["head"] if r["head"] is not None else r["kv_head"])), r["pos"]] = score(r)
        return grid, [f"L{layer}H{h}" for layer, h in keys], "position", None
    layers = sorted({k[0] for k in keys})
    grid = np.full((len(layers), 1 + max(k[1] for k in keys)), np.nan)
    for r in rows:
        grid[layers.index(r["layer"]), r["head"] if r["head"] is not None else r["kv_head"]] = score(r)
    xlabel = "K/V head" if rows and rows[0]["head"] is None else "head"
    return grid, [f"L{layer}" for layer in layers], xlabel, None


def patch_figure(*, doc: dict, caption: str, **_: Any):
    """The layer x head grid of patching scores on a diverging scale (by position: the head x position table).

    The resid site: layers x positions, the clean tokens under the columns.
    """
    import matplotlib

    grid, ylabels, xlabel, xticks = _patch_grid(doc)
    top = max(1e-9, float(np.nanmax(np.abs(grid)))) if np.isfinite(grid).any() else 1.0
    fig = new_figure(COLUMN_IN, max(2.0, 0.18 * len(ylabels) + 1.4))
    ax = fig.subplots()
    cmap = matplotlib.colormaps[DIFF_CMAP].with_extremes(bad="#eeeeee")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-top, vmax=top, aspect="auto")
    ax.set_yticks(range(len(ylabels)), ylabels, fontsize=5)
    if xticks is not None:
        ax.set_xticks(range(len(xticks)), xticks, fontsize=5, rotation=90)
    ax.set_xlabel(xlabel)
    fig.colorbar(im, ax=ax, shrink=0.8).set_label("score", fontsize=6)
    add_caption(
        fig, caption, f"{doc['site']} {doc['direction']}, {doc['metric']}: (patched − corrupt)/(clean − corrupt)"
    )
    return fig
