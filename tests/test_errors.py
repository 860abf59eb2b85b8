"""Hostile and broken input: one row per bad input a user can produce, across every command.

Every row must give exactly one `error:` line on stderr, exit 2, and nothing on stdout.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import count_case, default_sigint, run_mha
from safetensors.numpy import load_file, save_file

TEXT = "The cat sat on the mat."


def header_of(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_with_header(path: Path, header: dict, data: bytes, *, pad: bool = True) -> None:
    blob = json.dumps(header).encode()
    if pad:
        blob += b" " * (-len(blob) % 8)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)


def edit_config(d: Path, **changes) -> None:
    config = json.loads((d / "config.json").read_text())
    config.update(changes)
    for k, v in list(config.items()):
        if v == "__delete__":
            del config[k]
    (d / "config.json").write_text(json.dumps(config))


def first_tensor(header: dict) -> str:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])[0]


# --- ways to break a copy of a good model directory --------------------------------------------------------------


def empty_weights(d):
    (d / "model.safetensors").write_bytes(b"")


def truncated_weights(d):
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) // 2])


def random_bytes(d):
    (d / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))


def header_length_past_end(d):
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes((10**12).to_bytes(8, "little") + raw[8:])


def header_not_json(d):
    raw = (d / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    (d / "model.safetensors").write_bytes(raw[:8] + b"{" * n + raw[8 + n :])


def header_is_a_list(d):
    write_with_header(d / "model.safetensors", [1, 2, 3], b"")  # type: ignore[arg-type]


def offsets_outside_data(d):
    header, data = header_of(d / "model.safetensors")
    name = first_tensor(header)
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin + len(data), end + len(data)]
    write_with_header(d / "model.safetensors", header, data)


def offsets_overlapping(d):
    header, data = header_of(d / "model.safetensors")
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    a, b = names[0], names[1]
    size_b = header[b]["data_offsets"][1] - header[b]["data_offsets"][0]
    header[b]["data_offsets"] = [header[a]["data_offsets"][0], header[a]["data_offsets"][0] + size_b]
    write_with_header(d / "model.safetensors", header, data)


def shape_disagrees_with_bytes(d):
    header, data = header_of(d / "model.safetensors")
    name = first_tensor(header)
    header[name]["shape"] = [s * 2 for s in header[name]["shape"]]
    write_with_header(d / "model.safetensors", header, data)


def dtype_disagrees_with_bytes(d):
    header, data = header_of(d / "model.safetensors")
    header[first_tensor(header)]["dtype"] = "F64"
    write_with_header(d / "model.safetensors", header, data)


def unknown_dtype(d):
    header, data = header_of(d / "model.safetensors")
    header[first_tensor(header)]["dtype"] = "Q4_K"
    write_with_header(d / "model.safetensors", header, data)


def negative_shape(d):
    header, data = header_of(d / "model.safetensors")
    header[first_tensor(header)]["shape"] = [-1, 32]
    write_with_header(d / "model.safetensors", header, data)


def integer_weights(d):
    tensors = load_file(d / "model.safetensors")
    tensors["transformer.ln_f.bias"] = tensors["transformer.ln_f.bias"].astype(np.int32)
    save_file(tensors, d / "model.safetensors")


def missing_tensor(d):
    tensors = load_file(d / "model.safetensors")
    del tensors["transformer.h.0.attn.c_attn.weight"]
    save_file(tensors, d / "model.safetensors")


def wrong_shape(d):
    tensors = load_file(d / "model.safetensors")
    tensors["transformer.wpe.weight"] = tensors["transformer.wpe.weight"][:10].copy()
    save_file(tensors, d / "model.safetensors")


def nan_weight(d):
    tensors = load_file(d / "model.safetensors")
    tensors["transformer.h.0.attn.c_attn.bias"][0] = np.nan
    save_file(tensors, d / "model.safetensors")


def inf_weight(d):
    tensors = load_file(d / "model.safetensors")
    tensors["transformer.wte.weight"][5, 5] = np.inf
    save_file(tensors, d / "model.safetensors")


def overflowing_weights(d):
    """Finite weights whose forward pass overflows to Inf/NaN."""
    tensors = load_file(d / "model.safetensors")
    tensors["transformer.h.0.attn.c_attn.weight"][:] = 3e38
    save_file(tensors, d / "model.safetensors")


def no_config(d):
    (d / "config.json").unlink()


def config_not_json(d):
    (d / "config.json").write_text("{ this is not json")


def config_is_a_list(d):
    (d / "config.json").write_text("[1, 2]")


def config_wrong_type(d):
    edit_config(d, n_head="4")


def config_zero_layers(d):
    edit_config(d, n_layer=0)


def config_negative_embd(d):
    edit_config(d, n_embd=-32)


def config_not_divisible(d):
    edit_config(d, n_head=5)


def config_other_model_type(d):
    edit_config(d, model_type="t5")


def config_no_model_type(d):
    edit_config(d, model_type="__delete__")


def config_unknown_activation(d):
    edit_config(d, activation_function="prelu")


def config_bad_epsilon(d):
    edit_config(d, layer_norm_epsilon="small")


def config_huge_layers(d):
    edit_config(d, n_layer=10**9)


def config_vocab_smaller_than_tokenizer(d):
    """A config whose vocab_size disagrees with both weights and tokenizer: the shape check names wte."""
    edit_config(d, vocab_size=100)


def no_tokenizer(d):
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (d / name).unlink()


def corrupt_tokenizer_json(d):
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')


def corrupt_vocab_json(d):
    (d / "tokenizer.json").unlink()
    (d / "vocab.json").write_text("not json at all")


def shard_index_escapes_dotdot(d):
    (d / "model.safetensors").rename(d.parent / "outside.safetensors")
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"wte.weight": "../outside.safetensors"}})
    )


def shard_index_absolute_path(d):
    (d / "model.safetensors").rename(d.parent / "abs.safetensors")
    target = str((d.parent / "abs.safetensors").resolve())
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": target}}))


def shard_index_symlink_out(d):
    (d / "model.safetensors").rename(d.parent / "linked.safetensors")
    (d / "shard.safetensors").symlink_to(d.parent / "linked.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": "shard.safetensors"}}))


def shard_index_not_json(d):
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text("nope")


def shard_index_names_pickle(d):
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": "pytorch_model.bin"}}))


def shard_missing(d):
    (d / "model.safetensors").unlink()
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": "gone.safetensors"}}))


def only_pickle(d):
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04")


def not_a_model_dir(d):
    (d / "model.safetensors").unlink()


BROKEN_MODELS = [
    (empty_weights, "too short for a header"),
    (truncated_weights, "past the end of the file"),
    (random_bytes, "header length"),
    (header_length_past_end, "runs past the end"),
    (header_not_json, "header is not valid JSON"),
    (header_is_a_list, "not a JSON object"),
    (offsets_outside_data, "past the end of the file"),
    (offsets_overlapping, "overlap"),
    (shape_disagrees_with_bytes, "offsets span"),
    (dtype_disagrees_with_bytes, "offsets span"),
    (unknown_dtype, "unknown dtype 'Q4_K'"),
    (negative_shape, "bad shape"),
    (integer_weights, "expected a float type"),
    (missing_tensor, "'h.0.attn.c_attn.weight' is missing"),
    (wrong_shape, "'transformer.wpe.weight'"),
    (nan_weight, "'transformer.h.0.attn.c_attn.bias'"),
    (inf_weight, "'transformer.wte.weight'"),
    (overflowing_weights, "NaN or Inf in layer 0"),
    (no_config, "no config.json"),
    (config_not_json, "not valid JSON"),
    (config_is_a_list, "must hold a JSON object"),
    (config_wrong_type, "n_head must be an integer"),
    (config_zero_layers, "n_layer = 0 is out of range"),
    (config_negative_embd, "n_embd = -32 is out of range"),
    (config_not_divisible, "not divisible by n_head"),
    (config_other_model_type, "'t5' is not supported"),
    (config_no_model_type, "no model_type"),
    (config_unknown_activation, "activation_function 'prelu'"),
    (config_bad_epsilon, "layer_norm_epsilon"),
    (config_huge_layers, "n_layer = 1000000000 is out of range"),
    (config_vocab_smaller_than_tokenizer, "'transformer.wte.weight'"),
    (no_tokenizer, "no tokenizer"),
    (corrupt_tokenizer_json, "tokenizer files are corrupt"),
    (corrupt_vocab_json, "tokenizer files are corrupt"),
    (shard_index_escapes_dotdot, "outside the model directory"),
    (shard_index_absolute_path, "outside the model directory"),
    (shard_index_symlink_out, "links outside the model directory"),
    (shard_index_not_json, "not valid JSON"),
    (shard_index_names_pickle, "pickle checkpoint"),
    (shard_missing, "'gone.safetensors' is missing"),
    (only_pickle, "pickle checkpoint"),
    (not_a_model_dir, "not a model directory"),
]


def assert_one_error_line(result, fragment: str, code: int = 2) -> None:
    stderr = result.stderr.decode("utf-8", "replace")
    lines = stderr.splitlines()
    assert result.returncode == code, f"exit {result.returncode}, stderr {stderr!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "Traceback" not in stderr
    assert result.stdout == b""
    count_case("bad inputs answered with one error line (tests/test_errors.py)")


@pytest.mark.parametrize("breaker,fragment", BROKEN_MODELS, ids=[b.__name__ for b, _ in BROKEN_MODELS])
@pytest.mark.parametrize("command", ["inspect", "stats"])
def test_broken_model(tmp_path, tiny_model, mha, breaker, fragment, command):
    d = tmp_path / "model"
    shutil.copytree(tiny_model, d)
    breaker(d)
    assert_one_error_line(mha(command, TEXT, "-m", str(d), "-f", "json"), fragment)


@pytest.mark.parametrize(
    "breaker", [empty_weights, header_length_past_end, missing_tensor, config_not_divisible, only_pickle, no_config]
)
@pytest.mark.parametrize("command", ["info", "verify"])
def test_broken_model_other_commands(tmp_path, tiny_model, mha, breaker, command):
    d = tmp_path / "model"
    shutil.copytree(tiny_model, d)
    breaker(d)
    args = [command, "-m", str(d)] + ([TEXT] if command == "verify" else [])
    assert_one_error_line(mha(*args), "")


BAD_OPTIONS = [
    (["inspect", TEXT, "-l", "7"], "--layer 7 is out of range"),
    (["inspect", TEXT, "-H", "99"], "--head 99 is out of range"),
    (["inspect", TEXT, "--query", "999"], "--query 999 is out of range"),
    (["inspect", TEXT, "--query", "1", "--top", "2"], "pick one"),
    (["inspect", TEXT, "--top", "-3"], "--top"),
    (["inspect", TEXT, "--from", "-1"], "--from"),
    (["inspect", TEXT, "--format", "yaml"], "'--format' / '-f': 'yaml' is not one of"),
    (["inspect", TEXT, "--save", "/etc/passwd/x.npz"], "/etc/passwd is not a directory"),
    (["inspect", TEXT, "--save", "."], "has no suffix"),
    (["inspect", TEXT, "--max-memory", "lots"], "is not a size"),
    (["inspect", TEXT, "--max-memory", "1K"], "more than 1.0 KiB"),
    (["inspect", TEXT, "--layer", "one"], "--layer"),
    (["stats", TEXT, "--stat", "vibes"], "'--stat' / '-s': 'vibes' is not one of"),
    (["stats", TEXT, "--format", "html"], "'html' is not one of"),
    (["stats", TEXT, "--max-memory", "0"], "is not a size"),
    (["verify", TEXT, "--atol", "-1"], "must be positive"),
    (["verify", TEXT, "--format", "csv"], "'csv' is not one of 'rich', 'text', 'json'"),
    (["info", "--format", "xml"], "'xml' is not one of"),
    (["circuits", "--mode", "X"], "--mode 'X' is not one of Q, K, V"),
    (["circuits", "--mode", "K", "--mode", "QK"], "--mode 'QK' is not one of Q, K, V"),
    (["circuits", "-l", "7"], "--layer 7 is out of range"),
    (["circuits", "-H", "99"], "--head 99 is out of range"),
    (["circuits", "--top", "-1"], "--top -1 is negative"),
    (["circuits", "--save", "x.npz"], "mha circuits cannot write .npz"),
    (["inspect", ""], "text is empty"),
    (["inspect", "word " * 100], "longer than the model's n_positions"),
    # the analyses name parameters as fields (mhacli.errors): the CLI spells each as its flag
    (["inspect", "word " * 100], "; shorten it or pass --truncate to keep the first tokens"),
    (["inspect", TEXT, "--ablate", "x"], "--ablate: 'x' is not a head"),
    (["prune", TEXT, "--step", "2"], "--step 2.0 must be in (0, 1]"),
    (["prune", TEXT, "--seeds", "0"], "--seeds 0 must be at least 1"),
    (["ablate", TEXT, "--loss-from", "999"], "--loss-from 999 is past the text"),
    (["census", "--texts", "/nonexistent/x.txt"], "--texts /nonexistent/x.txt: no such file"),
    (["attribute", TEXT, "--pos", "99"], "--pos 99 is outside the text"),
    (["attribute", TEXT, "--answer", " the cat sat on the mat"], "not one: give its first token"),
    (["attribute", TEXT, "--answer-id", "5", "--wrong-id", "5"], "--wrong is the same token as --answer"),
    (["attribute", TEXT, "--answer-id", "999999"], "--answer-id 999999 is outside the vocabulary"),
    (["attribute", TEXT, "--top-tokens", "-2"], "--top-tokens -2 must be 0 or more"),
    (["lens", TEXT, "--pos", "-99"], "--pos -99 is outside the text"),
    (["lens", TEXT, "--top", "0"], "--top 0 must be at least 1"),
    (["inspect", "--ids", "x"], "--ids: item 0 ('x') is not a token id"),
    (["nosuchcommand"], "No such command"),
]


@pytest.mark.parametrize("args,fragment", BAD_OPTIONS, ids=[" ".join(a)[:40] for a, _ in BAD_OPTIONS])
def test_bad_options(tiny_model, mha, args, fragment):
    extra = ["-m", str(tiny_model)] if args[0] != "nosuchcommand" else []
    assert_one_error_line(mha(*args, *extra), fragment)


def test_model_path_that_does_not_exist(mha):
    assert_one_error_line(mha("stats", TEXT, "-m", "/no/such/dir"), "no such file or directory")


def test_model_path_is_not_a_model(tmp_path, mha):
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_error_line(mha("stats", TEXT, "-m", str(tmp_path / "notes.txt")), "not a model")


def test_mha_model_env_pointing_nowhere(tmp_path, mha):
    result = mha("stats", TEXT, env={"MHA_MODEL": str(tmp_path / "missing")})
    assert_one_error_line(result, "MHA_MODEL=")


def test_hub_id_offline_not_cached(tmp_path):
    result = run_mha(
        "stats", TEXT, "-m", "someone/uncached", env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    )
    assert_one_error_line(result, "not in the local Hugging Face cache")


def test_text_not_utf8_on_stdin(tiny_model, mha):
    assert_one_error_line(mha("stats", "-m", str(tiny_model), input=b"\xff\xfe\xfa"), "not valid UTF-8")


def test_text_not_utf8_as_argument(tiny_model):
    code = (
        "import sys; from mhacli.cli import run; "
        f"sys.exit(run(['stats', b'caf\\xe9'.decode('utf-8', 'surrogateescape'), '-m', {str(tiny_model)!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, stdin=subprocess.DEVNULL)
    assert_one_error_line(result, "not valid UTF-8")


def test_failed_command_leaves_existing_save_file_alone(tiny_model, tmp_path, mha):
    out = tmp_path / "keep.npz"
    out.write_bytes(b"precious")
    result = mha("inspect", TEXT, "-m", str(tiny_model), "-l", "9", "--save", str(out))
    assert result.returncode == 2 and out.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.npz"], "no temporary file left behind"


class Evil:
    """Unpickling this creates a file: the proof that a checkpoint was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "model.ckpt"])
@pytest.mark.parametrize("command", ["info", "stats", "verify"])
def test_pickles_are_never_opened(tmp_path, tiny_model, mha, name, command):
    marker = tmp_path / "pwned"
    d = tmp_path / "model"
    shutil.copytree(tiny_model, d)
    (d / "model.safetensors").unlink()
    evil = d / name
    evil.write_bytes(pickle.dumps(Evil(marker)))
    pickle.loads(evil.read_bytes())  # the payload works: loading it would create the marker
    assert marker.exists()
    marker.unlink()
    for target in (d, evil):
        args = [command, "-m", str(target)] + ([TEXT] if command != "info" else [])
        assert_one_error_line(mha(*args), "pickle checkpoint")
        assert not marker.exists(), "a pickle was unpickled"


def test_pipe_closed_early_exits_quietly(tiny_model):
    """`mha ... | head -1`: no BrokenPipeError traceback, exit 0."""
    proc = subprocess.run(
        f"{sys.executable} -m mhacli inspect '{TEXT * 2}' -m {tiny_model} -f text | head -1",
        shell=True,
        capture_output=True,
        executable="/bin/bash",
        env={k: v for k, v in os.environ.items() if k != "MHA_MODEL"},
    )
    assert proc.stdout.decode().startswith("tokens:")
    assert proc.stderr == b"", proc.stderr
    status = subprocess.run(
        f"{sys.executable} -m mhacli inspect '{TEXT * 2}' -m {tiny_model} -f json | head -c 10 >/dev/null; "
        "echo ${PIPESTATUS[0]}",
        shell=True,
        capture_output=True,
        executable="/bin/bash",
    )
    assert status.stdout.strip() == b"0" and b"Traceback" not in status.stderr


def wait_until_reading_stdin(pid: int, limit: float = 60.0) -> None:
    """Until the process blocks reading its stdin pipe (Linux: its kernel wait channel), at most `limit` seconds.

    A fixed sleep fails on a loaded machine, where start-up can take longer and the signal lands too early.
    """
    wchan = Path(f"/proc/{pid}/wchan")
    if not wchan.exists():
        time.sleep(5)
        return
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if "pipe_read" in wchan.read_text():
            return
        time.sleep(0.05)


def test_ctrl_c_exits_130_with_one_line(tiny_model):
    """SIGINT while waiting on stdin: exit 130, one line, no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mhacli", "stats", "-", "-m", str(tiny_model)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=default_sigint,  # as a terminal starts it, whatever this process ignores
    )
    wait_until_reading_stdin(proc.pid)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)  # stdin still open: Ctrl-C alone must end it (closing stdin first would race it: EOF)
    finally:
        proc.stdin.close()
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 130, err
    assert err.decode().splitlines() == ["error: interrupted"] and out == b""


def test_tokenizer_larger_than_the_embedding(tmp_path, tiny_model, tokenizer_dir, mha):
    """A tokenizer whose ids run past vocab_size: a clear error, for inspect and for diff."""
    from helpers import build_model

    small = build_model(tmp_path / "small", tokenizer_dir, vocab_size=300)
    text = "symbols #$%&*()[]{}<> and unseen words xylophone"
    assert_one_error_line(mha("stats", text, "-m", str(small)), "vocab_size is 300")
    assert_one_error_line(mha("diff", str(small), str(small), text), "vocab_size is 300")


@pytest.mark.parametrize("command", [["explain", "-l", "0", "-H", "0"], ["diff", "MODEL"]])
def test_max_memory_guards_explain_and_diff(tiny_model, mha, command):
    args = [str(tiny_model) if a == "MODEL" else a for a in command]
    model = [] if command[0] == "diff" else ["-m", str(tiny_model)]
    extra = [str(tiny_model)] if command[0] == "diff" else []
    assert_one_error_line(mha(*args, *extra, TEXT, *model, "--max-memory", "1K"), "more than 1.0 KiB")


def test_circuits_without_an_output_head(tmp_path, tiny_model, mha):
    """An untied checkpoint saved without lm_head.weight: copying and OV pairs need it; --no-unembed does the rest."""
    d = tmp_path / "model"
    shutil.copytree(tiny_model, d)
    edit_config(d, tie_word_embeddings=False)
    tensors = load_file(d / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.startswith("lm_head.")}, d / "model.safetensors")
    assert_one_error_line(
        mha("circuits", "-m", str(d), "-f", "json"), "the copying scores and OV token pairs need it; --no-unembed"
    )
    ok = mha("circuits", "-m", str(d), "-f", "json", "--no-unembed")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert all(h["copying"] is None and h["ov_top"] == [] and h["qk_top"] for h in doc["heads"])


def weights_in_file(directory: Path) -> tuple[int, int]:
    """(layer 0's tensors, every tensor the forward reads) in bytes as float32, read with safetensors itself."""
    tensors = {k: v for k, v in load_file(directory / "model.safetensors").items() if not k.startswith("lm_head.")}
    return sum(4 * v.size for k, v in tensors.items() if ".h.0." in f".{k}"), sum(4 * v.size for v in tensors.values())


ONE_TOKEN = "a"  # one token: its maps are n_head x 1 x 1 floats, so the weights are all that can trip the guard


@pytest.mark.parametrize("command", [["inspect"], ["stats"], ["explain", "-l", "0", "-H", "0"]], ids=lambda c: c[0])
def test_max_memory_counts_the_weights_a_pass_holds(tiny_model, tokenizer_dir, mha, command):
    """Single-pass commands read one layer's tensors at a time.

    A limit under one layer's weights refuses even a one-token text; a limit of every weight plus 1 MiB lets it run.
    """
    from mhacli.io.tokenizer import load_tokenizer

    assert len(load_tokenizer(tokenizer_dir).encode(ONE_TOKEN)) == 1
    layer, total = weights_in_file(tiny_model)
    refused = mha(*command, ONE_TOKEN, "-m", str(tiny_model), "-f", "json", "--max-memory", str(layer - 1))
    assert_one_error_line(refused, "this request needs about")
    ran = mha(*command, ONE_TOKEN, "-m", str(tiny_model), "-f", "json", "--max-memory", str(total + 2**20))
    assert ran.returncode == 0, ran.stderr.decode()


def test_max_memory_counts_the_weights_diff_caches(tiny_model, mha):
    """diff keeps both small models' tensors once read (cached, for several texts).

    A limit under the two models' weights refuses even a one-token text; that plus 1 MiB lets it run.
    """
    _, total = weights_in_file(tiny_model)
    args = ("diff", str(tiny_model), str(tiny_model), ONE_TOKEN, "-f", "json", "--max-memory")
    assert_one_error_line(mha(*args, str(2 * total - 1)), "this request needs about")
    ran = mha(*args, str(2 * total + 2**20))
    assert ran.returncode == 0, ran.stderr.decode()


@pytest.mark.parametrize("cache", [False, True], ids=["streaming", "cached"])
def test_weight_estimate_is_held_by_a_real_pass(tmp_path, tokenizer_dir, cache):
    """Checkpoint.weight_bytes, from the headers alone, on a float16 checkpoint (read as float32).

    A caching checkpoint holds exactly that many bytes once every tensor is read, and a streaming pass's traced peak
    allocation is at least that (the forward holds two layers at a hand-over).
    """
    import tracemalloc

    from helpers import build_model

    from mhacli.analyses.heads import analyse
    from mhacli.io.weights import load_model

    directory = build_model(tmp_path / "m", tokenizer_dir, dtype="float16", n_embd=128, n_layer=3)
    ckpt = load_model(str(directory), cache=cache)
    estimate = ckpt.weight_bytes()
    ids = np.arange(8)
    for _ in analyse(ckpt, ids, keep_maps=False):  # warm up: lazy imports and caches outside the weights
        pass
    if cache:
        for name in ckpt.tensors:
            ckpt.get(name)
        assert sum(a.nbytes for a in ckpt.cache.values()) == estimate
        return
    tracemalloc.start()
    try:
        for _ in analyse(ckpt, ids, keep_maps=False):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak >= estimate, f"a pass peaked at {peak} bytes, under the {estimate} bytes of weights estimated"
