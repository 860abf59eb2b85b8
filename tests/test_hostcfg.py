"""Issue 33, classes 4 and 5: configs and tokenizers at their edges, and the Python API given bad arguments.

Every family's config.json edited the hostile ways (sizes that do not divide, zero, one, null, wrong types, NaN,
infinities, path-like model types): one `error:` line naming the field, exit 2. Valid extremes (d_head 1, a
vocabulary of one, one position) run and give the right result. Tokenizers of other kinds (WordPiece, Unigram),
added tokens over the vocabulary, ids past the embedding table, texts that give only special tokens or none, and
tokenizer.json files that are not JSON or nest deeply. And the API: any value of any type in any argument of a
public function is a result or an MhaError (hypothesis), never a TypeError, IndexError or ValueError from inside.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import LLAMA, NEOX, WINDOW, bos_tokenizer, build, build_model, compare_with_hf, parse_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mhacli
from mhacli.errors import ConfigError, MhaError, ModelError, TextError, TokenizerError, UsageError

TEXT = "The quick brown fox jumps over the lazy dog."
SMALL = dict(vocab_size=400, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
GEMMA = LLAMA | {"head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": WINDOW}
FAMILIES = {
    "gpt2": SMALL,
    "gpt_bigcode": SMALL | {"multi_query": True},
    "llama": LLAMA,
    "mistral": LLAMA | {"sliding_window": WINDOW},
    "olmo2": LLAMA,
    "olmo3": LLAMA | {"sliding_window": WINDOW},
    "phi3": LLAMA | {"sliding_window": WINDOW},
    "gemma2": GEMMA,
    "gemma3_text": GEMMA,
    "gpt_neox": NEOX,
    "qwen2": LLAMA | {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1},
    "qwen3": LLAMA | {"head_dim": 8, "use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1},
}
LAYER_NORM = ("gpt2", "gpt_bigcode")


def names(kind: str) -> dict[str, str | None]:
    """The family's config.json names of the fields every edit below touches (None: the family has none)."""
    if kind in LAYER_NORM:
        return dict(width="n_embd", heads="n_head", layers="n_layer", vocab="vocab_size", positions="n_positions",
                    eps="layer_norm_epsilon", act="activation_function", kv=None, window=None)  # fmt: skip
    rotary = dict(width="hidden_size", heads="num_attention_heads", layers="num_hidden_layers", vocab="vocab_size",
                  positions="max_position_embeddings", eps="rms_norm_eps", act="hidden_act",
                  kv="num_key_value_heads", window="sliding_window")  # fmt: skip
    if kind == "gpt_neox":
        return rotary | {"eps": "layer_norm_eps", "kv": None, "window": None}
    if kind.startswith("gemma"):
        return rotary | {"act": "hidden_activation"}
    return rotary | ({"window": None} if kind in ("llama", "olmo2") else {})


@pytest.fixture(scope="module")
def bos_dir(tmp_path_factory) -> Path:
    return bos_tokenizer(tmp_path_factory.mktemp("bos"))


@pytest.fixture(scope="module")
def families(tmp_path_factory, bos_dir) -> dict[str, Path]:
    """One tiny random HF model of every family mha reads."""
    return {kind: build(tmp_path_factory.mktemp(kind), kind, fields, bos_dir) for kind, fields in FAMILIES.items()}


def edited(source: Path, target: Path, change) -> Path:
    """`source`'s weights and tokenizer (linked) under the config.json `change(config)` returns."""
    target.mkdir()
    for f in source.iterdir():
        if f.name != "config.json":
            (target / f.name).symlink_to(f)
    config = change(json.loads((source / "config.json").read_text()))
    (target / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return target


def one_error(result, *fragments: str) -> str:
    """Exit 2 with exactly one `error:` line holding every fragment, no traceback. Returns the line."""
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, (result.returncode, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def set_everywhere(config, key: str, value):
    """config with every `key`, at any depth (rope_parameters and its per-layer-type dicts), set to value."""
    if isinstance(config, dict):
        return {k: value if k == key else set_everywhere(v, key, value) for k, v in config.items()}
    return config


# --- configs: every family, every hostile edit ---------------------------------------------------------------

BAD_NUMBERS = [0, -1, float("nan"), float("inf"), -float("inf")]
WRONG_TYPES = [None, "8", True, [8], {"n": 8}, 8.5]


def put(key: str, value):
    return lambda c: c | {key: value}


def rotary_edits() -> list[tuple[str, object, str]]:
    """Rotary bases and partial rotary factors that no family here can use."""
    edits: list[tuple[str, object, str]] = []
    for value in BAD_NUMBERS + [1, 0.5, "1e4", None, True]:
        edits.append((f"rope_theta={value!r}", lambda c, v=value: set_everywhere(c, "rope_theta", v), "rope_theta"))
    for value in (0, -0.5, 1.5, 3, 1e308, float("nan"), "half"):  # 1e308 * head_dim overflowed int()
        change = lambda c, v=value: set_everywhere(c, "partial_rotary_factor", v) | {"partial_rotary_factor": v}  # noqa: E731
        edits.append((f"partial_rotary_factor={value!r}", change, "partial_rotary_factor"))
    return edits


def hostile_edits(kind: str) -> list[tuple[str, object, str]]:
    """(label, change, the field the message must name) for one family."""
    n = names(kind)
    edits: list[tuple[str, object, str]] = [
        ("heads_not_dividing_width", put(n["heads"], 5), n["heads"]),
        ("zero_layers", put(n["layers"], 0), n["layers"]),
    ]
    for key in ("width", "heads", "layers", "vocab", "positions"):
        edits += [(f"{key}={value!r}", put(n[key], value), n[key]) for value in WRONG_TYPES + [0, -3]]
    edits += [(f"eps={value!r}", put(n["eps"], value), n["eps"]) for value in BAD_NUMBERS + ["1e-5", None, True]]
    edits += [(f"act={value!r}", put(n["act"], value), n["act"]) for value in ("swishy", "", None, 3, ["gelu"])]
    if n["kv"]:
        edits += [("kv_not_dividing_heads", put(n["kv"], 3), n["kv"]), ("kv_zero", put(n["kv"], 0), n["kv"])]
    if n["window"]:
        windows = (0, -1, -(10**6), "6", 6.5, True)
        edits += [(f"window={value!r}", put(n["window"], value), n["window"]) for value in windows]
    if kind not in LAYER_NORM:
        edits += rotary_edits()
    for value in ("../../etc", "llama/../x", "lla\x00ma", "", "LLAMA", 7, ["llama"], {"a": 1}, None):
        edits.append((f"model_type={value!r}", put("model_type", value), "model_type"))
    return edits


CASES = [(kind, label, change, field) for kind in FAMILIES for label, change, field in hostile_edits(kind)]
# Through the whole CLI: one edit of each kind per family (the full matrix goes through the config reader below).
CLI_LABELS = ("heads_not_dividing_width", "zero_layers", "width='8'", "vocab=None", "positions=True", "eps=nan",
              "act='swishy'", "kv_not_dividing_heads", "window=0", "rope_theta=inf", "partial_rotary_factor=1.5",
              "model_type='../../etc'", "model_type='lla\\x00ma'")  # fmt: skip
CLI_CASES = [case for case in CASES if case[1] in CLI_LABELS]


@pytest.mark.parametrize("kind, label, change, field", CASES, ids=[f"{k}-{lab}" for k, lab, _, _ in CASES])
def test_every_hostile_config_value_is_a_config_error_naming_the_field(families, kind, label, change, field):
    """The config reader every door goes through (mhacli.config.parse_config), on every family's real config."""
    from mhacli.config import parse_config

    raw = change(json.loads((families[kind] / "config.json").read_text()))
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    message = str(info.value)
    assert field in message and "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize("kind, label, change, field", CLI_CASES, ids=[f"{k}-{lab}" for k, lab, _, _ in CLI_CASES])
def test_hostile_config_values_are_one_error_line(families, tmp_path, mha, kind, label, change, field):
    model = edited(families[kind], tmp_path / "m", change)
    line = one_error(mha("stats", TEXT, "-m", str(model), "-f", "json"))
    assert field in line, line


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_the_api_refuses_the_same_configs_with_a_config_error(families, tmp_path, kind):
    n = names(kind)
    for i, (change, field) in enumerate(((lambda c: c | {n["layers"]: 0}, n["layers"]),
                                         (lambda c: c | {n["eps"]: -1.0}, n["eps"]))):  # fmt: skip
        with pytest.raises(ConfigError, match=field):
            mhacli.load(edited(families[kind], tmp_path / str(i), change))


@pytest.mark.parametrize("kind", [k for k in FAMILIES if k not in LAYER_NORM])
@pytest.mark.parametrize("head_dim", [1, 3])
def test_an_odd_rotary_head_is_refused(families, tmp_path, mha, kind, head_dim):
    """Rotary positions turn pairs of values (HF's rotate_half splits each head in two): an odd head cannot be."""
    n = names(kind)

    def odd(c):
        c = c | {"head_dim": head_dim}
        if kind == "gpt_neox":  # no head_dim field: the heads of hidden_size / num_attention_heads; all rotated
            c = set_everywhere(c | {n["width"]: head_dim * 8}, "partial_rotary_factor", 1.0)
        return c

    one_error(mha("stats", TEXT, "-m", str(edited(families[kind], tmp_path / "m", odd))), "config.json")


def test_config_that_is_not_an_object_or_not_json(families, tmp_path, mha):
    for i, text in enumerate(["[1, 2]", "null", '"gpt2"', "{", "\x00", "[" * 100_000 + "]" * 100_000, "{}"]):
        model = edited(families["gpt2"], tmp_path / str(i), lambda c, t=text: t)
        one_error(mha("stats", TEXT, "-m", str(model)), "config.json")


# --- valid extremes: they run, and right ---------------------------------------------------------------------


def test_a_head_of_one_value_runs_and_equals_hf(tmp_path, tokenizer_dir, mha):
    """n_embd == n_head: d_head 1 is valid (GPT-2 has no rotary pairs): every layer and head equals HF eager."""
    model = build_model(tmp_path / "d1", tokenizer_dir, n_embd=4, n_head=4)
    doc = parse_json(mha("stats", TEXT, "-m", str(model), "-f", "json").stdout)
    assert doc["model"]["d_head"] == 1 and len(doc["heads"]) == 2 * 4
    compare_with_hf(model, doc["token_ids"])


def test_a_vocabulary_of_one(tmp_path, tokenizer_dir, mha):
    """Token id 0 runs; a text whose ids pass the table is one error naming both vocabularies' sizes."""
    model = build_model(tmp_path / "v1", tokenizer_dir, vocab_size=1)
    doc = parse_json(mha("stats", "--ids", "0,0,0", "-m", str(model), "-f", "json").stdout)
    assert doc["token_ids"] == [0, 0, 0] and doc["model"]["vocab_size"] == 1
    one_error(mha("stats", TEXT, "-m", str(model)), "vocab_size is 1", "vocabulary of 400 tokens")
    one_error(mha("stats", "--ids", "1", "-m", str(model)), "vocab_size is 1")
    with pytest.raises(TokenizerError, match=r"vocabulary of 400 tokens.*vocab_size is 1"):
        mhacli.load(model).run(TEXT)
    # One id each: the map is [[1]] in every head, and the loss of predicting id 0 among one id is 0.
    run = mhacli.load(model).run(ids=[0, 0, 0])
    np.testing.assert_allclose(run.attention(0)[:, 0, 0], 1.0, atol=1e-6)
    assert abs(run.loss()) < 1e-6


def test_one_position(tmp_path, tokenizer_dir, mha):
    """n_positions 1: a longer text is one error saying how to cut it; cut, it is one token that attends itself."""
    model = build_model(tmp_path / "p1", tokenizer_dir, n_positions=1)
    one_error(mha("stats", TEXT, "-m", str(model)), "n_positions (1)", "--truncate")
    doc = parse_json(mha("stats", TEXT, "-m", str(model), "--truncate", "-f", "json").stdout)
    assert len(doc["token_ids"]) == 1
    loaded = mhacli.load(model)
    with pytest.raises(TextError, match=r"n_positions \(1\).*truncate=True"):
        loaded.run(TEXT)
    run = loaded.run(TEXT, truncate=True)
    assert run.n_seq == 1 and run.truncated_from and run.truncated_from > 1
    np.testing.assert_allclose(run.attention(1), np.ones((4, 1, 1)), atol=1e-6)
    with pytest.raises(UsageError):
        run.loss()  # one token: no next token to score


@pytest.mark.parametrize("kind", ["llama", "gpt_neox", "gemma3_text"])
def test_one_position_in_rotary_families(families, tmp_path, mha, kind):
    """The config may say 1 position with weights for more (rotary models have no position table): one token runs."""
    model = edited(families[kind], tmp_path / "m", lambda c: c | {names(kind)["positions"]: 1})
    one_error(mha("stats", TEXT, "-m", str(model)), "n_positions (1)")
    doc = parse_json(mha("stats", TEXT, "-m", str(model), "--truncate", "-f", "json").stdout)
    assert len(doc["token_ids"]) == 1 and len(doc["heads"]) == doc["model"]["n_layer"] * doc["model"]["n_head"]


# --- tokenizers ----------------------------------------------------------------------------------------------

WORDS = ["[UNK]", "[CLS]", "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", ".", "##s", "t", "##he"]


def wordpiece(directory: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory


def unigram(directory: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    pieces = [("<unk>", 0.0)] + [(w, -1.0 - i / 10) for i, w in enumerate(WORDS[2:])] + [("▁", -2.0)]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyzT"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory


def with_tokenizer(model: Path, target: Path, tokenizer_json: Path | str | bytes) -> Path:
    """`model`'s config and weights with another tokenizer.json (a file to copy, or its content)."""
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        (target / name).symlink_to(model / name)
    if isinstance(tokenizer_json, Path):
        shutil.copy(tokenizer_json / "tokenizer.json", target / "tokenizer.json")
    else:
        (target / "tokenizer.json").write_bytes(
            tokenizer_json if isinstance(tokenizer_json, bytes) else tokenizer_json.encode()
        )
    return target


@pytest.mark.parametrize("make", [wordpiece, unigram], ids=["wordpiece", "unigram"])
def test_tokenizers_of_other_kinds_give_the_librarys_ids(tiny_model, tmp_path, mha, make):
    from tokenizers import Tokenizer

    tokdir = make(tmp_path / "tok")
    model = with_tokenizer(tiny_model, tmp_path / "m", tokdir)
    text = "the quick brown foxes jumps over the lazy dog."
    want = Tokenizer.from_file(str(tokdir / "tokenizer.json")).encode(text).ids
    doc = parse_json(mha("stats", text, "-m", str(model), "-f", "json").stdout)
    assert doc["token_ids"] == want and len(doc["tokens"]) == len(want)
    assert all(isinstance(t, str) and t for t in doc["tokens"])
    assert mhacli.load(model).run(text).ids.tolist() == want


def test_added_tokens_over_the_vocabulary(tiny_model, tokenizer_dir, tmp_path, mha):
    """Added tokens that are already vocabulary entries keep their ids; new ones past vocab_size are one error."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    existing = [t for t in ("The", "Ġthe", "ĠJuliet") if tok.token_to_id(t) is not None]
    assert existing
    tok.add_tokens([AddedToken(t, normalized=False) for t in existing])
    tok.add_special_tokens(["<|endoftext|>"])  # twice: already special
    assert tok.get_vocab_size(with_added_tokens=True) == 400
    (tmp_path / "over").mkdir()
    tok.save(str(tmp_path / "over" / "tokenizer.json"))
    model = with_tokenizer(tiny_model, tmp_path / "m", tmp_path / "over")
    text = "The cat and the Juliet sun"
    want = Tokenizer.from_file(str(tmp_path / "over" / "tokenizer.json")).encode(text).ids
    doc = parse_json(mha("stats", text, "-m", str(model), "-f", "json").stdout)
    assert doc["token_ids"] == want and max(want) < 400

    tok.add_tokens(["zebra-crossing"])  # a new token: id 400, past the model's embedding table
    (tmp_path / "past").mkdir()
    tok.save(str(tmp_path / "past" / "tokenizer.json"))
    model = with_tokenizer(tiny_model, tmp_path / "m2", tmp_path / "past")
    one_error(mha("stats", "a zebra-crossing", "-m", str(model)), "id 400", "vocab_size is 400",
              "vocabulary of 401 tokens")  # fmt: skip
    assert parse_json(mha("stats", text, "-m", str(model), "-f", "json").stdout)["token_ids"] == want


def test_a_text_of_only_special_tokens_or_none(tiny_model, tmp_path, mha):
    """A BPE without an unknown token drops what it cannot spell: no tokens is one error; its BOS alone runs."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE({w: i for i, w in enumerate(["[UNK]", "[CLS]", "a", "b"])}, [], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "none").mkdir()
    tok.save(str(tmp_path / "none" / "tokenizer.json"))
    assert tok.encode("zzz qq").ids == []
    plain = with_tokenizer(tiny_model, tmp_path / "plain", tmp_path / "none")
    one_error(mha("stats", "zzz qq", "-m", str(plain)), "no tokens")
    with pytest.raises(TextError, match="no tokens"):
        mhacli.load(plain).run("zzz qq")
    one_error(mha("diff", str(plain), str(plain), "zzz qq"), "no tokens")

    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", 1)])
    (tmp_path / "bos").mkdir()
    tok.save(str(tmp_path / "bos" / "tokenizer.json"))
    bos = with_tokenizer(tiny_model, tmp_path / "m", tmp_path / "bos")
    doc = parse_json(mha("stats", "zzz qq", "-m", str(bos), "-f", "json").stdout)
    assert doc["token_ids"] == [1] and doc["tokens"] == ["[CLS]"] and len(doc["heads"]) == 2 * 4
    one_error(mha("ablate", "zzz qq", "-m", str(bos)))  # one token: nothing to score


def test_a_wordpiece_without_its_unknown_token_fails_in_one_line(tiny_model, tmp_path, mha):
    tokdir = wordpiece(tmp_path / "tok")
    doc = json.loads((tokdir / "tokenizer.json").read_text())
    doc["model"]["unk_token"] = "[NOPE]"  # not in the vocabulary: the library fails on any unknown word
    (tokdir / "tokenizer.json").write_text(json.dumps(doc))
    model = with_tokenizer(tiny_model, tmp_path / "m", tokdir)
    one_error(mha("stats", "zzz", "-m", str(model)), "tokenizer")
    assert parse_json(mha("stats", "the fox", "-m", str(model), "-f", "json").stdout)["token_ids"] == [2, 5]


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"\xff\xfe",
        b"",
        b"[" * 200_000 + b"]" * 200_000,
        b'{"model": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
        b'{"version": "1.0", "model": {"type": "BPE", "vocab": ' + b"[" * 900 + b"]" * 900 + b', "merges": []}}',
        b'{"version": "1.0", "model": {"type": "WordPiece", "vocab": {"a": 0}, "unk_token": 5}}',
        b'{"version": "1.0", "model": {"type": "Unigram", "vocab": [["a", "x"]], "unk_id": 9}}',
        b'{"version": "1.0", "model": {"type": "Nope"}}',
    ],
    ids=["text", "bom", "empty", "deep-list", "deep-object", "deep-vocab", "bad-unk", "bad-unigram", "unknown-model"],
)
def test_tokenizer_json_that_is_not_one(tiny_model, tmp_path, mha, content):
    model = with_tokenizer(tiny_model, tmp_path / "m", content)
    one_error(mha("stats", TEXT, "-m", str(model)), "tokenizer")
    with pytest.raises(TokenizerError):
        mhacli.load(model)


def test_tokenizer_json_with_normalizers_nested_past_the_limit(tiny_model, tokenizer_dir, tmp_path, mha):
    doc = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    nested: dict = {"type": "Lowercase"}
    for _ in range(200):
        nested = {"type": "Sequence", "normalizers": [nested]}
    model = with_tokenizer(tiny_model, tmp_path / "m", json.dumps(doc | {"normalizer": nested}))
    one_error(mha("stats", TEXT, "-m", str(model)), "nests Sequences")


# --- the Python API: bad arguments ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_model):
    return mhacli.load(tiny_model)


@pytest.fixture(scope="module")
def run(model):
    return model.run(TEXT)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda m, r: mhacli.load(123), UsageError, "model must be a path"),
        (lambda m, r: mhacli.load(b"sample"), UsageError, "model must be a path"),
        (lambda m, r: mhacli.load(["sample"]), UsageError, "model must be a path"),
        (lambda m, r: mhacli.load("sample", cache="yes"), UsageError, "cache must be True or False"),
        (lambda m, r: mhacli.load("no\x00where"), ModelError, "not a usable file name"),
        (lambda m, r: m.run(""), TextError, "text is empty"),
        (lambda m, r: m.run(ids=[-1]), TextError, "ids: item 0 (-1) is not a token id"),
        (lambda m, r: m.run(ids=[1.5]), UsageError, "ids must be integers"),
        (lambda m, r: m.run(ids=np.array([1.0, 2.0])), UsageError, "ids must be integers, got float64"),
        (lambda m, r: m.run(ids=np.array([True, False])), UsageError, "ids must be integers, got bool"),
        (lambda m, r: m.run(ids=np.array([1, 2], dtype=object)), UsageError, "got object"),
        (lambda m, r: m.run(ids=np.array([[1, 2]])), UsageError, "1-D"),
        (lambda m, r: m.run(ids=[2**70]), UsageError, "ids must be integers"),
        (lambda m, r: m.run(TEXT, remove=[(99, 0)]), UsageError, "layer 99 is out of range"),
        (lambda m, r: m.run(TEXT, remove="garbage"), UsageError, "remove must be (layer, head) pairs"),
        (lambda m, r: m.run(TEXT, max_memory="garbage"), UsageError, "max_memory 'garbage' is not a size"),
        (lambda m, r: m.run(TEXT, max_memory=-5), UsageError, "max_memory -5 must be a positive number"),
        (lambda m, r: m.run(TEXT, max_memory=0), UsageError, "max_memory 0 must be a positive number"),
        (lambda m, r: m.run(TEXT, max_memory=1.5), UsageError, "max_memory must be a number of bytes"),
        (lambda m, r: m.run(TEXT, truncate="no"), UsageError, "truncate must be True or False"),
        (lambda m, r: m.memory_needed(10**20), UsageError, "n_seq 100000000000000000000 is out of range"),
        (lambda m, r: m.memory_needed("x"), UsageError, "n_seq must be an int"),
        (lambda m, r: r.explain("x", 0), UsageError, "layer must be an int, got str"),
        (lambda m, r: r.explain(True, 0), UsageError, "layer must be an int, got bool"),
        (lambda m, r: r.explain(0, 1.5), UsageError, "head must be an int, got float"),
        (lambda m, r: r.explain(0, 0, "last"), UsageError, "query must be an int, got str"),
        (lambda m, r: r.stats(0, "x"), UsageError, "head must be an int, got str"),
        (lambda m, r: r.loss(-1), UsageError, "loss_from -1 must be 0 or more"),
        (lambda m, r: r.ablate("x"), UsageError, "heads must be (layer, head) pairs"),
        (lambda m, r: r.ablate(loss_from=None), UsageError, "loss_from must be an int"),
        (lambda m, r: r.ablate(progress="x"), UsageError, "progress must be a function"),
        (lambda m, r: r.attribute(1.5), UsageError, "answer must be a token's text"),
        (lambda m, r: r.attribute(True), UsageError, "answer must be a token's text"),
        (lambda m, r: r.attribute(pos="x"), UsageError, "pos must be an int"),
        (lambda m, r: r.attribute(top_tokens=None), UsageError, "top_tokens must be an int"),
        (lambda m, r: r.attribute(fold_value_bias="yes"), UsageError, "fold_value_bias must be True or False"),
        (lambda m, r: r.lens(top="5"), UsageError, "top must be an int"),
        (lambda m, r: r.lens(pos=1.5), UsageError, "pos must be a list of ints"),
        (lambda m, r: r.lens(pos=["a"]), UsageError, "pos must be a list of ints"),
        (lambda m, r: r.save(None), UsageError, "path must be a path"),
        (lambda m, r: r.save("x.html", dpi="high"), UsageError, "dpi must be an int"),
        (lambda m, r: r.save("x.html", dpi=0), UsageError, "dpi 0 must be between 20 and 1200"),
        (lambda m, r: m.circuits(top=None), UsageError, "top must be an int"),
        (lambda m, r: m.circuits(layers=1.5), UsageError, "layers must be a list of ints"),
        (lambda m, r: m.circuits(heads="01"), UsageError, "heads must be a list of ints"),
        (lambda m, r: m.circuits(modes=None), UsageError, "modes must be a list of str"),
        (lambda m, r: m.circuits(fold_ln="no"), UsageError, "fold_ln must be True or False"),
        (lambda m, r: mhacli.diff(m, m, None), UsageError, "text must be a str or a list of str"),
        (lambda m, r: mhacli.diff(m, m, [TEXT, 5]), UsageError, "text must be a list of str"),
        (lambda m, r: mhacli.diff(m, m, TEXT, metric=["js"]), UsageError, "metric must be a str"),
        (lambda m, r: mhacli.diff(m, m, TEXT, max_memory="lots"), UsageError, "max_memory 'lots' is not a size"),
        (lambda m, r: mhacli.census(m, probe_count="2"), UsageError, "probe_count must be an int"),
        (lambda m, r: mhacli.census(m, probe_count=10**20), UsageError, "probe_count 100000000000000000000 must"),
        (lambda m, r: mhacli.census(m, probe_count=2, seed=1.5), UsageError, "seed must be an int"),
        (lambda m, r: mhacli.census(m, probe_count=2, repeat_length=None), UsageError, "repeat_length must be an int"),
        (lambda m, r: mhacli.census(m, probe_count=2, probes=None), UsageError, "probes must be a list of str"),
        (lambda m, r: mhacli.census(m, 5, probes=()), UsageError, "texts must be a str or a list of str"),
        (lambda m, r: mhacli.census(m, probe_count=2, dask=1.5), UsageError, "dask must be a str"),
        (lambda m, r: mhacli.census("sample"), UsageError, "model must be a Model"),
        (lambda m, r: mhacli.patch("sample", "a b", "c d"), UsageError, "model must be a Model"),
        (lambda m, r: mhacli.patch(m, 5, "c d"), UsageError, "clean must be a str"),
        (lambda m, r: mhacli.patch(m, "The cat", "The dog", answer=5, wrong=" a"), UsageError, "answer must be a str"),
        (lambda m, r: mhacli.patch(m, pairs=5), UsageError, "pairs must be a list"),
        (lambda m, r: mhacli.patch(m, pairs=[5]), UsageError, "pairs[0] must be a dict"),
        (lambda m, r: mhacli.patch(m, pairs=[{"clean": 1}]), UsageError, "each a string"),
        (lambda m, r: mhacli.patch(m, "The cat", "The dog", answer="x", wrong="y", sender=1.5), UsageError,
         "sender must be a str"),
        (lambda m, r: mhacli.patch(m, "The cat", "The dog", answer="x", wrong="y", by_pos="no"), UsageError,
         "by_pos must be True or False"),
    ],
)  # fmt: skip
def test_bad_arguments_are_typed_errors_naming_the_argument(model, run, tmp_path, monkeypatch, call, error, words):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as info:
        call(model, run)
    message = str(info.value)
    assert isinstance(info.value, MhaError) and words in message and "\n" not in message, message
    assert "--" not in message, f"the Python door spells the CLI's flag: {message}"


def test_load_of_a_directory_without_a_config(tmp_path, tiny_model):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").symlink_to(tiny_model / "model.safetensors")
    for directory in (tmp_path, tmp_path / "weights"):
        with pytest.raises(ModelError):
            mhacli.load(directory)


def test_the_api_words_the_dpi_as_the_cli_does(run, mha, tiny_model, tmp_path):
    cli = one_error(mha("inspect", TEXT, "-m", str(tiny_model), "--save", str(tmp_path / "x.html"), "--dpi", "0"))
    with pytest.raises(UsageError) as info:
        run.save(tmp_path / "x.html", dpi=0)
    assert str(info.value) == cli.removeprefix("error: ").replace("--dpi", "dpi")


# Any value of any type: what hypothesis puts in one argument while the others stay valid.
ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([-(10**20), -3, -1, 0, 1, 2, 10**20]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=4),
    st.lists(st.integers(-3, 500), max_size=3),
    st.lists(st.text(max_size=3), max_size=2),
    st.tuples(st.integers(-2, 3), st.integers(-2, 5)).map(lambda t: [t]),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.sampled_from([np.array([1.5]), np.array([[0, 1]]), np.int64(1), np.float32("nan"), object(), math.pi, 1j]),
)
CALLS = {
    "run.text": lambda m, r, x: m.run(x),
    "run.ids": lambda m, r, x: m.run(ids=x),
    "run.truncate": lambda m, r, x: m.run(TEXT, truncate=x),
    "run.remove": lambda m, r, x: m.run(TEXT, remove=x).stats(0),
    "run.max_memory": lambda m, r, x: m.run(TEXT, max_memory=x),
    "tokenize": lambda m, r, x: m.tokenize(x),
    "memory_needed": lambda m, r, x: m.memory_needed(x),
    "memory_needed.maps": lambda m, r, x: m.memory_needed(4, maps=x),
    "attention": lambda m, r, x: r.attention(x),
    "residual": lambda m, r, x: r.residual(x),
    "stats.layer": lambda m, r, x: r.stats(x),
    "stats.head": lambda m, r, x: r.stats(0, x),
    "loss": lambda m, r, x: r.loss(x),
    "explain.layer": lambda m, r, x: r.explain(x, 0),
    "explain.head": lambda m, r, x: r.explain(0, x),
    "explain.query": lambda m, r, x: r.explain(0, 0, x),
    "model.explain": lambda m, r, x: m.explain(TEXT, layer=1, head=x),
    "ablate.heads": lambda m, r, x: r.ablate(x),
    "ablate.method": lambda m, r, x: r.ablate([(0, 0)], method=x),
    "ablate.loss_from": lambda m, r, x: r.ablate([(0, 0)], loss_from=x),
    "ablate.progress": lambda m, r, x: r.ablate([(0, 0)], progress=x),
    "attribute.answer": lambda m, r, x: r.attribute(x),
    "attribute.wrong": lambda m, r, x: r.attribute(" the", x),
    "attribute.pos": lambda m, r, x: r.attribute(pos=x),
    "attribute.top_tokens": lambda m, r, x: r.attribute(top_tokens=x),
    "attribute.fold_value_bias": lambda m, r, x: r.attribute(fold_value_bias=x),
    "lens.top": lambda m, r, x: r.lens(top=x),
    "lens.pos": lambda m, r, x: r.lens(pos=x),
    "save.path": lambda m, r, x: r.save(x),
    "save.dpi": lambda m, r, x: r.save("x.html", dpi=x),
    "circuits.modes": lambda m, r, x: m.circuits(modes=x, layers=[1], heads=[0]),
    "circuits.layers": lambda m, r, x: m.circuits(layers=x, heads=[0]),
    "circuits.heads": lambda m, r, x: m.circuits(layers=[1], heads=x),
    "circuits.top": lambda m, r, x: m.circuits(layers=[1], heads=[0], top=x),
    "circuits.fold_ln": lambda m, r, x: m.circuits(layers=[1], heads=[0], fold_ln=x),
    "circuits.unembed": lambda m, r, x: m.circuits(layers=[1], heads=[0], unembed=x),
    "diff.model": lambda m, r, x: mhacli.diff(x, m, TEXT),
    "diff.text": lambda m, r, x: mhacli.diff(m, m, x),
    "diff.metric": lambda m, r, x: mhacli.diff(m, m, TEXT, metric=x),
    "diff.match": lambda m, r, x: mhacli.diff(m, m, TEXT, match=x),
    "diff.remove_b": lambda m, r, x: mhacli.diff(m, m, TEXT, remove_b=x),
    "diff.truncate": lambda m, r, x: mhacli.diff(m, m, TEXT, truncate=x),
    "diff.max_memory": lambda m, r, x: mhacli.diff(m, m, TEXT, max_memory=x),
    "census.model": lambda m, r, x: mhacli.census(x, probe_count=1),
    "census.texts": lambda m, r, x: mhacli.census(m, x, probes=()),
    "census.probes": lambda m, r, x: mhacli.census(m, probes=x, probe_count=1),
    "census.probe_count": lambda m, r, x: mhacli.census(m, probe_count=x if not isinstance(x, int) or x > 2 else 1),
    "census.repeat_length": lambda m, r, x: mhacli.census(m, probe_count=1, repeat_length=x),
    "census.random_length": lambda m, r, x: mhacli.census(m, probe_count=1, random_length=x),
    "census.seed": lambda m, r, x: mhacli.census(m, probe_count=1, seed=x),
    "census.truncate": lambda m, r, x: mhacli.census(m, probe_count=1, truncate=x),
    "census.max_memory": lambda m, r, x: mhacli.census(m, probe_count=1, max_memory=x),
    "patch.model": lambda m, r, x: mhacli.patch(x, "The cat", "The dog", answer=" the", wrong=" and"),
    "patch.clean": lambda m, r, x: mhacli.patch(m, x, "The dog", answer=" the", wrong=" and"),
    "patch.answer": lambda m, r, x: mhacli.patch(m, "The cat", "The dog", answer=x, wrong=" and"),
    "patch.pairs": lambda m, r, x: mhacli.patch(m, pairs=x),
    "patch.metric": lambda m, r, x: mhacli.patch(m, "The cat", "The dog", answer=" the", wrong=" and", metric=x),
    "patch.site": lambda m, r, x: mhacli.patch(m, "The cat", "The dog", answer=" the", wrong=" and", site=x),
    "patch.by_pos": lambda m, r, x: mhacli.patch(m, "The cat", "The dog", answer=" the", wrong=" and", by_pos=x),
    "patch.noise": lambda m, r, x: mhacli.patch(m, "The cat", "The dog", answer=" the", wrong=" and", noise=x),
    "patch.sender": lambda m, r, x: mhacli.patch(m, "The cat", "The dog", answer=" the", wrong=" and", sender=x),
    "patch.receiver_site": lambda m, r, x: mhacli.patch(
        m, "The cat", "The dog", answer=" the", wrong=" and", sender="0.1", receiver_site=x
    ),
}


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(which=st.sampled_from(sorted(CALLS)), value=ANYTHING)
def test_any_value_in_any_argument_is_a_result_or_an_mha_error(model, run, tmp_path_factory, which, value):
    """One argument anything, the others valid: the call returns, or raises an MhaError; nothing else escapes."""
    import os

    here = os.getcwd()
    os.chdir(tmp_path_factory.getbasetemp())  # save("x.html") and file-like values land in the test's folder
    try:
        CALLS[which](model, run, value)
    except MhaError as exc:
        assert str(exc) and "\n" not in str(exc), (which, value, str(exc))
    finally:
        os.chdir(here)
