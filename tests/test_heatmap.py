"""Terminal maps: half-blocks that decode back to the drawn weights, small multiples, key windows, rulers.

Small multiples fit any width and stay aligned, key windows keep key 0; from 1 to 1,024 tokens and 1 to 144 heads
(synthetic maps: layout does not need a model).
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from helpers import ANSI, causal, views_of
from rich.console import Console

from mhacli.views.terminal import inspect_view
from mhacli.views.terminal.heatmap import HEX, LOWER, PIN, UPPER, level, map_lines, map_window, ruler


def draw(width: int, views, n: int, **kwargs) -> list[str]:
    buf = io.StringIO()
    con = Console(file=buf, width=width, force_terminal=True, color_system="truecolor")
    con.print(inspect_view(con, views, [f"t{i}" for i in range(n)], **kwargs))
    return ANSI.sub("", buf.getvalue()).splitlines()


@pytest.mark.parametrize("width", [40, 60, 80, 120, 200])
@pytest.mark.parametrize("shape", [(1, 1), (2, 4), (12, 12)])
@pytest.mark.parametrize("n", [1, 2, 7, 64, 1024])
def test_maps_fit_every_width_and_panels_line_up(width, shape, n):
    if shape == (12, 12) and n == 1024:
        n = 300  # 144 maps of 1,024 tokens are slow to build; the window is the same size
    views = views_of(*shape, n)
    lines = draw(width, views, n)
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    at = [k for k, line in enumerate(lines) if re.match(r"L\d+H\d+", line)]
    per_title_row = [len(re.findall(r"L\d+H\d+", lines[k])) for k in at]
    assert sum(per_title_row) == len(views), "every head gets exactly one title, on one line"
    for k in at:  # under every row of titles a ruler starting at key 0, one per panel
        zeros = [t for t in lines[k + 1].split() if t == "0" or t.startswith("0" + PIN)]
        assert len(zeros) == per_title_row[at.index(k)], lines[k + 1]
    if shape == (12, 12) and width == 200:
        assert per_title_row[0] >= 8, "at 200 columns most of a layer's 12 heads sit side by side"


def test_a_long_text_keeps_key_0_in_front_of_the_window():
    n = 1024
    views = views_of(1, 2, n)
    lines = draw(80, views, n, start=900)
    ruler_line = next(line for line in lines if line.strip().startswith("0"))
    assert ruler_line.strip().startswith("0" + PIN)
    assert "key 0 and keys" in "\n".join(lines)
    win = map_window(n, 900, 30, 30)
    assert win.keys[0] == 0 and win.pinned and win.keys[-1] == win.hi - 1 and len(win.keys) == 30
    explicit = map_window(n, 900, 30, 30, keys=(100, 2000))
    assert explicit.keys == (0, *range(100, 129))


def test_ruler_labels_tens_and_never_overlaps():
    cols = list(range(95, 130))
    line = ruler(cols, False, 1)
    assert line.startswith("95") and "100" in line and "110" in line and len(line) == len(cols)
    for m in re.finditer(r"\d+", line):
        assert int(m.group()) == cols[m.start()], "a label sits over its own column"
    assert ruler(list(range(1000, 1012)), False, 1).startswith("1000")


def test_half_blocks_decode_to_the_quantised_weights():
    rng = np.random.default_rng(5)
    attn = causal(rng, 1, 23)[0]
    attn[5, :6] = 0
    attn[5, 0] = 1.0  # extremes: exactly 0 and 1
    win = map_window(23, 0, 23, 23)
    lines = map_lines(attn, win, cell=1, color=True)
    assert len(lines) == 12  # two query rows per line
    for k, line in enumerate(lines):
        i = 2 * k
        plain = line.plain
        styles = [None] * len(plain)
        for span in line.spans:
            for x in range(span.start, span.end):
                styles[x] = str(span.style)
        for j in range(23):
            ch, style = plain[j], styles[j] or ""
            colours = re.findall(r"#[0-9a-f]{6}", style)
            top, bottom = j <= i, i + 1 < 23 and j <= i + 1
            if top:
                assert ch == UPPER and HEX.index(colours[0]) == level(attn[i, j]), (i, j)
                if bottom:
                    assert HEX.index(colours[1]) == level(attn[i + 1, j]), (i + 1, j)
                else:
                    assert len(colours) == 1
            elif bottom:
                assert ch == LOWER and HEX.index(colours[0]) == level(attn[i + 1, j])
            else:
                assert ch == " " and not colours


def test_no_color_draws_shades_one_row_per_line():
    views = views_of(1, 1, 9)
    buf = io.StringIO()
    con = Console(file=buf, width=80, force_terminal=True, no_color=True)
    con.print(inspect_view(con, views, [f"t{i}" for i in range(9)]))
    text = buf.getvalue()
    assert UPPER not in text and "\x1b[38;2" not in text
    rows = [line for line in ANSI.sub("", text).splitlines() if re.match(r"\d+ t\d ", line)]  # map rows, not the keys
    assert len(rows) == 9


def test_side_by_side_panels_are_aligned_row_for_row():
    """Two maps of different lengths (the diff view's pair, or panels whose titles differ).

    Every joined line has the same width, and each panel's rows sit in the same lines as its neighbour's.
    """
    from rich.text import Text

    from mhacli.views.terminal.heatmap import panel, side_by_side

    rng = np.random.default_rng(1)
    a, b = causal(rng, 1, 40)[0], causal(rng, 1, 40)[0]
    win = map_window(40, 0, 30, 30)
    short = panel(a, Text("MODEL_A L0H0 a rather long title that must not wrap"), win, cell=1, color=True)
    tall = panel(b, Text("MODEL_B L0H0"), map_window(40, 0, 40, 40), cell=1, color=True)
    joined = side_by_side([short, tall])
    assert len(joined) == max(len(short), len(tall))
    assert len({line.cell_len for line in joined}) == 1
    for k, line in enumerate(joined):
        left = line.plain[: short[0].cell_len]
        assert left == (short[k].plain if k < len(short) else " " * short[0].cell_len)


@pytest.mark.parametrize("n", [30, 64, 300])
@pytest.mark.parametrize("height", [40, 50, 60])
def test_every_head_of_the_sample_shape_fits_one_screen_at_200_columns(n, height):
    """2 layers x 4 heads (the bundled model's shape) on a 200 x `height` terminal: one screen, prompt included."""
    views = views_of(2, 4, n)
    buf = io.StringIO()
    con = Console(file=buf, width=200, height=height, force_terminal=True, color_system="truecolor")
    con.print(inspect_view(con, views, [f"t{i}" for i in range(n)]))
    lines = buf.getvalue().splitlines()
    assert len(lines) <= height - 1, len(lines)
    titles = [k for k, line in enumerate(lines) if re.match(r"L\d+H\d+", ANSI.sub("", line))]
    assert len(titles) == 2, "a layer per row of panels"
    assert sum(len(re.findall(r"L\d+H\d+", ANSI.sub("", lines[k]))) for k in titles) == 8
