"""Under `--ablate`, the terminal shows the numbers the json has (issue 36 item 1): one run, every format.

For every command that takes `--ablate` (inspect, stats, diff; browse is interactive and has its own tests), the
numbers printed by `-f text` and by `-f rich` at a fixed width are read back from the screen and compared with the
json of the same command, within the precision printed. The head compared is one the ablation visibly changes (the
premise is checked against the intact model's json), so a view drawn from the intact model fails. Under `diff
--ablate`, MODEL_B's map drawn in the terminal is compared with `inspect MODEL_B --ablate` json: before the fix the
terminal drew B intact while every number of the diff had B ablated.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import parse_json

TEXT = "The cat sat on the mat. The cat sat on the mat."
ABLATE = "0.3"  # the previous-token head: the induction head L1H2 stops inducting without it
LAYER, HEAD = 1, 2
WIDE = {"COLUMNS": "200"}  # every key of the 18-token text fits in one panel
SHADES = " ░▒▓█"  # the legend of a map without colour: below 0.01 blank, then four steps of a quarter


def shade(w: float) -> str:
    """The glyph of weight w, as the legend defines it (written here, not taken from the view)."""
    return " " if w < 0.01 else SHADES[min(4, 1 + int(w * 4))]


def shades(w: float) -> set[str]:
    """The glyphs a weight rounded to 8 decimals may honestly get (either side of a step)."""
    return {shade(w - 1e-7), shade(w + 1e-7)}


def json_of(mha, *args: str) -> dict:
    result = mha(*args, "-f", "json")
    assert result.returncode == 0, result.stderr
    return parse_json(result.stdout)


def screen(mha, *args: str, fmt: str) -> list[str]:
    result = mha(*args, "-f", fmt, env=WIDE)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().splitlines()


def head_of(doc: dict, layer: int, head: int) -> dict:
    return next(h for h in doc["heads"] if (h["layer"], h["head"]) == (layer, head))


def dense(rows: list[list[float]]) -> np.ndarray:
    """The json's lower triangle -> [n_seq, n_seq]."""
    n = len(rows)
    out = np.zeros((n, n))
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


@pytest.fixture
def maps(mha) -> dict:
    """L1H2's map in the json of `inspect`, ablated and intact (the premise: they differ)."""
    args = ("inspect", TEXT, "-l", str(LAYER), "-H", str(HEAD))
    ablated = dense(head_of(json_of(mha, *args, "--ablate", ABLATE), LAYER, HEAD)["attention"])
    intact = dense(head_of(json_of(mha, *args), LAYER, HEAD)["attention"])
    assert np.abs(ablated - intact).max() > 0.3, "the premise: removing L0H3 changes L1H2's map"
    return {"ablated": ablated, "intact": intact}


# --- inspect ----------------------------------------------------------------------------------------------------------


def test_inspect_text_map_and_statistics_are_the_jsons(mha, maps):
    args = ("inspect", TEXT, "-l", str(LAYER), "-H", str(HEAD), "--ablate", ABLATE)
    record = head_of(json_of(mha, *args), LAYER, HEAD)
    lines = screen(mha, *args, fmt="text")
    top = next(k for k, line in enumerate(lines) if line.startswith(f"layer {LAYER} head {HEAD} "))
    said = dict(re.findall(r"(\w+)=(-?[\d.]+)", lines[top]))
    assert said, lines[top]
    for name, value in said.items():
        assert abs(float(value) - record["stats"][name]) <= 0.0005 + 1e-9, (name, value, record["stats"][name])
    assert f"kind={record['kind']} " in lines[top]
    n = maps["ablated"].shape[0]
    shown = np.zeros((n, n))
    for i, line in enumerate(lines[top + 2 : top + 2 + n]):
        cells = line[19:]
        shown[i, : i + 1] = [float(cells[6 * j : 6 * j + 6]) for j in range(i + 1)]
    assert np.abs(shown - maps["ablated"]).max() <= 0.005 + 1e-9
    assert np.abs(shown - maps["intact"]).max() > 0.1, "would pass on the intact model's map"


def test_inspect_rich_query_row_and_top_keys_are_the_jsons(mha, maps):
    args = ("inspect", TEXT, "-l", str(LAYER), "-H", str(HEAD), "--ablate", ABLATE)
    q = maps["ablated"].shape[0] - 1
    rows = [re.match(r"^\s*(\d+) .* (\d\.\d{3})$", line) for line in screen(mha, *args, "--query", str(q), fmt="rich")]
    shown = {int(m.group(1)): float(m.group(2)) for m in rows if m}
    assert sorted(shown) == list(range(q + 1))
    for j, w in shown.items():
        assert abs(w - maps["ablated"][q, j]) <= 0.0005 + 1e-9, (j, w, maps["ablated"][q, j])
    assert max(abs(w - maps["intact"][q, j]) for j, w in shown.items()) > 0.1
    for line in screen(mha, *args, "--top", "2", fmt="rich"):
        m = re.match(r"^\s*(\d+) .*→ (.*)$", line)
        if m is None:
            continue
        i = int(m.group(1))
        for j, w in re.findall(r"(\d+):\S+ (\d\.\d\d)", m.group(2)):
            assert abs(float(w) - maps["ablated"][i, int(j)]) <= 0.005 + 1e-9, (i, j, w)


def map_glyphs(lines: list[str], title_at: str, n: int, cell: int) -> np.ndarray:
    """The glyphs of the map panel whose title starts with `title_at`: [n, n] (upper triangle blank)."""
    t = next(k for k, line in enumerate(lines) if title_at in line)
    col = lines[t].index(title_at)
    ruler = lines[t + 1]
    start = ruler.index("0", col)  # the first key's column
    out = np.full((n, n), "", dtype=object)
    for i, line in enumerate(lines[t + 2 : t + 2 + n]):
        assert int(line[col:start].split()[0]) == i, line
        for j in range(n):
            out[i, j] = line[start + cell * j : start + cell * j + 1] or " "
    return out


def assert_glyphs_match(glyphs: np.ndarray, weights: np.ndarray) -> None:
    """Every drawn cell (query i, key j <= i) is the glyph of the json's weight."""
    n = weights.shape[0]
    for i in range(n):
        for j in range(i + 1):
            assert glyphs[i, j] in shades(weights[i, j]), (i, j, glyphs[i, j], weights[i, j])


def test_inspect_rich_map_is_the_jsons(mha, maps):
    args = ("inspect", TEXT, "-l", str(LAYER), "-H", str(HEAD), "--ablate", ABLATE)
    n = maps["ablated"].shape[0]
    glyphs = map_glyphs(screen(mha, *args, fmt="rich"), f"L{LAYER}H{HEAD} ", n, cell=2)
    assert_glyphs_match(glyphs, maps["ablated"])
    wrong = sum(glyphs[i, j] not in shades(maps["intact"][i, j]) for i in range(n) for j in range(i + 1))
    assert wrong > 5, "the premise: the intact map is drawn differently"


# --- stats ------------------------------------------------------------------------------------------------------------

TEXT_STATS = ("entropy", "max_weight", "mean_distance", "first_token", "self", "previous_token", "duplicate_token",
              "induction")  # fmt: skip


def test_stats_text_table_and_rich_grid_are_the_jsons(mha):
    args = ("stats", TEXT, "--ablate", ABLATE)
    doc = json_of(mha, *args)
    intact = json_of(mha, "stats", TEXT)
    assert head_of(intact, LAYER, HEAD)["stats"]["induction"] - head_of(doc, LAYER, HEAD)["stats"]["induction"] > 0.3
    lines = screen(mha, *args, fmt="text")
    table = [line.split() for line in lines if re.match(r"^L\d+H\d+ ", line)]
    assert len(table) == len(doc["heads"])
    for row in table:
        layer, head = map(int, re.match(r"L(\d+)H(\d+)", row[0]).groups())  # type: ignore[union-attr]
        record = head_of(doc, layer, head)
        assert row[1] == record["kind"]
        decimals = {"mean_distance": 1}
        for name, value in zip(TEXT_STATS, row[3:11]):
            bound = 0.5 * 10 ** -decimals.get(name, 3) + 1e-9
            assert abs(float(value) - record["stats"][name]) <= bound, (row[0], name, value, record["stats"][name])
    grid = screen(mha, *args, "--stat", "induction", fmt="rich")
    cells = {}
    for line in grid:
        m = re.match(r"^\s+(\d+)((?:\s+\S \d\.\d\d)+)\s*$", line)
        if m:
            for h, (letter, value) in enumerate(re.findall(r"(\S) (\d\.\d\d)", m.group(2))):
                cells[(int(m.group(1)), h)] = float(value)
    assert len(cells) == len(doc["heads"])
    for (layer, head), value in cells.items():
        assert abs(value - head_of(doc, layer, head)["stats"]["induction"]) <= 0.005 + 1e-9, (layer, head, value)


# --- diff -------------------------------------------------------------------------------------------------------------

DIFF_STATS = TEXT_STATS  # delta_<name> columns, in this order
RANK_STATS = ("previous_token", "induction", "first_token", "entropy")  # Δprev Δind Δsink Δentropy


def test_diff_text_and_rich_tables_are_the_jsons(mha):
    args = ("diff", "sample", "sample", TEXT, "--ablate", ABLATE)
    doc = json_of(mha, *args)
    by_b = {(r["layer_b"], r["head_b"]): r for r in doc["heads"]}
    assert by_b[(LAYER, HEAD)]["divergence"] > 0.1
    rows = [line.split() for line in screen(mha, *args, fmt="text") if re.match(r"^\d+\s+\d+\s+\d+\s+\d+\s+\d+", line)]
    assert len(rows) == len(doc["heads"])
    for row in rows:
        r = by_b[(int(row[3]), int(row[4]))]
        assert (row[6], row[7]) == (r["kind_a"], r["kind_b"])
        assert abs(float(row[5]) - r["divergence"]) <= 1e-6 * max(1.0, r["divergence"])
        for name, value in zip(DIFF_STATS, row[8:16]):
            assert abs(float(value) - r["stat_deltas"][name]) <= 0.5e-6 + 1e-9, (row[:5], name)
    ranked = 0
    for line in screen(mha, *args, fmt="rich"):
        m = re.match(r"^\s*\d+\s+L(\d+)H(\d+)\s+(\S+)\s+(\S+) → (\S+)((?:\s+[+-]\d\.\d\d){4})\s*$", line)
        if m is None:
            continue
        ranked += 1
        r = by_b[(int(m.group(1)), int(m.group(2)))]
        assert float(m.group(3)) == pytest.approx(r["divergence"], rel=5e-3, abs=1e-12)
        assert (m.group(4), m.group(5)) == (r["kind_a"], r["kind_b"])
        for name, value in zip(RANK_STATS, m.group(6).split()):
            assert abs(float(value) - r["stat_deltas"][name]) <= 0.005 + 1e-9, (m.group(0), name)
    assert ranked == min(10, len(doc["heads"]))


def test_diff_rich_draws_model_b_ablated(mha, maps):
    """The two maps under the table: A's is the intact model's json, B's the ablated one's (the old bug: intact)."""
    args = ("diff", "sample", "sample", TEXT, "--ablate", ABLATE)
    top = json_of(mha, *args)["heads"][0]
    assert (top["layer_b"], top["head_b"]) == (LAYER, HEAD), "the premise: the most changed head is L1H2"
    lines = screen(mha, *args, fmt="rich")
    n = maps["ablated"].shape[0]
    assert_glyphs_match(map_glyphs(lines, f"MODEL_A L{LAYER}H{HEAD}", n, cell=1), maps["intact"])
    glyphs_b = map_glyphs(lines, f"MODEL_B L{LAYER}H{HEAD}", n, cell=1)
    assert_glyphs_match(glyphs_b, maps["ablated"])
    wrong = sum(glyphs_b[i, j] not in shades(maps["intact"][i, j]) for i in range(n) for j in range(i + 1))
    assert wrong > 5, "the premise: B drawn intact would look different"


# --- ablate (takes --ablate once masks replay: issue 36 item 3) -------------------------------------------------------


def takes_ablate(mha) -> bool:
    return "--ablate" in mha("ablate", "--help", env=WIDE).stdout.decode()


def test_ablate_text_and_rich_numbers_are_the_jsons(mha):
    if not takes_ablate(mha):
        pytest.skip("mha ablate takes --ablate with issue 36 item 3 (mask replay); nothing to compare before")
    args = ("ablate", TEXT, "-l", "1", "--ablate", ABLATE)
    doc = json_of(mha, *args)
    intact = json_of(mha, "ablate", TEXT, "-l", "1")
    assert abs(doc["baseline_loss"] - intact["baseline_loss"]) > 0.01, "the premise: the masked model's loss differs"
    by_head = {(r["layer"], r["head"]): r for r in doc["heads"]}
    text = screen(mha, *args, fmt="text")
    baseline = next(line for line in text if line.startswith("baseline"))
    assert abs(float(baseline.split()[1]) - doc["baseline_loss"]) <= 0.5e-4 + 1e-9
    rows = [line.split() for line in text if re.match(r"^\d+\s+\d+\s+\d+\s", line)]
    assert len(rows) == len(doc["heads"])
    for row in rows:
        r = by_head[(int(row[1]), int(row[2]))]
        assert row[3] == r["kind"]
        assert abs(float(row[4]) - r["loss"]) <= 0.5e-4 + 1e-9 and abs(float(row[5]) - r["delta"]) <= 0.5e-4 + 1e-9
        assert abs(float(row[6].rstrip("%")) - r["delta_pct"]) <= 0.05 + 1e-9
    shown = 0
    for line in screen(mha, *args, fmt="rich"):
        m = re.search(r"L(\d+)H(\d+)\W+(\S+)\W+(\d+\.\d{4})\W+([+-]\d+\.\d{3})\W+([+-]\d+\.\d)%", line)
        if m is None:
            continue
        shown += 1
        r = by_head[(int(m.group(1)), int(m.group(2)))]
        assert (m.group(3), abs(float(m.group(4)) - r["loss"]) <= 0.5e-4 + 1e-9) == (r["kind"], True), line
        assert abs(float(m.group(5)) - r["delta"]) <= 0.5e-3 + 1e-9, line
    assert shown == len(doc["heads"])
