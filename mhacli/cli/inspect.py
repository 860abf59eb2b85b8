"""`mha inspect`: attention maps and statistics of the selected heads."""

from __future__ import annotations

from typing import Annotated

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
    output,
    prepare,
    progress,
)
from mhacli.cli._save import DpiOpt, SaveList, save_option
from mhacli.cli.ablate import AblateOpt
from mhacli.errors import UsageError
from mhacli.ops.ablation import check_ablate_spec
from mhacli.ops.heads import HeadsRequest, InspectResult, inspect_picture, plan_heads
from mhacli.views import save as saving
from mhacli.views.display import format_bytes
from mhacli.views.output import FORMATS

# Machine output past this many bytes gets a note on stderr suggesting --save FILE.npz (and -l/-H).
BIG_OUTPUT_BYTES = 100 * 1024 * 1024
# Bytes one attention weight takes in JSON: up to 8 decimals ("0.12345678"), a comma and a space; fewer for
# the zeros and ones of sharp heads, so this is an upper-end estimate.
JSON_BYTES_PER_WEIGHT = 12


@app.command(
    rich_help_panel="Looking",
    epilog=examples(
        'mha inspect "The cat sat on the mat. The cat sat on the mat." -l 0 -H 3',
        'mha inspect "ROMEO: I love thee." -m sample-early --query 3',
        "mha inspect --ids 352,277,303,2012 -l 1 -f json --save maps.npz",
        'echo "The cat sat on the mat." | mha inspect -l 1 -H 2 --top 2',
    ),
)
def inspect(
    text: TextArg = None,
    model: ModelOpt = None,
    ids: IdsOpt = None,
    layer: LayerOpt = None,
    head: HeadOpt = None,
    format: FormatOpt = None,
    query: Annotated[int | None, typer.Option("--query", "-q", help="Show one query row: where token I looks.")] = None,
    top: Annotated[
        int | None, typer.Option("--top", "-k", min=1, help="List the K strongest keys of every query.")
    ] = None,
    start: Annotated[
        int | None,
        typer.Option(
            "--from",
            min=0,
            help="First query row of the map window on a terminal (default: the window ends at the last token).",
        ),
    ] = None,
    keys: Annotated[
        str | None,
        typer.Option(
            "--keys", metavar="A:B", help="Key columns A..B-1 of the map window on a terminal (key 0 stays in front)."
        ),
    ] = None,
    panel_size: Annotated[
        int | None,
        typer.Option(
            "--panel-size",
            metavar="N",
            min=2,
            help="Keys (and query rows) per map on a terminal (default: fit the width).",
        ),
    ] = None,
    save: Annotated[SaveList, save_option(InspectResult.PICTURES)] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
    truncate: TruncateOpt = False,
    max_memory: MaxMemoryOpt = None,
    ablate: AblateOpt = None,
) -> None:
    """Attention maps and statistics of heads (default: every head)."""
    out = output(format, FORMATS)
    fmt = out.fmt
    if query is not None and top is not None:
        raise UsageError("--query and --top are two views; pick one")
    saves = saving.parse(save, InspectResult.PICTURES, dpi=dpi)
    key_range = parse_key_range(keys) if keys is not None else None
    check_ablate_spec(ablate)
    ckpt, tokens = prepare(model, text, truncate=truncate, ids=ids)
    n_seq = len(tokens.ids)
    if key_range is not None and key_range[0] >= n_seq:
        raise UsageError(f"--keys {keys}: the text has keys 0..{n_seq - 1}")
    if query is not None and not -n_seq <= query < n_seq:
        raise UsageError(f"--query {query} is out of range: the text has tokens 0..{n_seq - 1}")
    if query is not None and query < 0:
        query += n_seq
    # Whole maps only for what writes them; a terminal, --query and --top get only what they show
    # (mhacli.analyses.partial), csv/tsv only statistics.
    whole = bool(saves) or fmt in ("json", "jsonl") or (fmt == "text" and query is None and top is None)
    request = None
    if not whole and fmt in ("rich", "text"):
        from mhacli.views.terminal.inspect import map_request

        width = out.env.console.width if fmt == "rich" else 0  # only what it will show is computed: long texts fit
        request = map_request(
            n_seq, width=width, query=query, top=top, start=start, keys=key_range, panel_keys=panel_size
        )
    plan = plan_heads(ckpt, tokens.ids, HeadsRequest(layer, head, whole, request, max_memory, "maps", ablate))
    n_layers, n_heads = plan.n_layers, plan.n_heads
    if fmt in ("json", "jsonl"):
        size = output_size(n_layers * n_heads, n_seq)
        if size > BIG_OUTPUT_BYTES:
            note(
                f"-f {fmt} will write about {format_bytes(size)} of attention weights ({n_layers * n_heads} heads x "
                f"{n_seq} tokens); --save FILE.npz stores them in "
                f"{format_bytes(4 * n_layers * n_heads * n_seq * n_seq)} "
                "(float32), and -l/-H select heads"
            )
    views = plan.run(progress)
    saving.write_all(saves, inspect_picture(ckpt, tokens, views, plan.ablated), dpi=dpi)
    model_doc, ids_list = ckpt.model_dict(), tokens.ids.tolist()
    result = InspectResult(
        model_doc, tokens.tokens, ids_list, views, query, top, start, key_range, panel_size, ablated=plan.ablated
    )
    out.emit(result)


def output_size(n_heads: int, n_seq: int) -> int:
    """Estimated bytes of inspect's JSON attention: the lower triangle, n_seq(n_seq+1)/2 weights per head."""
    return n_heads * n_seq * (n_seq + 1) // 2 * JSON_BYTES_PER_WEIGHT


def parse_key_range(spec: str) -> tuple[int, int]:
    """`A:B` (either side may be empty: `:50`, `100:`) -> (A, B), B exclusive; B defaults to the end of the text."""
    a, sep, b = spec.partition(":")
    try:
        lo = int(a) if a.strip() else 0
        hi = int(b) if b.strip() else 2**62
    except ValueError:
        lo = hi = -1
    if not sep or lo < 0 or hi <= lo:
        raise UsageError(f"--keys {spec!r} is not a key range A:B with 0 <= A < B (e.g. 0:64, 100:)")
    return lo, hi
