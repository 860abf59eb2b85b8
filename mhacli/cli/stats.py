"""`mha stats`: statistics and kind of every head; on a terminal a layer x head overview."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from mhacli.api import STAT_NAMES
from mhacli.cli._app import app, examples
from mhacli.cli._common import (
    FormatOpt,
    HeadOpt,
    IdsOpt,
    LayerOpt,
    MaxMemoryOpt,
    ModelOpt,
    TextArg,
    TruncateOpt,
    note,
    output,
    prepare,
    progress,
)
from mhacli.cli._save import DpiOpt, SaveList, save_option
from mhacli.cli.ablate import AblateOpt
from mhacli.ops.ablation import check_ablate_spec
from mhacli.ops.heads import HeadsRequest, StatsResult, plan_heads, stats_picture
from mhacli.views import save as saving
from mhacli.views.output import FORMATS


@app.command(
    rich_help_panel="Looking",
    epilog=examples(
        'mha stats "The cat sat on the mat. The cat sat on the mat."',
        'mha stats "The cat sat. The cat sat." --stat induction -l 1',
        'mha stats "ROMEO: I love thee." -m sample-early -f csv',
        "mha stats --ids 352,277,303,2012,352,277,303 -H 2 -H 3 -f json",
    ),
)
def stats(
    text: TextArg = None,
    model: ModelOpt = None,
    ids: IdsOpt = None,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    format: FormatOpt = None,
    stat: Annotated[
        Literal[("auto", *STAT_NAMES)],  # type: ignore[valid-type]
        typer.Option(
            "--stat",
            "-s",
            metavar="NAME",
            help="Number shown in the grid, on a 0-1 scale (the text table is ordered by it): "
            f"auto (each head's kind score), {', '.join(STAT_NAMES)}.",
        ),
    ] = "auto",
    compact: Annotated[
        bool,
        typer.Option(
            "--compact", help="One character per head in the grid (chosen by itself when the full grid does not fit)."
        ),
    ] = False,
    truncate: TruncateOpt = False,
    max_memory: MaxMemoryOpt = None,
    ablate: AblateOpt = None,
    save: Annotated[SaveList, save_option(StatsResult.PICTURES)] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
) -> None:
    """Every head's statistics and kind, streamed (no maps kept)."""
    out = output(format, FORMATS)
    saves = saving.parse(save, StatsResult.PICTURES, dpi=dpi)
    keep = saving.wants(saves, "html")  # the page shows every head's map
    check_ablate_spec(ablate)
    ckpt, tokens = prepare(model, text, truncate=truncate, ids=ids)
    c = ckpt.config
    # streamed (no maps) unless a page wants the maps
    views = plan_heads(ckpt, tokens.ids, HeadsRequest(layer, head, keep, None, max_memory, "text", ablate)).run(
        progress
    )
    saving.write_all(saves, stats_picture(ckpt, tokens, views, stat), dpi=dpi)
    if out.machine and stat != "auto":
        note(f"--stat picks the terminal grid's number and orders the text table; {out.fmt} has every statistic")
    model_doc, ids_list = ckpt.model_dict(), tokens.ids.tolist()
    result = StatsResult(model_doc, tokens.tokens, ids_list, views, c.n_layer, c.n_head, stat=stat, compact=compact)
    out.emit(result)
