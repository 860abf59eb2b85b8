"""`mha info`: config, parameter count and attention layout of a model."""

from __future__ import annotations

from mhacli.cli._app import app, examples
from mhacli.cli._common import ALL_FORMATS, FormatOpt, ModelOpt, output
from mhacli.ops.info import InfoResult, info_doc


@app.command(
    rich_help_panel="The model",
    epilog=examples(
        "mha info",
        "mha info -m sample-early -f json",
        "mha info -f tsv",
    ),
)
def info(model: ModelOpt = None, format: FormatOpt = None) -> None:
    """The model's config, parameter count, layout and KV-cache size.

    json: one document; jsonl, csv, tsv: one key/value row per field of that document (nested keys joined
    with dots)."""
    out = output(format, ALL_FORMATS)
    out.emit(InfoResult(info_doc(model)))
