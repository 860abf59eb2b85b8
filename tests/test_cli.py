"""The CLI through its real entry point (`python -m mhacli` in a subprocess): formats, stdin, exit codes."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, hf_outputs, parse_json, run_mha

from mhacli.analyses.stats import KINDS, STAT_NAMES
from mhacli.views.formats import CSV_COLUMNS

TEXT = "The cat sat on the mat. The cat sat on the mat."
ANSI = re.compile(rb"\x1b\[")


@pytest.fixture(scope="module")
def inspect_doc(tiny_model):
    result = run_mha("inspect", TEXT, "-m", str(tiny_model), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    return parse_json(result.stdout)


def test_inspect_json_shape_and_numbers_match_hf(inspect_doc, tiny_model):
    doc = inspect_doc
    assert set(doc) == {"model", "tokens", "token_ids", "heads"}
    assert doc["model"]["n_layer"] == 2 and doc["model"]["n_head"] == 4 and doc["model"]["source"] == str(tiny_model)
    n = len(doc["token_ids"])
    assert len(doc["tokens"]) == n and len(doc["heads"]) == 8
    hf_attn, _ = hf_outputs(tiny_model, doc["token_ids"])
    for head in doc["heads"]:
        assert head["kind"] in KINDS
        assert set(head["stats"]) == set(STAT_NAMES)
        rows = head["attention"]
        assert [len(r) for r in rows] == list(range(1, n + 1)), "lower triangle, row i has i+1 weights"
        dense = np.zeros((n, n))
        for i, r in enumerate(rows):
            dense[i, : i + 1] = r
        assert np.abs(dense.sum(axis=1) - 1).max() < 1e-6
        assert np.abs(dense - hf_attn[head["layer"]][head["head"]]).max() < 1e-6


@pytest.mark.parametrize("via", ["argument", "dash", "pipe"])
def test_text_from_argument_dash_or_pipe(tiny_model, inspect_doc, via):
    args = {"argument": [TEXT], "dash": ["-"], "pipe": []}[via]
    stdin = None if via == "argument" else TEXT.encode()
    result = run_mha("inspect", *args, "-m", str(tiny_model), "-f", "json", input=stdin)
    assert result.returncode == 0, result.stderr
    assert parse_json(result.stdout)["token_ids"] == inspect_doc["token_ids"]


@pytest.mark.parametrize("command", ["inspect", "stats"])
def test_jsonl_one_head_per_line(tiny_model, command):
    result = run_mha(command, TEXT, "-m", str(tiny_model), "-f", "jsonl")
    lines = result.stdout.decode().splitlines()
    assert result.returncode == 0 and len(lines) == 8
    records = [parse_json(line.encode()) for line in lines]
    assert [(r["layer"], r["head"]) for r in records] == [(layer, h) for layer in range(2) for h in range(4)]
    assert all(("attention" in r) == (command == "inspect") for r in records)


@pytest.mark.parametrize("fmt,delimiter", [("csv", ","), ("tsv", "\t")])
@pytest.mark.parametrize("command", ["inspect", "stats"])
def test_csv_and_tsv(tiny_model, inspect_doc, command, fmt, delimiter):
    result = run_mha(command, TEXT, "-m", str(tiny_model), "-f", fmt)
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout.decode()), delimiter=delimiter))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 9
    for row, head in zip(rows[1:], inspect_doc["heads"]):
        assert int(row[0]) == head["layer"] and int(row[1]) == head["head"] and row[2] == head["kind"]
        for name, cell in zip(STAT_NAMES, row[3:]):
            expected = head["stats"][name]
            assert (cell == "") if expected is None else abs(float(cell) - expected) < 1e-6


def test_stats_json_matches_inspect_without_attention(tiny_model, inspect_doc):
    doc = parse_json(run_mha("stats", TEXT, "-m", str(tiny_model), "-f", "json").stdout)
    assert all("attention" not in h for h in doc["heads"])
    for a, b in zip(doc["heads"], inspect_doc["heads"]):
        assert a["kind"] == b["kind"] and a["stats"] == b["stats"]


@pytest.mark.parametrize(
    "command", [["inspect"], ["inspect", "--top", "2"], ["inspect", "--query", "3"], ["stats"], ["info"]]
)
def test_piped_output_is_plain_text(tiny_model, command):
    result = run_mha(*command, *([TEXT] if command[0] != "info" else []), "-m", str(tiny_model))
    assert result.returncode == 0, result.stderr
    assert result.stdout and not ANSI.search(result.stdout)


def test_save_npz(tiny_model, inspect_doc, tmp_path):
    out = tmp_path / "maps.npz"
    result = run_mha(
        "inspect", TEXT, "-m", str(tiny_model), "-l", "1", "-H", "2", "-H", "0", "--save", str(out), "-f", "json"
    )
    assert result.returncode == 0, result.stderr
    with np.load(out) as z:
        assert z["attention"].dtype == np.float32 and z["attention"].shape[:2] == (1, 2)
        assert list(z["layers"]) == [1] and list(z["heads"]) == [0, 2]
        assert list(z["token_ids"]) == inspect_doc["token_ids"] and list(z["tokens"]) == inspect_doc["tokens"]
        hf_attn, _ = hf_outputs(tiny_model, inspect_doc["token_ids"])
        assert np.abs(z["attention"][0, 1] - hf_attn[1][2]).max() < 1e-6


def test_layer_and_head_selection(tiny_model):
    doc = parse_json(run_mha("inspect", TEXT, "-m", str(tiny_model), "-l", "1", "-H", "3", "-f", "json").stdout)
    assert [(h["layer"], h["head"]) for h in doc["heads"]] == [(1, 3)]


def test_truncate(tiny_model):
    long_text = "word " * 200  # longer than n_positions = 64
    result = run_mha("stats", long_text, "-m", str(tiny_model), "-f", "json")
    assert result.returncode == 2 and b"longer than the model's n_positions (64)" in result.stderr
    result = run_mha("stats", long_text, "-m", str(tiny_model), "-f", "json", "--truncate")
    assert result.returncode == 0
    assert len(parse_json(result.stdout)["token_ids"]) == 64
    assert result.stderr.decode().startswith("warning: text truncated to the first 64")


@pytest.mark.parametrize(
    "args,message",
    [
        (["inspect", ""], "text is empty"),
        (["inspect", "   \n"], "text is empty"),
        (["inspect", "hi", "-l", "2"], "--layer 2 is out of range"),
        (["inspect", "hi", "-H", "-1"], "--head -1 is out of range"),
        (["inspect", "hi", "-f", "xml"], "'--format' / '-f': 'xml' is not one of"),
        (["inspect", "hi", "--query", "5"], "--query 5 is out of range"),
        (["inspect", "hi", "--top", "0"], "--top"),
        (["inspect", "hi", "--bogus"], "No such option"),
        (["inspect", "hi", "--save", "/nonexistent-dir/x.npz"], "does not exist"),
        (["inspect", "hi", "--save", "out.txt"], "'.txt' is not a known file type"),
        (["stats", "hi", "--stat", "nope"], "'--stat' / '-s': 'nope' is not one of"),
        (["info", "-m", "/no/such/model"], "no such file or directory"),
        (["verify", "hi", "--atol", "0"], "must be positive"),
    ],
)
def test_bad_input_one_error_line_exit_2(tiny_model, args, message):
    result = run_mha(*args, "-m", str(tiny_model)) if "-m" not in args else run_mha(*args)
    assert result.returncode == 2, result
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert result.stdout == b""


def test_stdin_not_utf8(tiny_model):
    result = run_mha("inspect", "-m", str(tiny_model), input=b"caf\xe9 latin-1")
    assert result.returncode == 2 and result.stderr.startswith(b"error: text on stdin is not valid UTF-8")


def test_verify_passes_and_reports_every_layer(tiny_model):
    result = run_mha("verify", TEXT, "-m", str(tiny_model), "-f", "json")
    assert result.returncode == 0, result.stderr
    doc = parse_json(result.stdout)
    assert doc["passed"] is True and doc["atol"] == 1e-5
    assert [layer["layer"] for layer in doc["layers"]] == [0, 1]
    assert 0 < doc["max_abs_err"]["attention"] <= 1e-6, "exactly 0 would suggest HF compared with itself"
    text = run_mha("verify", TEXT, "-m", str(tiny_model))
    assert text.returncode == 0 and b"PASSED" in text.stdout


def test_verify_exit_1_when_over_tolerance(tiny_model):
    result = run_mha("verify", TEXT, "-m", str(tiny_model), "--atol", "1e-12", "-f", "json")
    assert result.returncode == 1
    assert parse_json(result.stdout)["passed"] is False


def test_verify_catches_a_wrong_implementation(tiny_model, monkeypatch):
    """verify compares two independent computations: break ours and it must fail."""
    import mhacli.analyses.explain  # noqa: F401 - the same (a module first imported under the patch would keep the broken one)
    import mhacli.engine.arch.gpt2 as gpt2  # imported before the patch, so it keeps the real layer_norm afterwards
    from mhacli.analyses.verify import verify
    from mhacli.io.weights import load_model

    real = gpt2.layer_norm
    monkeypatch.setattr(gpt2, "layer_norm", lambda x, w, b, eps: real(x, w * np.float32(1.01), b, eps))
    report = verify(load_model(str(tiny_model)), np.arange(20))
    assert not report.passed and report.max_attention_err > 1e-5


BLOCK_HF = "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "


def test_verify_without_torch_says_how_to_install(tiny_model):
    code = BLOCK_HF + f"from mhacli.cli import run; sys.exit(run(['verify', 'hi', '-m', {str(tiny_model)!r}]))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stderr.decode().strip().startswith("error: mha verify needs torch") and b"mhacli[hf]" in result.stderr


def test_our_numbers_do_not_come_from_hf(tiny_model, inspect_doc):
    """With torch and transformers unimportable, inspect still produces the HF-equal numbers: they are ours."""
    code = BLOCK_HF + (
        f"from mhacli.cli import run; sys.exit(run(['inspect', {TEXT!r}, '-m', {str(tiny_model)!r}, '-f', 'json']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert parse_json(result.stdout)["heads"] == inspect_doc["heads"]


@pytest.mark.parametrize("command", [["info"], ["stats", "hello there"], ["inspect", "hello there", "-f", "json"]])
def test_normal_commands_never_import_torch_or_transformers(command):
    code = "import sys; from mhacli.cli import run; run(sys.argv[1:]); print(sorted(m for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    modules = result.stdout.decode().splitlines()[-1]
    assert "'torch'" not in modules and "'transformers'" not in modules


def test_help_and_version_exit_0():
    import tomllib

    assert run_mha("--help").returncode == 0
    assert run_mha("inspect", "--help").returncode == 0
    result = run_mha("--version")
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert result.stdout.decode().splitlines()[0] == f"mha {version}"  # then Python, NumPy, architectures: test_help.py
