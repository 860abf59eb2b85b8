"""`mha info`: config, parameter count and attention layout of a model."""

from __future__ import annotations

import sys

from mhacli.cli import app
from mhacli.commands._common import FormatOpt, ModelOpt, resolve_format
from mhacli.output import dumps
from mhacli.weights import load_model


def info_doc(model: str | None) -> dict:
    ckpt = load_model(model)
    c = ckpt.config
    return {
        "source": ckpt.source,
        "directory": str(ckpt.files.directory),
        "weight_files": [p.name for p in ckpt.files.weight_files],
        "dtypes": sorted({t.dtype for t in ckpt.tensors.values()}),
        "parameters": ckpt.parameter_count(),
        "attention": {"layout": c.layout, "n_head": c.n_head, "n_kv_head": c.n_kv_head, "d_head": c.d_head},
        "config": c.to_dict(),
    }


@app.command()
def info(model: ModelOpt = None, format: FormatOpt = None) -> None:
    """Show the model's config, parameter count and attention layout."""
    fmt = resolve_format(format, ("rich", "text", "json"))
    doc = info_doc(model)
    if fmt == "json":
        sys.stdout.write(dumps(doc) + "\n")
        return
    c, a = doc["config"], doc["attention"]
    lines = [
        ("model", doc["source"]),
        ("directory", doc["directory"]),
        ("weights", ", ".join(doc["weight_files"]) + f" ({', '.join(doc['dtypes'])}, read as float32)"),
        ("architecture", c["model_type"]),
        ("parameters", f"{doc['parameters']:,}"),
        ("layers", str(c["n_layer"])),
        ("attention", f"{a['layout']}: {a['n_head']} heads x d_head {a['d_head']} ({a['n_kv_head']} K/V heads)"),
        ("n_embd", str(c["n_embd"])),
        ("n_inner", str(c["n_inner"])),
        ("n_positions", str(c["n_positions"])),
        ("vocab_size", str(c["vocab_size"])),
        ("activation", c["activation_function"]),
        ("layer_norm_epsilon", str(c["layer_norm_epsilon"])),
        ("scale_attn_weights", str(c["scale_attn_weights"]).lower()),
        ("scale_attn_by_inverse_layer_idx", str(c["scale_attn_by_inverse_layer_idx"]).lower()),
        ("reorder_and_upcast_attn", str(c["reorder_and_upcast_attn"]).lower()),
    ]
    if fmt == "rich":
        from mhacli.render import make_console, render_info

        render_info(make_console(), lines)
    else:
        width = max(len(k) for k, _ in lines)
        sys.stdout.write("".join(f"{k:<{width}}  {v}\n" for k, v in lines))
