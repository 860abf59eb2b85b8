"""Input traps: stdin, -m, --ids, stats' -l/-H, large outputs, info's formats, hub errors, install hints.

The trailing newline of stdin, -m checked before stdin, --ids instead of TEXT, stats' -l/-H, the note before a very
large output, info's formats, hub errors, the install hint of every extra.
"""

from __future__ import annotations

import csv
import http.server
import io
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import REPO, parse_json, run_mha

from mhacli.views.formats import CSV_COLUMNS

TEXT = "The cat sat on the mat. The cat sat on the mat."


def one_error_line(result, code: int = 2) -> str:
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert result.stdout == b""
    return err


def tokens_json(*args: str, input: bytes | None = None) -> dict:
    result = run_mha(*args, "-f", "json", input=input)
    assert result.returncode == 0, result.stderr
    return parse_json(result.stdout)


# --- B7: one trailing newline of stdin ---------------------------------------------------------------------------


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_stdin_loses_one_trailing_newline(ending):
    """`echo "The cat sat" | mha explain` explains " sat", as `mha explain "The cat sat"` does."""
    argument = tokens_json("explain", "The cat sat", "-l", "0", "-H", "0")
    piped = tokens_json("explain", "-l", "0", "-H", "0", input=b"The cat sat" + ending)
    assert piped["tokens"] == argument["tokens"] and piped["tokens"][-1] == " sat"
    assert piped["query_index"] == argument["query_index"] and piped["attention"] == argument["attention"]


def test_stdin_loses_only_one_newline_and_arguments_keep_theirs():
    two = tokens_json("stats", "-", input=b"The cat sat\n\n")
    kept = tokens_json("stats", "The cat sat\n")
    assert two["token_ids"] == kept["token_ids"]  # "\n\n" -> "\n": the second newline is text
    assert tokens_json("stats", "The cat sat")["token_ids"] != kept["token_ids"]  # an argument is kept whole


def test_a_lone_newline_on_stdin_is_an_empty_text():
    assert "text is empty" in one_error_line(run_mha("stats", input=b"\n"))


# --- B12: -m (and other files) checked before stdin ----------------------------------------------------------------


BAD = "/nonexistent/BADPATH-model"


@pytest.mark.parametrize(
    "args",
    [["inspect"], ["stats"], ["explain", "-l", "0", "-H", "0"], ["verify"], ["ablate"], ["prune"], ["info"]],
    ids=lambda a: a[0],
)
def test_a_bad_model_path_is_named_before_stdin_is_read(args):
    """Piped, empty stdin: the error is the path, not "text is empty"."""
    err = one_error_line(run_mha(*args, "-m", BAD, input=b""))
    assert BAD in err and "no such file or directory" in err


@pytest.mark.parametrize("which", ["a", "b"])
def test_diff_names_a_bad_model_before_stdin(which):
    models = [BAD, "sample"] if which == "a" else ["sample", BAD]
    err = one_error_line(run_mha("diff", *models, input=b""))
    assert BAD in err


def test_bad_model_in_mha_model_is_named_before_stdin():
    err = one_error_line(run_mha("stats", input=b"", env={"MHA_MODEL": BAD}))
    assert "MHA_MODEL" in err and BAD in err


def test_a_missing_mask_file_is_named_before_stdin():
    err = one_error_line(run_mha("stats", "--ablate", "@/nonexistent/mask.json", input=b""))
    assert "/nonexistent/mask.json" in err


def test_a_good_model_still_reads_stdin_before_loading():
    assert "text is empty" in one_error_line(run_mha("stats", "-m", "sample", input=b""))


# --- B13: stats -l/-H -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_stats():
    return tokens_json("stats", TEXT)


SELECTIONS = [
    (["-l", "1"], {(1, h) for h in range(4)}),
    (["-H", "2"], {(0, 2), (1, 2)}),
    (["-l", "0", "-H", "3", "-H", "1", "-H", "3"], {(0, 1), (0, 3)}),
]


@pytest.mark.parametrize("args,heads", SELECTIONS, ids=["layer", "head", "both"])
def test_stats_selection_json_and_jsonl(full_stats, args, heads):
    doc = tokens_json("stats", TEXT, *args)
    assert {(h["layer"], h["head"]) for h in doc["heads"]} == heads and len(doc["heads"]) == len(heads)
    by_pos = {(h["layer"], h["head"]): h for h in full_stats["heads"]}
    for h in doc["heads"]:
        assert h == by_pos[(h["layer"], h["head"])]  # the same statistics as in the full run
    lines = run_mha("stats", TEXT, *args, "-f", "jsonl").stdout.decode().splitlines()
    assert [parse_json(line.encode()) for line in lines] == doc["heads"]


@pytest.mark.parametrize("args,heads", SELECTIONS, ids=["layer", "head", "both"])
@pytest.mark.parametrize("fmt,sep", [("csv", ","), ("tsv", "\t")])
def test_stats_selection_csv_tsv(args, heads, fmt, sep):
    result = run_mha("stats", TEXT, *args, "-f", fmt)
    rows = list(csv.reader(io.StringIO(result.stdout.decode()), delimiter=sep))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert sorted((int(r[0]), int(r[1])) for r in rows[1:]) == sorted(heads)


@pytest.mark.parametrize("args,heads", SELECTIONS, ids=["layer", "head", "both"])
def test_stats_selection_text(args, heads):
    result = run_mha("stats", TEXT, *args, "-f", "text")
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^L(\d+)H(\d+)\s", result.stdout.decode(), flags=re.M)  # one row per head: L1H2 kind ...
    assert sorted((int(a), int(b)) for a, b in rows) == sorted(heads)


def test_stats_selection_rich_shows_only_selected_heads():
    out = run_mha("stats", TEXT, "-l", "1", "-H", "2", "-f", "rich", env={"COLUMNS": "120"}).stdout.decode()
    assert "L1H2" in out or re.search(r"│\s+1\s+│", out)
    assert not re.search(r"L[01]H[013]\b", out) and "L0H2" not in out


@pytest.mark.parametrize(
    "args,message",
    [
        (["-l", "2"], "--layer 2 is out of range"),
        (["-H", "4"], "--head 4 is out of range"),
        (["-H", "-1"], "--head -1 is out of range"),
    ],
)
def test_stats_selection_out_of_range(args, message):
    assert message in one_error_line(run_mha("stats", TEXT, *args))


# --- B14: --ids ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_ids() -> list[int]:
    return tokens_json("inspect", TEXT, "-l", "0", "-H", "0")["token_ids"]


@pytest.mark.parametrize(
    "command",
    [["inspect"], ["stats"], ["explain", "-l", "1", "-H", "2"], ["ablate"], ["diff", "sample-early", "sample"]],
    ids=lambda c: c[0],
)
def test_ids_give_the_same_output_as_the_text(command, text_ids):
    from_text = run_mha(*command, TEXT, "-f", "json")
    from_ids = run_mha(*command, "--ids", ",".join(map(str, text_ids)), "-f", "json")
    assert from_text.returncode == 0 and from_ids.returncode == 0, from_ids.stderr
    assert parse_json(from_ids.stdout) == parse_json(from_text.stdout)


def test_ids_from_stdin_as_a_json_array(text_ids):
    from_text = tokens_json("stats", TEXT)
    piped = tokens_json("stats", "--ids", "-", input=json.dumps(text_ids).encode() + b"\n")
    assert piped == from_text


def test_ids_on_prune_equal_the_text(text_ids):
    args = ["--seeds", "1", "--step", "0.5", "-f", "json"]
    assert tokens_json("prune", TEXT, *args[:-2]) == tokens_json(
        "prune", "--ids", ",".join(map(str, text_ids)), *args[:-2]
    )


def test_ids_tokens_are_the_tokenizers_strings():
    doc = tokens_json("stats", "--ids", "352, 277 303,2012")
    assert doc["tokens"] == ["The", " c", "at", " sat"] and doc["token_ids"] == [352, 277, 303, 2012]


@pytest.mark.parametrize(
    "args,input,message",
    [
        (["stats", "--ids", "1,2048,3"], None, "token id 2048"),
        (["stats", "--ids", "1,99999999999"], None, "99999999999"),
        (["stats", "--ids", "1,-2"], None, "item 1 ('-2') is not a token id"),
        (["stats", "--ids", "1,x"], None, "item 1 ('x') is not a token id"),
        (["stats", "--ids", ""], None, "no token ids"),
        (["stats", "--ids", "-"], b"[1, 2.5]", "2.5"),
        (["stats", "--ids", "-"], b"[1, true]", "True"),
        (["stats", "--ids", "-"], b"[1, 2", "not a JSON array"),
        (["stats", "--ids", "-"], b"", "no token ids"),
        (["stats", "hello", "--ids", "1,2"], None, "give TEXT or --ids, not both"),
        (["inspect", "hello", "--ids", "1,2"], None, "not both"),
        (["explain", "hello", "--ids", "1,2", "-l", "0", "-H", "0"], None, "not both"),
        (["verify", "hello", "--ids", "1,2"], None, "not both"),
        (["diff", "sample", "sample", "hello", "--ids", "1,2"], None, "not both"),
        (["ablate", "--texts", "-", "--ids", "1,2"], None, "not both"),
        (["prune", "hello", "--ids", "1,2"], None, "not both"),
        (["diff", "sample", "sample", "--ids", "5000"], None, "token id 5000"),
        (["stats", "--ids", ",".join(["5"] * 257)], None, "257 tokens, more than the model's n_positions (256)"),
    ],
)
def test_bad_ids_are_one_error_line(args, input, message):
    assert message in one_error_line(run_mha(*args, input=input))


def test_too_many_ids_are_truncated_with_truncate():
    result = run_mha("stats", "--ids", ",".join(["5"] * 300), "--truncate", "-f", "json")
    assert result.returncode == 0
    assert len(parse_json(result.stdout)["token_ids"]) == 256
    assert result.stderr.decode().splitlines() == ["warning: --ids truncated to the first 256 of 300 tokens"]


# --- B15: a note before a very large machine output -------------------------------------------------------------------


def test_large_json_output_gets_a_note(mha, monkeypatch):
    import mhacli.cli.inspect as inspect_cmd

    quiet = mha("inspect", TEXT, "-f", "json")
    assert quiet.returncode == 0 and quiet.stderr == b""
    monkeypatch.setattr(inspect_cmd, "BIG_OUTPUT_BYTES", 1000)
    loud = mha("inspect", TEXT, "-f", "json")
    assert loud.returncode == 0 and loud.stdout == quiet.stdout  # the output is written all the same
    lines = loud.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: ") and "--save" in lines[0] and "-l/-H" in lines[0]
    assert mha("inspect", TEXT, "-f", "csv").stderr == b""  # no maps in csv: no note
    assert mha("inspect", TEXT, "-f", "jsonl").stderr.decode().startswith("note: ")


def test_output_size_estimate_is_close(text_ids):
    """The estimate against the bytes really written (the attention of 8 heads), within a factor of 1.6."""
    from mhacli.cli.inspect import output_size

    doc = run_mha("inspect", TEXT, "-f", "json").stdout
    rows = parse_json(doc)["heads"]
    written = sum(len(json.dumps(h["attention"])) for h in rows)
    estimate = output_size(len(rows), len(text_ids))
    assert written / 1.6 < estimate < written * 1.6, (estimate, written)


def test_gpt2_small_size_estimate_is_about_900_mb():
    from mhacli.cli.inspect import BIG_OUTPUT_BYTES, output_size

    assert 800e6 < output_size(144, 1024) < 1000e6 and output_size(144, 1024) > BIG_OUTPUT_BYTES


# --- A6: info's formats ---------------------------------------------------------------------------------------------


def info_formats() -> list[str]:
    text = run_mha("info", "--help", env={"COLUMNS": "200", "TYPER_USE_RICH": "0"}).stdout.decode()
    line = next(line for line in text.splitlines() if "--format" in line)
    return re.findall(r"\b(rich|text|jsonl|json|csv|tsv)\b", line.split("FORMAT", 1)[1].split("(default")[0])


def flatten(doc: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in doc.items():
        if isinstance(v, dict) and v:
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_info_help_lists_six_formats():
    assert sorted(info_formats()) == sorted(["rich", "text", "json", "jsonl", "csv", "tsv"])


@pytest.mark.parametrize("fmt", ["rich", "text", "json", "jsonl", "csv", "tsv"])
def test_every_format_info_lists_works(fmt):
    assert fmt in info_formats()
    result = run_mha("info", "-m", "sample-early", "-f", fmt)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    out = result.stdout.decode()
    doc = parse_json(run_mha("info", "-m", "sample-early", "-f", "json").stdout)
    flat = flatten(doc)
    if fmt == "json":
        assert parse_json(result.stdout)["config"]["model_type"] == "gpt2"
    elif fmt == "jsonl":
        records = [parse_json(line.encode()) for line in out.splitlines()]
        assert {r["key"]: r["value"] for r in records} == flat and all(set(r) == {"key", "value"} for r in records)
    elif fmt in ("csv", "tsv"):
        rows = list(csv.reader(io.StringIO(out), delimiter="," if fmt == "csv" else "\t"))
        assert rows[0] == ["key", "value"]
        got = dict(rows[1:])
        assert set(got) == set(flat)
        for key, value in flat.items():
            expected = "" if value is None else value if isinstance(value, str) else json.dumps(value)
            assert got[key] == expected, key
        assert got["config.n_layer"] == "2" and got["attention.layout"] == "MHA"
    else:
        assert "tiny-shakespeare-early" in out and "\x1b[" not in out


# --- B8: hub errors -------------------------------------------------------------------------------------------------


class HubStub(http.server.BaseHTTPRequestHandler):
    status = 404
    error_code: str | None = None

    def _answer(self) -> None:
        self.send_response(self.status)
        if self.error_code:
            self.send_header("X-Error-Code", self.error_code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(b'{"error": "stub"}')

    do_GET = do_HEAD = do_POST = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def hub(tmp_path):
    """A local stand-in for the Hub answering every request with one status; HF_HOME empty (nothing cached)."""
    servers = []

    def start(status: int, error_code: str | None = None) -> dict:
        handler = type("Stub", (HubStub,), {"status": status, "error_code": error_code})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return {
            "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }

    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize(
    "status,code,says,never",
    [
        (404, None, "not found on the Hugging Face Hub", ("gated", "unreachable", "offline")),
        # the Hub's answer for a missing (or private) repository
        (401, "RepoNotFound", "not found on the Hugging Face Hub", ("gated", "unreachable", "offline")),
        (403, "GatedRepo", "gated", ("not found", "unreachable", "offline")),
    ],
)
def test_hub_answers_are_told_apart(hub, status, code, says, never):
    err = one_error_line(run_mha("info", "-m", "someone/no-such-model", env=hub(status, code)))
    assert says in err and "someone/no-such-model" in err
    for word in never:
        assert word not in err, err


def test_unreachable_hub_says_so(tmp_path):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    err = one_error_line(run_mha("info", "-m", "someone/model", env=env))
    assert "unreachable" in err and "not found" not in err


def test_offline_mode_says_so(tmp_path):
    err = one_error_line(
        run_mha("stats", "hi", "-m", "gpt2", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    )
    assert "HF_HUB_OFFLINE" in err and "offline" in err and "not found" not in err


def test_hub_error_mapping_of_exception_types(monkeypatch):
    """The mapping on the library's own exception types, raised from their cause as huggingface_hub does."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    from mhacli.io.weights import hub_error

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def chained(exc: BaseException, cause: BaseException | None) -> BaseException:
        try:
            raise exc from cause
        except BaseException as caught:  # noqa: BLE001
            return caught

    unreachable = str(
        hub_error("a/b", chained(LocalEntryNotFoundError("cannot find"), ConnectionRefusedError(111, "refused")))
    )
    assert "unreachable" in unreachable and "ConnectionRefusedError" in unreachable and "not found" not in unreachable
    offline = str(hub_error("a/b", chained(OfflineModeIsEnabled("offline mode"), None)))
    assert "offline" in offline and "not found" not in offline
    other = str(hub_error("a/b", ValueError("strange")))
    assert "a/b" in other and "ValueError: strange" in other
    assert not any(word in other for word in ("not found", "gated", "unreachable", "offline"))


# --- B9: one install hint ----------------------------------------------------------------------------------------


def test_every_install_command_in_the_code_goes_through_install_hint():
    import inspect

    from mhacli import errors

    body, first = inspect.getsourcelines(errors.install_hint)
    helper = set(range(first, first + len(body)))
    offenders = []
    for path in sorted((REPO / "mhacli").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "pip install" in line and not (path.name == "errors.py" and n in helper):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_hint_is_the_readmes():
    from mhacli.errors import install_hint

    readme = (REPO / "README.md").read_text()
    for extra in ("hf", "dask"):
        assert f'pip install "mhacli[{extra}]"' in install_hint(extra) and f'pip install ".[{extra}]"' in install_hint(
            extra
        )
        assert f'pip install "mhacli[{extra}]"' in readme
    assert "pip install 'mhacli" not in readme and "pip install '.[" not in readme


@pytest.mark.parametrize(
    "blocked,args,extra",
    [
        (("torch", "transformers"), ["verify", "hi"], "hf"),
        (("dask", "distributed"), ["census", "--dask", "local", "--probe-count", "1"], "dask"),
    ],
    ids=["verify", "census-dask"],
)
def test_missing_extra_message(blocked, args, extra):
    from mhacli.errors import install_hint

    code = (
        "import sys\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
        + f"from mhacli.cli import run\nsys.exit(run({args!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, stdin=subprocess.DEVNULL, cwd=Path(REPO))
    err = one_error_line(result)
    assert err.strip().endswith(install_hint(extra)), err
