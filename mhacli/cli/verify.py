"""`mha verify`: compare our NumPy forward with HF transformers (eager, float32) on the same token ids."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from mhacli.cli._app import app, examples
from mhacli.cli._common import (
    REPORT_FORMATS,
    IdsOpt,
    ModelOpt,
    ReportFormatOpt,
    TextArg,
    TruncateOpt,
    prepare,
    resolve_format,
)
from mhacli.errors import ExitCode, UsageError
from mhacli.ops.verify import HIDDEN_ATOL
from mhacli.views.formats import dumps

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
    )
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
    fmt = resolve_format(format, REPORT_FORMATS)
    if not (atol > 0 and hidden_atol > 0):
        raise UsageError("--atol and --hidden-atol must be positive")
    if text is None and ids is None and sys.stdin is not None and sys.stdin.isatty():
        text = DEFAULT_TEXT
    ckpt, tokens = prepare(model, text, truncate=truncate, ids=ids)
    from mhacli.ops.verify import verify as run_verify

    report = run_verify(ckpt, tokens.ids, atol=atol, hidden_atol=hidden_atol)
    if fmt == "json":
        sys.stdout.write(dumps(report.to_dict()) + "\n")
    else:
        lines = [
            f"{'layer':>5}  {'attention max abs err':>21}  {'hidden max abs err':>18}  {'hidden bound':>12}  result"
        ]
        for c in report.layers:
            ok = "ok" if report.layer_passed(c) else "FAIL"
            bound = report.hidden_atol * c.hidden_scale
            lines.append(
                f"{c.layer:>5}  {c.attention_max_abs_err:>21.3e}  {c.hidden_max_abs_err:>18.3e}  {bound:>12.1e}  {ok}"
            )
        if report.head is not None:
            h = report.head
            ok = "ok" if report.head_passed else "FAIL"
            lines.append(
                f"{'head':>5}  loss {h.loss:.6f} (HF {h.hf_loss:.6f}, rel err {h.loss_rel_err:.1e}); "
                f"logits max abs err {h.logits_max_abs_err:.3e}  {ok}"
            )
        else:
            lines.append(
                f"{'head':>5}  no output head in this checkpoint (no lm_head.weight, embeddings not tied): loss not checked"
            )
        verdict = "PASSED" if report.passed else "FAILED"
        lines.append(
            f"{verdict}: {len(tokens.ids)} tokens, {len(report.layers)} layers; max attention error "
            f"{report.max_attention_err:.3e} (atol {atol:g}), max hidden error {report.max_hidden_err:.3e}"
        )
        if fmt == "rich":
            from mhacli.views.terminal import make_console, render_verify

            render_verify(make_console(), lines, report.passed)
        else:
            sys.stdout.write("\n".join(lines) + "\n")
    return ExitCode.OK if report.passed else ExitCode.CHECK_FAILED
