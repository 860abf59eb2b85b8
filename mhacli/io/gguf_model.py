"""A GGUF as a Checkpoint: the config from its metadata, its tensor names mapped to ours, llama.cpp's layout undone.

What llama.cpp's converter (convert_hf_to_gguf.py) changed, and how transformers' GGUF loader
(modeling_gguf_pytorch_utils.py, integrations/ggml.py) undoes it, redone here in NumPy:
- names: `token_embd.weight` -> `embed_tokens.weight`, `blk.N.attn_q.weight` -> `layers.N.self_attn.q_proj.weight`, ...
- rotary models (llama): the rows of Q and K are permuted per head from HF's rotate-half order into GGML's
  interleaved pairs; `unpermute_rows` restores it (Q over n_head heads, K over n_kv_head);
- gpt2: GGUF stores the Conv1D weights [out, in] like nn.Linear; HF's are [in, out], so they are transposed back;
- gemma2, gemma3: llama.cpp stores every RMSNorm weight with 1 added (the gain 1 + w); 1 is subtracted again, as
  transformers' Gemma2TensorProcessor does (our Gemma families add it back);
- phi3: its longrope short and long factors are the tensors rope_factors_short / rope_factors_long, read into the
  config;
- gptneox: the fused query_key_value rows, head by head in HF (q, k, v of head 0, then of head 1, ...), are stored
  as all heads' q, then all k, then all v; `interleave_heads` restores HF's order (weight and bias);
- qwen2, qwen3: llama's names (plus q/k/v biases, q_norm/k_norm), Q/K not permuted (llama.cpp rotates them NeoX-style);
- shapes: GGUF's dimensions are ggml's order (fastest first); NumPy's shape is their reverse (mhacli.io.gguf).
The config is built as the config.json transformers would build from the same metadata, then parsed and checked
as any config.json is (mhacli.config.parse_config), so every bound and message is the same.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mhacli.config import ModelConfig, parse_config
from mhacli.engine.arch import check_config, family
from mhacli.errors import ConfigError, WeightsError
from mhacli.io.files import quoted, show
from mhacli.io.gguf import GgufFile, GgufTensor, check_types, dequantise, read_gguf

# llama.cpp's per-layer tensor names -> ours (HF's without the `model.` / `transformer.` prefix)
LLAMA_LAYER = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}  # fmt: skip
LLAMA_GLOBAL = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}
GPT2_LAYER = {
    "attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj", "ffn_norm": "ln_2",
    "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj",
}  # fmt: skip
GPT2_GLOBAL = {"token_embd": "wte", "position_embd": "wpe", "output_norm": "ln_f", "output": "lm_head"}
GPT2_TRANSPOSED = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")
BLOCK = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
GLOBAL = re.compile(r"^([a-z_]+)\.(weight|bias)$")


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation.

    [n_head * d_head, ...] in GGML's order (per head, the rotary pairs interleaved: rows 2i, 2i+1 are HF's i, i +
    d_head/2) -> HF's rotate-half order. llama.cpp wrote w.reshape(n_head, 2, d_head // 2, ...).swapaxes(1, 2); this
    is its inverse.
    """
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _meta(gf: GgufFile, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
    value = gf.metadata.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{show(gf.path.name)}: GGUF metadata {key} is missing")
        return default
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.size == 1:
        value = value[0].item()
    if isinstance(value, np.generic):
        value = value.item()
    ok = isinstance(value, kind) and not (
        isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
    )
    if not ok:
        raise ConfigError(
            f"{show(gf.path.name)}: GGUF metadata {key} is {str(value)[:40]!r}, not a {getattr(kind, '__name__', kind)}"
        )
    return value


def _vocab_size(gf: GgufFile, arch: str) -> int | None:
    size = _meta(gf, f"{arch}.vocab_size", int)
    if size is None:
        tokens = gf.metadata.get("tokenizer.ggml.tokens")
        size = len(tokens) if isinstance(tokens, list) else None
    if size is None and "token_embd.weight" in gf.tensors:
        size = gf.tensors["token_embd.weight"].shape[0]
    return size


def llama_config(gf: GgufFile) -> dict:
    """The config.json transformers builds from a `llama` GGUF (GGUF_CONFIG_MAPPING["llama"]), with the rope scaling ...

    ... and sliding window llama.cpp records where present.
    """
    name = str(gf.metadata.get("general.name", "")).lower()
    a = "llama"
    raw: dict[str, Any] = {
        "model_type": "mistral" if "mistral" in name else "llama",  # as transformers decides it
        "hidden_size": _meta(gf, f"{a}.embedding_length", int, required=True),
        "num_hidden_layers": _meta(gf, f"{a}.block_count", int, required=True),
        "intermediate_size": _meta(gf, f"{a}.feed_forward_length", int, required=True),
        "num_attention_heads": _meta(gf, f"{a}.attention.head_count", int, required=True),
        "num_key_value_heads": _meta(gf, f"{a}.attention.head_count_kv", int),
        "max_position_embeddings": _meta(gf, f"{a}.context_length", int, required=True),
        "rms_norm_eps": _meta(gf, f"{a}.attention.layer_norm_rms_epsilon", float, 1e-6),
        "rope_theta": _meta(gf, f"{a}.rope.freq_base", float, 10000.0),
        "head_dim": _meta(gf, f"{a}.rope.dimension_count", int),
        "vocab_size": _vocab_size(gf, a),
        "tie_word_embeddings": "output.weight" not in gf.tensors,
        "attention_bias": "blk.0.attn_q.bias" in gf.tensors,
    }
    window = _meta(gf, f"{a}.attention.sliding_window", int)
    if window is not None:
        raw["sliding_window"] = window
    scaling = _meta(gf, f"{a}.rope.scaling.type", str)
    factor = _meta(gf, f"{a}.rope.scaling.factor", (int, float))
    if scaling not in (None, "none") and factor is not None:
        rope = {"rope_type": scaling, "factor": float(factor)}
        original = _meta(gf, f"{a}.rope.scaling.original_context_length", int)
        if original is not None:
            rope["original_max_position_embeddings"] = original
        raw["rope_scaling"] = rope
    return {k: v for k, v in raw.items() if v is not None}


def gpt2_config(gf: GgufFile) -> dict:
    """The config.json transformers builds from a `gpt2` GGUF."""
    a = "gpt2"
    return {
        "model_type": "gpt2",
        "n_layer": _meta(gf, f"{a}.block_count", int, required=True),
        "n_positions": _meta(gf, f"{a}.context_length", int, required=True),
        "n_embd": _meta(gf, f"{a}.embedding_length", int, required=True),
        "n_inner": _meta(gf, f"{a}.feed_forward_length", int),
        "n_head": _meta(gf, f"{a}.attention.head_count", int, required=True),
        "layer_norm_epsilon": _meta(gf, f"{a}.attention.layer_norm_epsilon", float, 1e-5),
        "vocab_size": _vocab_size(gf, a),
        "tie_word_embeddings": True,  # GPT2LMHeadModel always ties; an output.weight is read by the loss only
    }


def starcoder_config(gf: GgufFile) -> dict:
    """GPT-BigCode (llama.cpp's `starcoder`): one K/V head (multi-query) unless head_count_kv says every head."""
    a = "starcoder"
    n_head = _meta(gf, f"{a}.attention.head_count", int, required=True)
    return {
        "model_type": "gpt_bigcode",
        "n_layer": _meta(gf, f"{a}.block_count", int, required=True),
        "n_positions": _meta(gf, f"{a}.context_length", int, required=True),
        "n_embd": _meta(gf, f"{a}.embedding_length", int, required=True),
        "n_inner": _meta(gf, f"{a}.feed_forward_length", int),
        "n_head": n_head,
        "multi_query": _meta(gf, f"{a}.attention.head_count_kv", int, 1) != n_head,
        "layer_norm_epsilon": _meta(gf, f"{a}.attention.layer_norm_epsilon", float, 1e-5),
        "vocab_size": _vocab_size(gf, a),
        "tie_word_embeddings": "output.weight" not in gf.tensors,
    }


def olmo2_config(gf: GgufFile) -> dict:
    """OLMo 2: llama's fields under `olmo2.`; its Q/K are not permuted (llama.cpp runs it with NeoX rotary)."""
    raw = llama_config(GgufFile(gf.path, gf.size, gf.version, _renamed(gf.metadata, "olmo2.", "llama."), gf.tensors,
                                gf.alignment, gf.data_offset))  # fmt: skip
    raw["model_type"] = "olmo2"
    raw.pop("attention_bias", None)
    return raw


def _renamed(metadata: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in metadata.items()}


OLMO2_LAYER = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_post_norm": "post_attention_layernorm", "ffn_post_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}  # fmt: skip
PHI3_LAYER = {
    "attn_norm": "input_layernorm", "attn_qkv": "self_attn.qkv_proj", "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm", "ffn_up": "mlp.gate_up_proj", "ffn_down": "mlp.down_proj",
}  # fmt: skip
GEMMA_LAYER = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}  # fmt: skip
GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}  # llama.cpp's LLM_TYPE_27B: scale by n_embd / n_head, not head_dim


def _rope_factors(gf: GgufFile, name: str) -> list[float] | None:
    tensor = gf.tensors.get(name)
    return None if tensor is None else [float(x) for x in dequantise(gf, tensor).reshape(-1)]


def phi3_config(gf: GgufFile) -> dict:
    """Phi-3: llama's fields under `phi3.`; longrope when the file holds rope_factors_short / rope_factors_long.

    As llama.cpp's converter wrote them: the original context as rope.scaling.original_context_length, the
    attention factor as rope.scaling.attn_factor. (transformers' GGUF loader reads neither: it runs such a file
    with the default rotary, and without llama.cpp's sliding_window.)"""
    raw = llama_config(GgufFile(gf.path, gf.size, gf.version, _renamed(gf.metadata, "phi3.", "llama."), gf.tensors,
                                gf.alignment, gf.data_offset))  # fmt: skip
    raw["model_type"] = "phi3"
    for key in ("attention_bias", "head_dim", "rope_scaling"):
        raw.pop(key, None)
    short, long = _rope_factors(gf, "rope_factors_short.weight"), _rope_factors(gf, "rope_factors_long.weight")
    if short is not None and long is not None:
        rope: dict[str, Any] = {"rope_type": "longrope", "short_factor": short, "long_factor": long}
        factor = _meta(gf, "phi3.rope.scaling.attn_factor", (int, float))
        if factor is not None:
            rope["attention_factor"] = float(factor)
        raw["rope_scaling"] = rope
    original = _meta(gf, "phi3.rope.scaling.original_context_length", int)
    if original is not None:
        raw["original_max_position_embeddings"] = original
    return raw


def gemma_config(gf: GgufFile) -> dict:
    """Gemma 2 / Gemma 3 (text): the config.json transformers builds (GGUF_CONFIG_MAPPING["gemma2"/"gemma3"]), ...

    ... with what llama.cpp records beyond it: the soft-caps, the sliding-window pattern and rope scaling where
    present, and the attention scale llama.cpp uses (1/sqrt(head_dim), 1/sqrt(n_embd / n_head) for the 27B models),
    given as query_pre_attn_scalar."""
    arch = str(gf.metadata.get("general.architecture"))
    a = "llama"
    raw = llama_config(GgufFile(gf.path, gf.size, gf.version, _renamed(gf.metadata, arch + ".", "llama."),
                                gf.tensors, gf.alignment, gf.data_offset))  # fmt: skip
    raw["model_type"] = "gemma2" if arch == "gemma2" else "gemma3_text"
    raw.pop("attention_bias", None)
    m = _renamed(gf.metadata, arch + ".", "llama.")
    view = GgufFile(gf.path, gf.size, gf.version, m, gf.tensors, gf.alignment, gf.data_offset)
    head_dim = _meta(view, f"{a}.attention.key_length", int)
    if head_dim is not None:
        raw["head_dim"] = head_dim
    n_layer, n_head = raw["num_hidden_layers"], raw["num_attention_heads"]
    if GEMMA_27B_LAYERS.get(arch) == n_layer:
        raw["query_pre_attn_scalar"] = raw["hidden_size"] // n_head
    elif head_dim is not None:
        raw["query_pre_attn_scalar"] = head_dim
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        value = _meta(view, f"{a}.{key}", (int, float))
        if value is not None:
            raw[key] = float(value)
    pattern = view.metadata.get(f"{a}.attention.sliding_window_pattern")
    if isinstance(pattern, list) and len(pattern) == n_layer:  # one bool per layer: sliding or not
        raw["layer_types"] = ["sliding_attention" if bool(x) else "full_attention" for x in pattern]
    elif pattern is not None:
        raw["sliding_window_pattern"] = _meta(view, f"{a}.attention.sliding_window_pattern", int)
    if arch == "gemma2":
        raw.pop("sliding_window_pattern", None)
    return raw


def gptneox_config(gf: GgufFile) -> dict:
    """GPT-NeoX (Pythia), as llama.cpp's converter writes it: rotary_pct from rope.dimension_count, no rotary base."""
    a = "gptneox"
    n_embd = _meta(gf, f"{a}.embedding_length", int, required=True)
    n_head = _meta(gf, f"{a}.attention.head_count", int, required=True)
    d_head = n_embd // n_head if n_head and n_embd % n_head == 0 else None
    rotary = _meta(gf, f"{a}.rope.dimension_count", int)
    raw: dict[str, Any] = {
        "model_type": "gpt_neox",
        "hidden_size": n_embd,
        "num_hidden_layers": _meta(gf, f"{a}.block_count", int, required=True),
        "intermediate_size": _meta(gf, f"{a}.feed_forward_length", int, required=True),
        "num_attention_heads": n_head,
        "max_position_embeddings": _meta(gf, f"{a}.context_length", int, required=True),
        "layer_norm_eps": _meta(gf, f"{a}.attention.layer_norm_epsilon", float, 1e-5),
        "use_parallel_residual": _meta(gf, f"{a}.use_parallel_residual", bool, True),
        "rotary_emb_base": _meta(gf, f"{a}.rope.freq_base", float, 10000.0),
        "rotary_pct": rotary / d_head if rotary is not None and d_head else None,
        "attention_bias": "blk.0.attn_qkv.bias" in gf.tensors,
        "vocab_size": _vocab_size(gf, a),
        "tie_word_embeddings": "output.weight" not in gf.tensors,
    }
    return {k: v for k, v in raw.items() if v is not None}


def qwen_config(gf: GgufFile) -> dict:
    """Qwen 2 / Qwen 3: llama's fields under `qwen2.` / `qwen3.`; Qwen 3's head_dim from attention.key_length."""
    arch = str(gf.metadata.get("general.architecture"))
    renamed = _renamed(gf.metadata, f"{arch}.", "llama.")
    raw = llama_config(GgufFile(gf.path, gf.size, gf.version, renamed, gf.tensors, gf.alignment, gf.data_offset))
    raw["model_type"] = arch
    raw.pop("attention_bias", None)
    if arch == "qwen3":
        raw["attention_bias"] = "blk.0.attn_q.bias" in gf.tensors
        key_length = _meta(gf, f"{arch}.attention.key_length", int)
        if key_length is not None:
            raw["head_dim"] = key_length
        raw.setdefault("head_dim", raw["hidden_size"] // raw["num_attention_heads"])  # not Qwen3Config's 128
    return raw


NEOX_LAYER = {
    "attn_norm": "input_layernorm", "attn_qkv": "attention.query_key_value", "attn_output": "attention.dense",
    "ffn_norm": "post_attention_layernorm", "ffn_up": "mlp.dense_h_to_4h", "ffn_down": "mlp.dense_4h_to_h",
}  # fmt: skip
NEOX_GLOBAL = {"token_embd": "embed_in", "output_norm": "final_layer_norm", "output": "lm_head"}
QWEN3_LAYER = LLAMA_LAYER | {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}


def interleave_heads(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's GPT-NeoX query_key_value reordering.

    [3 * n_embd, ...] as all heads' q, all k, all v -> HF's head-by-head order (q, k, v of head 0, then head 1, ...).
    llama.cpp wrote w.reshape(n_head, 3, d_head, ...) with its first two axes swapped; this swaps them back."""
    d_head = w.shape[0] // 3 // n_head
    return w.reshape(3, n_head, d_head, *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)


CONFIGS = {
    "llama": llama_config, "gpt2": gpt2_config, "starcoder": starcoder_config, "olmo2": olmo2_config,
    "phi3": phi3_config, "gemma2": gemma_config, "gemma3": gemma_config, "gptneox": gptneox_config,
    "qwen2": qwen_config, "qwen3": qwen_config,
}  # fmt: skip
NAMES = {
    "llama": (LLAMA_GLOBAL, LLAMA_LAYER), "gpt2": (GPT2_GLOBAL, GPT2_LAYER), "starcoder": (GPT2_GLOBAL, GPT2_LAYER),
    "olmo2": (LLAMA_GLOBAL, OLMO2_LAYER), "phi3": (LLAMA_GLOBAL, PHI3_LAYER), "gemma2": (LLAMA_GLOBAL, GEMMA_LAYER),
    "gemma3": (LLAMA_GLOBAL, GEMMA_LAYER), "gptneox": (NEOX_GLOBAL, NEOX_LAYER), "qwen2": (LLAMA_GLOBAL, LLAMA_LAYER),
    "qwen3": (LLAMA_GLOBAL, QWEN3_LAYER),
}  # fmt: skip
FAMILY = {
    "llama": "llama", "gpt2": "gpt2", "starcoder": "gpt_bigcode", "olmo2": "olmo2", "phi3": "phi3",
    "gemma2": "gemma2", "gemma3": "gemma3_text", "gptneox": "gpt_neox", "qwen2": "qwen2", "qwen3": "qwen3",
}  # fmt: skip
NORM_PLUS_ONE = ("gemma2", "gemma3")  # llama.cpp wrote 1 + w for every norm weight


def gguf_config(gf: GgufFile) -> tuple[str, ModelConfig]:
    """(GGUF architecture, our config) from the metadata; an architecture we cannot map is a ConfigError."""
    arch = gf.metadata.get("general.architecture")
    if arch not in CONFIGS:
        raise ConfigError(
            f"{show(gf.path.name)}: GGUF architecture {str(arch)[:40]!r} is not supported "
            f"(supported: {', '.join(CONFIGS)})"
        )
    try:
        config = parse_config(CONFIGS[arch](gf))
    except ConfigError as exc:
        raise ConfigError(f"{show(gf.path.name)}: GGUF metadata: {exc}") from exc
    check_config(config)
    return arch, config


def our_name(arch: str, name: str) -> str | None:
    """GGUF tensor name -> our key (family layout), None for a tensor the forward does not read."""
    glob, layer = NAMES[arch]
    prefix = family(FAMILY[arch]).LAYER_PREFIX
    m = BLOCK.match(name)
    if m:
        part = layer.get(m.group(2))
        return None if part is None else f"{prefix.format(int(m.group(1)))}{part}.{m.group(3)}"
    m = GLOBAL.match(name)
    if m and m.group(1) in glob:
        return f"{glob[m.group(1)]}.{m.group(2)}"
    return None


@dataclass(frozen=True)
class GgufModel:
    """What a GGUF gives the Checkpoint (mhacli.io.weights builds it.

    this module never imports that one): the config, where each tensor we read lies (our key -> GGUF tensor with our
    layout's shape), a loader that dequantises one by our key into our layout, and the file's ggml types with their
    tensor counts.
    """

    gguf: GgufFile
    arch: str
    config: ModelConfig
    tensors: dict[str, GgufTensor]  # our key -> the GGUF tensor, its `shape` already ours (gpt2's transposed)
    quantisation: dict[str, int]

    def load(self, name: str) -> np.ndarray:
        """Our tensor `name` dequantised to float32 in our layout.

        Q/K rows un-permuted (llama), Conv1D weights transposed (gpt2), 1 taken off Gemma's norm weights,
        GPT-NeoX's query_key_value rows put back head by head.
        """
        w = dequantise(self.gguf, self.gguf.tensors[self.tensors[name].name])
        c = self.config
        if self.arch == "llama" and (".q_proj." in name or ".k_proj." in name):
            return np.ascontiguousarray(unpermute_rows(w, c.n_head if ".q_proj." in name else c.n_kv_head))
        if self.arch == "gpt2" and self.tensors[name].name.endswith(GPT2_TRANSPOSED):
            return np.ascontiguousarray(w.T)
        if self.arch in NORM_PLUS_ONE and name.endswith("norm.weight"):
            return w - np.float32(1.0)
        if self.arch == "gptneox" and ".query_key_value." in name:
            return np.ascontiguousarray(interleave_heads(w, c.n_head))
        return w


def _layout_shape(arch: str, gguf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if arch == "gpt2" and gguf_name.endswith(GPT2_TRANSPOSED):
        return tuple(reversed(shape))
    return shape


def open_gguf(path: Path) -> GgufModel:
    """A GGUF's header read and checked, its config built, every tensor the forward needs present with the shape the ...

    ... config implies, every type dequantisable (no tensor data read).
    """
    gf = read_gguf(path)
    arch, config = gguf_config(gf)
    fam = family(config.model_type)
    found: dict[str, GgufTensor] = {}
    for t in gf.tensors.values():
        ours = our_name(arch, t.name)
        if ours is not None:
            found[ours] = replace(t, shape=_layout_shape(arch, t.name, t.shape))
    tensors: dict[str, GgufTensor] = {}
    for key, shape in fam.expected_shapes(config).items():
        info = found.get(key)
        if info is None:
            raise WeightsError(f"{show(path.name)}: tensor for {quoted(key)} is missing from the GGUF")
        if info.shape != shape:
            raise WeightsError(
                f"{show(path.name)}: tensor {quoted(info.name)} has shape {list(info.shape)}, but the metadata implies "
                f"{list(shape)}"
            )
        tensors[key] = info
    head = found.get(fam.LM_HEAD)
    if head is not None and not config.tie_word_embeddings:
        if head.shape != (config.vocab_size, config.n_embd):
            raise WeightsError(f"{show(path.name)}: tensor {quoted(head.name)} has shape {list(head.shape)}")
        tensors[fam.LM_HEAD] = head
    check_types(gf.path.name, tensors.values())
    quantisation = dict(Counter(t.type_name for t in gf.tensors.values()).most_common())
    return GgufModel(gf, arch, config, tensors, quantisation)
