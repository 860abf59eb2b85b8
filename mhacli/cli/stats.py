"""`mha stats`: statistics and kind of every head; on a terminal a layer x head overview."""

from __future__ import annotations

import sys
from typing import Annotated, Literal

import typer

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
    prepare,
    progress,
    resolve_format,
)
from mhacli.cli._save import DpiOpt, SaveList, save_option
from mhacli.cli.ablate import AblateOpt
from mhacli.ops.ablation import ablation_edits, check_ablate_spec
from mhacli.ops.heads import STAT_NAMES, TOO_PLAIN, check_heads, head_views, undecidable
from mhacli.views import save as saving
from mhacli.views.formats import MACHINE_FORMATS, write_heads


@app.command(
    rich_help_panel="Looking",
    epilog=examples(
        'mha stats "The cat sat on the mat. The cat sat on the mat."',
        'mha stats "The cat sat. The cat sat." --stat induction -l 1',
        'mha stats "ROMEO: I love thee." -m sample-early -f csv',
        "mha stats --ids 352,277,303,2012,352,277,303 -H 2 -H 3 -f json",
    )
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
            help=f"Number shown in the grid, on a 0-1 scale (the text table is ordered by it): auto (each head's kind score), {', '.join(STAT_NAMES)}.",
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
    save: Annotated[SaveList, save_option("stats")] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
) -> None:
    """Every head's statistics and kind, streamed (no maps kept)."""
    fmt = resolve_format(format, ("rich", "text", *MACHINE_FORMATS))
    saves = saving.parse(save, "stats", dpi=dpi)
    keep = saving.wants(saves, "html")  # the page shows every head's map
    check_ablate_spec(ablate)
    ckpt, tokens = prepare(model, text, truncate=truncate, ids=ids)
    c = ckpt.config
    # streamed (no maps) unless a page wants the maps
    n_layers, n_heads = check_heads(
        ckpt, len(tokens.ids), layer, head, keep_maps=keep, max_memory=max_memory, how_to_narrow="use a shorter text"
    )
    edits = ablation_edits(ablate, ckpt)
    views = list(
        progress(
            head_views(ckpt, tokens.ids, layers=layer, heads=head, keep_maps=keep, edits=edits),
            n_layers * n_heads,
            "running layers",
        )
    )
    saving.write_all(saves, saving.stats_picture(ckpt, tokens, views, stat), dpi=dpi)
    if fmt in MACHINE_FORMATS:
        if stat != "auto":
            note(f"--stat picks the terminal grid's number and orders the text table; {fmt} has every statistic")
        write_heads(sys.stdout, fmt, ckpt.model_dict(), tokens.tokens, tokens.ids.tolist(), views, with_attention=False)
    elif fmt == "text":
        from mhacli.views.plain import write_stats

        write_stats(sys.stdout, views, stat)
        if views and undecidable(views[0].stats.support):
            note(TOO_PLAIN)
    else:
        from mhacli.views.terminal import make_console, render_stats

        render_stats(
            make_console(), views, c.n_layer, c.n_head, stat, len(tokens.ids), layout="compact" if compact else "auto"
        )
