"""--help, --version and completion through the real entry point.

Every command's examples run, flags take no value, every option with a fixed set of values lists it and refuses others
in one line.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import examples_in, help_text, run_mha

COMMANDS = ["inspect", "stats", "diff", "explain", "verify", "info", "ablate", "prune", "census", "circuits", "browse",
            "attribute", "lens", "patch"]  # fmt: skip
# Interactive: its examples need a terminal on stdout, so tests/test_browse.py runs them in tmux instead.
INTERACTIVE = {"browse"}
EXAMPLE_START = re.compile(r"^\s*(mha|echo|printf)\s")


def registered_commands() -> list[str]:
    import typer

    from mhacli.cli import app

    return sorted(typer.main.get_command(app).commands)


def test_the_command_list_here_is_every_registered_command():
    assert sorted(COMMANDS) == registered_commands()


def test_each_command_module_registers_itself():
    """mhacli.cli imports every public module of its package (no list to edit); each is a command of its name."""
    code = (
        "import pkgutil, sys, typer, mhacli.cli as c\n"
        "mods = [m.name for m in pkgutil.iter_modules(c.__path__) if not m.name.startswith('_')]\n"
        "print(' '.join(m for m in mods if 'mhacli.cli.' + m not in sys.modules))\n"
        "print(' '.join(sorted(set(mods) - set(typer.main.get_command(c.app).commands))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    not_imported, not_commands = done.stdout.split("\n")[:2]
    assert not_imported == "" and not_commands == "", done.stdout


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]], ids=lambda c: c[0] if c else "mha")
def test_help_has_examples_one_per_line_in_rich_and_plain_help(command):
    rich = examples_in(help_text(*command, rich=True))
    plain = examples_in(help_text(*command, rich=False))
    assert rich == plain
    assert 2 <= len(rich) <= 4, rich
    for line in rich:
        assert EXAMPLE_START.match(line) and "mha " in line, f"not a whole command (rewrapped?): {line!r}"
        words = shlex.split(line)  # balanced quotes: the line was not cut in the middle of a text
        assert len(words) >= 2


# The groups of `mha --help`, in order, as a user thinks of the commands (issue 27 item 9: the front door).
GROUPS = {
    "Looking": ["inspect", "stats", "explain", "browse"],
    "Comparing": ["diff"],
    "Causes": ["ablate", "prune", "attribute", "lens", "patch"],
    "The model": ["info", "verify", "census"],
    "Weights": ["circuits"],
}


def command_groups(text: str, rich: bool) -> dict[str, list[tuple[str, str]]]:
    """The command sections of `mha --help`.

    {title: [(command, the rest of its line)]}, one entry per line, so a summary that wraps shows up as a line whose
    first word is not a command (or as a truncated `...`).
    """
    groups: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        if rich:
            title = re.match(r"^╭─ (.+?) ─+╮$", line)
            if title:
                current = None if title.group(1) in ("Options", "Arguments") else groups.setdefault(title.group(1), [])
            elif line.startswith("╰"):
                current = None
            elif current is not None:
                body = line.strip("│").strip()
                name, _, rest = body.partition(" ")
                current.append((name, rest.strip()))
        else:
            title = re.match(r"^(\S.*):$", line)
            if title:
                current = None if title.group(1) == "Options" else groups.setdefault(title.group(1), [])
            elif not line.strip():
                current = None
            elif current is not None:
                name, _, rest = line.strip().partition(" ")
                current.append((name, rest.strip()))
    return groups


def summary_line(command: str) -> str:
    """The first line of a command's docstring: its one-line summary."""
    import typer

    from mhacli.cli import app

    return (typer.main.get_command(app).commands[command].help or "").strip().splitlines()[0]


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "plain"])
def test_help_lists_the_commands_in_groups_one_line_each(rich):
    """`COLUMNS=80 mha --help`: the groups in order, every command once, each summary whole on its one line."""
    groups = command_groups(help_text(rich=rich), rich)
    assert list(groups) == list(GROUPS), groups
    for title, commands in GROUPS.items():
        rows = groups[title]
        assert [name for name, _ in rows] == commands, f"{title}: {rows} (a wrapped summary adds a row)"
        for name, shown in rows:
            assert shown == summary_line(name), f"{name}: {shown!r} is not its whole summary (cut or wrapped?)"
    assert sorted(n for rows in groups.values() for n, _ in rows) == registered_commands()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_summary_is_one_sentence_that_fits_80_columns(command):
    """The summary is the docstring's first line, followed by a blank line (typer's rich help shows the whole first ...

    ... paragraph, line breaks included), one sentence (click's plain help cuts at the first period) short enough
    for the 80-column list: the longest name (7), the box and the padding leave 65 columns.
    """
    import typer

    from mhacli.cli import app

    doc = (typer.main.get_command(app).commands[command].help or "").strip()
    first, _, rest = doc.partition("\n")
    assert not rest or rest.startswith("\n"), f"{command}: the summary runs on to a second line"
    assert len(first) <= 65 and first.endswith(".") and first.count(". ") == 0, first


def mha_on_path(tmp_path: Path) -> dict:
    """An environment whose `mha` is this interpreter's mhacli, whatever is installed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "mha"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m mhacli "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MHA_MODEL", "MHA_DEBUG", "NO_COLOR")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["MHA_NO_PROGRESS"] = "1"
    return env


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]], ids=lambda c: c[0] if c else "mha")
def test_every_example_in_help_runs(command, tmp_path):
    """Each example as a user types it.

    Bash, a terminal on stdin (`mha verify` alone uses its built-in text), output piped; in order, in one empty
    directory (prune's mask file feeds the next example).
    """
    if command and command[0] in INTERACTIVE:
        pytest.skip("interactive: tests/test_browse.py runs its examples in a real terminal (tmux)")
    env = mha_on_path(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    for line in examples_in(help_text(*command)):
        master, slave = os.openpty()
        try:
            result = subprocess.run(
                ["bash", "-o", "pipefail", "-c", line],
                stdin=slave,
                capture_output=True,
                env=env,
                cwd=work,
                timeout=300,
            )
        finally:
            os.close(slave)
            os.close(master)
        assert result.returncode == 0, f"{line}\n{result.stderr.decode()[-2000:]}"
        assert result.stdout.strip(), line
        assert b"error:" not in result.stderr, line


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]], ids=lambda c: c[0] if c else "mha")
@pytest.mark.parametrize("rich", [True, False], ids=["rich", "plain"])
def test_no_bool_type_shown_for_flags(command, rich):
    text = help_text(*command, rich=rich)
    assert "<bool>" not in text and "BOOLEAN" not in text


def test_a_flag_refuses_a_value():
    """--full takes no value: `--full true` makes `true` a second text argument, a usage error (not silently run)."""
    result = run_mha("explain", "The cat", "-l", "0", "-H", "0", "--full", "true")
    assert result.returncode == 2
    assert result.stderr.decode().startswith("error: ") and len(result.stderr.decode().splitlines()) == 1


# Every option with a fixed set of values: (command, option, its values).
CHOICES = [
    *[(c, "--format", ("rich", "text", "json", "jsonl", "csv", "tsv"))
      for c in ("inspect", "stats", "diff", "info", "ablate", "prune", "census")],
    *[(c, "--format", ("rich", "text", "json")) for c in ("explain", "verify")],
    ("diff", "--metric", ("js", "tv", "cosine")),
    ("ablate", "--method", ("zero", "mean")),
    ("prune", "--method", ("zero", "mean")),
    ("stats", "--stat", ("auto", "entropy", "max_weight", "mean_distance", "first_token", "self", "previous_token",
                         "duplicate_token", "induction")),
    ("census", "--probes", ("repeat", "random", "none")),
]  # fmt: skip


def option_help(text: str, option: str) -> str:
    """The help rows of one option (its line and the continuation lines under it), box characters removed."""
    rows = [re.sub(r"[│╭╮╰╯─]", " ", line) for line in text.splitlines()]
    start = next(i for i, r in enumerate(rows) if re.search(rf"(^|\s){re.escape(option)}(\s|,|$)", r))
    block = [rows[start]]
    for r in rows[start + 1 :]:
        if re.match(r"^\s*(-\w|--\w)", r) or not r.strip():
            break
        block.append(r)
    return " ".join(" ".join(block).split())


@pytest.mark.parametrize("command,option,values", CHOICES, ids=lambda x: x if isinstance(x, str) else "")
def test_choices_are_listed_in_help(command, option, values):
    for rich in (True, False):
        shown = option_help(help_text(command, rich=rich), option)
        for value in values:
            assert re.search(rf"(?<![\w_]){re.escape(value)}(?![\w_])", shown), f"{value} missing from: {shown}"


MIN_ARGS = {
    "diff": ["sample", "sample", "hi"],
    "explain": ["hi", "-l", "0", "-H", "0"],
    "census": ["--probe-count", "1", "-j", "1"],
}


@pytest.mark.parametrize("command,option,values", CHOICES, ids=lambda x: x if isinstance(x, str) else "")
def test_other_values_are_refused_in_one_line_naming_the_choices(command, option, values, mha):
    args = MIN_ARGS.get(command, ["hi"] if command not in ("info", "census") else [])
    result = mha(command, *args, option, "bogus")
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert result.stdout == b""
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert "bogus" in err
    for value in values:
        if value != "none":
            assert value in err, err


def test_format_is_case_insensitive(mha):
    upper = mha("info", "-f", "JSON")
    assert upper.returncode == 0 and upper.stdout == mha("info", "-f", "json").stdout


def test_version_names_package_numpy_and_every_architecture():
    import tomllib

    import numpy

    from mhacli.config import SUPPORTED_MODEL_TYPES
    from mhacli.engine.arch import FAMILIES

    result = run_mha("--version")
    assert result.returncode == 0 and result.stderr == b""
    lines = result.stdout.decode().splitlines()
    version = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["version"]
    assert lines[0] == f"mha {version}"
    assert f"numpy {numpy.__version__}" in lines[1]
    archs = lines[2].split(":", 1)[1].replace(",", " ").split()
    assert sorted(archs) == sorted(FAMILIES) == sorted(SUPPORTED_MODEL_TYPES)
    for family in ("gpt2", "llama", "mistral", "gpt_bigcode", "olmo2", "olmo3"):
        assert family in archs


# --- shell completion ----------------------------------------------------------------------------------------------


def test_help_offers_completion():
    text = help_text()
    assert "--install-completion" in text and "--show-completion" in text


@pytest.mark.parametrize(
    "shell,marker",
    [
        ("bash", "complete -o default -F _mha_completion mha"),
        ("zsh", "#compdef mha"),
        ("fish", "complete --command mha"),
    ],
)
def test_show_completion_for_a_named_shell(shell, marker):
    # shell detection off (typer's switch for this): --show-completion then takes the shell's name, as on a
    # machine where shellingham cannot tell which shell runs mha
    result = run_mha("--show-completion", shell, env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout.decode()
    assert "_MHA_COMPLETE" in result.stdout.decode()


def test_completion_completes_commands_and_choices():
    """What the installed bash script asks `mha` for, through `python -m mhacli` (the same program)."""
    commands = run_mha(env={"_MHA_COMPLETE": "complete_bash", "COMP_WORDS": "mha ins", "COMP_CWORD": "1"})
    assert commands.returncode == 0 and commands.stdout.decode().split() == ["inspect"]
    metric = run_mha(env={"_MHA_COMPLETE": "complete_bash", "COMP_WORDS": "mha diff --metric ", "COMP_CWORD": "3"})
    assert metric.returncode == 0 and metric.stdout.decode().split() == ["js", "tv", "cosine"]


def test_completion_does_not_slow_start_up():
    """Completion support must not pull in heavy modules at start-up."""
    code = "import sys; from mhacli.cli import run; run(['--version']); print(sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, stdin=subprocess.DEVNULL)
    modules = result.stdout.decode().splitlines()[-1]
    for heavy in ("'torch'", "'transformers'", "'huggingface_hub'", "'scipy'", "'tokenizers'", "'textual'"):
        assert heavy not in modules, heavy


@pytest.mark.parametrize("command", ["ablate", "prune", "diff", "census"])
def test_texts_help_lists_the_accepted_forms(command, mha, tmp_path):
    """--texts takes plain lines and FILE.jsonl ("text" fields): the help says both, and a .jsonl file runs."""
    for rich in (True, False):
        shown = option_help(help_text(command, rich=rich), "--texts")
        assert "line" in shown and ".jsonl" in shown and '"text"' in shown and "'-': stdin" in shown, shown
    corpus = tmp_path / "t.jsonl"
    corpus.write_text('{"text": "The cat sat on the mat."}\n{"text": "A dog ran."}\n')
    args = {"diff": ["sample", "sample"], "census": ["--probes", "none", "-j", "1"]}.get(command, [])
    result = mha(command, *args, "--texts", str(corpus), "-f", "json")
    assert result.returncode == 0, result.stderr.decode()
