"""`mha circuits`: QK/OV circuits, composition scores and copying scores, from the weights alone (no text)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from mhacli.cli._app import app, examples
from mhacli.cli._common import FormatOpt, HeadOpt, LayerOpt, ModelOpt, load, output
from mhacli.cli._save import DpiOpt, SaveList, save_option
from mhacli.ops.circuits import CircuitsRequest, CircuitsResult, circuits_picture, run_circuits
from mhacli.views import save as saving
from mhacli.views.output import FORMATS


@app.command(
    rich_help_panel="Weights",
    epilog=examples(
        "mha circuits",
        "mha circuits --mode K -l 1 -H 2",
        "mha circuits -m sample-early --fold-ln --top 5 -f json",
        "mha circuits --mode K --mode V -f csv",
    ),
)
def circuits(
    mode: Annotated[
        list[str] | None,
        typer.Option(
            "--mode",
            metavar="MODE",
            help="Composition kind: Q, K or V (an earlier head's output read by a later head's queries, keys or "
            "values; repeatable; default all three).",
        ),
    ] = None,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    top: Annotated[
        int, typer.Option("--top", "-k", metavar="K", help="Token pairs per head of its OV and QK circuits (0: none).")
    ] = 3,
    fold_ln: Annotated[
        bool,
        typer.Option("--fold-ln", help="Fold the norms into the weights as TransformerLens' default processing does."),
    ] = False,
    no_unembed: Annotated[
        bool,
        typer.Option(
            "--no-unembed",
            help="Do not read the output head: no copying scores, no OV token pairs (a model without one).",
        ),
    ] = False,
    model: ModelOpt = None,
    format: FormatOpt = None,
    save: Annotated[SaveList, save_option(CircuitsResult.PICTURES)] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
) -> None:
    """Composition and copying scores from the weights alone, no text.

    Which earlier head feeds each later head's queries, keys or values (composition scores beside a random
    baseline), whether a head copies what it attends to, and the tokens its OV and QK circuits map; no text."""
    out = output(format, FORMATS)
    saves = saving.parse(save, CircuitsResult.PICTURES, dpi=dpi)
    ckpt, tokenizer = load(model, cache=None)
    request = CircuitsRequest(layers=layer, heads=head, top=top, fold_ln=fold_ln, unembed=not no_unembed)
    if mode:
        request = replace(request, modes=[m.upper() for m in mode])
    doc = run_circuits(ckpt, tokenizer, request).to_dict()
    saving.write_all(saves, circuits_picture(ckpt, doc), dpi=dpi)
    out.emit(CircuitsResult(doc))
