"""`mha diff MODEL_A MODEL_B [TEXT]`: per-head divergence between two models on the same token ids."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import typer

from mhacli.commands._app import app, examples
from mhacli import save as saving
from mhacli.commands._save import DpiOpt, SaveList, save_option
from mhacli.commands.ablate import ablation_edits, check_ablate_spec
from mhacli.commands._common import (
    FormatOpt, IdsOpt, MaxMemoryOpt, TextArg, TruncateOpt, check_memory, check_text_or_ids, load, progress,
    resolve_format, warn,
)  # fmt: skip
from mhacli.heads import memory_needed
from mhacli.divergence import METRICS, DiffReport, check_metric, check_same_tokens, compare_text, summarise
from mhacli.errors import ExitCode, TextError, UsageError
from mhacli.output import MACHINE_FORMATS, dumps
from mhacli.textin import check_ids_fit, from_ids, read_ids, read_text, read_texts
from mhacli.weights import check_model
from mhacli.tokenizer import Tokenizer
from mhacli.weights import Checkpoint

FAIL_LINES = 20  # offending heads listed on stderr before "... and N more"


@dataclass(frozen=True)
class DiffText:
    ids: np.ndarray  # [n_seq] int64
    tokens: list[str]
    where: str  # "the text" or "--texts line N", for messages


def tokenize_both(
    raw: str, where: str, a: tuple[Checkpoint, Tokenizer], b: tuple[Checkpoint, Tokenizer], truncate: bool
) -> DiffText:
    """The text's token ids, required to be the same under both tokenizers and to fit both models."""
    (ckpt_a, tok_a), (ckpt_b, tok_b) = a, b
    n_a, n_b = ckpt_a.config.n_positions, ckpt_b.config.n_positions
    limit = min(n_a, n_b)
    # only a prefix of a long text is tokenized (sized for `limit` tokens); both tokenizers see the same prefix
    ids_a, n_chars = tok_a.encode_prefix(raw, limit)
    ids_b = tok_b.encode(raw[:n_chars])
    check_same_tokens(ids_a, ids_b, tok_a.display, tok_b.display, where)
    if not ids_a:
        raise TextError(f"{where} produced no tokens")
    check_ids_fit(ids_a, min(ckpt_a.config.vocab_size, ckpt_b.config.vocab_size))
    count = str(len(ids_a)) if n_chars == len(raw) else f"more than {len(ids_a)}"
    if len(ids_a) > limit:
        which = "both models'" if max(n_a, n_b) < len(ids_a) else ("MODEL_A's" if n_a < n_b else "MODEL_B's")
        if not truncate:
            raise TextError(
                f"{where} is {count} tokens, longer than {which} n_positions ({limit}); "
                "shorten it or pass --truncate to keep the first tokens"
            )
        warn(f"{where} truncated to the first {limit} of {count} tokens")
        ids_a = ids_a[:limit]
    return DiffText(np.asarray(ids_a, dtype=np.int64), tok_a.display(ids_a), where)


def ids_for_both(ids: list[int], a: tuple[Checkpoint, Tokenizer], b: tuple[Checkpoint, Tokenizer], truncate: bool) -> DiffText:
    """--ids: checked against both models' vocab_size and n_positions (the smaller of each), shown with A's tokenizer."""
    (ckpt_a, tok_a), (ckpt_b, _) = a, b
    vocab = min(ckpt_a.config.vocab_size, ckpt_b.config.vocab_size)
    limit = min(ckpt_a.config.n_positions, ckpt_b.config.n_positions)
    t = from_ids(tok_a, ids, limit, vocab_size=vocab, truncate=truncate)
    if t.truncated_from is not None:
        warn(f"--ids truncated to the first {limit} of {t.truncated_from} tokens")
    return DiffText(t.ids, t.tokens, "--ids")


@app.command(
    epilog=examples(
        'mha diff sample-early sample "ROMEO: I love thee. ROMEO: I love thee."',
        'mha diff sample-early sample "The cat sat on the mat." --metric tv -f csv',
        'mha diff sample sample "The cat sat. The cat sat." --ablate 0.3 -f text',
        "mha diff sample-early sample --ids 352,277,303,2012 --match -f json",
    )
)
def diff(
    model_a: Annotated[str, typer.Argument(metavar="MODEL_A", help="The reference model (any form -m accepts).")],
    model_b: Annotated[str, typer.Argument(metavar="MODEL_B", help="The model compared with it.")],
    text: TextArg = None,
    ids: IdsOpt = None,
    texts: Annotated[
        str | None,
        typer.Option("--texts", "-t", metavar="FILE", help="Average over the texts of FILE, one per line ('-': stdin)."),
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
    start: Annotated[int, typer.Option("--from", min=0, help="First query row of the two maps on a terminal.")] = 0,
    format: FormatOpt = None,
    truncate: TruncateOpt = False,
    max_memory: MaxMemoryOpt = None,
    ablate: Annotated[
        str | None,
        typer.Option("--ablate", metavar="HEADS", help="Remove heads of MODEL_B first (zeroed): L.H[,L.H...] or @mask.json."),
    ] = None,
    save: Annotated[SaveList, save_option("diff")] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
) -> int:
    """Per-head divergence between two models on the same text (same tokenizer needed)."""
    fmt = resolve_format(format, ("rich", "text", *MACHINE_FORMATS))
    check_metric(metric)
    if fail_above is not None and not fail_above >= 0:
        raise UsageError(f"--fail-above {fail_above} must be a number >= 0")
    saves = saving.parse(save, "diff", dpi=dpi)
    check_text_or_ids(text, ids, texts)
    check_ablate_spec(ablate)
    files_a, files_b = check_model(model_a), check_model(model_b)  # a wrong path is named before stdin is read
    if texts is not None:
        raws = [(raw, f"--texts line {n}") for n, raw in read_texts(texts)]
    elif ids is not None:
        given = read_ids(ids)
    else:
        raws = [(read_text(text), "the text")]
    # several texts: read small models once
    a, b = load(model_a, cache=None, files=files_a), load(model_b, cache=None, files=files_b)
    if ids is not None:
        items = [ids_for_both(given, a, b, truncate)]
    else:
        items = [tokenize_both(raw, where, a, b, truncate) for raw, where in raws]
    (ckpt_a, _), (ckpt_b, _) = a, b
    edits_b = ablation_edits(ablate, ckpt_b)
    shape_a = (ckpt_a.config.n_layer, ckpt_a.config.n_head)
    shape_b = (ckpt_b.config.n_layer, ckpt_b.config.n_head)
    mode = "paired" if shape_a == shape_b and not match else "matched"
    n_seq = max(len(t.ids) for t in items)
    # the weights: small models' tensors stay cached once read (load(cache=None)), larger ones stream by layer
    weights = ckpt_a.weight_bytes() + ckpt_b.weight_bytes()
    if mode == "paired":  # both forwards streamed at once: no map kept
        needed = memory_needed(ckpt_a.config, n_seq, weight_bytes=weights, forwards=2)
    else:  # matched mode keeps all of A's maps while B runs, a layer's map at a time
        kept = memory_needed(ckpt_a.config, n_seq, kept_layers=shape_a[0], kept_heads=shape_a[1], keep_maps=True)
        needed = kept + memory_needed(ckpt_b.config, n_seq, kept_layers=1, kept_heads=shape_b[1], keep_maps=True, weight_bytes=weights)
    check_memory(needed, max_memory, "use shorter texts")
    per_text = [
        compare_text(ckpt_a, ckpt_b, t.ids, metric, mode, edits_b)
        for t in progress(items, len(items), f"comparing heads on {len(items)} texts")
    ]
    report = summarise(per_text, metric, mode, shape_a, shape_b)
    saving.write_all(saves, saving.diff_picture(saves, ckpt_a, ckpt_b, report, items[0], edits_b), dpi=dpi)
    write_report(fmt, report, ckpt_a, ckpt_b, items, top, start)
    return ExitCode.OK if fail_above is None else check_threshold(report, fail_above)


def check_threshold(report: DiffReport, threshold: float) -> int:
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
    print("\n".join(lines), file=sys.stderr)
    return ExitCode.CHECK_FAILED


def write_report(
    fmt: str, report: DiffReport, ckpt_a: Checkpoint, ckpt_b: Checkpoint, items: list[DiffText], top: int, start: int = 0
) -> None:
    if fmt == "json":
        doc = {
            "model_a": ckpt_a.source,
            "model_b": ckpt_b.source,
            "metric": report.metric,
            "mode": report.mode,
            "n_texts": report.n_texts,
            "tokens": items[0].tokens,  # the first text's; n_tokens has every text's length
            "n_tokens": [len(t.ids) for t in items],
        }
        sys.stdout.write(dumps(doc | report.to_dict()) + "\n")
    elif fmt == "jsonl":
        sys.stdout.write("".join(dumps(r.to_dict()) + "\n" for r in report.heads))
    elif fmt in ("csv", "tsv"):
        from mhacli.plain import write_diff_table

        write_diff_table(sys.stdout, fmt, report)
    elif fmt == "text":
        from mhacli.plain import write_diff

        write_diff(sys.stdout, report, ckpt_a.source, ckpt_b.source, [len(t.ids) for t in items])
    else:
        from mhacli.heads import analyse
        from mhacli.render import make_console, render_diff

        maps = None
        if report.heads and report.max_divergence > 0:
            r, first = report.heads[0], items[0]
            view_a = next(analyse(ckpt_a, first.ids, layers=[r.layer_a], heads=[r.head_a], keep_maps=True))
            view_b = next(analyse(ckpt_b, first.ids, layers=[r.layer_b], heads=[r.head_b], keep_maps=True))
            maps = (view_a, view_b)
        render_diff(make_console(), report, ckpt_a.source, ckpt_b.source, items[0].tokens, maps, top=top, start=start)

