"""Fuzzing the loader and the CLI with mutated real files: every outcome is success or a clean MhaError.

The loader cases run in this process under a time limit (SIGALRM) and a memory bound (tracemalloc peak, which
NumPy reports to). The CLI cases on mutated tokenizer.json files, shard indexes and oversized numbers run the
whole CLI in one child process under an address-space limit (the `cli_worker` fixture, tests/cli_worker.py), so
an abort or a hang is a failed case. The nine tests ask Hypothesis for 2,770 cases (2,956 ran in a full run here);
each test counts the cases its body really ran and fails if they are fewer than it asked for, and the session
prints the total under "cases run". Set MHA_FUZZ_SCALE=10 (or more) for a longer run.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from helpers import count_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhacli.engine.forward import forward
from mhacli.errors import MhaError
from mhacli.io.weights import load_model

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
    """Hypothesis settings for n examples (times MHA_FUZZ_SCALE).

    Recorded on the test as `planned_cases` for the `cases` fixture to check against what really ran.
    """
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
    """Fails a passing fuzz test whose body ran fewer cases than the test asked Hypothesis for.

    So the count of cases cannot be met by settings alone; the session's total is printed at the end (conftest,
    "cases run").
    """
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


# --- the whole CLI, in a child under an address-space limit (tests/cli_worker.py) -------------------------------
# tokenizer.json and shard-index mutations and oversized numbers: each case runs `mha stats` in the `cli_worker`
# child, so a panic (exit 99 there: an exception escaped main), an abort (a negative exit: the signal) or a hang
# (no answer) is a failed case, not a killed or stalled test run.


def check_cli(result) -> None:
    """Exit 0 with one JSON document, or exit 2 with exactly one `error:` line and nothing on stdout.

    On success, stderr holds at most `warning:` lines.
    """
    stderr = result.stderr.decode("utf-8", "replace")
    lines = stderr.splitlines()
    assert result.returncode in (0, 2), result.describe()
    assert "Traceback" not in stderr and "panicked" not in stderr, result.describe()
    if result.returncode == 0:
        json.loads(result.stdout)
        assert all(line.startswith("warning: ") for line in lines), result.describe()
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), result.describe()
        assert result.stdout == b""


BIG_INTS = st.integers(2**31, 2**70) | st.sampled_from([-(2**63), 2**64, 10**30])
NUMBERS = st.integers(-3, 12) | BIG_INTS | st.floats(allow_nan=False, width=64)
SMALL_TEXT = st.text(alphabet=st.sampled_from("ab \x00é▁<>|(*+)?[]\\.^$\x1b"), max_size=6)
LONG_TEXT = st.integers(0, 3000).map(lambda n: "x" * n)
PATTERNS = st.builds(lambda s: {"String": s}, SMALL_TEXT) | st.builds(lambda s: {"Regex": s}, SMALL_TEXT)


def _sequence(kind: str, key: str, inner):
    return st.builds(lambda items: {"type": kind, key: items}, st.lists(inner, max_size=3))


NORMALIZERS = st.deferred(
    lambda: st.one_of(
        st.builds(lambda p, c: {"type": "Replace", "pattern": p, "content": c}, PATTERNS, SMALL_TEXT | LONG_TEXT),
        st.builds(lambda s: {"type": "Prepend", "prepend": s}, SMALL_TEXT | LONG_TEXT),
        st.builds(
            lambda b: {"type": "Precompiled", "precompiled_charsmap": base64.b64encode(b).decode()},
            st.binary(max_size=48),
        ),
        st.sampled_from([{"type": t} for t in ("NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents", "Nmt")]),
        st.builds(
            lambda left, right: {"type": "Strip", "strip_left": left, "strip_right": right},
            st.booleans(),
            st.booleans(),
        ),
        _sequence("Sequence", "normalizers", NORMALIZERS),
        JSON_VALUES,
    )
)
BEHAVIOURS = st.sampled_from(["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous", "X"])
PRE_TOKENIZERS = st.deferred(
    lambda: st.one_of(
        st.builds(
            lambda p, b, i: {"type": "Split", "pattern": p, "behavior": b, "invert": i},
            PATTERNS,
            BEHAVIOURS,
            st.booleans(),
        ),
        st.builds(lambda n: {"type": "FixedLength", "length": n}, NUMBERS),
        st.builds(
            lambda r, s, split: {"type": "Metaspace", "replacement": r, "prepend_scheme": s, "split": split},
            SMALL_TEXT,
            st.sampled_from(["always", "first", "never", "x"]),
            st.booleans(),
        ),
        st.builds(
            lambda a, t, r: {"type": "ByteLevel", "add_prefix_space": a, "trim_offsets": t, "use_regex": r},
            st.booleans(),
            st.booleans(),
            st.booleans(),
        ),
        st.sampled_from([{"type": t} for t in ("Whitespace", "WhitespaceSplit", "UnicodeScripts", "BertPreTokenizer")]),
        st.builds(lambda d: {"type": "Digits", "individual_digits": d}, st.booleans()),
        st.builds(lambda b: {"type": "Punctuation", "behavior": b}, BEHAVIOURS),
        st.builds(lambda d: {"type": "CharDelimiterSplit", "delimiter": d}, SMALL_TEXT),
        _sequence("Sequence", "pretokenizers", PRE_TOKENIZERS),
        JSON_VALUES,
    )
)
SPECIAL_NAMES = st.sampled_from(["<s>", "</s>", "<|endoftext|>", "X"])
TEMPLATE_PIECES = st.one_of(
    st.builds(lambda t: {"Sequence": {"id": "A", "type_id": t}}, NUMBERS),
    st.builds(lambda n, t: {"SpecialToken": {"id": n, "type_id": t}}, SPECIAL_NAMES, NUMBERS),
)
POST_PROCESSORS = st.deferred(
    lambda: st.one_of(
        st.builds(
            lambda single, specials: {
                "type": "TemplateProcessing",
                "single": single,
                "pair": single,
                "special_tokens": specials,
            },
            st.lists(TEMPLATE_PIECES, max_size=4),
            st.dictionaries(
                SPECIAL_NAMES,
                st.builds(
                    lambda i, t: {"ids": i, "tokens": t},
                    st.lists(NUMBERS, max_size=2),
                    st.lists(SPECIAL_NAMES, max_size=2),
                ),
                max_size=3,
            ).map(lambda d: {k: v | {"id": k} for k, v in d.items()}),
        ),
        st.builds(
            lambda a, t: {"type": "ByteLevel", "add_prefix_space": a, "trim_offsets": t, "use_regex": True},
            st.booleans(),
            st.booleans(),
        ),
        st.builds(
            lambda s, c, kind: {"type": kind, "sep": s, "cls": c, "trim_offsets": True, "add_prefix_space": False},
            st.tuples(SPECIAL_NAMES, NUMBERS).map(list),
            st.tuples(SPECIAL_NAMES, NUMBERS).map(list),
            st.sampled_from(["RobertaProcessing", "BertProcessing"]),
        ),
        _sequence("Sequence", "processors", POST_PROCESSORS),
        JSON_VALUES,
    )
)
PADDINGS = (
    st.builds(
        lambda strategy, direction, multiple, pad_id, token: {
            "strategy": strategy,
            "direction": direction,
            "pad_to_multiple_of": multiple,
            "pad_id": pad_id,
            "pad_type_id": 0,
            "pad_token": token,
        },
        st.just("BatchLongest") | st.builds(lambda n: {"Fixed": n}, NUMBERS),
        st.sampled_from(["Left", "Right", "X"]),
        st.none() | NUMBERS,
        NUMBERS,
        SMALL_TEXT,
    )
    | JSON_VALUES
)
TRUNCATIONS = (
    st.builds(
        lambda direction, length, strategy, stride: {
            "direction": direction,
            "max_length": length,
            "strategy": strategy,
            "stride": stride,
        },
        st.sampled_from(["Left", "Right"]),
        NUMBERS,
        st.sampled_from(["LongestFirst", "OnlyFirst", "OnlySecond"]),
        NUMBERS,
    )
    | JSON_VALUES
)
MODEL_FIELDS = {
    "unk_token": SMALL_TEXT | JSON_VALUES, "dropout": NUMBERS | JSON_VALUES,
    "byte_fallback": st.booleans() | JSON_VALUES,
    "continuing_subword_prefix": SMALL_TEXT | JSON_VALUES, "fuse_unk": st.booleans(), "ignore_merges": st.booleans(),
    "type": st.sampled_from(["BPE", "WordPiece", "WordLevel", "Unigram", "X"]),
}  # fmt: skip
FUZZ_TEXTS = st.sampled_from(
    ["hello world", "aaaa bbbb aaaa", "é▁ 123 <|endoftext|> <s>", "x" * 300, "\u202e\x1b[2J", "a\x00b"]
)


@fuzz(130)
@given(data=st.data())
def test_cli_tokenizer_json_mutations(tiny_model, tmp_path, cli_worker, cases, data):
    cases.tick()
    d = tmp_path / "m"
    if not d.exists():
        shutil.copytree(tiny_model, d)
    doc = json.loads((tiny_model / "tokenizer.json").read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        part = data.draw(
            st.sampled_from(
                [
                    "normalizer",
                    "pre_tokenizer",
                    "post_processor",
                    "padding",
                    "truncation",
                    "model",
                    "added_tokens",
                    "decoder",
                ]
            )
        )
        if part == "normalizer":
            doc[part] = data.draw(NORMALIZERS)
        elif part == "pre_tokenizer":
            doc[part] = data.draw(PRE_TOKENIZERS)
        elif part == "post_processor":
            doc[part] = data.draw(POST_PROCESSORS)
        elif part == "padding":
            doc[part] = data.draw(PADDINGS)
        elif part == "truncation":
            doc[part] = data.draw(TRUNCATIONS)
        elif part == "model":
            key = data.draw(st.sampled_from(sorted(MODEL_FIELDS)))
            doc["model"][key] = data.draw(MODEL_FIELDS[key])
        elif part == "added_tokens":
            doc[part].append(
                {
                    "id": data.draw(NUMBERS),
                    "content": data.draw(SMALL_TEXT | LONG_TEXT),
                    "single_word": data.draw(st.booleans()),
                    "lstrip": False,
                    "rstrip": data.draw(st.booleans()),
                    "normalized": data.draw(st.booleans()),
                    "special": data.draw(st.booleans()),
                }
            )
        else:
            doc[part] = data.draw(JSON_VALUES)
    (d / "tokenizer.json").write_text(json.dumps(doc))
    truncate = ["--truncate"] if data.draw(st.booleans()) else []
    check_cli(cli_worker.run("stats", data.draw(FUZZ_TEXTS), "-m", str(d), "-f", "json", *truncate))


def sharded_copy(tiny_model: Path, d: Path) -> dict:
    """The tiny model as two shards and an index; also a FIFO and a directory named like shards."""
    from safetensors.numpy import load_file, save_file

    d.mkdir()
    for name in ("config.json", "tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copy(tiny_model / name, d / name)
    tensors = load_file(tiny_model / "model.safetensors")
    names = sorted(tensors)
    halves = {"shard-1.safetensors": names[: len(names) // 2], "shard-2.safetensors": names[len(names) // 2 :]}
    for file, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, d / file, metadata={"format": "pt"})
    os.mkfifo(d / "fifo.safetensors")
    (d / "dir.safetensors").mkdir()
    return {"metadata": {"total_size": 1}, "weight_map": {k: f for f, keys in halves.items() for k in keys}}


SHARD_NAMES = st.one_of(
    JSON_VALUES,
    st.sampled_from(
        [
            "",
            "shard-2.safetensors",
            "shard\x00-1.safetensors",
            "../shard-1.safetensors",
            "/etc/passwd",
            "sub/../shard-1.safetensors",
            "config.json",
            "tokenizer.json",
            "model.safetensors.index.json",
            "fifo.safetensors",
            "dir.safetensors",
            "pytorch_model.bin",
            "sh\x1b[2Jard.safetensors",
            "missing.safetensors",
            ".",
            "shard-1.safetensors/",
            "\\shard.safetensors",
        ]
    ),
    st.integers(200, 5000).map(lambda n: "a" * n + ".safetensors"),
    SMALL_TEXT,
)


@fuzz(120)
@given(data=st.data())
def test_cli_shard_index_mutations(tiny_model, tmp_path, cli_worker, cases, data):
    cases.tick()
    d = tmp_path / f"s{cases.ran}"
    index = sharded_copy(tiny_model, d)
    for _ in range(data.draw(st.integers(1, 3))):
        what = data.draw(st.sampled_from(["value", "value", "delete", "add", "weight_map", "metadata"]))
        keys = sorted(index["weight_map"]) if isinstance(index["weight_map"], dict) else []
        if what == "value" and keys:
            index["weight_map"][data.draw(st.sampled_from(keys))] = data.draw(SHARD_NAMES)
        elif what == "delete" and keys:
            del index["weight_map"][data.draw(st.sampled_from(keys))]
        elif what == "add" and isinstance(index["weight_map"], dict):
            index["weight_map"][data.draw(SMALL_TEXT)] = data.draw(SHARD_NAMES)
        elif what == "weight_map":
            index["weight_map"] = data.draw(JSON_VALUES)
        else:
            index["metadata"] = data.draw(JSON_VALUES)
    text = json.dumps(index)
    if data.draw(st.integers(0, 4)) == 0:  # an integer literal past every limit, somewhere in the document
        text = text.replace("{", '{"total_size": ' + "9" * data.draw(st.integers(20, 6000)) + ", ", 1)
    (d / "model.safetensors.index.json").write_text(text)
    command = data.draw(st.sampled_from([["stats", "hello world", "-f", "json"], ["info", "-f", "json"]]))
    check_cli(cli_worker.run(command[0], *command[1:], "-m", str(d)))


NUMBER_LITERALS = st.one_of(
    st.integers(10, 6000).map(lambda n: "9" * n),
    st.integers(10, 6000).map(lambda n: "-" + "1" * n),
    st.sampled_from(
        ["1e308", "1e309", "-1e999", "1.5e-400", "1E400", "4e38", "3.5e38", "18446744073709551616", "-0", "0.0"]
    ),
)


def with_literal(doc: object, path: list, literal: str) -> str:
    """json.dumps(doc) with the value at `path` replaced by a raw number literal.

    json.dumps cannot write one past Python's digit limit.
    """
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = "@@NUMBER@@"
    return json.dumps(doc).replace('"@@NUMBER@@"', literal)


@fuzz(120)
@given(data=st.data())
def test_cli_oversized_numbers(tiny_model, tmp_path, cli_worker, cases, data):
    """Number literals past Python's digit limit, past u64 and past float range, in every JSON the tool reads.

    In config.json, the safetensors header and its metadata, and tokenizer.json.
    """
    cases.tick()
    d = tmp_path / "m"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(tiny_model, d)
    literal = data.draw(NUMBER_LITERALS)
    target = data.draw(st.sampled_from(["config", "header", "metadata", "tokenizer"]))
    if target == "config":
        config = json.loads((d / "config.json").read_text())
        key = data.draw(st.sampled_from(CONFIG_KEYS + ["rope_theta", "max_position_embeddings", "unrelated"]))
        (d / "config.json").write_text(with_literal(config, [key], literal))
    elif target in ("header", "metadata"):
        raw = (d / "model.safetensors").read_bytes()
        span = header_span(raw)
        header = json.loads(raw[8:span])
        if target == "metadata":
            path = ["__metadata__", data.draw(st.sampled_from(["format", "total"]))]
        else:
            name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
            field = data.draw(st.sampled_from(["shape", "data_offsets"]))
            path = (
                [name, field, data.draw(st.integers(0, len(header[name][field]) - 1))]
                if header[name][field]
                else [name, field]
            )
        blob = with_literal(header, path, literal).encode()
        (d / "model.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob + raw[span:])
    else:
        doc = json.loads((d / "tokenizer.json").read_text())
        vocab = doc["model"]["vocab"]
        path = data.draw(
            st.sampled_from([["model", "vocab", sorted(vocab)[0]], ["added_tokens", 0, "id"], ["model", "dropout"]])
        )
        (d / "tokenizer.json").write_text(with_literal(doc, path, literal))
    check_cli(cli_worker.run("stats", "hello world", "-m", str(d), "-f", "json"))


ROPE_NUMBERS = st.one_of(
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 1.0, 1e-300, 1e-40, 1e38, 3.5e38, 1e300, -7.213475204444817]),
    st.integers(-4, 10**6),
)
ROPE_FIELDS = [
    "factor",
    "attention_factor",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
    "rope_theta",
]


@fuzz(200)
@given(data=st.data())
def test_rope_parameters_are_refused_or_computable(cases, data):
    """Any rotary parameters are refused at load or give finite rotary tables with no floating-point warning.

    A refusal is a ConfigError naming the field; the check computes what the forward will compute.
    """
    from mhacli.config import parse_config
    from mhacli.engine.arch import check_config
    from mhacli.engine.arch.rope import _tables, inv_freq, rope_tables
    from mhacli.errors import ConfigError

    cases.tick()
    kind = data.draw(st.sampled_from(["default", "linear", "dynamic", "yarn", "longrope", "llama3"]))
    head_dim = data.draw(st.sampled_from([2, 4, 6, 8, 15, 16, 64]))
    n_positions = data.draw(st.sampled_from([1, 2, 16, 4096, 1 << 20]))
    rope = {"rope_type": kind} | {
        k: data.draw(ROPE_NUMBERS) for k in data.draw(st.lists(st.sampled_from(ROPE_FIELDS), max_size=5, unique=True))
    }
    if kind == "longrope":
        for key in ("short_factor", "long_factor"):
            rope[key] = [data.draw(ROPE_NUMBERS)] * (head_dim // 2)
    config = {
        "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "head_dim": head_dim,
        "num_hidden_layers": 1,
        "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": n_positions, "rope_scaling": rope,
    }  # fmt: skip
    try:
        parsed = parse_config(config)
        check_config(parsed)
    except ConfigError as exc:
        assert str(exc).startswith("config.json: ")
        return
    with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
        for n_seq in sorted({1, min(n_positions, 64)}):
            _tables.cache_clear()  # the cached one-text tables
            cos, sin = rope_tables(parsed.rope, parsed.d_head, parsed.n_positions, n_seq)
            assert np.isfinite(cos).all() and np.isfinite(sin).all()
        inv, scaling = inv_freq(parsed.rope, parsed.d_head, parsed.n_positions, n_positions)
        assert np.isfinite(inv * np.float32(n_positions - 1)).all() and np.isfinite(np.float32(scaling))
