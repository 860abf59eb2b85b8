"""Fuzzing the loader and the CLI with mutated real files: every outcome is success or a clean MhaError.

Each case runs under a time limit (SIGALRM) and a memory bound (tracemalloc peak, which NumPy reports to).
The five tests ask Hypothesis for 2,200 cases (2,327 ran in a full run here); each test counts the cases its body
really ran and fails if they are fewer than it asked for, and the session prints the total under "cases run".
Set MHA_FUZZ_SCALE=10 (or more) for a longer run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import count_case
from mhacli.errors import MhaError
from mhacli.model import forward
from mhacli.weights import load_model

SCALE = float(os.environ.get("MHA_FUZZ_SCALE", "1"))
CASE_SECONDS = 20
PEAK_BYTES = 64 * 1024 * 1024  # the tiny model is ~60 KB; a lying header must not make us allocate more
IDS = np.array([1, 5, 9, 2, 7, 3])


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


class Hang(Exception):
    pass


@contextmanager
def bounded():
    """Fail on a hang or on a huge allocation."""

    def alarm(signum, frame):
        raise Hang(f"case took over {CASE_SECONDS} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(CASE_SECONDS)
    tracemalloc.start()
    try:
        yield
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert peak < PEAK_BYTES, f"peak allocation {peak} bytes"


def load_and_run(directory: Path) -> None:
    """The loader and a forward pass: must succeed or raise MhaError, nothing else."""
    with bounded():
        try:
            ckpt = load_model(str(directory))
            list(forward(ckpt, IDS[IDS < ckpt.config.vocab_size]))
        except MhaError:
            pass


@pytest.fixture(scope="module")
def pristine(tiny_model, tmp_path_factory) -> dict[str, bytes]:
    return {name: (tiny_model / name).read_bytes() for name in ("model.safetensors", "config.json")}


@pytest.fixture
def workdir(tiny_model, tmp_path) -> Path:
    d = tmp_path / "m"
    shutil.copytree(tiny_model, d)
    return d


def header_span(raw: bytes) -> int:
    return 8 + int.from_bytes(raw[:8], "little")


def fuzz(n: int):
    """Hypothesis settings for n examples (times MHA_FUZZ_SCALE), recorded on the test as `planned_cases` for the
    `cases` fixture to check against what really ran."""
    chosen = settings(
        max_examples=examples(n),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )

    def apply(test):
        test = chosen(test)
        test.planned_cases = chosen.max_examples
        return test

    return apply


class Cases:
    """Counts the examples a fuzz test's body really ran (the body calls `tick()` once per case)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.ran = 0

    def tick(self) -> None:
        self.ran += 1
        count_case(self.kind)


@pytest.fixture
def cases(request):
    """Fails a passing fuzz test whose body ran fewer cases than the test asked Hypothesis for, so the count of
    cases cannot be met by settings alone; the session's total is printed at the end (conftest, "cases run")."""
    counter = Cases("fuzz cases (tests/test_fuzz.py)")
    failed_before = request.session.testsfailed
    yield counter
    planned = request.function.planned_cases
    if request.session.testsfailed == failed_before and counter.ran < planned:
        pytest.fail(f"{request.node.name} ran {counter.ran} cases, fewer than the {planned} it asked for")


@fuzz(900)
@given(data=st.data())
def test_bit_flips_and_byte_edits(workdir, pristine, cases, data):
    cases.tick()
    raw = bytearray(pristine["model.safetensors"])
    span = header_span(raw)
    n_edits = data.draw(st.integers(1, 8))
    for _ in range(n_edits):
        # mostly the header (where lies do damage), sometimes the data
        pos = data.draw(st.one_of(st.integers(0, span - 1), st.integers(0, len(raw) - 1)))
        if data.draw(st.booleans()):
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        else:
            raw[pos] = data.draw(st.integers(0, 255))
    (workdir / "model.safetensors").write_bytes(bytes(raw))
    load_and_run(workdir)


@fuzz(300)
@given(data=st.data())
def test_truncations_and_appends(workdir, pristine, cases, data):
    cases.tick()
    raw = pristine["model.safetensors"]
    cut = data.draw(st.integers(0, len(raw)))
    tail = data.draw(st.binary(max_size=64))
    (workdir / "model.safetensors").write_bytes(raw[:cut] + tail)
    load_and_run(workdir)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


@fuzz(500)
@given(data=st.data())
def test_header_field_edits(workdir, pristine, cases, data):
    cases.tick()
    raw = pristine["model.safetensors"]
    span = header_span(raw)
    header = json.loads(raw[8:span])
    name = data.draw(st.sampled_from(sorted(header)))
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
    value = data.draw(
        st.one_of(
            JSON_VALUES,
            st.lists(st.integers(-10, 2**64), max_size=4),
            st.sampled_from(["F16", "BF16", "F64", "I8", "U8", "BOOL", "F8_E4M3", "X"]),
        )
    )
    if field is None or not isinstance(header[name], dict):
        header[name] = value
    else:
        header[name][field] = value
    blob = json.dumps(header).encode()
    (workdir / "model.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob + raw[span:])
    load_and_run(workdir)


CONFIG_KEYS = [
    "model_type", "n_embd", "n_head", "n_layer", "n_positions", "n_inner", "vocab_size", "layer_norm_epsilon",
    "activation_function", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
    "hidden_size", "num_attention_heads",
]  # fmt: skip


@fuzz(400)
@given(data=st.data())
def test_config_edits(workdir, pristine, cases, data):
    cases.tick()
    config = json.loads(pristine["config.json"])
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(CONFIG_KEYS))
        if data.draw(st.booleans()) and key in config:
            del config[key]
        else:
            config[key] = data.draw(JSON_VALUES | st.integers(-4, 1 << 22))
    text = json.dumps(config)
    if data.draw(st.integers(0, 9)) == 0:  # sometimes not even JSON
        text = text[: data.draw(st.integers(0, len(text)))]
    (workdir / "config.json").write_text(text)
    load_and_run(workdir)


@fuzz(100)
@given(data=st.data())
def test_cli_on_mutated_files(workdir, pristine, mha, cases, data):
    """The real CLI: exit 0, or exit 2 with exactly one `error:` line and nothing on stdout."""
    cases.tick()
    raw = bytearray(pristine["model.safetensors"])
    span = header_span(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, span - 1))] = data.draw(st.integers(0, 255))
    (workdir / "model.safetensors").write_bytes(bytes(raw))
    command = data.draw(st.sampled_from(["inspect", "stats", "info"]))
    args = [command, "-m", str(workdir), "-f", "json"] + (["the cat sat"] if command != "info" else [])
    result = mha(*args)
    if result.returncode == 0:
        json.loads(result.stdout)
    else:
        lines = result.stderr.decode().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result
        assert result.stdout == b""
