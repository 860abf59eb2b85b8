"""Shared fixtures: tiny random GPT-2 checkpoints built with transformers, a BPE tokenizer trained here.

Nothing is downloaded: models come from `transformers` configs with random weights, saved with save_pretrained.
"""

from __future__ import annotations

import collections
import functools
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_weights" / "tiny-shakespeare"
# Tolerances the engine issue names: attention probabilities and hidden states vs HF eager float32.
ATTN_ATOL = 1e-5
HIDDEN_ATOL = 1e-4

TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. ROMEO: But, soft! what light through yonder window breaks?\n"
    "It is the east, and Juliet is the sun.\tCafé naïve résumé — déjà vu. 東京 こんにちは 🙂 emoji 🚀!\n"
    "    indented   spaces and\ttabs\n\nnew lines; numbers 1234567890 and symbols #$%&*()[]{}<>.\n"
) * 4
TRICKY_TEXTS = [
    "hello world",
    " leading space",
    "  two leading spaces and trailing  ",
    "tabs\tand\nnewlines\n\n",
    "Café naïve résumé — déjà vu",
    "東京 こんにちは",
    "emoji 🙂🚀 and a flag 🇫🇷",
    "<|endoftext|>special in the middle<|endoftext|>",
    "numbers 3.14159 and 1,000,000",
    "unseen words: xylophone quixotic zephyr",
]


def train_tokenizer(directory: Path, vocab_size: int = 400) -> Path:
    """A byte-level BPE like GPT-2's, trained on TRAIN_TEXT, saved as tokenizer.json + vocab.json + merges.txt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TRAIN_TEXT], trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    tok.model.save(str(directory))
    return directory


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def gpt2_config(**overrides):
    from transformers import GPT2Config

    fields = dict(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=400, bos_token_id=0, eos_token_id=0)
    fields.update(overrides)
    return GPT2Config(**fields)


def build_model(
    directory: Path,
    tokenizer_dir: Path | None = None,
    *,
    seed: int = 0,
    dtype: str = "float32",
    lm_head: bool = True,
    max_shard_size: str | None = None,
    attn_gain: float = 8.0,
    **overrides,
) -> Path:
    """Save a random-init GPT-2 (HF) to `directory`, with the tokenizer files beside it."""
    import torch
    from transformers import GPT2LMHeadModel, GPT2Model

    torch.manual_seed(seed)
    config = gpt2_config(**overrides)
    model = (GPT2LMHeadModel if lm_head else GPT2Model)(config).eval()
    with torch.no_grad():  # larger than the default init, so the heads are not all near-uniform
        for name, p in model.named_parameters():
            if "c_attn.weight" in name:
                p.mul_(attn_gain)
    model = model.to(getattr(torch, dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **kwargs)
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "vocab.json", "merges.txt"):
            shutil.copy(tokenizer_dir / name, directory / name)
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tokenizer_dir) -> Path:
    """A 2-layer, 4-head random GPT-2 with the test tokenizer."""
    return build_model(tmp_path_factory.mktemp("tiny"), tokenizer_dir)


def hf_outputs(directory: Path, ids) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """HF eager float32 (AutoModel, the architecture's base model): attentions [n_head, n_seq, n_seq] and hidden
    states after each block (the last after the final norm, as HF reports it) for `ids`.

    Cached per directory, token ids and the directory's files (name, size, mtime), so a checkpoint edited in place
    is run again."""
    stats = [(f.name, f.stat()) for f in Path(directory).iterdir() if f.is_file()]
    files = tuple(sorted((name, s.st_size, s.st_mtime_ns) for name, s in stats))
    return _hf_outputs(str(directory), tuple(int(i) for i in np.asarray(ids).reshape(-1)), files)


@functools.lru_cache(maxsize=128)
def _hf_outputs(directory: str, ids: tuple[int, ...], files: tuple) -> tuple[list[np.ndarray], list[np.ndarray]]:
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(torch.tensor([list(ids)], dtype=torch.long), output_attentions=True, output_hidden_states=True)
    return [a[0].numpy() for a in out.attentions], [h[0].numpy() for h in out.hidden_states[1:]]


def compare_with_hf(directory: Path, ids, *, reference_dir: Path | None = None, hidden_relative: bool = True):
    """Our forward on `directory` vs HF eager float32 (on `reference_dir`, default the same), per layer and per
    head: every head's attention within ATTN_ATOL, every layer's hidden states within HIDDEN_ATOL (times
    max(1, max |HF hidden|) of that layer when hidden_relative), float32 throughout. Returns the measured
    [(attention max abs err, hidden max abs err)] per layer."""
    from mhacli.engine.forward import final_norm, forward
    from mhacli.io.weights import load_model

    ids = np.asarray(ids)
    ckpt = load_model(str(directory))
    hf_attn, hf_hidden = hf_outputs(reference_dir or directory, ids)
    traces = list(forward(ckpt, ids))
    assert len(traces) == len(hf_attn) == ckpt.config.n_layer
    name = Path(directory).name
    errors = []
    for t in traces:
        hidden = final_norm(ckpt, t.residual) if t.layer == ckpt.config.n_layer - 1 else t.residual
        assert t.attention.dtype == np.float32 and hidden.dtype == np.float32, "float64 crept into the float32 path"
        assert t.attention.shape == hf_attn[t.layer].shape == (ckpt.config.n_head, len(ids), len(ids))
        per_head = [float(np.abs(t.attention[h] - hf_attn[t.layer][h]).max()) for h in range(ckpt.config.n_head)]
        for h, err in enumerate(per_head):
            assert err <= ATTN_ATOL, f"{name} layer {t.layer} head {h}: attention max abs err {err:.3e} > {ATTN_ATOL}"
        scale = max(1.0, float(np.abs(hf_hidden[t.layer]).max())) if hidden_relative else 1.0
        h_err = float(np.abs(hidden - hf_hidden[t.layer]).max())
        bound = HIDDEN_ATOL * scale
        assert h_err <= bound, f"{name} layer {t.layer}: hidden max abs err {h_err:.3e} > {bound:.1e}"
        errors.append((max(per_head), h_err))
    return errors


def assert_close(name: str, got, want, atol: float, *, relative: bool = True) -> None:
    """Max abs error of `got` vs HF's `want` within atol (times max(1, max |want|) when relative), named on failure."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, HF has {want.shape}"
    bound = atol * max(1.0, float(np.abs(want).max())) if relative and want.size else atol
    err = float(np.abs(got - want).max()) if want.size else 0.0
    assert err <= bound, f"{name}: max abs error {err:.3e} vs HF exceeds {bound:.1e}"


# Tests that claim a number of cases count them as they run (count_case inside the test body); the totals are
# printed at the end of the session, so a figure quoted in the README is one a run measured, not a sum of settings.
CASES: collections.Counter[str] = collections.Counter()


def count_case(kind: str) -> None:
    CASES[kind] += 1


def pytest_terminal_summary(terminalreporter) -> None:
    if CASES:
        terminalreporter.write_sep("-", "cases run")
        for kind, n in sorted(CASES.items()):
            terminalreporter.write_line(f"{kind}: {n:,}")


def run_mha(*args: str, input: str | bytes | None = None, env: dict | None = None, cwd: Path | None = None):
    """The real entry point, as a user runs it: `python -m mhacli ARGS` in a subprocess (stdout not a TTY)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MHA_MODEL", "MHA_DEBUG", "NO_COLOR")}
    full_env.update(env or {})
    if isinstance(input, str):
        input = input.encode()
    return subprocess.run(
        [sys.executable, "-m", "mhacli", *args],
        input=input if input is not None else b"",
        capture_output=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes


@pytest.fixture
def mha(capsysbinary, monkeypatch):
    """The CLI's entry function `run(argv)` in this process (fast), with stdin, stdout and stderr captured."""
    from mhacli.cli import run

    def call(*args: str, input: bytes = b"", env: dict | None = None) -> Result:
        for key in ("MHA_MODEL", "MHA_DEBUG", "NO_COLOR"):
            monkeypatch.delenv(key, raising=False)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(input)))
        capsysbinary.readouterr()
        code = run(list(args))
        out, err = capsysbinary.readouterr()
        return Result(code, out, err)

    return call


def parse_json(stdout: bytes):
    """Strict JSON: NaN and Infinity are rejected."""

    def reject(token):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(stdout.decode("utf-8"), parse_constant=reject)


def break_attention_kernel(monkeypatch, factor: float = 1.5) -> None:
    """Make the forward's attention kernel (mhacli.engine.attention.causal_attention) wrong: every head's output z times
    `factor`, its probabilities untouched. Patched in every mhacli module that calls it."""
    import mhacli.engine.arch.common  # noqa: F401 - the modules that call the kernel, loaded so they can be patched
    import mhacli.engine.arch.gpt2  # noqa: F401
    import mhacli.engine.attention

    real = mhacli.engine.attention.causal_attention

    def broken(*args, **kwargs):
        z, probs = real(*args, **kwargs)
        return z * np.float32(factor), probs

    for name, module in list(sys.modules.items()):
        if name.startswith("mhacli") and getattr(module, "causal_attention", None) is real:
            monkeypatch.setattr(module, "causal_attention", broken)


def blocks_on_hf_inputs(directory: Path, ids) -> list[tuple[float, np.ndarray]]:
    """Each block fed HF's own input to its layer (layer 0: the embeddings, an exact lookup and add): per layer,
    the max abs error of its attention against HF's and its output [n_seq, n_embd] (before any final norm). The
    1e-6 aim is stated for this; end to end, float32 rounding of the residual stream accumulates over layers and
    sharp heads amplify it (ATTN_ATOL there)."""
    from mhacli.engine.forward import embed, family
    from mhacli.io.weights import load_model

    ckpt = load_model(str(directory))
    arch = family(ckpt.config)
    attentions, hidden = hf_outputs(directory, ids)
    results = []
    for layer in range(ckpt.config.n_layer):
        x = embed(ckpt, np.asarray(ids)) if layer == 0 else hidden[layer - 1]
        out, parts = arch.block(x, ckpt.layer(layer), ckpt.config, layer)
        results.append((float(np.abs(parts.probs - attentions[layer]).max()), out))
    return results


@pytest.fixture(scope="session")
def cli_worker(tmp_path_factory):
    """The whole CLI in one child process under an address-space limit (tests/cli_worker.py): an abort or a hang
    in a case is a failing result, not a killed or stalled test run."""
    from cli_worker import CliWorker

    worker = CliWorker(tmp_path_factory.mktemp("cli-worker"))
    yield worker
    worker.close()
