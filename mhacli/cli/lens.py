"""`mha lens`: the logit lens, every layer's next-token prediction at every position. The work is mhacli.ops.lens'."""

from __future__ import annotations

from typing import Annotated

import typer

from mhacli.cli._app import app, examples
from mhacli.cli._common import FormatOpt, IdsOpt, MaxMemoryOpt, ModelOpt, TextArg, TruncateOpt, output
from mhacli.cli._save import DpiOpt, SaveList, save_option
from mhacli.cli.attribute import prepared
from mhacli.errors import UsageError
from mhacli.ops.lens import LensRequest, LensResult, lens_picture, run_lens
from mhacli.views import save as saving
from mhacli.views.output import FORMATS


@app.command(
    rich_help_panel="Causes",
    epilog=examples(
        'mha lens "ROMEO: I love thee. JULIET: I love thee"',
        'mha lens "The cat sat. The cat sat" --pos -1 --top 3 -f json',
        "mha lens --ids 352,277,303,2012,352,277 -f csv",
    ),
)
def lens(
    text: TextArg = None,
    model: ModelOpt = None,
    ids: IdsOpt = None,
    top: Annotated[
        int, typer.Option("--top", "-k", metavar="K", help="Most likely tokens per layer and position.")
    ] = 5,
    pos: Annotated[
        list[int] | None,
        typer.Option("--pos", metavar="I", help="Position to read (repeatable; negative: from the end; default all)."),
    ] = None,
    format: FormatOpt = None,
    truncate: TruncateOpt = False,
    max_memory: MaxMemoryOpt = None,
    save: Annotated[SaveList, save_option(LensResult.PICTURES)] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
) -> None:
    """Every layer's next-token prediction: the logit lens.

    The final norm and the output head applied to the residual stream after the embeddings and after every block,
    at every position: the top tokens with their probabilities, and the actual next token's probability and rank."""
    out = output(format, FORMATS)
    if top < 1:
        raise UsageError(f"--top {top} must be at least 1")
    saves = saving.parse(save, LensResult.PICTURES, dpi=dpi)
    ckpt, tokenizer, tokens = prepared(model, text, ids, truncate)
    doc = run_lens(ckpt, tokenizer, tokens, LensRequest(top, pos, max_memory)).to_dict()
    saving.write_all(saves, lens_picture(ckpt, tokens, doc), dpi=dpi)
    out.emit(LensResult(doc))
