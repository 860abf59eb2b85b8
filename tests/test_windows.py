"""Windows never drop silently (issue 36 item 5): inspect's default window ends at the text's last token.

A `--keys A:B` range cut for width says how many keys were left out and which flag shows them, and head titles are
never cut inside a word.

The rich view in process (`-f rich` piped: no colour, one query row a line), on the bundled model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mhacli.analyses.stats import KINDS

IOI = "When Mary and John went to the store, John gave a drink to"
NOTE = re.compile(r"showing query rows (\d+)–(\d+) and (?:key 0 and )?keys (\d+)–(\d+) of (\d+) tokens")
HELDOUT = Path(__file__).resolve().parent / "data" / "heldout_shakespeare.json"


def rich(mha, *args: str, columns: int = 120, lines: int = 40) -> str:
    result = mha("inspect", *args, "-f", "rich", env={"COLUMNS": str(columns), "LINES": str(lines)})
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def n_tokens(mha, text: str) -> int:
    result = mha("inspect", text, "-f", "json", "-l", "0", "-H", "0")
    return len(json.loads(result.stdout)["tokens"])


def row_shown(out: str, row: int) -> bool:
    """A map line labelled with query row `row` (the row labels start each panel's lines)."""
    return re.search(rf"(^|\s){row} [ ░▒▓█│]", out, re.M) is not None


@pytest.mark.parametrize("columns,lines", [(120, 40), (80, 24), (200, 60)])
def test_the_default_window_ends_at_the_last_token(mha, columns, lines):
    """The IOI prompt's last token (where the prediction happens): its row and its column are in the window."""
    n = n_tokens(mha, IOI)
    out = rich(mha, IOI, columns=columns, lines=lines)
    note = NOTE.search(out)
    if note:  # a window: it must end at the last row and key
        lo, hi, _, last_key, total = map(int, note.groups())
        assert total == n and hi == n - 1 and last_key == n - 1, note.group(0)
        assert "--from I and --keys A:B move the window" in " ".join(out.split())  # wrapped, never cropped
        assert not row_shown(out, lo - 1)
    assert row_shown(out, n - 1), f"row {n - 1} (the last token) is not drawn"


def test_from_still_starts_the_window_where_asked(mha):
    out = rich(mha, IOI, "--from", "0")
    note = NOTE.search(out)
    assert note and int(note.group(1)) == 0 and row_shown(out, 0)


def test_a_keys_range_cut_for_width_says_how_many_keys_were_left_out(mha):
    text = json.loads(HELDOUT.read_text(encoding="utf-8"))["passages"][1]  # 200 tokens
    out = rich(mha, text, "--keys", "100:160")
    note = NOTE.search(out)
    assert note and int(note.group(3)) == 100, out[:600]
    shown = int(note.group(4)) - 100 + 1
    assert shown < 60, "at 120 columns the every-head view cannot show 60 keys per panel"
    left, said = 60 - shown, " ".join(out.split())
    assert f"--keys 100:160: {left} of its 60 keys left out for width" in said
    assert f"--keys {100 + shown}:160 shows them" in said
    whole = rich(mha, text, "--keys", "100:110")
    assert "left out" not in whole and NOTE.search(whole).group(4) == "109"


@pytest.mark.parametrize("columns", [60, 70, 80, 90, 100, 110, 120])
def test_head_titles_are_never_cut_inside_a_word(mha, columns):
    out = rich(mha, IOI, columns=columns)
    titles = re.findall(r"(L\dH\d) (\S+)", out)
    assert len({name for name, _ in titles}) == 8, out
    for name, kind in titles:
        assert kind in KINDS, f"{name}: title cut to {kind!r} at {columns} columns"
    assert "…" not in "".join(line for line in out.splitlines() if re.search(r"L\dH\d", line))


def one_head(mha, text: str, columns: int, layer: int = 1, head: int = 2) -> list[str]:
    return rich(mha, text, "-l", str(layer), "-H", str(head), columns=columns).splitlines()


@pytest.mark.parametrize("columns", [120, 200])
def test_one_head_uses_the_width(mha, columns):
    """Issue 36 item 7: beside a 25-token map (about 56 columns) the head's statistics and its last query's keys."""
    lines = one_head(mha, IOI, columns)
    widest = max(len(line.rstrip()) for line in lines)
    assert widest > 100, f"the view uses {widest} of {columns} columns"
    assert all(len(line) <= columns for line in lines)
    beside = [line for line in lines if re.match(r"\s*\d+ \S+\s+[ ░▒▓█]+\s{2,}(entropy|kind|induction)\b", line)]
    assert beside, "the statistics are not beside the map rows"


def test_one_head_at_80_columns_puts_the_statistics_under_the_map(mha):
    lines = one_head(mha, IOI, 80)
    assert all(len(line) <= 80 for line in lines)
    last = n_tokens(mha, IOI) - 1
    last_row = max(i for i, line in enumerate(lines) if re.match(rf"\s*{last} \S+\s+[░▒▓█]", line))
    stats = next(i for i, line in enumerate(lines) if line.startswith("statistics"))
    assert stats > last_row


@pytest.mark.parametrize("columns", [80, 200])
def test_one_head_side_shows_the_head_and_its_last_querys_strongest_keys(mha, columns):
    """Figures from the json of the same head (not the view's own code): every statistic and the top key's weight."""
    doc = json.loads(mha("inspect", IOI, "-l", "1", "-H", "2", "-f", "json").stdout)
    record = doc["heads"][0]
    text = "\n".join(one_head(mha, IOI, columns))
    for name, value in record["stats"].items():
        shown = "–" if value is None else f"{value:.3f}"
        assert re.search(rf"{name.replace('_', ' ')}\s+{shown}(\s|$)", text, re.M), name
    row = record["attention"][-1]
    best = max(range(len(row)), key=row.__getitem__)
    q = len(row) - 1
    assert re.search(rf"query {q} .*strongest keys\s*\n[^\n]*\s{best} \S+\s+{row[best]:.2f} █", text), text


def diff_rich(mha, *args: str, columns: int = 80) -> str:
    result = mha("diff", "sample-early", "sample", *args, "-f", "rich", env={"COLUMNS": str(columns), "LINES": "40"})
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def long_text() -> str:
    return json.loads(HELDOUT.read_text(encoding="utf-8"))["passages"][0][:300]


@pytest.mark.parametrize("columns", [80, 120])
def test_diffs_maps_end_at_the_last_token_and_say_what_they_show(mha, columns):
    """Issue 36 item 5 for diff: the default window of the two maps ends at the text's last token (row and key)."""
    text = long_text()
    n = n_tokens(mha, text)
    out = diff_rich(mha, text, columns=columns)
    note = NOTE.search(out)
    assert note, "a window that does not say what it shows"
    lo, hi, _, last_key, total = map(int, note.groups())
    assert (hi, last_key, total) == (n - 1, n - 1, n), note.group(0)
    maps = out[note.end() :]
    assert re.search(rf"^\s*{n - 1} ", maps, re.M) and not re.search(rf"^\s*{lo - 1} ", maps, re.M)
    flat = " ".join(out.split())
    assert "--from I moves the window" in flat and "--keys" not in flat  # diff has no --keys: never offer it


def test_diffs_from_starts_the_window_where_asked(mha):
    out = diff_rich(mha, long_text(), "--from", "0")
    note = NOTE.search(out)
    assert note and int(note.group(1)) == 0 and re.search(r"^\s*0 ", out[note.end() :], re.M)
