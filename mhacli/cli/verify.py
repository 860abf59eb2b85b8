"""`mha verify`: compare our NumPy forward with HF transformers (eager, float32) on the same token ids."""

from __future__ import annotations

from typing import Annotated

import typer

from mhacli.api import HIDDEN_ATOL
from mhacli.cli._app import app, examples
from mhacli.cli._common import (
    REPORT_FORMATS,
    IdsOpt,
    ModelOpt,
    ReportFormatOpt,
    TextArg,
    TruncateOpt,
    output,
    prepare,
)
from mhacli.errors import ExitCode, UsageError
from mhacli.ops.verify import VerifyResult

DEFAULT_TEXT = (
    "ROMEO: But, soft! what light through yonder window breaks? It is the east, and Juliet is the sun. "
    "ROMEO: But, soft! what light through yonder window breaks?"
)


@app.command(
    rich_help_panel="The model",
    epilog=examples(
        "mha verify -m sample-early",
        'mha verify "The cat sat on the mat." --atol 1e-6 -f json',
        "mha verify --ids 352,277,303,2012 -f text",
    ),
)
def verify(
    text: TextArg = None,
    model: ModelOpt = None,
    ids: IdsOpt = None,
    atol: Annotated[float, typer.Option("--atol", help="Largest allowed attention error (max abs).")] = 1e-5,
    hidden_atol: Annotated[
        float,
        typer.Option("--hidden-atol", help="Largest allowed hidden-state error, per unit of max(1, max |hidden|)."),
    ] = HIDDEN_ATOL,
    format: ReportFormatOpt = None,
    truncate: TruncateOpt = False,
) -> int:
    """Check every layer's attention and hidden states against HF.

    Runs HF transformers on the same token ids and compares every layer, with the max abs errors."""
    out = output(format, REPORT_FORMATS)
    if not (atol > 0 and hidden_atol > 0):
        raise UsageError("--atol and --hidden-atol must be positive")
    if text is None and ids is None and out.env.stdin is not None and out.env.stdin_isatty:
        text = DEFAULT_TEXT
    ckpt, tokens = prepare(model, text, truncate=truncate, ids=ids)
    from mhacli.ops.verify import verify as run_verify

    report = run_verify(ckpt, tokens.ids, atol=atol, hidden_atol=hidden_atol)
    out.emit(VerifyResult(report, len(tokens.ids)))
    return ExitCode.OK if report.passed else ExitCode.CHECK_FAILED
