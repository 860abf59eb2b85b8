"""Hostile input, round two (issue 19).

One group of tests per class of input that used to end in an internal error, a panic or abort of the tokenizer library,
a hang, a file accepted that the safetensors library refuses, an escape sequence on the terminal, or noise before the
error line.

Every refusal must be exactly one `error:` line on stderr, exit 2, nothing on stdout and no traceback. Cases that
could abort or hang the process run in a child under an address-space limit (the `cli_worker` fixture), so that
an abort or a hang fails the test instead of killing the run.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import count_case, parse_json, run_mha
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

TEXT = "The cat sat on the mat."
KIND = "hostile inputs answered with one error line (tests/test_hostile.py)"


def assert_refused(result, fragment: str = "", code: int = 2) -> str:
    """Exactly one `error:` line containing `fragment`, exit `code`, nothing on stdout, no traceback or panic."""
    describe = getattr(result, "describe", lambda: f"exit {result.returncode}; stderr {result.stderr!r}")()
    stderr = result.stderr.decode("utf-8", "replace")
    lines = stderr.splitlines()
    assert result.returncode == code, describe
    assert len(lines) == 1 and lines[0].startswith("error: "), describe
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "Traceback" not in stderr and "panicked" not in stderr and "internal error" not in stderr
    assert result.stdout == b"", result.stdout[:200]
    count_case(KIND)
    return lines[0]


def assert_ok(result) -> None:
    describe = getattr(result, "describe", lambda: f"exit {result.returncode}; stderr {result.stderr!r}")()
    assert result.returncode == 0, describe


@pytest.fixture
def model(tiny_model, tmp_path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(tiny_model, d)
    return d


def header_of(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_raw_header(path: Path, blob: bytes, data: bytes) -> None:
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)


def edit_json(path: Path, **changes) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


# --- 1. bad input that used to be an internal error (exit 3) ------------------------------------------------------


HUGE = "1" * 5000  # past Python's 4,300-digit limit for int(str)


@pytest.mark.parametrize(
    "placement",
    [
        '"n_layer": HUGE',
        '"n_embd": -HUGE',
        '"layer_norm_epsilon": 1' + "0" * 400,  # parses as an int far beyond a float
        '"unrelated_field": {"nested": [HUGE]}',
        '"n_positions": 1' + "0" * 70,
    ],
)
def test_config_with_huge_integers(model, mha, placement):
    text = (model / "config.json").read_text()
    text = text.replace("{", "{" + placement.replace("HUGE", HUGE) + ", ", 1)
    (model / "config.json").write_text(text)
    assert_refused(mha("stats", TEXT, "-m", str(model)), "too large for any field")


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("layer_norm_epsilon", "1e999", "layer_norm_epsilon must be a number in (0, 1)"),
        ("layer_norm_epsilon", "-1e999", "layer_norm_epsilon must be a number in (0, 1)"),
        ("n_layer", "1e3", "n_layer must be an integer"),
    ],
)
def test_config_with_overflowing_floats(model, mha, field, value, fragment):
    text = (model / "config.json").read_text().rstrip().removesuffix("}") + f', "{field}": {value}}}'  # the last wins
    (model / "config.json").write_text(text)
    assert_refused(mha("stats", TEXT, "-m", str(model)), fragment)


@pytest.mark.parametrize(
    "edit,fragment",
    [
        (lambda h: h.replace(b'"format":"pt"', b'"format":' + HUGE.encode()), "too large for any field"),
        (lambda h: h.replace(b"{", b'{"__x__":' + HUGE.encode() + b",", 1), "too large for any field"),
        (lambda h: h.replace(b'"format":"pt"', b'"format":7'), "__metadata__ must map names to strings"),
        (lambda h: h.replace(b'"__metadata__":{"format":"pt"}', b'"__metadata__":[1]'), "__metadata__ must map"),
    ],
    ids=["metadata-huge-int", "top-level-huge-int", "metadata-int", "metadata-list"],
)
def test_safetensors_header_numbers_and_metadata(model, mha, edit, fragment):
    path = model / "model.safetensors"
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + n]), separators=(",", ":")).encode()
    assert b'"__metadata__":{"format":"pt"}' in header
    write_raw_header(path, edit(header), raw[8 + n :])
    assert_refused(mha("stats", TEXT, "-m", str(model)), fragment)


@pytest.mark.parametrize("dim", [2**64, 10**30, 2**63 * 3])
def test_safetensors_shape_beyond_u64(model, mha, dim):
    header, data = header_of(model / "model.safetensors")
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [dim, 1]
    write_raw_header(model / "model.safetensors", json.dumps(header).encode(), data)
    assert_refused(mha("stats", TEXT, "-m", str(model)), "bad shape")


def shard(model: Path) -> dict:
    """Turn the model into a one-shard checkpoint with an index; returns the index document."""
    (model / "model.safetensors").rename(model / "model-00001-of-00001.safetensors")
    header, _ = header_of(model / "model-00001-of-00001.safetensors")
    index = {
        "metadata": {},
        "weight_map": {k: "model-00001-of-00001.safetensors" for k in header if k != "__metadata__"},
    }
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    return index


WEIGHT_MAP_VALUES = [
    (["a.safetensors"], "is not a file name"),
    ({"file": "a.safetensors"}, "is not a file name"),
    (5, "is not a file name"),
    (None, "is not a file name"),
    (True, "is not a file name"),
    ("", "is not a file name"),
    ("shard\x00.safetensors", "holds a NUL byte"),
    ("a" * 300 + ".safetensors", "File name too long"),
    ("sub/" + "b" * 5000 + ".safetensors", "File name too long"),
    ("missing.safetensors", "is missing"),
    ("../escape.safetensors", "outside the model directory"),
]


@pytest.mark.parametrize("value,fragment", WEIGHT_MAP_VALUES, ids=[repr(v)[:30] for v, _ in WEIGHT_MAP_VALUES])
def test_shard_index_weight_map_values(model, mha, value, fragment):
    index = shard(model)
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = value
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    for command in (["stats", TEXT], ["info"]):
        assert_refused(mha(*command, "-m", str(model)), fragment)


def test_shard_index_weight_map_not_an_object(model, mha):
    shard(model)
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["x.safetensors"]}))
    assert_refused(mha("info", "-m", str(model)), "has no weight_map object")


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["stats", TEXT, "-m", "m" * 300], "File name too long"),
        (["stats", TEXT, "-m", "TMP/" + "m" * 300 + "/model.safetensors"], "File name too long"),
        (["info", "-m", "x" * 5000], "File name too long"),
        (["inspect", TEXT, "--save", "s" * 300 + ".npz"], "File name too long"),
        (["inspect", TEXT, "--save", "d" * 300 + "/x.npz"], "cannot write"),
        (["prune", TEXT, "--save-mask", "p" * 300 + ".json"], "File name too long"),
        (["ablate", "--texts", "t" * 300], "cannot read"),
    ],
    ids=["-m", "-m nested", "info -m", "--save", "--save dir", "--save-mask", "--texts"],
)
def test_names_longer_than_the_os_allows(tiny_model, mha, args, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.replace("TMP", str(tmp_path)) for a in args]
    if "-m" not in args:
        args = [*args, "-m", str(tiny_model)]
    assert_refused(mha(*args), fragment)
    assert list(tmp_path.iterdir()) == [], "nothing left behind"


def test_model_env_longer_than_the_os_allows(mha):
    assert_refused(mha("stats", TEXT, env={"MHA_MODEL": "e" * 300}), "MHA_MODEL=")


def run_closed(*args: str, close: int, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`python -m mhacli ARGS` with file descriptor `close` (0, 1 or 2) closed, as `<&-`, `>&-`, `2>&-` do."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MHA_MODEL", "MHA_DEBUG")} | (env or {})
    pipes = {
        0: {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE},
        1: {"stderr": subprocess.PIPE},
        2: {"stdout": subprocess.PIPE},
    }[close]
    return subprocess.run(
        [sys.executable, "-m", "mhacli", *args],
        preexec_fn=lambda: os.close(close),
        env=full_env,
        timeout=120,
        **pipes,
        **kwargs,
    )


@pytest.mark.parametrize("args", [["stats"], ["stats", "-"], ["ablate", "--texts", "-"]], ids=" ".join)
def test_closed_stdin(tiny_model, args):
    result = run_closed(*args, "-m", str(tiny_model), close=0)
    assert_refused(result, "stdin is closed")


def test_closed_stdin_with_text_given_runs(tiny_model):
    result = run_closed("stats", TEXT, "-m", str(tiny_model), "-f", "json", close=0)
    assert result.returncode == 0, result.stderr
    parse_json(result.stdout)


def test_closed_stdout_and_stderr(tiny_model):
    closed_out = run_closed("stats", TEXT, "-m", str(tiny_model), close=1)
    assert closed_out.returncode == 2
    assert closed_out.stderr.decode().splitlines() == ["error: stdout is closed: redirect it to a file or /dev/null"]
    closed_err = run_closed("stats", TEXT, "-m", "/no/such/model", close=2)
    assert closed_err.returncode == 2 and closed_err.stdout == b"", "the error line must not land on stdout"


LLAMA = {
    "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 400, "max_position_embeddings": 64,
}  # fmt: skip
ROPE_CASES = [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fast": -1}},
     "rope_parameters (rope_type 'yarn', head_dim 16): beta_fast must be positive"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_slow": -2.5}}, "beta_slow must be positive"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "mscale": 1.0, "mscale_all_dim": -7.213475204444817}},
     "divides by zero"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 1e300}}, "factor 1e+300 is beyond float32's range"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "mscale": -100.0, "mscale_all_dim": 1.0}},
     "the attention factor is -11.29"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "attention_factor": 1e39}}, "attention_factor"),
    ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 8,
                       "original_max_position_embeddings": 1, "factor": 2.0}},
     "original_max_position_embeddings must be greater than 1 when factor > 1"),
    ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1e39] * 8, "long_factor": [1.0] * 8}}, "short_factor"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 1e-300}}, "divide by zero"),
    # short_factor only reaches a 1-token text (original context 1): checked at the shortest text too
    ({"rope_scaling": {"rope_type": "longrope", "short_factor": [1e-45] * 8, "long_factor": [1.0] * 8,
                       "original_max_position_embeddings": 1, "factor": 0.5}}, "overflow"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 1e-40, "low_freq_factor": 1, "high_freq_factor": 4,
                       "original_max_position_embeddings": 8}}, "overflow"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 1e308}}, "beyond float32's range"),
    ({"rope_theta": 1e300}, "rope_theta 1e+300 is beyond float32's range"),
    ({"rope_theta": 10**60}, "rope_theta"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 1e-35}, "max_position_embeddings": 1 << 20}, "overflow"),
    ({"head_dim": 15}, "head_dim 15 is odd; rotary embeddings rotate pairs of values, so it must be even"),
    ({"model_type": "olmo3", "layer_types": ["sliding_attention", "full_attention"], "sliding_window": 4,
      "rope_parameters": {"sliding_attention": {"rope_type": "yarn", "factor": 2.0, "beta_fast": -3},
                          "full_attention": {"rope_type": "default"}}}, "rope_parameters.sliding_attention (rope_type"),
    ({"model_type": "olmo3", "layer_types": ["sliding_attention", "full_attention"], "sliding_window": 4,
      "rope_parameters": {"sliding_attention": {"rope_type": "default"},
                          "full_attention": {"rope_type": "yarn", "factor": 2.0, "beta_fast": -3}}},
     "rope_parameters.full_attention (rope_type"),
]  # fmt: skip


@pytest.mark.parametrize("changes,fragment", ROPE_CASES, ids=[str(i) for i in range(len(ROPE_CASES))])
def test_rope_parameters_that_break_the_arithmetic(model, mha, changes, fragment):
    """Parameters that pass field validation but would fail (or give NaN) in the forward.

    Refused at load, naming the field, by every command.
    """
    (model / "config.json").write_text(json.dumps(LLAMA | changes))
    for command in (["stats", TEXT], ["info"]):
        line = assert_refused(mha(*command, "-m", str(model)), fragment)
        assert line.startswith("error: config.json: ")


def test_rope_check_accepts_every_real_rope_type():
    from mhacli.config import parse_config
    from mhacli.engine.arch import check_config

    for rope in [
        {"rope_type": "default"},
        {"rope_type": "linear", "factor": 2.0},
        {"rope_type": "dynamic", "factor": 2.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        {"rope_type": "yarn", "factor": 4.0, "mscale": 0.707, "mscale_all_dim": 0.707},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        {
            "rope_type": "longrope",
            "short_factor": [1.0] * 8,
            "long_factor": [2.0] * 8,
            "original_max_position_embeddings": 16,
        },
    ]:
        check_config(parse_config(LLAMA | {"rope_scaling": rope}))


F32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize(
    "changes",
    [
        # float32's largest value is inside its range: nothing overflows with it here
        {"rope_theta": F32_MAX},
        {"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [F32_MAX] * 8,
                          "original_max_position_embeddings": 64}},  # long_factor unused: no text is longer
        # an original context of 1 divides by log(1) only in longrope with factor > 1
        {"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 8,
                          "original_max_position_embeddings": 1, "factor": 1.0}},
        {"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 8,
                          "original_max_position_embeddings": 1, "factor": 0.5}},
        {"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 8,
                          "original_max_position_embeddings": 2, "factor": 2.0}},
        {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1}},
        {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 1}},
    ],
    ids=["theta-f32-max", "long-factor-f32-max", "longrope-original-1-factor-1", "longrope-original-1-factor-0.5",
         "longrope-original-2-factor-2", "yarn-original-1", "llama3-original-1"],
)  # fmt: skip
def test_rope_check_accepts_parameters_at_the_edges(changes):
    """Representable parameters whose arithmetic stays finite are accepted (the forward runs with them)."""
    from mhacli.config import parse_config
    from mhacli.engine.arch import check_config

    check_config(parse_config(LLAMA | changes))


def test_a_rope_problem_names_the_numeric_parameters_given():
    """The message ends with every number of the rotary parameters, comma-separated (no names, flags or Nones)."""
    from mhacli.config import parse_config
    from mhacli.engine.arch.rope import rope_problem

    rope = parse_config(LLAMA | {"rope_scaling": {"rope_type": "linear", "factor": 1e-300}}).rope
    problem = rope_problem(rope, 16, 64)
    assert problem is not None and problem.endswith(" with rope_theta=10000.0, factor=1e-300"), problem


def wordlevel_tokenizer(model: Path, vocab: dict[str, int], unk: str = "[UNK]") -> None:
    doc = json.loads((model / "tokenizer.json").read_text())
    doc.update(
        model={"type": "WordLevel", "vocab": vocab, "unk_token": unk},
        pre_tokenizer={"type": "Whitespace"},
        post_processor=None,
        decoder=None,
        added_tokens=[],
    )
    (model / "tokenizer.json").write_text(json.dumps(doc))


def test_tokenizer_that_raises_while_encoding(model, mha):
    """A WordLevel tokenizer whose unk_token is not in its vocabulary fails on an unknown word."""
    wordlevel_tokenizer(model, {"the": 0, "cat": 1})
    assert_refused(mha("stats", "the dog", "-m", str(model)), "the tokenizer failed on this text")
    ok = mha("stats", "the cat the cat", "-m", str(model), "-f", "json")
    assert ok.returncode == 0, ok.stderr
    assert parse_json(ok.stdout)["token_ids"] == [0, 1, 0, 1]


def test_tokenizer_that_raises_in_diff(model, mha):
    wordlevel_tokenizer(model, {"the": 0, "cat": 1})
    assert_refused(mha("diff", str(model), str(model), "the dog"), "the tokenizer failed on this text")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("fmt", ["json", "text", "csv"])
def test_full_disk(tiny_model, fmt):
    with open("/dev/full", "wb") as full:
        result = subprocess.run(
            [sys.executable, "-m", "mhacli", "inspect", TEXT, "-m", str(tiny_model), "-f", fmt],
            stdout=full,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            timeout=120,
            env={k: v for k, v in os.environ.items() if k not in ("MHA_MODEL", "MHA_DEBUG")},
        )
    result.stdout = b""
    assert_refused(result, "cannot write the output: No space left on device")


ACCENTED = "Café naïve résumé, déjà vu"


@pytest.mark.parametrize("fmt", ["json", "jsonl", "text", "csv", "rich"])
def test_ascii_stdout(tiny_model, tokenizer_dir, fmt):
    """PYTHONIOENCODING=ascii gives the same result, non-ASCII characters escaped.

    Escaped (JSON: \\u escapes, so the document is the one a UTF-8 stdout gets).
    """
    from mhacli.io.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    assert any(not t.isascii() for t in tokenizer.display(tokenizer.encode(ACCENTED))), "a token must be non-ASCII"
    ascii_run = run_mha("inspect", ACCENTED, "-m", str(tiny_model), "-f", fmt, env={"PYTHONIOENCODING": "ascii"})
    notes = ascii_run.stderr.splitlines()  # a short text gets the "too plain to tell" note in the text format
    assert ascii_run.returncode == 0 and all(line.startswith(b"note: ") for line in notes), ascii_run.stderr
    ascii_run.stdout.decode("ascii")
    if fmt == "json":
        utf8_run = run_mha("inspect", ACCENTED, "-m", str(tiny_model), "-f", fmt, env={"PYTHONIOENCODING": "utf-8"})
        assert parse_json(ascii_run.stdout) == parse_json(utf8_run.stdout)


def test_ascii_stdout_info_with_accented_directory(tiny_model, tmp_path):
    d = tmp_path / "modèle"
    shutil.copytree(tiny_model, d)
    for fmt in ("text", "rich", "json"):
        result = run_mha("info", "-m", str(d), "-f", fmt, env={"PYTHONIOENCODING": "ascii"})
        assert result.returncode == 0 and result.stderr == b"", result.stderr
        result.stdout.decode("ascii")
    assert parse_json(result.stdout)["source"] == str(d)


# --- 2. the tokenizer library must not panic or abort the process -----------------------------------------------


def tokenizer_doc(model: Path) -> dict:
    return json.loads((model / "tokenizer.json").read_text())


def set_tokenizer(model: Path, **changes) -> None:
    doc = tokenizer_doc(model)
    doc.update(changes)
    (model / "tokenizer.json").write_text(json.dumps(doc))


PAD = {"direction": "Right", "pad_to_multiple_of": None, "pad_id": 0, "pad_type_id": 0, "pad_token": "<|endoftext|>"}
TRUNC = {"direction": "Right", "strategy": "LongestFirst"}
IGNORED_SETTINGS = [
    {"padding": PAD | {"strategy": {"Fixed": 10**12}}},  # aborted: "memory allocation of 4000000000000 bytes failed"
    {"padding": PAD | {"strategy": "BatchLongest", "pad_to_multiple_of": 0}},
    {"padding": PAD | {"strategy": {"Fixed": 100}}},  # would add padding ids the text does not have
    {"truncation": TRUNC | {"max_length": 2, "stride": 5}},  # panicked: stride must be < max_len
    {"truncation": TRUNC | {"max_length": 1, "stride": 0}},  # would cut the text silently
    {"truncation": TRUNC | {"max_length": 0, "stride": 0}},
]


@pytest.mark.parametrize("changes", IGNORED_SETTINGS, ids=lambda c: json.dumps(c)[:50])
def test_padding_and_truncation_are_ignored(model, tiny_model, cli_worker, changes):
    """The tool never pads and cuts texts itself (with a warning).

    A tokenizer.json's own padding and truncation are dropped, so these files give the ids of the untouched tokenizer,
    and no panic or abort.
    """
    set_tokenizer(model, **changes)
    want = cli_worker.run("stats", TEXT, "-m", str(tiny_model), "-f", "json")
    got = cli_worker.run("stats", TEXT, "-m", str(model), "-f", "json")
    assert_ok(got)
    assert parse_json(got.stdout)["token_ids"] == parse_json(want.stdout)["token_ids"]


REFUSED_COMPONENTS = [
    # the tokenizers library panicked on the first and aborted on the second
    ({"normalizer": {"type": "Precompiled", "precompiled_charsmap": "AAAA"}}, "corrupt precompiled_charsmap"),
    ({"normalizer": {"type": "Precompiled", "precompiled_charsmap": "/////w=="}}, "corrupt precompiled_charsmap"),
    ({"normalizer": {"type": "Precompiled", "precompiled_charsmap": "not base64!"}}, "corrupt precompiled_charsmap"),
    ({"normalizer": {"type": "Replace", "pattern": {"String": "a"}, "content": "b" * 1_000_000}},
     "normalizer (Replace)"),
    ({"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "x" * 100_000}]}},
     "normalizer[0] (Prepend)"),
    ({"normalizer": {"type": "Replace", "pattern": {"String": ""}, "content": "x"}}, "empty pattern"),
    ({"pre_tokenizer": {"type": "FixedLength", "length": 0}}, "FixedLength"),  # panicked: chunk size must be non-zero
    ({"post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}],
                         "pair": [], "special_tokens": {}}}, "special token '<s>'"),  # panicked: no entry found for key
]  # fmt: skip


@pytest.mark.parametrize("changes,fragment", REFUSED_COMPONENTS, ids=[str(i) for i in range(len(REFUSED_COMPONENTS))])
def test_tokenizer_settings_that_panic_or_abort_are_refused(model, cli_worker, changes, fragment):
    set_tokenizer(model, **changes)
    assert_refused(cli_worker.run("stats", "aaa bbb", "-m", str(model)), fragment)


def test_tokenizer_panic_is_caught_without_its_backtrace(model, cli_worker):
    """A panic no check foresees is caught, and the library's message and backtrace do not reach the user.

    The panic: a Replace whose regex matches the empty string (index out of bounds in the library); its message and
    backtrace are written to fd 2.
    """
    set_tokenizer(model, normalizer={"type": "Replace", "pattern": {"Regex": "x*"}, "content": "yy"})
    line = assert_refused(cli_worker.run("stats", "hello world", "-m", str(model)), "the tokenizer failed on this text")
    assert "index out of bounds" in line


def test_tokenizer_that_fails_to_load_quietly(model, mha):
    """A deserialization panic in the library is caught at load too."""
    set_tokenizer(model, decoder={"type": "Strip", "content": "", "start": 10**9, "stop": 0})
    assert_refused(mha("stats", TEXT, "-m", str(model)), "tokenizer files are corrupt")


MEGABYTES = ("word " * (8 * 1024 * 1024 // 5 - 1)).encode()  # just under the 8 MiB stdin limit, ~1.7M tokens


def test_megabytes_of_text_are_not_tokenized_in_full(tiny_model, cli_worker):
    """Tokenizing 8 MiB in full needs more than the child's whole address space (it aborted the process).

    Only a prefix sized from n_positions is tokenized, so --truncate works and the refusal names a lower bound.
    """
    truncated = cli_worker.run("stats", "-", "-m", str(tiny_model), "-f", "json", "--truncate", input=MEGABYTES)
    assert_ok(truncated)
    assert len(parse_json(truncated.stdout)["token_ids"]) == 64
    assert truncated.stderr.decode().startswith("warning: text truncated to the first 64 of more than ")
    refused = cli_worker.run("stats", "-", "-m", str(tiny_model), input=MEGABYTES)
    assert_refused(refused, "text is more than")


def test_megabytes_of_text_in_diff(tiny_model, cli_worker):
    """diff tokenizes with both models' tokenizers: the same bounded prefix for both."""
    truncated = cli_worker.run(
        "diff", str(tiny_model), str(tiny_model), "-", "-f", "json", "--truncate", input=MEGABYTES
    )
    assert_ok(truncated)
    assert len(parse_json(truncated.stdout)["tokens"]) == 64
    assert "truncated to the first 64 of more than " in truncated.stderr.decode()
    assert_refused(cli_worker.run("diff", str(tiny_model), str(tiny_model), "-", input=MEGABYTES), "is more than")


def test_only_a_prefix_reaches_the_library(tokenizer_dir):
    from mhacli.io.tokenizer import CHARS_PER_TOKEN, PREFIX_MARGIN, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    seen: list[int] = []
    real = tokenizer.backend

    class Spy:
        def encode(self, text):
            seen.append(len(text))
            return real.encode(text)

        def __getattr__(self, name):
            return getattr(real, name)

    tokenizer.backend = Spy()
    ids, n_chars = tokenizer.encode_prefix("word " * 1_000_000, 64)
    assert len(ids) > 64 + PREFIX_MARGIN and n_chars < 5_000_000
    assert max(seen) <= CHARS_PER_TOKEN * (64 + PREFIX_MARGIN), seen


WORDS = st.sampled_from(
    [
        "the",
        "cat",
        "sat",
        "Café",
        "naïve",
        "東京",
        "🙂",
        "<|endoftext|>",
        "1234567890",
        "#$%",
        "xylophone",
        "  ",
        "\n",
        "\t",
    ]
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(WORDS, min_size=1, max_size=400), joiner=st.sampled_from([" ", "", "\n"]), n=st.integers(1, 40))
def test_prefix_gives_the_first_tokens_of_the_whole_text(tokenizer_dir, words, joiner, n):
    """encode_prefix's first n ids are the whole text's first n ids, and the whole text's when it is short."""
    from mhacli.io.tokenizer import load_tokenizer

    tokenizer = _cached_tokenizer(tokenizer_dir, load_tokenizer)
    text = joiner.join(words)
    whole = tokenizer.encode(text)
    ids, n_chars = tokenizer.encode_prefix(text, n)
    assert ids[:n] == whole[:n]
    if n_chars == len(text):
        assert ids == whole
    else:
        assert len(ids) > n


_TOKENIZERS: dict = {}


def _cached_tokenizer(directory, load):
    if directory not in _TOKENIZERS:
        _TOKENIZERS[directory] = load(directory)
    return _TOKENIZERS[directory]


# --- 3. a FIFO, device or directory named like a model file: refused, never opened for a blocking read ----------


def fifo_at(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def put_fifo(name: str):
    def apply(d: Path) -> None:
        fifo_at(d / name)

    apply.__name__ = f"fifo {name}"
    return apply


def vocab_merges_fifo(name: str):
    def apply(d: Path) -> None:
        (d / "tokenizer.json").unlink()
        fifo_at(d / name)

    apply.__name__ = f"fifo {name} (no tokenizer.json)"
    return apply


def shard_fifo(d: Path) -> None:
    index = shard(d)
    name = "model-00001-of-00001.safetensors"
    fifo_at(d / name)
    assert set(index["weight_map"].values()) == {name}


def index_fifo(d: Path) -> None:
    (d / "model.safetensors").unlink()
    fifo_at(d / "model.safetensors.index.json")


def directory_as_weights(d: Path) -> None:
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").mkdir()


def device_as_weights(d: Path) -> None:
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").symlink_to("/dev/zero")


def directory_as_config(d: Path) -> None:
    (d / "config.json").unlink()
    (d / "config.json").mkdir()


SPECIAL_FILES = [
    (put_fifo("model.safetensors"), "is a FIFO, not a regular file"),
    (put_fifo("config.json"), "is a FIFO, not a regular file"),
    (put_fifo("tokenizer.json"), "is a FIFO, not a regular file"),
    (vocab_merges_fifo("vocab.json"), "is a FIFO, not a regular file"),
    (vocab_merges_fifo("merges.txt"), "is a FIFO, not a regular file"),
    (vocab_merges_fifo("tokenizer_config.json"), "is a FIFO, not a regular file"),
    (shard_fifo, "is a FIFO, not a regular file"),
    (index_fifo, "is a FIFO, not a regular file"),
    (directory_as_weights, "is a directory, not a regular file"),
    (device_as_weights, "is a character device, not a regular file"),
    (directory_as_config, "is a directory, not a regular file"),
]


@pytest.mark.parametrize("breaker,fragment", SPECIAL_FILES, ids=[b.__name__ for b, _ in SPECIAL_FILES])
def test_special_files_are_refused_without_blocking(model, cli_worker, breaker, fragment):
    breaker(model)
    assert_refused(cli_worker.run("stats", TEXT, "-m", str(model)), fragment)


def test_fifo_as_the_model_argument(tmp_path, mha):
    fifo_at(tmp_path / "weights.safetensors")
    assert_refused(mha("stats", TEXT, "-m", str(tmp_path / "weights.safetensors")), "not a regular file or directory")


# --- 4. what the safetensors library refuses is refused -----------------------------------------------------------


def two_tensor_file(path: Path, header_json: bytes, data: bytes) -> None:
    write_raw_header(path, header_json, data)


F32_16 = np.arange(4, dtype=np.float32).tobytes()
LIBRARY_REFUSES = [
    (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}',
     "names 'a' twice"),
    (b'{"a":{"dtype":"F32","shape":[2],"shape":[2],"data_offsets":[0,8]},'
     b'"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', "names 'shape' twice"),
    (b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}',
     "belong to no tensor"),
    (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', "after the last tensor belong to no tensor"),
    (b'{"__metadata__":{"x":1},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}',
     "__metadata__ must map names to strings"),
]  # fmt: skip


@pytest.mark.parametrize(
    "header,fragment", LIBRARY_REFUSES, ids=["duplicate tensor", "duplicate field", "gap", "trailing bytes", "metadata"]
)
def test_what_the_safetensors_library_refuses(tmp_path, header, fragment):
    """The library (HF's reader) refuses each of these files; so does ours, instead of reading other numbers."""
    from mhacli.errors import WeightsError
    from mhacli.io.weights import read_safetensors_header

    path = tmp_path / "t.safetensors"
    two_tensor_file(path, header, F32_16)
    with pytest.raises(Exception) as refused:  # noqa: PT011 - SafetensorError is not importable as a class everywhere
        with safe_open(str(path), "np") as f:
            [f.get_tensor(k) for k in f.keys()]
    assert "SafetensorError" in type(refused.value).__name__ or "deserializ" in str(refused.value)
    with pytest.raises(WeightsError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        read_safetensors_header(path)
    count_case(KIND)


def test_duplicate_tensor_name_in_a_model(model, mha):
    """The same tensor named twice, each copy with its own (valid, contiguous) bytes: HF refuses the file, so do we."""
    header, data = header_of(model / "model.safetensors")
    header.pop("__metadata__", None)
    name, entry = max(((k, v) for k, v in header.items()), key=lambda kv: kv[1]["data_offsets"][1])
    begin, end = entry["data_offsets"]
    blob = (
        json.dumps(header)[:-1]
        + f', "{name}": '
        + json.dumps({**entry, "data_offsets": [len(data), len(data) + end - begin]})
        + "}"
    )
    write_raw_header(model / "model.safetensors", blob.encode(), data + data[begin:end])
    assert_refused(mha("stats", TEXT, "-m", str(model)), f"names {name!r} twice")


def test_tensor_with_and_without_prefix(model, mha):
    tensors = load_file(model / "model.safetensors")
    tensors["wte.weight"] = tensors["transformer.wte.weight"] * 2
    save_file(tensors, model / "model.safetensors")
    assert_refused(mha("stats", TEXT, "-m", str(model)), "tensor 'wte.weight' is given twice")


def test_tensor_in_two_shards(model, mha):
    tensors = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names}, model / "a.safetensors")
    save_file({names[0]: tensors[names[0]]}, model / "b.safetensors")
    weight_map = {k: "a.safetensors" for k in names} | {"extra": "b.safetensors"}
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_refused(mha("stats", TEXT, "-m", str(model)), "is given twice")


# --- 5. names from files are shown escaped -------------------------------------------------------------------------


ESC = "\x1b[2J\x1b]0;pwned\x07"  # clear the screen, set the window title


def no_raw_control(result) -> None:
    for stream in (result.stdout, result.stderr):
        assert b"\x1b" not in stream and b"\x07" not in stream and "\u202e".encode() not in stream, stream[:300]


def evil_tensor_name(d: Path) -> None:
    header, data = header_of(d / "model.safetensors")
    name = next(k for k in header if k != "__metadata__")
    header[name + ESC] = header.pop(name) | {"dtype": "Q4"}
    write_raw_header(d / "model.safetensors", json.dumps(header).encode(), data)


def evil_tensor_missing(d: Path) -> None:
    tensors = load_file(d / "model.safetensors")
    tensors["transformer.h.0.attn.c_attn.weight\u202e" + ESC] = tensors.pop("transformer.h.0.attn.c_attn.weight")
    save_file(tensors, d / "model.safetensors")


def evil_file_name(d: Path) -> None:
    (d / "model.safetensors").rename(d / f"we{ESC}ights.safetensors")
    raw = (d / f"we{ESC}ights.safetensors").read_bytes()
    (d / f"we{ESC}ights.safetensors").write_bytes(raw[:100])


def evil_shard_name(d: Path) -> None:
    index = shard(d)
    index["weight_map"][next(iter(index["weight_map"]))] = f"sh{ESC}ard\n.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def evil_newline_tensor(d: Path) -> None:
    header, data = header_of(d / "model.safetensors")
    name = next(k for k in header if k != "__metadata__")
    header["line one\nerror: forged second line"] = header.pop(name) | {"shape": [-1]}
    write_raw_header(d / "model.safetensors", json.dumps(header).encode(), data)


def evil_config_value(d: Path) -> None:
    edit_json(d / "config.json", activation_function=f"gelu{ESC}")


@pytest.mark.parametrize(
    "breaker,fragment",
    [
        (evil_tensor_name, "\\x1b[2J\\x1b]0;pwned\\x07"),
        (evil_tensor_missing, "is missing"),
        (evil_file_name, "\\x1b"),
        (evil_shard_name, "\\x1b"),
        (evil_newline_tensor, "line one\\nerror: forged second line"),
        (evil_config_value, "\\x1b"),
    ],
    ids=lambda x: getattr(x, "__name__", "")[:30],
)
def test_names_from_files_are_escaped(model, mha, breaker, fragment):
    breaker(model)
    result = mha("stats", TEXT, "-m", str(model))
    assert_refused(result, fragment)
    no_raw_control(result)


def test_model_argument_is_escaped(mha, tmp_path):
    result = mha("stats", TEXT, "-m", str(tmp_path / f"no{ESC}such"))
    assert_refused(result, "\\x1b")
    no_raw_control(result)


@pytest.mark.parametrize("fmt", ["text", "rich"])
def test_info_shows_escaped_file_names(model, mha, fmt):
    index = shard(model)
    evil = f"[red]sh{ESC}ard.safetensors"
    (model / "model-00001-of-00001.safetensors").rename(model / evil)
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: evil for k in index["weight_map"]}})
    )
    result = mha("info", "-m", str(model), "-f", fmt)
    assert result.returncode == 0, result.stderr
    no_raw_control(result)
    assert "[red]sh\\x1b[2J" in result.stdout.decode(), "shown escaped, and not taken for rich markup"


# --- 6. noise and modes ----------------------------------------------------------------------------------------------


def test_no_warning_before_the_error_line(model, mha):
    """float64 weights beyond float32's range used to print numpy's RuntimeWarning (two lines) first."""
    tensors = load_file(model / "model.safetensors")
    tensors = {k: v.astype(np.float64) for k, v in tensors.items()}
    tensors["transformer.wte.weight"][3, 3] = 1e300
    save_file(tensors, model / "model.safetensors")
    assert_refused(run_mha("stats", TEXT, "-m", str(model)), "float64 values beyond float32's range")


def test_warnings_are_held_back_before_an_error(tiny_model, mha, monkeypatch):
    """Any Python warning raised while a command runs.

    One `warning:` line after a success, nothing before an error line.
    """
    import warnings

    import mhacli.ops.inputs as inputs

    real = inputs.load_model

    def noisy(*args, **kwargs):
        warnings.warn("overflow encountered in cast", RuntimeWarning, stacklevel=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(inputs, "load_model", noisy)
    ok = mha("stats", TEXT, "-m", str(tiny_model), "-f", "json")
    assert ok.returncode == 0 and ok.stderr.decode().splitlines() == ["warning: overflow encountered in cast"]
    assert_refused(mha("inspect", TEXT, "-m", str(tiny_model), "-l", "9"), "--layer 9 is out of range")


@pytest.mark.parametrize("fmt", ["rich", "text", "json", "csv"])
def test_closed_pipe_exits_zero_in_every_format(tiny_model, fmt):
    """The reader is gone before the first byte is written (`| head -1`, a `less` quit early): exit 0, quietly."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mhacli", "inspect", TEXT * 4, "-m", str(tiny_model), "-f", fmt],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k not in ("MHA_MODEL", "MHA_DEBUG")},
    )
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert err == b"", err


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_follow_the_umask(tiny_model, tmp_path, mha, umask, mode):
    old = os.umask(umask)
    try:
        assert (
            mha("inspect", TEXT, "-m", str(tiny_model), "--save", str(tmp_path / "a.npz"), "-f", "json").returncode == 0
        )
        assert (
            mha("prune", TEXT, "-m", str(tiny_model), "--save-mask", str(tmp_path / "m.json"), "-f", "json").returncode
            == 0
        )
    finally:
        os.umask(old)
    for name in ("a.npz", "m.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_saving_over_a_file_keeps_its_mode(tiny_model, tmp_path, mha):
    out = tmp_path / "a.npz"
    out.write_bytes(b"old")
    out.chmod(0o640)
    assert mha("inspect", TEXT, "-m", str(tiny_model), "--save", str(out), "-f", "json").returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640 and out.read_bytes()[:2] == b"PK"


def test_rich_into_head(tiny_model):
    """The same through a shell pipeline into `head -1`, the way users meet it."""
    proc = subprocess.run(
        f"{sys.executable} -m mhacli inspect '{TEXT * 4}' -m {tiny_model} -f rich | head -1; echo ${{PIPESTATUS[0]}}",
        shell=True,
        capture_output=True,
        executable="/bin/bash",
        timeout=120,
        env={k: v for k, v in os.environ.items() if k not in ("MHA_MODEL", "MHA_DEBUG")},
    )
    assert proc.stdout.decode().splitlines()[-1] == "0", proc.stderr
    assert proc.stderr == b"", proc.stderr
