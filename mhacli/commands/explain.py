"""`mha explain`: one head's computation for one query token, step by step, with the real numbers."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from mhacli.commands._app import app, examples
from mhacli.commands._common import (
    REPORT_FORMATS, IdsOpt, MaxMemoryOpt, ModelOpt, ReportFormatOpt, TextArg, TruncateOpt, check_memory, prepare,
    resolve_format,
)  # fmt: skip
from mhacli.errors import ExitCode
from mhacli.explain import explain as run_explain
from mhacli.heads import full_attention_bytes, memory_needed
from mhacli.output import dumps

FORMATS = REPORT_FORMATS


@app.command(
    epilog=examples(
        'mha explain "The cat sat on the mat" -l 0 -H 3',
        'mha explain "ROMEO: But, soft! what light" -l 1 -H 2 --query -3 --full',
        'mha explain --ids 352,277,303,2012 -l 0 -H 1 -m sample-early -f json',
    )
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
    """The computation of one head for one query token, step by step, checked against the forward pass."""
    fmt = resolve_format(format, FORMATS)
    ckpt, tokens = prepare(model, text, truncate=truncate, ids=ids)
    # the batched forward and the batched re-run of the layer for the check: two layers' working sets; the
    # explained layer's tensors are held throughout, on top of the forward's
    n_head, n_seq = ckpt.config.n_head, len(tokens.ids)
    working_set = memory_needed(ckpt.config, n_seq) + full_attention_bytes(n_head, n_seq)
    check_memory(2 * working_set + ckpt.weight_bytes(extra_layers=1), max_memory, "use a shorter text")
    ex = run_explain(ckpt, tokens.ids, layer, head, query)
    if fmt == "json":
        doc = {"model": ckpt.model_dict(), "tokens": tokens.tokens, "token_ids": tokens.ids.tolist()} | ex.to_dict()
        sys.stdout.write(dumps(doc) + "\n")
    elif fmt == "text":
        from mhacli.render import explain_text

        sys.stdout.write(explain_text(ex, tokens.tokens, full=full))
    else:
        from mhacli.render import make_console, render_explain

        render_explain(make_console(), ex, tokens.tokens, full=full)
    return ExitCode.OK if ex.matches else ExitCode.CHECK_FAILED
