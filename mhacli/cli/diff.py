"""`mha diff MODEL_A MODEL_B [TEXT]`: per-head divergence between two models on the same token ids."""

from __future__ import annotations

from typing import Annotated, Literal, TextIO

import typer

from mhacli.api import METRICS, DiffReport
from mhacli.cli._app import app, examples
from mhacli.cli._common import (
    PACK_TOKENS,
    FormatOpt,
    IdsOpt,
    MaxMemoryOpt,
    PackTokensOpt,
    TextArg,
    TruncateOpt,
    check_pack_tokens,
    load,
    output,
    progress,
    warn,
)
from mhacli.cli._save import DpiOpt, SaveList, save_option
from mhacli.errors import ExitCode, UsageError
from mhacli.ops.ablation import check_ablate_spec
from mhacli.ops.diff import DiffRequest, DiffResult, diff_picture, peak_maps
from mhacli.ops.diff import diff as run_diff
from mhacli.ops.inputs import check_model, check_text_or_ids, read_inputs
from mhacli.views import save as saving
from mhacli.views.output import FORMATS

FAIL_LINES = 20  # offending heads listed on stderr before "... and N more"


@app.command(
    rich_help_panel="Comparing",
    epilog=examples(
        'mha diff sample-early sample "ROMEO: I love thee. ROMEO: I love thee."',
        "printf 'A cat.\\nA dog.\\n' | mha diff sample-early sample --texts - -f csv",
        'mha diff sample sample "The cat sat. The cat sat." --ablate 0.3 -f text',
        "mha diff sample-early sample --ids 352,277,303,2012 --match -f json",
    ),
)
def diff(
    model_a: Annotated[str, typer.Argument(metavar="MODEL_A", help="The reference model (any form -m accepts).")],
    model_b: Annotated[str, typer.Argument(metavar="MODEL_B", help="The model compared with it.")],
    text: TextArg = None,
    ids: IdsOpt = None,
    texts: Annotated[
        str | None,
        typer.Option(
            "--texts",
            "-t",
            metavar="FILE",
            help="Average over these texts: each non-blank line of FILE ('-': stdin), or the \"text\" field of each "
            "line of a FILE.jsonl/.ndjson.",
        ),
    ] = None,
    metric: Annotated[
        Literal[tuple(METRICS)],  # type: ignore[valid-type]
        typer.Option("--metric", help="js: Jensen-Shannon (bits); tv: total variation; cosine: 1 - cosine similarity."),
    ] = "js",
    match: Annotated[bool, typer.Option("--match", help="Match heads (Hungarian) even when the shapes agree.")] = False,
    fail_above: Annotated[
        float | None, typer.Option("--fail-above", metavar="X", help="Exit 1 when any head's divergence exceeds X.")
    ] = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="Heads in the ranked table on a terminal.")] = 10,
    start: Annotated[
        int | None,
        typer.Option(
            "--from",
            min=0,
            help="First query row of the two maps on a terminal (default: the rows ending at the text's last token).",
        ),
    ] = None,
    format: FormatOpt = None,
    truncate: TruncateOpt = False,
    max_memory: MaxMemoryOpt = None,
    ablate: Annotated[
        str | None,
        typer.Option(
            "--ablate", metavar="HEADS", help="Remove heads of MODEL_B first (zeroed): L.H[,L.H...] or @mask.json."
        ),
    ] = None,
    pack_tokens: PackTokensOpt = PACK_TOKENS,
    save: Annotated[SaveList, save_option(DiffResult.PICTURES)] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
) -> int:
    """Per-head divergence between two models on the same text.

    The two models need the same tokenizer (the same token ids for the text)."""
    out = output(format, FORMATS)
    if fail_above is not None and not fail_above >= 0:
        raise UsageError(f"--fail-above {fail_above} must be a number >= 0")
    check_pack_tokens(pack_tokens)
    saves = saving.parse(save, DiffResult.PICTURES, dpi=dpi)
    check_text_or_ids(text, ids, texts)
    check_ablate_spec(ablate)
    files_a, files_b = check_model(model_a), check_model(model_b)  # a wrong path is named before stdin is read
    raws = read_inputs(text, ids, texts)
    # several texts: read small models once
    a, b = load(model_a, cache=None, files=files_a), load(model_b, cache=None, files=files_b)
    request = DiffRequest(raws, metric, match, ablate, truncate, max_memory, pack_tokens)
    done = run_diff(a, b, request, on_truncate=warn, progress=progress)
    (ckpt_a, _), (ckpt_b, _) = a, b
    report, items = done.report, done.texts
    picture = diff_picture(saves, ckpt_a, ckpt_b, report, items[0], done.edits_b, done.ablated_b)
    saving.write_all(saves, picture, dpi=dpi)
    n_tokens = [len(t.ids) for t in items]
    maps = lambda: peak_maps(ckpt_a, ckpt_b, report, items[0], done.edits_b)  # noqa: E731 - a forward: only the terminal draws them
    tokens = items[0].tokens
    out.emit(DiffResult(report, ckpt_a.source, ckpt_b.source, tokens, n_tokens, maps, top, start, done.ablated_b))
    return ExitCode.OK if fail_above is None else check_threshold(report, fail_above, out.env.stderr)


def check_threshold(report: DiffReport, threshold: float, stderr: TextIO) -> int:
    """--fail-above: CHECK_FAILED, with the offending heads on stderr, when any divergence exceeds `threshold`."""
    bad = report.above(threshold)
    if not bad:
        return ExitCode.OK
    lines = [f"diff: {len(bad)} of {len(report.heads)} heads diverge by more than {threshold:g} ({report.metric}):"]
    lines += [
        f"  A layer {r.layer_a} head {r.head_a} -> B layer {r.layer_b} head {r.head_b}: {r.divergence:.6g}"
        for r in bad[:FAIL_LINES]
    ]
    if len(bad) > FAIL_LINES:
        lines.append(f"  ... and {len(bad) - FAIL_LINES} more")
    print("\n".join(lines), file=stderr)
    return ExitCode.CHECK_FAILED
