"""`mha ablate`, `mha prune`, and the `--ablate` option that inspect, stats and diff share.

`mha ablate`: each head removed alone, its effect on the loss; `mha prune`: pruning curves against a random order;
`--ablate L.H[,L.H...]|@mask.json`. The work is mhacli.ops.ablation's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from mhacli.cli._app import app, examples
from mhacli.cli._common import (
    PACK_TOKENS,
    FormatOpt,
    HeadOpt,
    IdsOpt,
    LayerOpt,
    MaxMemoryOpt,
    ModelOpt,
    PackTokensOpt,
    TextArg,
    TruncateOpt,
    check_pack_tokens,
    load,
    output,
    progress,
    tokens_of,
)
from mhacli.cli._save import DpiOpt, SaveList, save_option
from mhacli.errors import UsageError
from mhacli.ops.ablation import (
    ablate_doc,
    ablate_picture,
    ablation,
    check_ablate_spec,
    check_scorable,
    prune_and_mask,
    scorable,
    selected_heads,
)
from mhacli.ops.inputs import check_model, check_text_or_ids, read_inputs
from mhacli.views import save as saving

if TYPE_CHECKING:
    from mhacli.api import Checkpoint, TokenizedText
from mhacli.ops.ablation import AblateResult, PruneResult, prune_picture
from mhacli.views.ablated import Ablated
from mhacli.views.formats import atomic_write_bytes, check_writable, dumps
from mhacli.views.output import FORMATS

TextsOpt = Annotated[
    str | None,
    typer.Option(
        "--texts",
        metavar="FILE",
        help="Score these texts instead of TEXT: each non-blank line of FILE ('-': stdin), or the \"text\" field "
        "of each line of a FILE.jsonl/.ndjson.",
    ),
]
MethodOpt = Annotated[
    Literal["zero", "mean"],
    typer.Option("--method", help="How a head is removed: zeroed, or replaced by its mean output."),
]
LossFromOpt = Annotated[
    int, typer.Option("--loss-from", metavar="I", help="Score only target tokens at positions >= I (default 1: all).")
]
AblateOpt = Annotated[
    str | None,
    typer.Option("--ablate", metavar="HEADS", help="Remove heads first (zeroed): L.H[,L.H...] or @mask.json."),
]


def scored_texts(
    model: str | None,
    text: str | None,
    texts: str | None,
    truncate: bool,
    max_memory: str | None,
    ids: str | None = None,
    pack_tokens: int = PACK_TOKENS,
) -> tuple[Checkpoint, list[TokenizedText]]:
    """TEXT, --ids or --texts FILE, read after -m is checked and before the model loads (a bad text fails fast).

    Weights kept in memory once read (every evaluation reruns layers) unless only streaming them fits --max-memory;
    refused before any forward when even that does not fit (mhacli.ops.ablation.check_scorable).
    """
    check_text_or_ids(text, ids, texts)
    check_pack_tokens(pack_tokens)
    files = check_model(model)
    raws = read_inputs(text, ids, texts)
    ckpt, tokenizer = load(model, cache=True, files=files)
    tokenized = [
        (scorable(tokens_of(raw, ckpt, tokenizer, truncate=truncate, where=where), where), where) for raw, where in raws
    ]
    check_scorable(ckpt, tokenized, max_memory, pack_tokens)
    return ckpt, [t for t, _ in tokenized]


def ticker(total: int, description: str):
    """A progress bar on stderr (terminal only): returns (tick, close)."""
    bar = progress(iter(range(total)), total, description)
    next(bar, None)

    def tick() -> None:
        next(bar, None)

    return tick, bar.close


# --- mha ablate -------------------------------------------------------------------------------------------------------


@app.command(
    rich_help_panel="Causes",
    epilog=examples(
        'mha ablate "ROMEO: I love thee. JULIET: I love thee." -l 1',
        'mha ablate "The cat sat. The cat sat." --method mean --loss-from 5 -f csv',
        "mha ablate --ids 352,277,303,2012,352,277,303,2012 -m sample-early -f json",
        'mha ablate "The cat sat. The cat sat." --ablate 1.0,1.3 -l 1',
    ),
)
def ablate(
    text: TextArg = None,
    model: ModelOpt = None,
    ids: IdsOpt = None,
    texts: TextsOpt = None,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    method: MethodOpt = "zero",
    loss_from: LossFromOpt = 1,
    top: Annotated[int, typer.Option("--top", "-k", help="Heads in the terminal ranking.")] = 10,
    format: FormatOpt = None,
    truncate: TruncateOpt = False,
    max_memory: MaxMemoryOpt = None,
    pack_tokens: PackTokensOpt = PACK_TOKENS,
    save: Annotated[SaveList, save_option(AblateResult.PICTURES)] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
    ablate: Annotated[
        str | None,
        typer.Option(
            "--ablate",
            metavar="HEADS",
            help="Measure on a model with these heads removed first: L.H[,L.H...] (zeroed) or @mask.json (as "
            "prune measured it). The baseline is that model's loss; each head is a further removal.",
        ),
    ] = None,
) -> None:
    """Each head removed alone: its cost in next-token loss.

    The next-token loss against the intact model (or the --ablate'd one), in nats/token and %."""
    out = output(format, FORMATS)
    if top < 1:
        raise UsageError(f"--top {top} must be at least 1")
    check_ablate_spec(ablate)
    saves = saving.parse(save, AblateResult.PICTURES, dpi=dpi)
    ckpt, tokenized = scored_texts(model, text, texts, truncate, max_memory, ids, pack_tokens)
    c = ckpt.config
    pinned = ablation(ablate, ckpt)
    selected = selected_heads(c.n_layer, c.n_head, layer, head)
    doc = ablate_doc(
        ckpt, tokenized, selected, method, loss_from, ticker, pinned=pinned, max_memory=max_memory,
        pack_tokens=pack_tokens,
    )  # fmt: skip
    described = Ablated.of(pinned)
    saving.write_all(saves, ablate_picture(saves, ckpt, tokenized, doc, described), dpi=dpi)
    out.emit(AblateResult(doc, top, described))


# --- mha prune --------------------------------------------------------------------------------------------------------


@app.command(
    rich_help_panel="Causes",
    epilog=examples(
        'mha prune "ROMEO: I love thee. JULIET: I love thee." --seeds 2 --step 0.25',
        'mha prune "The cat sat. The cat sat." --save-mask pruned.json -f json',
        'mha stats "The cat sat. The cat sat." --ablate @pruned.json',
        "printf 'A cat.\\nA dog.\\n' | mha prune --texts - --pack-tokens 1",
    ),
)
def prune(
    text: TextArg = None,
    model: ModelOpt = None,
    ids: IdsOpt = None,
    texts: TextsOpt = None,
    method: MethodOpt = "zero",
    loss_from: LossFromOpt = 1,
    step: Annotated[float, typer.Option("--step", help="Fraction of all heads removed per round, in (0, 1].")] = 0.1,
    seeds: Annotated[int, typer.Option("--seeds", help="Random removal orders averaged for the baseline curve.")] = 5,
    max_increase: Annotated[
        float,
        typer.Option(
            "--max-increase",
            help="Loss increase allowed, as a fraction of the baseline (0.05: 5%). The prunable fraction is where "
            "each curve first crosses it (the last point before the loss first exceeds it).",
        ),
    ] = 0.05,
    save_mask: Annotated[
        Path | None, typer.Option("--save-mask", metavar="FILE", help="Write the pruned heads as a mask file (JSON).")
    ] = None,
    format: FormatOpt = None,
    truncate: TruncateOpt = False,
    max_memory: MaxMemoryOpt = None,
    pack_tokens: PackTokensOpt = PACK_TOKENS,
    save: Annotated[SaveList, save_option(PruneResult.PICTURES)] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
) -> None:
    """The pruning curve: heads removed by importance vs at random.

    Heads removed least important first (re-measured every round) against random orders."""
    out = output(format, FORMATS)
    if not 0.0 < step <= 1.0:
        raise UsageError(f"--step {step} must be in (0, 1]: the fraction of all heads removed per round")
    if seeds < 1:
        raise UsageError(f"--seeds {seeds} must be at least 1")
    if not max_increase >= 0.0 or max_increase == float("inf"):
        raise UsageError(f"--max-increase {max_increase} must be a finite fraction >= 0 (0.05 is 5%)")
    if save_mask is not None:
        check_writable(save_mask, "--save-mask")
    saves = saving.parse(save, PruneResult.PICTURES, dpi=dpi)
    ckpt, tokenized = scored_texts(model, text, texts, truncate, max_memory, ids, pack_tokens)
    doc, mask = prune_and_mask(
        ckpt, tokenized, method, loss_from, step, seeds, max_increase, ticker, max_memory=max_memory,
        pack_tokens=pack_tokens,
    )  # fmt: skip
    if save_mask is not None:
        atomic_write_bytes(save_mask, (dumps(mask) + "\n").encode())
    saving.write_all(saves, prune_picture(ckpt, tokenized, doc), dpi=dpi)
    out.emit(PruneResult(doc))
