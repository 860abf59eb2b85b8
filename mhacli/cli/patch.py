"""`mha patch`: which heads carry the difference between a clean and a corrupted prompt (activation patching)."""

from __future__ import annotations

from typing import Annotated

import typer

from mhacli.cli._app import app, examples
from mhacli.cli._common import PACK_TOKENS, FormatOpt, ModelOpt, PackTokensOpt, check_pack_tokens, load, output
from mhacli.cli._save import DpiOpt, SaveList, save_option
from mhacli.ops.patch import PatchReport, PatchRequest, patch_picture, run_patch
from mhacli.views import save as saving
from mhacli.views.output import FORMATS


@app.command(
    rich_help_panel="Causes",
    epilog=examples(
        "mha patch 'a b a' 'c b a' --answer ' b' --wrong ' c'",
        "mha patch 'a b a' 'c b a' --answer ' b' --wrong ' c' --site q --by-pos",
        "mha patch 'a b a' 'c b a' --answer ' b' --wrong ' c' --sender 0.1 -f json",
        "mha patch 'a b a' 'c b a' --answer ' b' --wrong ' c' --site resid --noise",
    ),
)
def patch(
    clean: Annotated[str | None, typer.Argument(help="The clean prompt.", show_default=False)] = None,
    corrupt: Annotated[
        str | None, typer.Argument(help="The corrupted prompt (the same number of tokens).", show_default=False)
    ] = None,
    answer: Annotated[str | None, typer.Option("--answer", help="The clean prompt's answer: one token.")] = None,
    wrong: Annotated[str | None, typer.Option("--wrong", help="The corrupted prompt's answer: one token.")] = None,
    metric: Annotated[
        str, typer.Option("--metric", help="logit_diff (answer - wrong logit), logprob, prob or loss.")
    ] = "logit_diff",
    site: Annotated[
        str,
        typer.Option(
            "--site",
            help="What is patched: z (head output), q, k, v (per K/V head), pattern, or resid (the residual stream "
            "entering each layer, always per position).",
        ),
    ] = "z",
    by_pos: Annotated[
        bool, typer.Option("--by-pos", help="Patch each (head, position) alone (implied by --site resid).")
    ] = False,
    noise: Annotated[
        bool, typer.Option("--noise/--denoise", help="Patch corrupted activations into the clean run instead.")
    ] = False,
    pairs: Annotated[
        str | None,
        typer.Option("--pairs", metavar="FILE", help='JSON lines {"clean", "corrupt", "answer", "wrong"} (-: stdin).'),
    ] = None,
    sender: Annotated[
        str | None, typer.Option("--sender", metavar="L.H", help="Path patching: the sender head.")
    ] = None,
    receiver_site: Annotated[
        str, typer.Option("--receiver-site", help="Path patching: the receivers' input patched: q, k or v.")
    ] = "q",
    pack_tokens: PackTokensOpt = PACK_TOKENS,
    model: ModelOpt = None,
    format: FormatOpt = None,
    save: Annotated[SaveList, save_option(PatchReport.PICTURES)] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
) -> None:
    """Activation patching: which heads restore the clean behaviour.

    Runs the corrupted prompt with one head's activation from the clean run (--noise: the reverse) and scores
    (patched - corrupt) / (clean - corrupt) of the metric at the last position. With --sender, the sender's clean
    write reaches only each later head's --receiver-site (direct path patching)."""
    out = output(format, FORMATS)
    check_pack_tokens(pack_tokens)
    saves = saving.parse(save, PatchReport.PICTURES, dpi=dpi)
    ckpt, tokenizer = load(model, cache=True)
    request = PatchRequest(
        clean=clean, corrupt=corrupt, answer=answer, wrong=wrong, pairs=pairs, metric=metric, site=site,
        by_pos=by_pos, noise=noise, sender=sender, receiver_site=receiver_site, pack_tokens=pack_tokens,
    )  # fmt: skip
    doc = run_patch(ckpt, tokenizer, request)
    saving.write_all(saves, patch_picture(ckpt, doc), dpi=dpi)
    out.emit(PatchReport(doc))
