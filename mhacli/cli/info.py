"""`mha info`: config, parameter count and attention layout of a model."""

from __future__ import annotations

from mhacli.cli._app import app, examples
from mhacli.cli._common import ALL_FORMATS, FormatOpt, ModelOpt, output
from mhacli.ops.info import info_doc
from mhacli.views.results import InfoResult


@app.command(
    help="Show the model's config, parameter count, attention layout and KV-cache size. json: one document; jsonl,\n"
    "csv, tsv: one key/value row per field of that document (nested keys joined with dots).",
    epilog=examples(
        "mha info",
        "mha info -m sample-early -f json",
        "mha info -f tsv",
    ),
)
def info(model: ModelOpt = None, format: FormatOpt = None) -> None:
    """`mha info`: the model's document in the format asked for (the help text is the command's `help=`)."""
    out = output(format, ALL_FORMATS)
    out.emit(InfoResult(info_doc(model)))
