"""Golden outputs: `stats`, `inspect` and `diff` on the bundled model, compared with the files in tests/golden/.

Each command runs on two texts, as plain text (`-f text`) and as the rich view at 80 columns (`-f rich`,
COLUMNS=80), in process; one head's view (`inspect -l 1 -H 2`) at 80, 120 and 200 columns; a view change shows
up as a diff to review.

After an intended change, regenerate the files and review them with `git diff tests/golden`:

    MHA_UPDATE_GOLDEN=1 pytest tests/test_golden.py

Identical bytes pass at once. Otherwise the output must match line for line, with two allowances for a different
CPU or BLAS build (float32 sums in another order): every printed number may differ from the golden one by one unit
in its last printed digit plus 1e-5 x max(1, |number|), and a map's shade glyph may be one step lighter or darker
(" ░▒▓█" are cut at fixed weights). Everything else -- words, spacing, alignment, the order of rows -- is compared
exactly.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("MHA_UPDATE_GOLDEN") == "1"
TEXTS = {
    "mary": "When Mary and John went to the store, John gave a drink to",
    "cat": "The cat sat on the mat. The cat sat on the mat.",
}
COMMANDS = {
    "stats": ["stats", "-m", "sample"],
    "inspect": ["inspect", "-m", "sample"],
    "diff": ["diff", "sample", "sample-early"],
}
FORMATS = {"text": ["-f", "text"], "rich80": ["-f", "rich"]}
# One head's view (`inspect -l 1 -H 2`) at three widths: beside the map at 120 and 200 columns, under it at 80.
ONE_HEAD = ["inspect", "-m", "sample", "-l", "1", "-H", "2"]
WIDTHS = (80, 120, 200)
# Environment that would change rich's output (colour, terminal detection): cleared, so the files hold the view alone.
CLEARED = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES", "TERM", "COLORTERM")

NUMBER = re.compile(r"[-+]?\d+\.(\d+)(?:e([-+]\d+))?")
SHADES = " ░▒▓█"


def numbers_close(got: re.Match, want: re.Match) -> bool:
    if len(got.group(1)) != len(want.group(1)) or got.group(2) != want.group(2):
        return False  # another number of digits or another exponent: a format change, not rounding
    unit = 10.0 ** (-len(want.group(1)) + int(want.group(2) or 0))
    a, b = float(got.group(0)), float(want.group(0))
    return abs(a - b) <= unit + 1e-5 * max(1.0, abs(b))


def shades_close(got: str, want: str) -> bool:
    """The same text, except for shade glyphs one step apart."""
    if len(got) != len(want):
        return False
    return all(
        g == w or (g in SHADES and w in SHADES and abs(SHADES.index(g) - SHADES.index(w)) == 1)
        for g, w in zip(got, want)
    )


def line_matches(got: str, want: str) -> bool:
    g_nums, w_nums = list(NUMBER.finditer(got)), list(NUMBER.finditer(want))
    if len(g_nums) != len(w_nums) or not all(numbers_close(g, w) for g, w in zip(g_nums, w_nums)):
        return False
    return shades_close(NUMBER.sub("#", got), NUMBER.sub("#", want))


def mismatches(got: str, want: str) -> list[str]:
    """Lines of `got` that do not match `want` within the allowances, as a unified diff (empty: they match)."""
    g, w = got.splitlines(), want.splitlines()
    if len(g) == len(w) and all(line_matches(a, b) for a, b in zip(g, w)):
        return []
    return list(difflib.unified_diff(w, g, "golden", "now", lineterm="", n=1))


def case_name(command: str, text: str, fmt: str) -> str:
    return f"{command}-{text}.{fmt}.txt"


CASES = [(c, t, f) for c in COMMANDS for t in TEXTS for f in FORMATS]


@pytest.mark.parametrize(("command", "text", "fmt"), CASES, ids=[case_name(*c)[:-4] for c in CASES])
def test_output_matches_the_golden_file(mha, monkeypatch, command, text, fmt):
    for key in CLEARED:
        monkeypatch.delenv(key, raising=False)
    result = mha(*COMMANDS[command], TEXTS[text], *FORMATS[fmt], env={"COLUMNS": "80", "MHA_NO_PROGRESS": "1"})
    compare(result, GOLDEN / case_name(command, text, fmt))


@pytest.mark.parametrize("width", WIDTHS)
def test_one_heads_view_matches_the_golden_file(mha, monkeypatch, width):
    for key in CLEARED:
        monkeypatch.delenv(key, raising=False)
    result = mha(*ONE_HEAD, TEXTS["mary"], "-f", "rich", env={"COLUMNS": str(width), "MHA_NO_PROGRESS": "1"})
    compare(result, GOLDEN / f"inspect-one-head-mary.rich{width}.txt")


def compare(result, path: Path) -> None:
    assert result.returncode == 0, result.stderr.decode()
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_bytes(result.stdout)
    assert path.exists(), f"{path.name} is missing: MHA_UPDATE_GOLDEN=1 pytest tests/test_golden.py writes it"
    want = path.read_bytes()
    if result.stdout == want:
        return
    diff = mismatches(result.stdout.decode("utf-8"), want.decode("utf-8"))
    assert not diff, (
        f"{path.name} differs (review, then MHA_UPDATE_GOLDEN=1 pytest tests/test_golden.py):\n" + "\n".join(diff[:60])
    )


def test_the_comparison_allows_rounding_and_nothing_else():
    assert line_matches("L0H0  broad  0.870  2.020", "L0H0  broad  0.871  2.019")
    assert line_matches("0.633541  -0.348262", "0.633542  -0.348261")
    assert line_matches("js 0.00438", "js 0.00439") and line_matches("+0.01 -0.00", "+0.00 +0.00")
    assert line_matches(" 3 ▒░▒░", " 3 ▒▒▒ ")
    assert not line_matches("L0H0  broad  0.870", "L0H0  broad  0.872")  # two units in the last digit
    assert not line_matches("L0H0  broad  0.870", "L0H0  sink   0.870")  # a word
    assert not line_matches("0.87", "0.870")  # a format
    assert not line_matches(" 3 ▒░▒░", " 3 █░▒░")  # two shade steps
    assert not line_matches("L0H0 0.870 ", "L0H0  0.870")  # spacing
    assert mismatches("a\nb 0.100\n", "a\nb 0.101\n") == [] and mismatches("a\n", "a\nb\n")
