"""`mha explain`: one head's computation for one query token, step by step, with the real numbers."""

from __future__ import annotations

from typing import Annotated

import typer

from mhacli.cli._app import app, examples
from mhacli.cli._common import (
    REPORT_FORMATS,
    IdsOpt,
    MaxMemoryOpt,
    ModelOpt,
    ReportFormatOpt,
    TextArg,
    TruncateOpt,
    output,
    prepare,
)
from mhacli.errors import ExitCode
from mhacli.ops.explain import ExplainResult
from mhacli.ops.explain import explain as run_explain

FORMATS = REPORT_FORMATS


@app.command(
    rich_help_panel="Looking",
    epilog=examples(
        'mha explain "The cat sat on the mat" -l 0 -H 3',
        'mha explain "ROMEO: But, soft! what light" -l 1 -H 2 --query -3 --full',
        "mha explain --ids 352,277,303,2012 -l 0 -H 1 -m sample-early -f json",
    ),
)
def explain(
    layer: Annotated[int, typer.Option("--layer", "-l", help="Layer of the head.")],
    head: Annotated[int, typer.Option("--head", "-H", help="Head to explain.")],
    text: TextArg = None,
    model: ModelOpt = None,
    ids: IdsOpt = None,
    query: Annotated[
        int | None, typer.Option("--query", "-q", help="Query token (default: the last; negative counts from the end).")
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="Show every component of every vector, and every key.")] = False,
    format: ReportFormatOpt = None,
    truncate: TruncateOpt = False,
    max_memory: MaxMemoryOpt = None,
) -> int:
    """One head's computation for one query token, step by step.

    Every intermediate, with the model's real numbers, checked against the forward pass."""
    out = output(format, FORMATS)
    ckpt, tokens = prepare(model, text, truncate=truncate, ids=ids)
    ex = run_explain(ckpt, tokens.ids, layer, head, query, max_memory=max_memory)
    out.emit(ExplainResult(ckpt.model_dict(), tokens.tokens, tokens.ids.tolist(), ex, full=full))
    return ExitCode.OK if ex.matches else ExitCode.CHECK_FAILED
