"""The stats overview: one 0-1 unit per grid, layouts that fit every width, values that decode back.

Entropy and mean distance are fractions of their maximum; the full and compact layouts fit every width; the values
decode back from what is drawn; also the text table and --stat.
"""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pytest
from helpers import ANSI, views_of
from rich.console import Console
from typer.testing import CliRunner

from mhacli.analyses.stats import KINDS, layer_stats
from mhacli.cli import app
from mhacli.views.terminal import KIND_STYLE, stats_view
from mhacli.views.terminal.grid import full_width, tenths
from mhacli.views.terminal.heatmap import HEX, level

TEXT = "The cat sat on the mat. The cat sat on the mat."


def draw(width: int, views, n_layer: int, n_head: int, *, color: bool, stat: str = "auto", layout: str = "auto"):
    buf = io.StringIO()
    con = Console(
        file=buf, width=width, force_terminal=color, color_system="truecolor" if color else None, no_color=not color
    )
    con.print(stats_view(con, views, n_layer, n_head, stat, 30, layout=layout))
    return buf.getvalue()


def grid_rows(plain: str, n_layer: int) -> list[str]:
    """The grid's body: the lines that start with a layer index, in order."""
    rows = [line for line in plain.splitlines() if re.match(r"^\s*\d+  ", line)]
    return rows[:n_layer]


# --- the 0-1 unit -------------------------------------------------------------------------------------------------


def test_relative_entropy_and_distance_are_one_at_their_maximum_and_zero_at_their_minimum():
    n = 9
    uniform = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]  # every row spread evenly: maximum entropy
    sink = np.zeros((n, n))
    sink[:, 0] = 1.0  # every row on key 0: the largest mean distance, zero entropy
    diag = np.eye(n)  # every row on itself: zero distance, zero entropy
    attn = np.stack([uniform, sink, diag]).astype(np.float32)
    s_uniform, s_sink, s_diag = layer_stats(0, attn, np.arange(n))
    assert s_uniform.unit_value("entropy") == pytest.approx(1.0, abs=1e-6)
    assert s_sink.unit_value("entropy") == pytest.approx(0.0, abs=1e-9)
    assert s_sink.unit_value("mean_distance") == pytest.approx(1.0, abs=1e-9)
    assert s_diag.unit_value("mean_distance") == pytest.approx(0.0, abs=1e-9)
    # the fractions of attention are already 0-1 and are shown as they are
    assert s_sink.unit_value("first_token") == s_sink.values["first_token"] == pytest.approx(1.0)


def test_relative_values_against_a_loop_over_rows():
    views = views_of(1, 4, 23, seed=3)
    for v in views:
        a = v.attention.astype(np.float64)
        ent = [-sum(a[i, j] * math.log(a[i, j]) for j in range(i + 1) if a[i, j] > 0) for i in range(23)]
        top = [math.log(i + 1) for i in range(23)]
        dist = [sum(a[i, j] * (i - j) for j in range(i + 1)) for i in range(23)]
        assert v.stats.unit_value("entropy") == pytest.approx(np.mean(ent) / np.mean(top), abs=1e-6)
        assert v.stats.unit_value("mean_distance") == pytest.approx(np.mean(dist) / np.mean(range(23)), abs=1e-6)


def test_every_kind_score_is_on_the_0_1_scale():
    for n in (2, 5, 40, 200):
        for v in views_of(2, 4, n, seed=n):
            score = v.stats.score
            assert score is None or -1e-6 <= score <= 1 + 1e-6, (v.stats.kind, score)


def test_a_single_token_has_no_entropy_scale():
    (s,) = layer_stats(0, np.ones((1, 1, 1), dtype=np.float32), np.array([5]))
    assert s.unit_value("entropy") is None and s.unit_value("mean_distance") is None


# --- layouts ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [40, 60, 80, 120, 200])
@pytest.mark.parametrize("shape", [(1, 1), (2, 4), (12, 12)])
@pytest.mark.parametrize("color", [True, False])
def test_grid_fits_every_width_and_shows_every_head_once(width, shape, color):
    n_layer, n_head = shape
    views = views_of(n_layer, n_head, 30)
    out = draw(width, views, n_layer, n_head, color=color)
    plain = ANSI.sub("", out)
    assert all(len(line) <= width for line in plain.splitlines()), max(plain.splitlines(), key=len)
    rows = grid_rows(plain, n_layer)
    assert len(rows) == n_layer
    by_pos = {(v.layer, v.head): v.stats for v in views}
    letters = {KIND_STYLE[k][0] for k in KINDS}
    compact = full_width(n_head, n_layer) > width
    for layer, row in enumerate(rows):
        body = row.split(None, 1)[1]
        if compact:
            drawn = body.split()[0]
            assert len(drawn) == n_head and set(drawn) <= letters, row
            assert drawn == "".join(KIND_STYLE[by_pos[layer, h].kind][0] for h in range(n_head))
        else:
            cells = re.findall(r"(\S) +(\d\.\d\d|–)", body)
            assert [c[0] for c in cells] == [KIND_STYLE[by_pos[layer, h].kind][0] for h in range(n_head)], row
            for h, (_, number) in enumerate(cells):
                score = by_pos[layer, h].score
                assert number == ("–" if score is None else f"{score:.2f}")


def test_auto_layout_is_full_exactly_when_it_fits():
    views = views_of(12, 12, 20)
    need = full_width(12, 12)
    wide = ANSI.sub("", draw(need, views, 12, 12, color=False))
    narrow = ANSI.sub("", draw(need - 1, views, 12, 12, color=False))
    assert "H11" in wide and "H11" not in narrow
    assert re.search(r"\d\.\d\d", grid_rows(wide, 12)[0]) and not re.search(r"\d\.\d\d", grid_rows(narrow, 12)[0])


def test_compact_colour_cells_decode_to_the_drawn_values():
    """Each compact cell is the kind letter on the background colour of its value's level: read them back."""
    views = views_of(3, 12, 25, seed=7)
    out = draw(40, views, 3, 12, color=True, layout="compact")
    rows = [line for line in out.splitlines() if re.match(r"^(\x1b\[[0-9;]*m)*\s*\d+  ", line)][:3]
    cell = re.compile(r"\x1b\[([0-9;]*)m(\S)\x1b\[0m")
    by_pos = {(v.layer, v.head): v.stats for v in views}
    for layer, row in enumerate(rows):
        cells = cell.findall(row.split("  ", 1)[1] if "  " in row else row)
        cells = [c for c in cells if ";48;2;" in ";" + c[0] + ";"][:12]
        assert len(cells) == 12, row
        for h, (sgr, letter) in enumerate(cells):
            rgb = re.search(r"48;2;(\d+);(\d+);(\d+)", sgr).groups()
            drawn = "#{:02x}{:02x}{:02x}".format(*map(int, rgb))
            assert drawn == HEX[level(by_pos[layer, h].score)]
            assert letter == KIND_STYLE[by_pos[layer, h].kind][0]


def test_compact_without_colour_shows_values_in_tenths_beside_the_letters():
    views = views_of(2, 4, 25, seed=2)
    plain = draw(60, views, 2, 4, color=False, layout="compact")
    by_pos = {(v.layer, v.head): v.stats for v in views}
    for layer, row in enumerate(grid_rows(plain, 2)):
        letters, digits = row.split()[1:3]
        assert digits == "".join(tenths(by_pos[layer, h].score) for h in range(4))
    # two decimals first, as the full grid prints them: 0.096 shows as 0.10, so its tenth is 1
    assert (
        tenths(0.0) == "0"
        and tenths(0.094) == "0"
        and tenths(0.096) == "1"
        and tenths(0.996) == "X"
        and tenths(None) == "-"
    )


def test_the_legend_names_the_statistic_and_its_scale():
    views = views_of(2, 4, 25)
    assert "entropy ÷ its maximum" in draw(120, views, 2, 4, color=False, stat="entropy")
    assert "induction, a fraction of attention, 0–1" in draw(120, views, 2, 4, color=False, stat="induction")
    assert "kind score, 0–1" in draw(120, views, 2, 4, color=False)


def test_grid_shows_the_chosen_statistic_as_a_fraction():
    views = views_of(2, 4, 25, seed=5)
    plain = draw(120, views, 2, 4, color=False, stat="entropy")
    by_pos = {(v.layer, v.head): v.stats for v in views}
    for layer, row in enumerate(grid_rows(plain, 2)):
        numbers = re.findall(r"\d\.\d\d", row)
        assert numbers == [f"{by_pos[layer, h].unit_value('entropy'):.2f}" for h in range(4)]


# --- the CLI ------------------------------------------------------------------------------------------------------


def test_text_table_is_narrow_and_ordered_by_stat():
    runner = CliRunner()
    plain = runner.invoke(app, ["stats", TEXT, "-f", "text"])
    assert plain.exit_code == 0
    lines = plain.output.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert lines[0].split() == [
        "head",
        "kind",
        "score",
        "entropy",
        "max_w",
        "dist",
        "first",
        "self",
        "prev",
        "dup",
        "ind",
        "rows",
    ]
    ordered = runner.invoke(app, ["stats", TEXT, "-f", "text", "--stat", "induction"])
    values = [float(line.split()[10]) for line in ordered.output.splitlines()[1:]]
    assert values == sorted(values, reverse=True) and len(values) == 8
    doc = json.loads(runner.invoke(app, ["stats", TEXT, "-f", "json"]).output)
    by_name = {f"L{h['layer']}H{h['head']}": h for h in doc["heads"]}
    for line in ordered.output.splitlines()[1:]:  # the same heads and numbers as the JSON, rounded
        name, kind, *_ = line.split()
        assert by_name[name]["kind"] == kind
        assert float(line.split()[10]) == pytest.approx(by_name[name]["stats"]["induction"], abs=5e-4)
        assert (
            line.split()[-1] == f"{by_name[name]['support']['duplicate_token']}/{by_name[name]['support']['induction']}"
        )


def test_stat_with_a_machine_format_says_where_it_applies():
    result = CliRunner().invoke(app, ["stats", TEXT, "-f", "csv", "--stat", "induction"])
    assert result.exit_code == 0
    assert "note: --stat" in result.stderr and "csv has every statistic" in result.stderr
    assert result.stdout.splitlines()[0].startswith("layer,head,kind,entropy")


def test_rich_stats_at_40_columns_crops_nothing_into_a_second_line():
    result = CliRunner().invoke(app, ["stats", TEXT, "-f", "rich"], env={"COLUMNS": "40"})
    assert result.exit_code == 0
    lines = ANSI.sub("", result.stdout).splitlines()
    assert all(len(line) <= 40 for line in lines)
    assert lines[0].startswith("kinds and kind scores (18 tokens)")


@pytest.mark.parametrize("width", [40, 60, 80, 120, 200])
@pytest.mark.parametrize("command", [
    ["diff", "sample-early", "sample", "Mercutio Tybalt Benvolio Capulet Mercutio Tybalt Benvolio Capulet"],
    ["ablate", "ROMEO: I love thee. JULIET: I love thee. ROMEO: I love thee."],
    ["census", "--probe-count", "2"],
    ["stats", TEXT, "--stat", "mean_distance"],
    ["inspect", TEXT],
])  # fmt: skip
def test_terminal_views_never_draw_past_the_width(width, command):
    result = CliRunner().invoke(app, [*command, "-f", "rich"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    lines = ANSI.sub("", result.stdout).splitlines()
    assert lines and all(len(line) <= width for line in lines), max(lines, key=len)
    if command[0] == "diff":  # the ranking keeps the rank, head, divergence and kinds at any width
        at = next(k for k, line in enumerate(lines) if line.startswith("most changed heads"))
        assert lines[at + 1].split()[:3] == ["#", "head", "js"] or lines[at + 2].split()[:3] == ["#", "head", "js"]
        first = next(line for line in lines[at:] if line.split()[:1] == ["1"])
        assert first.split()[1] == "L1H2"
