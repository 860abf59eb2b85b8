"""`mha info`: config, parameter count and attention layout of a model."""

from __future__ import annotations

import sys
from collections.abc import Iterator

from mhacli.cli._app import app, examples
from mhacli.cli._common import ALL_FORMATS, FormatOpt, ModelOpt, resolve_format
from mhacli.io.files import escape_unprintable
from mhacli.ops.info import info_doc
from mhacli.ops.memory import format_bytes
from mhacli.views.formats import dumps, write_table


def layout_text(a: dict) -> str:
    heads = f"{a['n_head']} query heads x d_head {a['d_head']}"
    if a["layout"] == "MHA":
        return f"MHA: {heads}, each with its own K/V head"
    if a["layout"] == "MQA":
        return f"MQA: {heads}, all reading one shared K/V head"
    g = a["group_size"]
    return f"GQA: {heads}, {a['n_kv_head']} K/V heads (group size {g}: query head h reads K/V head h // {g})"


def kv_cache_text(c: dict, a: dict) -> str:
    kv, dtype = a["kv_cache"], a["kv_cache"]["checkpoint_dtype"]
    ours, mha = kv["bytes_per_token"], kv["mha_bytes_per_token"]
    text = (
        f"2 x {c['n_layer']} layers x {a['n_kv_head']} K/V heads x {a['d_head']} = {kv['values_per_token']:,} values: "
        f"{format_bytes(ours['float32'])} float32, {format_bytes(ours['checkpoint_dtype'])} {dtype}"
    )
    if a["layout"] == "MHA":
        return text
    return text + (
        f"; full MHA would need {format_bytes(mha['float32'])} / {format_bytes(mha['checkpoint_dtype'])} "
        f"({a['n_head'] // a['n_kv_head']}x more)"
    )


def window_text(windows: list[int | None]) -> str:
    sliding = [n for n, w in enumerate(windows) if w is not None]
    if not sliding:
        return "none: every layer sees every earlier token"
    if len(sliding) == len(windows):
        return f"{windows[0]} keys in every layer"
    return f"{windows[sliding[0]]} keys in layers {', '.join(map(str, sliding))}; the others full"


def rope_text(rope: dict) -> str:
    rest = ", ".join(f"{k} {v}" for k, v in rope.items() if k not in ("rope_type", "truncate") and v is not None)
    return f"{rope['rope_type']} ({rest})"


def value_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def flat_items(doc: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    """The JSON document as (dotted key, value) pairs: nested objects flattened (`attention.kv_cache.
    fraction_of_mha`), lists and scalars kept as values."""
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flat_items(value, name + ".")
        else:
            yield name, value


def cell_text(value: object) -> str:
    """A csv/tsv cell: strings as they are, null empty, anything else (numbers, booleans, lists) as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else dumps(value)


@app.command(
    epilog=examples(
        "mha info",
        "mha info -m sample-early -f json",
        "mha info -f tsv",
    )
)
def info(model: ModelOpt = None, format: FormatOpt = None) -> None:
    """Show the model's config, parameter count, attention layout and KV-cache size. json: one document; jsonl,
    csv, tsv: one key/value row per field of that document (nested keys joined with dots)."""
    fmt = resolve_format(format, ALL_FORMATS)
    doc = info_doc(model)
    if fmt == "json":
        sys.stdout.write(dumps(doc) + "\n")
        return
    if fmt == "jsonl":
        sys.stdout.write("".join(dumps({"key": k, "value": v}) + "\n" for k, v in flat_items(doc)))
        return
    if fmt in ("csv", "tsv"):
        write_table(sys.stdout, fmt, ("key", "value"), ([k, cell_text(v)] for k, v in flat_items(doc)))
        return
    c, a = doc["config"], doc["attention"]
    lines = [
        ("model", doc["source"]),
        ("directory", doc["directory"]),
        ("weights", ", ".join(doc["weight_files"]) + f" ({', '.join(doc['dtypes'])}, read as float32)"),
        *[("quantisation", ", ".join(f"{k} {n}" for k, n in q.items())) for q in [doc["quantisation"]] if q],
        ("bytes", f"{doc['bytes']['on_disk']:,} on disk, {doc['bytes']['float32']:,} as float32"),
        ("architecture", c["model_type"]),
        ("parameters", f"{doc['parameters']:,}"),
        ("layers", str(c["n_layer"])),
        ("attention", layout_text(a)),
        ("KV cache per token", kv_cache_text(c, a)),
    ]
    if c["model_type"] not in ("gpt2", "gpt_bigcode"):
        lines.append(("sliding window", window_text(a["sliding_window"])))
    shown = {
        "model_type",
        "n_layer",
        "n_head",
        "n_kv_head",
        "d_head",
        "layout",
        "layer_types",
        "window",
        "rope",
        "sliding_rope",
    }
    lines += [(key, value_text(value)) for key, value in c.items() if key not in shown]
    if isinstance(c.get("rope"), dict):
        lines.append(("rope", rope_text(c["rope"])))
        if c.get("sliding_rope") is not None:
            lines.append(("rope (sliding layers)", rope_text(c["sliding_rope"])))
    lines = [(key, escape_unprintable(value)) for key, value in lines]  # file names: no escape sequences
    if fmt == "rich":
        from mhacli.views.terminal import make_console, render_info

        render_info(make_console(), lines)
    else:
        width = max(len(k) for k, _ in lines)
        sys.stdout.write("".join(f"{k:<{width}}  {v}\n" for k, v in lines))
