"""The figures the command pages show are what the shown commands print (issue 36, README that reproduces itself).

The README's tour is run by tests/test_docs.py (every command line, its shown output compared). Here: every output
block and figure table of docs/commands/*.md, each run in this process on the bundled model with the data the
repository ships, every number compared within its printed precision (one unit of its last printed digit).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import parse_json

REPO = Path(__file__).resolve().parent.parent
PAGES = REPO / "docs" / "commands"
NAMES = "Mercutio Tybalt Benvolio Capulet Montague Escalus Paris Balthasar"
HELDOUT = REPO / "tests" / "data" / "heldout_shakespeare.json"

# (page, the block's first line) -> (the command's arguments, its stdin, how many columns the page keeps)
BLOCKS = {
    ("diff.md", "model_a  sample:tiny-shakespeare-early"): (
        ["diff", "sample-early", "sample", f"{NAMES} {NAMES}"], b"", 82,
    ),
    ("census.md", "repeat: 20 sequences of 41 tokens, seed 0, read on the second copy"): (
        ["census", "--texts", "benchmarks/data/shakespeare_1000.txt", "-f", "text"], b"", None,
    ),
    ("circuits.md", "circuits of sample:tiny-shakespeare: from the weights alone, raw weights"): (
        ["circuits", "--mode", "K", "-l", "1", "-H", "2", "--top", "0", "-f", "text"], b"", None,
    ),
    ("patch.md", "sample:tiny-shakespeare  site z  denoise  metric logit_diff  pairs 1"): (
        ["patch", "a b c d e f g h a b c d e f g", "h g f e d c b a a b c d e f g", "--answer", " h", "--wrong", " f",
         "-f", "text"], b"", None,
    ),
    ("patch.md", "sample:tiny-shakespeare  site resid  denoise  metric logit_diff  pairs 1"): (
        ["patch", "a b c d e f g h a b c d e f g", "h g f e d c b a a b c d e f g", "--answer", " h", "--wrong", " f",
         "--site", "resid", "-f", "text"], b"", None,
    ),
}  # fmt: skip
# A block with a command in it (or naming one, `// mha ...`, its output shortened) is an example, not an output.
COMMAND_LINE = re.compile(r"^(// )?(mha|echo|printf|cat|tail|jq) ", re.M)


def output_blocks() -> dict[tuple[str, str], str]:
    """Every code block of a command page with no command in it (an output), by page and first line."""
    found = {}
    for page in sorted(PAGES.glob("*.md")):
        for block in re.finditer(r"```\w*\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
            body = block.group(1)
            if body.strip() and not COMMAND_LINE.search(body):
                found[(page.name, body.splitlines()[0])] = body
    return found


def same_figure(shown: str, real: str) -> bool:
    """Equal words; numbers equal within the shown number's printed precision (one unit of its last digit)."""
    x, y = shown.strip("+%(),;"), real.strip("+%(),;")
    try:
        a, b = float(x), float(y)
    except ValueError:
        return shown == real
    decimals = len(x.partition(".")[2]) if "." in x and "e" not in x.lower() else 0
    return abs(a - b) <= 10.0**-decimals * 1.000001 and shown.startswith("+") == real.startswith("+")


def same_line(shown: str, real: str) -> bool:
    words, actual = shown.split(), real.split()
    return len(words) == len(actual) and all(same_figure(a, b) for a, b in zip(words, actual, strict=True))


def test_the_comparison_is_not_blind():
    assert same_line("0.61915 mixed 4.016", "0.619154 mixed 4.0164")
    assert not same_line("4.016", "4.0326") and not same_line("4.016 (L0H2)", "4.016 (L1H2)")
    assert not same_line("0.94", "0.96") and same_line("0.94", "0.949")


def test_every_output_block_of_the_command_pages_is_checked_here():
    assert sorted(output_blocks()) == sorted(BLOCKS)


@pytest.mark.parametrize("key", list(BLOCKS), ids=lambda k: k[0])
def test_an_output_block_is_what_its_command_prints(key, mha, monkeypatch):
    args, stdin, columns = BLOCKS[key]
    monkeypatch.chdir(REPO)  # the paths the pages show are the checkout's
    result = mha(*args, input=stdin, env={"MHA_NO_PROGRESS": "1"})
    assert result.returncode == 0, result.stderr.decode()
    real = [line[:columns] if columns else line for line in result.stdout.decode().splitlines()]
    shown = output_blocks()[key].splitlines()
    assert len(real) >= len(shown)
    for want, got in zip(shown, real, strict=False):
        assert same_line(want, got), f"{key[0]}: the page shows\n{want}\nthe command prints\n{got}"


def table(page: str, header_start: str) -> list[list[str]]:
    """The rows of the markdown table whose header starts with `header_start`, cells stripped."""
    lines = (PAGES / page).read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_the_prune_table_is_what_its_commands_print(mha):
    """prune.md: `jq -r '.passages[7]' tests/data/heldout_shakespeare.json | mha prune -`, zero and mean."""
    page = (PAGES / "prune.md").read_text(encoding="utf-8")
    assert "jq -r '.passages[7]' tests/data/heldout_shakespeare.json | mha prune -" in page
    text = json.loads(HELDOUT.read_text(encoding="utf-8"))["passages"][7] + "\n"  # jq -r ends it with a newline
    runs = {}
    for method in ("zero", "mean"):
        result = mha("prune", "-", "--method", method, "-f", "json", input=text.encode(), env={"MHA_NO_PROGRESS": "1"})
        assert result.returncode == 0, result.stderr.decode()
        runs[method] = parse_json(result.stdout)
    zero, mean = runs["zero"], runs["mean"]
    baseline = re.search(r"baseline (\d+\.\d+) nats/token", page)
    assert baseline and same_figure(baseline.group(1), f"{zero['baseline_loss']}")
    rows = table("prune.md", "| heads removed")
    assert len(rows) == len(zero["importance"]["curve"]), "every round of the curve is in the table"
    for row, z, r, m in zip(rows, zero["importance"]["curve"], zero["random"]["curve"], mean["importance"]["curve"]):
        assert int(row[0].split()[0]) == z["n_removed"]
        for cell, point in ((row[1], z), (row[3], m)):
            loss, _, head = cell.partition(" ")
            assert same_figure(loss, f"{point['loss']}"), (row, point)
            if head:
                assert head == "".join(f"(L{lay}H{h})" for lay, h in point["removed"]), (row, point)
        loss_mean, _, sd = row[2].partition(" ± ")
        assert same_figure(loss_mean, f"{r['loss_mean']}") and (not sd or same_figure(sd, f"{r['loss_std']}")), row
    fractions = re.search(r"Within 5%: (\w+) the heads can go in importance order \(`mean`: ([\d.]+)%\), a (\w+)", page)
    assert fractions, "the prunable fractions are stated"
    words = {"half": 0.5, "a quarter": 0.25, "quarter": 0.25}
    assert words[fractions.group(1)] == zero["importance"]["prunable_fraction"]
    assert float(fractions.group(2)) / 100 == mean["importance"]["prunable_fraction"]
    assert words[fractions.group(3)] == zero["random"]["prunable_fraction"]
