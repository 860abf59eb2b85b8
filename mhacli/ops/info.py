"""What a model is (`info`, `mha --version`).

Its config, files, dtypes, parameter count, attention layout and KV-cache size, as one JSON-ready document; and the
architectures the forward supports.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mhacli.config import ModelConfig
from mhacli.io.weights import DTYPE_BYTES, load_model

if TYPE_CHECKING:
    from rich.console import Console, RenderableType


def architectures() -> list[str]:
    """The config.json model_types the forward supports (mhacli.config.ARCHITECTURES), in registry order."""
    from mhacli.config import SUPPORTED_MODEL_TYPES

    return list(SUPPORTED_MODEL_TYPES)


def kv_cache_doc(c: ModelConfig, dtype: str) -> dict:
    """KV-cache bytes per token (2 x n_layer x n_kv_head x d_head values), in float32 and the checkpoint's dtype.

    Against the same model with one K/V head per query head (full MHA).
    """
    size = DTYPE_BYTES[dtype]
    mha = 2 * c.n_layer * c.n_head * c.d_head
    return {
        "values_per_token": c.kv_cache_bytes_per_token(1),
        "checkpoint_dtype": dtype,
        "bytes_per_token": {
            "float32": c.kv_cache_bytes_per_token(4),
            "checkpoint_dtype": c.kv_cache_bytes_per_token(size),
        },
        "mha_bytes_per_token": {"float32": 4 * mha, "checkpoint_dtype": size * mha},
        "fraction_of_mha": c.n_kv_head / c.n_head,
    }


def info_doc(model: str | None) -> dict:
    """`mha info --format json`: the model (any form -m takes) described; no tensor is read."""
    ckpt = load_model(model)
    c = ckpt.config
    attention = {
        "layout": c.layout,
        "n_head": c.n_head,
        "n_kv_head": c.n_kv_head,
        "d_head": c.d_head,
        "group_size": c.group_size,
        "sliding_window": [c.sliding_window(layer) for layer in range(c.n_layer)],
        "kv_cache": kv_cache_doc(c, ckpt.kv_dtype()),
        # soft-capping (Gemma 2): each layer's cap on its scaled scores, and the output head's on its logits
        "softcap": [c.attn_softcap(layer) for layer in range(c.n_layer)],
        "logit_softcap": c.logit_softcap,
    }
    return {
        "source": ckpt.source,
        "directory": str(ckpt.files.directory),
        "weight_files": [p.name for p in ckpt.files.weight_files],
        "dtypes": sorted({t.dtype for t in ckpt.tensors.values()}),
        "quantisation": ckpt.quantisation,  # a GGUF's ggml types with their tensor counts; null for safetensors
        "bytes": {
            "on_disk": sum(p.stat().st_size for p in ckpt.files.weight_files),
            "float32": 4 * ckpt.parameter_count(),
        },
        "parameters": ckpt.parameter_count(),
        "attention": attention,
        "config": c.to_dict(),
    }


# --- the result: what info shows, in every format ---------------------------------------------------------------------


def flat_items(doc: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    """The JSON document as (dotted key, value) pairs: nested objects flattened, lists and scalars kept as values.

    E.g. `attention.kv_cache.fraction_of_mha`.
    """
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flat_items(value, name + ".")
        else:
            yield name, value


def cell_text(value: object) -> str:
    """A csv/tsv cell: strings as they are, null empty, anything else (numbers, booleans, lists) as JSON."""
    from mhacli.views.formats import dumps

    if value is None:
        return ""
    return value if isinstance(value, str) else dumps(value)


@dataclass
class InfoResult:
    """`mha info`: the model's document; jsonl, csv and tsv give one key/value row per field (dotted keys)."""

    doc: dict
    COLUMNS = ("key", "value")

    def to_dict(self) -> dict:
        return self.doc

    def records(self) -> Iterator[dict]:
        return ({"key": k, "value": v} for k, v in flat_items(self.doc))

    def rows(self) -> Iterator[list]:
        return ([k, cell_text(v)] for k, v in flat_items(self.doc))

    def plain(self) -> str:
        from mhacli.views.plain import info_lines

        lines = info_lines(self.doc)
        width = max(len(k) for k, _ in lines)
        return "".join(f"{k:<{width}}  {v}\n" for k, v in lines)

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.plain import info_lines
        from mhacli.views.terminal import info_table

        return info_table(info_lines(self.doc))
