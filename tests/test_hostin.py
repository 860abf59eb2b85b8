"""Hostile input, round three (issue 33): inputs at scale and at the edges, and odd environments.

Classes 3 and 6 of the issue: `--texts` files (CRLF, NUL bytes, invalid UTF-8 in the middle, directories, bad JSONL
lines, lines past the size limit, 100,000 lines), `--ids` (negative, past any vocabulary, float, hex, empty, a
million items), malformed `--ablate` masks, every numeric option at 0, negative, NaN, infinity and absurdly large,
terminal sizes, stdout encodings without non-ASCII characters, and the process's environment (HOME, TMPDIR,
HF_HOME, MHA_MODEL, a deleted working directory).

Bad input ends in exactly one `error:` line and exit 2 (never exit 3, an internal error, nor a traceback); a valid
extreme gets the right result. Most cases run the CLI in this process on the bundled sample model (the `mha`
fixture); what needs a fresh interpreter (an encoding, a locale, a working directory) runs `python -m mhacli`.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, count_case, parse_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TEXT = "The cat sat on the mat. The cat sat on the mat."
UNICODE = "Ça fait café — naïve ☃ 日本語 😀 ROMEO"
HUGE = str(10**30)
KIND = "hostile inputs and environments (tests/test_hostin.py)"
FIXTURES = [HealthCheck.function_scoped_fixture]


def one_error(result, fragment: str = "") -> str:
    """Exit 2, exactly one `error:` line holding `fragment`, nothing on stdout, no traceback."""
    err = result.stderr.decode("utf-8", "replace")
    lines = err.splitlines()
    assert result.returncode == 2, f"exit {result.returncode}: {err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "internal error" not in err and "Traceback" not in err
    assert result.stdout == b"", result.stdout[:200]
    count_case(KIND)
    return lines[0]


def ok_or_one_error(result) -> None:
    """Exit 0, or exit 2 with one `error:` line: never 3 (an internal error), 1, a traceback or a hang."""
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode in (0, 2), f"exit {result.returncode}: {err}"
    assert "Traceback" not in err and "internal error" not in err, err
    if result.returncode == 2:
        one_error(result)
    count_case(KIND)


def python_mha(*args: str, env: dict | None = None, unset: tuple[str, ...] = (), shell: str | None = None):
    """`python -m mhacli ARGS` in a fresh interpreter; `shell` runs first (`cd D && rmdir D`), then exec."""
    full = {k: v for k, v in os.environ.items() if k not in ("MHA_MODEL", "MHA_DEBUG", "NO_COLOR", *unset)}
    full["PYTHONPATH"] = str(REPO)
    full.update(env or {})
    command = [sys.executable, "-m", "mhacli", *args]
    if shell is not None:
        command = ["sh", "-c", f'{shell} && exec "$@"', "sh", *command]
    return subprocess.run(command, capture_output=True, env=full, timeout=300)


# --- 3. --texts FILE ---------------------------------------------------------------------------------------------

TEXTS_COMMANDS = [
    ["ablate", "-l", "0"],
    ["prune", "--seeds", "1", "--step", "1"],
    ["diff", "sample", "sample-early"],
    ["census", "--probes", "none", "-j", "1"],
]
LINES = b"The cat sat on the mat.\nA dog ran after the cat.\nROMEO: I love thee.\n"
BAD_TEXTS = [
    ("nul.txt", b"The cat sat.\nA d\x00og ran.\n", "line 2 holds NUL bytes"),
    ("utf8.txt", b"The cat sat.\nok line\nA d\xff\xfeog.\nmore\n", "line 3 is not valid UTF-8"),
    ("empty.txt", b"", "holds no text"),
    ("blank.txt", b"\n  \r\n\t\n", "holds no text"),
    ("object.jsonl", b'{"text": "The cat"}\n[1, 2]\n', 'line 2 has no "text" string field'),
    ("field.jsonl", b'{"text": "The cat"}\n{"text": 5}\n', 'line 2 has no "text" string field'),
    ("json.jsonl", b'{"text": "The cat"}\nnot json\n', "line 2 is not a JSON object"),
    ("deep.jsonl", b'{"text": "The cat"}\n' + b"[" * 100_000 + b"\n", "line 2 is not a JSON object"),
    ("surrogate.jsonl", b'{"text": "The cat"}\n{"text": "a\\ud800b"}\n', 'line 2: its "text" is not valid UTF-8'),
]


def texts_file(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def without_path(doc: dict) -> dict:
    doc.get("sources", {}).get("corpus", {}).pop("path", None)
    return doc


@pytest.mark.parametrize("command", TEXTS_COMMANDS, ids=lambda c: c[0])
def test_crlf_lines_give_the_result_of_lf_lines(mha, tmp_path, command):
    """A file written on Windows is the same texts: the \\r of each line end is not a token."""
    lf = mha(*command, "--texts", texts_file(tmp_path, "lf.txt", LINES), "-f", "json")
    crlf = mha(*command, "--texts", texts_file(tmp_path, "crlf.txt", LINES.replace(b"\n", b"\r\n")), "-f", "json")
    assert lf.returncode == 0 and crlf.returncode == 0, crlf.stderr
    assert without_path(parse_json(crlf.stdout)) == without_path(parse_json(lf.stdout))
    assert "\\r" not in crlf.stdout.decode()


@pytest.mark.parametrize("command", TEXTS_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("name,data,fragment", BAD_TEXTS, ids=[n for n, _, _ in BAD_TEXTS])
def test_bad_texts_files_name_the_line(mha, tmp_path, command, name, data, fragment):
    path = texts_file(tmp_path, name, data)
    line = one_error(mha(*command, "--texts", path, "-f", "json"), fragment)
    assert path in line


@pytest.mark.parametrize("command", TEXTS_COMMANDS, ids=lambda c: c[0])
def test_a_directory_as_texts(mha, tmp_path, command):
    one_error(mha(*command, "--texts", str(tmp_path), "-f", "json"), f"--texts {tmp_path}: is a directory")


def test_a_line_past_the_size_limit_is_named(mha, tmp_path):
    from mhacli.io.textin import MAX_TEXT_BYTES

    path = texts_file(tmp_path, "long.txt", b"The cat sat.\n" + b"a" * (MAX_TEXT_BYTES + 10) + b"\n")
    one_error(mha("ablate", "--texts", path, "-f", "json"), "line 2 is longer than 8 MiB")


@pytest.mark.parametrize("command", [["ablate", "-l", "0"], ["prune", "--seeds", "1", "--step", "1"]], ids=str)
def test_a_texts_line_too_long_for_the_model_is_named(mha, tmp_path, command):
    """It said `text is more than 514 tokens`, not which of the file's texts."""
    path = texts_file(tmp_path, "long.txt", b"The cat sat.\n" + b"word " * 200_000 + b"\n")
    one_error(mha(*command, "--texts", path, "-f", "json"), "--texts line 2: text is more than")
    truncated = mha(*command, "--texts", path, "--truncate", "-f", "json")  # only a prefix is tokenized
    assert truncated.returncode == 0, truncated.stderr
    assert parse_json(truncated.stdout)["n_texts"] == 2


def test_100000_lines_are_read_in_order(tmp_path):
    """A corpus of 100,000 lines streams (census) or is read whole (diff, ablate, prune) with every line numbered."""
    from mhacli.io.textin import iter_texts, read_texts

    lines = [f"line {i} of the corpus" for i in range(100_000)]
    lf = texts_file(tmp_path, "lf.txt", ("\n".join(lines) + "\n").encode())
    crlf = texts_file(tmp_path, "crlf.txt", ("\r\n".join(lines) + "\r\n").encode())
    want = [(i + 1, line) for i, line in enumerate(lines)]
    assert read_texts(lf) == want
    assert list(iter_texts(crlf)) == want


def test_pairs_files_are_read_as_texts_files(mha, tmp_path):
    """patch --pairs read the whole file as text: invalid UTF-8 or deep nesting there was exit 3."""
    good = b'{"clean": "The cat sat on", "corrupt": "The dog sat on", "answer": " the", "wrong": " a"}'
    cases = [
        (good + b"\n\xff\n", "line 2 is not valid UTF-8"),
        (good + b"\n" + b"[" * 100_000 + b"\n", "line 2 is not JSON"),
        (good + b"\n\x00\n", "line 2 holds NUL bytes"),
    ]
    for data, fragment in cases:
        one_error(mha("patch", "--pairs", texts_file(tmp_path, "p.jsonl", data), "-f", "json"), fragment)
    one_error(mha("patch", "--pairs", str(tmp_path), "-f", "json"), "is a directory")
    lf = mha("patch", "--pairs", texts_file(tmp_path, "lf.jsonl", good + b"\n"), "-f", "json")
    crlf = mha("patch", "--pairs", texts_file(tmp_path, "crlf.jsonl", good + b"\r\n"), "-f", "json")
    assert lf.returncode == 0 and parse_json(crlf.stdout) == parse_json(lf.stdout)


# --- 3. --ids ----------------------------------------------------------------------------------------------------

IDS_COMMANDS = [
    ["stats"],
    ["inspect"],
    ["explain", "-l", "0", "-H", "0"],
    ["attribute"],
    ["lens"],
    ["ablate"],
    ["diff", "sample", "sample-early"],
]
BAD_IDS = [
    ("-1", "item 0 ('-1') is not a token id"),
    ("1,-1", "item 1 ('-1') is not a token id"),
    (HUGE, "item 0 ('" + HUGE + "') is out of range: no vocabulary is that large"),
    ("9" * 5000, "is out of range: no vocabulary is that large"),
    ("5000", "token id 5000 (item 0) is out of range"),
    ("1.5", "item 0 ('1.5') is not a token id"),
    ("0x10", "item 0 ('0x10') is not a token id"),
    ("1e3", "item 0 ('1e3') is not a token id"),
    ("nan", "item 0 ('nan') is not a token id"),
    ("\u0661\u0662", "is not a token id"),  # Arabic-Indic digits: str.isdigit() says yes, int() reads them
    ("", "no token ids given"),
    (" \t", "no token ids given"),
    (",,,", "the list of token ids is empty"),
    ("[]", "the list of token ids is empty"),
    ("[1e400]", "item 0 (inf) is not a token id"),
    ("[" * 100_000, "not a JSON array of token ids"),
    ('{"a": 1}', "is not a token id"),
]


@pytest.mark.parametrize("spec,fragment", BAD_IDS, ids=[s[:12] or "empty" for s, _ in BAD_IDS])
def test_bad_ids(mha, spec, fragment):
    one_error(mha("stats", "--ids", spec, "-f", "json"), fragment)


@pytest.mark.parametrize("command", IDS_COMMANDS, ids=lambda c: c[0])
def test_a_million_ids(mha, command):
    """Refused by the model's n_positions, or cut to it with --truncate: never a [10**6, 10**6] map."""
    ids = ",".join(["5"] * 1_000_000)
    one_error(mha(*command, "--ids", ids, "-f", "json"), "--ids gives 1000000 tokens, more than the model's")
    cut = mha(*command, "--ids", ids, "--truncate", "-f", "json")
    assert cut.returncode == 0, cut.stderr
    assert cut.stderr.decode().splitlines() == ["warning: --ids truncated to the first 256 of 1000000 tokens"]


def test_a_million_ids_on_stdin(mha):
    ids = json.dumps([5] * 1_000_000).encode()
    cut = mha("stats", "--ids", "-", "--truncate", "-f", "json", input=ids)
    assert cut.returncode == 0 and len(parse_json(cut.stdout)["token_ids"]) == 256


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES)
@given(
    items=st.lists(
        st.one_of(
            st.integers(-(10**40), 10**40).map(str),
            st.sampled_from(["nan", "inf", "-0", "0x1f", "1e3", "1.5", "+5", "5_0", "\u0663", "[", "]", "{}"]),
            st.text(max_size=4),
        ),
        max_size=6,
    ),
    sep=st.sampled_from([",", " ", ", ", "\t", ";"]),
)
def test_any_ids_string_is_a_result_or_one_error(mha, items, sep):
    ok_or_one_error(mha("stats", "--ids", sep.join(items), "-f", "json"))


# --- 3. --ablate masks -------------------------------------------------------------------------------------------

SHAPE = {"n_layer": 2, "n_head": 4}
BAD_MASKS = [
    ("other shape", {"model": {"n_layer": 12, "n_head": 12}, "heads": [[0, 1]]}, "the mask is for a model of 12"),
    ("duplicate", {"model": SHAPE, "heads": [[0, 1], [0, 1]]}, "head 0.1 is listed twice"),
    ("negative", {"model": SHAPE, "heads": [[-1, 1]]}, "layer -1 is out of range"),
    ("out of range", {"model": SHAPE, "heads": [[0, 99]]}, "head 99 is out of range"),
    ("huge", {"model": SHAPE, "heads": [[10**30, 1]]}, "is out of range"),
    ("float", {"model": SHAPE, "heads": [[0.0, 1]]}, "is not a [layer, head] pair"),
    ("bool", {"model": SHAPE, "heads": [[True, 1]]}, "is not a [layer, head] pair"),
    ("nested", {"model": SHAPE, "heads": [[[0, 1]]]}, "is not a [layer, head] pair"),
    ("list", [[0, 1]], "expected {"),
    ("number", 5, "expected {"),
    ("null", None, "expected {"),
    ("heads object", {"model": SHAPE, "heads": {"0": 1}}, "expected {"),
    ("mean without means", {"model": SHAPE, "method": "mean", "heads": [[0, 1]]}, 'a mean mask needs "means"'),
]
RAW_MASKS = [
    ("deep", b"[" * 200_000 + b"]" * 200_000, "not a JSON mask file (RecursionError)"),
    ("deep object", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "not a JSON mask file (RecursionError)"),
    ("NaN", b'{"model": {"n_layer": 2, "n_head": 4}, "heads": [[NaN, 1]]}', "NaN is not a number"),
    ("Infinity", b'{"model": {"n_layer": Infinity, "n_head": 4}, "heads": []}', "Infinity is not a number"),
    ("binary", b"\xff\xfe\x00", "not a JSON mask file"),
    ("empty", b"", "not a JSON mask file"),
    ("5000 digits", b'{"model": {"n_layer": 2, "n_head": 4}, "heads": [[' + b"9" * 5000 + b", 1]]}", "not a JSON"),
]
ABLATE_COMMANDS = [["inspect", TEXT], ["stats", TEXT], ["ablate", TEXT], ["diff", "sample", "sample", TEXT]]


@pytest.mark.parametrize("command", ABLATE_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(
    "name,raw,fragment",
    [(n, json.dumps(d).encode(), f) for n, d, f in BAD_MASKS] + RAW_MASKS,
    ids=[n for n, _, _ in BAD_MASKS + RAW_MASKS],
)
def test_bad_mask_files(mha, tmp_path, command, name, raw, fragment):
    mask = tmp_path / "mask.json"
    mask.write_bytes(raw)
    line = one_error(mha(*command, "--ablate", f"@{mask}", "-f", "json"), fragment)
    assert str(mask) in line


BAD_HEAD_LISTS = [
    ("-1.0", "'-1.0' is not a head"),
    ("0.-1", "'0.-1' is not a head"),
    ("0.99", "head 99 is out of range"),
    ("99.0", "layer 99 is out of range"),
    (HUGE + ".0", HUGE + ".0' is out of range"),
    ("9" * 5000 + ".0", "is out of range"),  # int() refuses past 4,300 digits: it was exit 3
    ("0." + "9" * 5000, "is out of range"),
    ("\u0660.\u0661", "is not a head"),  # Arabic-Indic digits were read as head 0.1
    ("0.1.2", "'0.1.2' is not a head"),
    ("", "'' is not a head"),
    ("0.1,", "'' is not a head"),
    ("0.1;1.2", "is not a head"),
    ("0x1.0", "is not a head"),
]


@pytest.mark.parametrize("spec,fragment", BAD_HEAD_LISTS, ids=[s[:10] or "empty" for s, _ in BAD_HEAD_LISTS])
def test_bad_head_lists(mha, spec, fragment):
    one_error(mha("inspect", TEXT, "--ablate", spec, "-f", "json"), fragment)


def test_a_directory_as_a_mask_file(mha, tmp_path):
    one_error(mha("stats", TEXT, "--ablate", f"@{tmp_path}", "-f", "json"), "is a directory")


def test_duplicate_heads_in_a_list_are_one_removal(mha):
    """Documented: `--ablate 0.1,0.1` removes head 0.1 once, as `--ablate 0.1` does."""
    twice = mha("stats", TEXT, "--ablate", "0.1,0.1", "-f", "json")
    once = mha("stats", TEXT, "--ablate", "0.1", "-f", "json")
    assert twice.returncode == 0 and parse_json(twice.stdout) == parse_json(once.stdout)


# --- 3. numeric options at their extremes ------------------------------------------------------------------------

EXTREMES = ["0", "-1", "1", "2", "nan", "inf", "-inf", "1e20", str(10**20), HUGE, "-" + HUGE, str(2**63), "", "x"]
NUMERIC = [
    (["inspect", TEXT], ["--query", "--top", "--from", "--panel-size", "--layer", "--head"]),
    (["stats", TEXT], ["--layer", "--head"]),
    (["explain", TEXT, "-l", "0", "-H", "0"], ["--query"]),
    (["diff", "sample", "sample-early", TEXT], ["--top", "--from", "--fail-above"]),
    (["ablate", TEXT], ["--loss-from", "--top", "--layer"]),
    (["prune", TEXT, "--seeds", "1", "--step", "1"], ["--max-increase", "--loss-from"]),
    (["prune", TEXT, "--step", "1"], ["--seeds"]),
    (["prune", TEXT, "--seeds", "1"], ["--step"]),
    (["census", "--probe-count", "2", "-j", "1"], ["--repeat-length", "--random-length", "--seed", "--pack-tokens"]),
    (["census", "--probe-count", "2", "-j", "1"], ["--top"]),
    (["attribute", TEXT], ["--pos", "--top-tokens", "--top", "--answer-id", "--wrong-id"]),
    (["lens", TEXT], ["--top", "--pos"]),
    (["circuits", "-l", "1"], ["--top", "--head"]),
]
CASES = [(base, option) for base, options in NUMERIC for option in options]


@settings(max_examples=80, deadline=None, suppress_health_check=FIXTURES)
@given(case=st.sampled_from(CASES), value=st.one_of(st.sampled_from(EXTREMES), st.integers(-(10**6), 10**6).map(str)))
def test_every_numeric_option_at_its_extremes(mha, case, value):
    """A result or one `error:` line; --fail-above may also find a divergence (exit 1, its check failing)."""
    base, option = case
    result = mha(*base, option, value, "-f", "text")
    if option == "--fail-above" and result.returncode == 1:
        return
    ok_or_one_error(result)


@pytest.mark.parametrize("value", ["0", "-1", "0.5", "nan", "inf", "1e20", HUGE])
def test_census_probe_count_and_workers_bounds(mha, value):
    for option in ("--probe-count", "-j"):
        args = ["census", "--probe-count", "2", "-j", "1", option, value, "-f", "text"]
        line = one_error(mha(*args))
        assert "TiB" not in line, line  # -j 10**20 was refused by a memory estimate of 3.6e14 TiB


def test_workers_past_the_cap_are_refused_by_name(mha):
    from mhacli.ops.census import MAX_WORKERS

    for value in (str(MAX_WORKERS + 1), str(10**20), HUGE):
        one_error(mha("census", "-j", value, "-f", "json"), f"--workers {value} must be between 1 and {MAX_WORKERS}")


def test_max_memory_past_float_range_is_no_limit(mha):
    """5,000 digits overflowed float -> int (exit 3); a limit larger than any machine is none."""
    result = mha("stats", TEXT, "--max-memory", "9" * 5000, "-f", "json")
    assert result.returncode == 0, result.stderr
    one_error(mha("stats", TEXT, "--max-memory", "1e400", "-f", "json"), "is not a size")


@pytest.mark.parametrize("dpi", ["1", "7", "19"])
def test_dpi_too_low_to_draw_is_refused(mha, tmp_path, dpi):
    """--dpi 1 reached FreeType with 5 pt labels under a pixel: `invalid ppem value`, exit 3."""
    pytest.importorskip("matplotlib")
    one_error(mha("lens", TEXT, "--save", str(tmp_path / "a.png"), "--dpi", dpi), "must be between 20 and 1200")
    assert not (tmp_path / "a.png").exists()


def test_the_lowest_dpi_draws_every_picture(mha, tmp_path):
    pytest.importorskip("matplotlib")
    from mhacli.views.save import MIN_DPI

    for command in (["lens", TEXT], ["patch", "The cat sat on", "The dog sat on", "--answer", " the", "--wrong", " a"]):
        out = tmp_path / f"{command[0]}.png"
        result = mha(*command, "--save", str(out), "--dpi", str(MIN_DPI), "-f", "json")
        assert result.returncode == 0, result.stderr
        assert out.read_bytes().startswith(b"\x89PNG")


# --- 3. terminal sizes and TERM=dumb -----------------------------------------------------------------------------

VIEWS = [
    ["explain", TEXT, "-l", "1", "-H", "2"],
    ["explain", TEXT, "-l", "1", "-H", "2", "--full"],
    ["attribute", TEXT],
    ["lens", TEXT],
    ["patch", "The cat sat on", "The dog sat on", "--answer", " the", "--wrong", " a"],
    ["prune", TEXT, "--seeds", "1", "--step", "0.5"],
    ["census", "--probe-count", "2", "-j", "1"],
    ["inspect", TEXT, "-q", "3"],
    ["stats", TEXT, "--compact"],
    ["info"],
]


@pytest.mark.parametrize("command", VIEWS, ids=lambda c: " ".join(c[:1] + c[2:4]))
@pytest.mark.parametrize("columns,lines", [("0", "0"), ("1", "1"), ("5", "1"), (str(10**9), str(10**9)), ("x", "-3")])
def test_every_view_at_any_terminal_size(mha, command, columns, lines):
    result = mha(*command, "-f", "rich", env={"COLUMNS": columns, "LINES": lines, "TERM": "dumb"})
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) < 2_000_000  # COLUMNS=10**9 is drawn at the widest the views take, not 1 GB a line


# --- 3. stdout encodings without non-ASCII characters ------------------------------------------------------------


def run_encoded(argv: list[str], encoding: str, monkeypatch) -> tuple[int, bytes, bytes]:
    """The CLI as main() runs it with stdout in `encoding` (PYTHONIOENCODING=ascii, latin-1).

    The streams are set up by mhacli.cli._standard_streams, as main() does, then run() runs the command."""
    import mhacli.cli as cli

    out, err = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(out, encoding=encoding, errors="strict", write_through=True)
    stderr = io.TextIOWrapper(err, encoding=encoding, errors="backslashreplace", write_through=True)
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    for key in ("MHA_MODEL", "MHA_DEBUG", "NO_COLOR", "COLUMNS"):
        monkeypatch.delenv(key, raising=False)
    assert cli._standard_streams() is None
    code = cli.run(argv)
    stdout.flush()
    stderr.flush()
    return code, out.getvalue(), err.getvalue()


ENCODED = [
    ["inspect", UNICODE],
    ["stats", UNICODE],
    ["diff", "sample", "sample-early", UNICODE],
    ["ablate", UNICODE],
    ["attribute", UNICODE],
    ["lens", UNICODE],
    ["patch", "The café sat on", "The cafè sat on", "--answer", " the", "--wrong", " a"],
    ["inspect", "--ids", "200,1000,1500,2000,2046"],
]


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
@pytest.mark.parametrize("command", ENCODED, ids=lambda c: c[0] + ("-ids" if "--ids" in c else ""))
def test_non_ascii_tokens_in_every_format_on_a_narrow_stdout(monkeypatch, command, encoding):
    """Every format writes (escaped where the encoding lacks a character); JSON is the UTF-8 run's document."""
    want = run_encoded([*command, "-f", "json"], "utf-8", monkeypatch)
    assert want[0] == 0, want[2]
    for fmt in ("rich", "text", "json", "jsonl", "csv", "tsv"):
        code, out, err = run_encoded([*command, "-f", fmt], encoding, monkeypatch)
        assert code == 0, err
        text = out.decode(encoding)  # the bytes are in the encoding asked for
        if fmt == "json":
            assert json.loads(text) == json.loads(want[1])
        count_case(KIND)


def test_explain_and_census_on_a_narrow_stdout(monkeypatch, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(UNICODE + "\n", encoding="utf-8")
    for command in (
        ["explain", UNICODE, "-l", "1", "-H", "2"],
        ["census", "-j", "1", "--probes", "none", "--texts", str(corpus)],
    ):
        for fmt in ("rich", "text", "json"):
            code, out, err = run_encoded([*command, "-f", fmt], "ascii", monkeypatch)
            assert code == 0, err
            out.decode("ascii")


def test_an_argument_under_the_c_locale_is_read_as_utf8(mha):
    """With UTF-8 mode off, LANG=C hands Python each non-ASCII byte as a surrogate escape: `text is not valid UTF-8`."""
    env = {"LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": ""}
    got = python_mha("stats", UNICODE, "-f", "json", env=env, unset=("LC_CTYPE",))
    assert got.returncode == 0, got.stderr
    want = mha("stats", UNICODE, "-f", "json")
    assert parse_json(got.stdout)["token_ids"] == parse_json(want.stdout)["token_ids"]


def test_bytes_that_are_not_utf8_stay_refused():
    from mhacli.io.files import utf8_text

    assert utf8_text("caf\udcc3\udca9") == "café"
    assert utf8_text("caf\udcff") is None and utf8_text("a\ud800") is None
    assert utf8_text(UNICODE) == UNICODE


# --- 6. the environment ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,fragment",
    [
        ("garbage", "MHA_MODEL=garbage:"),
        (" ", "MHA_MODEL= :"),
        ("\x1b[2Jred", "MHA_MODEL=\\x1b[2Jred"),
        ("/", "MHA_MODEL=/:"),
        ("ollama:", "MHA_MODEL=ollama::"),
        ("sample:nope", "no bundled model of that name"),
        ("x@", "MHA_MODEL=x@:"),
        ("e" * 5000, "MHA_MODEL="),
    ],
    ids=["garbage", "space", "escape", "root", "ollama", "sample", "revision", "long"],
)
def test_garbage_mha_model_is_named(mha, value, fragment):
    one_error(mha("stats", TEXT, env={"MHA_MODEL": value, "HF_HUB_OFFLINE": "1"}), fragment)


def test_hf_home_pointing_at_a_file_is_named(tmp_path):
    """It said `not in the local Hugging Face cache, and the Hub is unreachable`."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for var in ("HF_HOME", "HF_HUB_CACHE"):
        got = python_mha("info", "-m", "gpt2", env={var: str(blocker), "HF_HUB_OFFLINE": "1"}, unset=("HF_HUB_CACHE",))
        line = one_error(got, f"{blocker} is not a directory")
        assert f"point {var} at a directory" in line


@pytest.mark.parametrize("case", ["home unset", "home read-only", "home a file", "tmpdir missing", "tmpdir read-only"])
def test_home_and_tmpdir_do_not_stop_a_save(tmp_path, case):
    """Every --save kind is written whole; what a library says about its config directory is one warning: line."""
    pytest.importorskip("matplotlib")
    odd = tmp_path / "odd"
    if case.endswith("a file"):
        odd.write_text("x")
    elif case.endswith("read-only"):
        odd.mkdir()
        odd.chmod(0o555)
    env = {"HOME": str(odd)} if case.startswith("home") else {"TMPDIR": str(odd)}
    unset = ("HOME", "MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME") if case.startswith("home") else ()
    if case == "home unset":
        env = {}
    out = tmp_path / "out"
    out.mkdir()
    saves = [str(out / f"map.{kind}") for kind in ("png", "npz", "html")]
    got = python_mha("inspect", TEXT, *(a for s in saves for a in ("--save", s)), "-f", "json", env=env, unset=unset)
    assert got.returncode == 0, got.stderr
    assert all(line.startswith("warning: ") for line in got.stderr.decode().splitlines()), got.stderr
    assert sorted(p.name for p in out.iterdir()) == ["map.html", "map.npz", "map.png"]
    odd.chmod(0o755) if odd.is_dir() else None


@pytest.mark.parametrize(
    "args,code,fragment",
    [
        (["stats", TEXT, "-f", "json"], 0, ""),
        (["census", "--probe-count", "2", "-f", "json"], 0, ""),  # the default workers: run in this process
        (["census", "--probe-count", "2", "-j", "2", "-f", "json"], 2, "the working directory no longer exists"),
        (["inspect", TEXT, "--save", "rel.npz", "-f", "json"], 2, "cannot write rel.npz"),
    ],
    ids=["stats", "census", "census -j 2", "relative save"],
)
def test_a_deleted_working_directory(tmp_path, args, code, fragment):
    """`census -j 2` spawned its workers in it: FileNotFoundError from multiprocessing, exit 3."""
    gone = tmp_path / "gone"
    gone.mkdir()
    got = python_mha(*args, shell=f"cd '{gone}' && rmdir '{gone}'")
    if code == 0:
        assert got.returncode == 0, got.stderr
        assert parse_json(got.stdout)["heads"]
    else:
        one_error(got, fragment)


def test_library_log_records_are_held_back(mha, monkeypatch):
    """A library's logging.warning (matplotlib's about its config directory) printed before the error line."""
    import logging

    import mhacli.ops.inputs as inputs

    real = inputs.load_model

    def noisy(*args, **kwargs):
        logging.getLogger("matplotlib").warning("mkdir -p failed for path /x\nsecond line")
        return real(*args, **kwargs)

    monkeypatch.setattr(inputs, "load_model", noisy)
    ok = mha("stats", TEXT, "-f", "json")
    assert ok.returncode == 0 and ok.stderr.decode().splitlines() == ["warning: mkdir -p failed for path /x"]
    one_error(mha("inspect", TEXT, "-l", "9"), "--layer 9 is out of range")
