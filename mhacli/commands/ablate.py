"""`mha ablate` (each head removed alone: its effect on the loss) and `mha prune` (pruning curves against a random
order), and the `--ablate L.H,...|@mask.json` option that inspect, stats and diff share."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

import typer

from mhacli.ablate import (
    Ablator, Head, ablate_each, check_head, importance_curve, parse_heads, prunable_fraction, random_curve,
    removal_edits, schedule,
)  # fmt: skip
from mhacli.commands._app import app, examples
from mhacli import save as saving
from mhacli.commands._save import DpiOpt, SaveList, save_option
from mhacli.commands._common import (
    FormatOpt, HeadOpt, IdsOpt, LayerOpt, MaxMemoryOpt, ModelOpt, TextArg, TruncateOpt, check_memory, check_text_or_ids,
    load, resolve_format, tokens_of,
)  # fmt: skip
from mhacli.errors import UsageError
from mhacli.loss import VOCAB_BLOCK
from mhacli.heads import check_selection, memory_needed
from mhacli.model import LayerTrace, ZEdit
from mhacli.output import MACHINE_FORMATS, atomic_write_bytes, check_writable, dumps, write_head_doc, write_table
from mhacli.stats import StatsAccumulator, head_stats
from mhacli.textin import TokenizedText, read_ids, read_text, read_texts
from mhacli.weights import Checkpoint, check_model

MAX_MASK_BYTES = 1024 * 1024
TextsOpt = Annotated[
    str | None, typer.Option("--texts", metavar="FILE", help="Score every line of FILE ('-': stdin) instead of TEXT.")
]
MethodOpt = Annotated[
    Literal["zero", "mean"], typer.Option("--method", help="How a head is removed: zeroed, or replaced by its mean output.")
]
LossFromOpt = Annotated[
    int, typer.Option("--loss-from", metavar="I", help="Score only target tokens at positions >= I (default 1: all).")
]
AblateOpt = Annotated[
    str | None,
    typer.Option("--ablate", metavar="HEADS", help="Remove heads first (zeroed): L.H[,L.H...] or @mask.json."),
]


# --- --ablate on inspect / stats / diff ----------------------------------------------------------------------------


def read_mask(path: str, n_layer: int, n_head: int) -> list[Head]:
    """A mask file (`mha prune --save-mask`): {"model": {"n_layer", "n_head"}, "heads": [[layer, head], ...]}."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MASK_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"--ablate @{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_MASK_BYTES:
        raise UsageError(f"--ablate @{path}: larger than 1 MiB; a mask file lists heads")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UsageError(f"--ablate @{path}: not a JSON mask file ({type(exc).__name__})") from exc
    shape = doc.get("model") if isinstance(doc, dict) else None
    heads = doc.get("heads") if isinstance(doc, dict) else None
    if not isinstance(shape, dict) or not isinstance(heads, list):
        raise UsageError(f'--ablate @{path}: expected {{"model": {{"n_layer": L, "n_head": H}}, "heads": [[layer, head], ...]}}')
    if (shape.get("n_layer"), shape.get("n_head")) != (n_layer, n_head):
        raise UsageError(
            f"--ablate @{path}: the mask is for a model of {shape.get('n_layer')} layers x {shape.get('n_head')} heads; "
            f"this one has {n_layer} x {n_head}"
        )
    result: list[Head] = []
    for item in heads:
        ok = isinstance(item, list) and len(item) == 2 and all(type(v) is int for v in item)
        if not ok:
            raise UsageError(f"--ablate @{path}: {str(item)[:40]} is not a [layer, head] pair")
        check_head((item[0], item[1]), n_layer, n_head)
        if (item[0], item[1]) not in result:
            result.append((item[0], item[1]))
    return result


def check_ablate_spec(spec: str | None) -> None:
    """--ablate @FILE: the file must exist (checked before stdin is read; its heads need the model's shape)."""
    if spec is None or not spec.startswith("@"):
        return
    path = Path(spec[1:])
    try:
        regular = path.is_file()
    except (OSError, ValueError):
        regular = False
    if not regular:
        raise UsageError(f"--ablate {spec}: cannot read: no such file (a mask file, as mha prune --save-mask writes)")


def ablated_heads(spec: str | None, ckpt: Checkpoint) -> list[Head]:
    """--ablate: `L.H,...` or `@FILE.json` -> the heads; [] when not given."""
    if spec is None:
        return []
    c = ckpt.config
    if spec.startswith("@"):
        return read_mask(spec[1:], c.n_layer, c.n_head)
    return parse_heads(spec, c.n_layer, c.n_head)


def ablation_edits(spec: str | None, ckpt: Checkpoint) -> dict[int, ZEdit] | None:
    """--ablate as the forward's edits (heads zeroed), None when not given."""
    heads = ablated_heads(spec, ckpt)
    return removal_edits(heads) if heads else None


# --- texts and kinds --------------------------------------------------------------------------------------------------


def scored_texts(
    model: str | None, text: str | None, texts: str | None, truncate: bool, max_memory: str | None, ids: str | None = None
) -> tuple[Checkpoint, list[TokenizedText]]:
    """TEXT, --ids or --texts FILE, read after -m is checked and before the model loads (a bad text fails fast);
    weights kept in memory when the model is small (every evaluation reruns layers). Refused before any forward
    when the cached residual streams (every text's stream entering every layer, twice: the base and one
    evaluation), a layer's working set, the output head's logits block and the weights need more than --max-memory."""
    check_text_or_ids(text, ids, texts)
    files = check_model(model)
    raws: list[tuple[str | list[int], str]]
    if texts is not None:
        raws = [(raw, f"--texts line {n}") for n, raw in read_texts(texts)]
    elif ids is not None:
        raws = [(read_ids(ids), "--ids")]
    else:
        raws = [(read_text(text), "the text")]
    ckpt, tokenizer = load(model, cache=None, files=files)
    c = ckpt.config
    tokenized = []
    for raw, where in raws:
        t = tokens_of(raw, ckpt, tokenizer, truncate=truncate, where=where)
        if len(t.ids) < 2:
            raise UsageError(f"{where} is one token long: there is no next token to score")
        tokenized.append(t)
    n_seq = max(len(t.ids) for t in tokenized)
    streams = 2 * (c.n_layer + 1) * c.n_embd * 4 * sum(len(t.ids) for t in tokenized)
    logits = 4 * n_seq * min(VOCAB_BLOCK, c.vocab_size) * 2
    working = memory_needed(c, n_seq, weight_bytes=ckpt.weight_bytes())
    check_memory(streams + logits + working, max_memory, "score fewer or shorter texts")
    return ckpt, tokenized


class KindTally:
    """Each head's kind on every text of the intact model's run; a head's kind is its most frequent one."""

    def __init__(self, texts: list[TokenizedText], n_head: int) -> None:
        self.texts = texts
        self.n_head = n_head
        self.kinds: dict[Head, Counter] = {}
        self._streams: dict[int, StatsAccumulator] = {}

    def sinks(self, index: int):
        """Each layer's statistics, streamed from its attention (no map kept)."""

        def sink(layer: int) -> StatsAccumulator:
            self._streams[layer] = StatsAccumulator(self.n_head, self.texts[index].ids)
            return self._streams[layer]

        return sink

    def __call__(self, index: int, trace: LayerTrace) -> None:
        for s in head_stats(trace.layer, self._streams.pop(trace.layer).result()):
            self.kinds.setdefault((s.layer, s.head), Counter())[s.kind] += 1

    def kind(self, head: Head) -> str:
        return self.kinds[head].most_common(1)[0][0]  # ties: the kind seen first


def make_ablator(
    ckpt: Checkpoint, texts: list[TokenizedText], method: str, loss_from: int, *, kinds: bool = False
) -> tuple[Ablator, KindTally | None]:
    """The Ablator over the texts; with kinds=True, each head's kind from the same intact run (statistics of every
    layer of every text: only `ablate` shows them)."""
    if loss_from < 0:
        raise UsageError(f"--loss-from {loss_from} must be 0 or more")
    tally = KindTally(texts, ckpt.config.n_head) if kinds else None
    return Ablator(ckpt, [t.ids for t in texts], method=method, loss_from=loss_from, observe=tally), tally


def ticker(total: int, description: str):
    """A progress bar on stderr (terminal only): returns (tick, close)."""
    from mhacli.commands._common import progress

    bar = progress(iter(range(total)), total, description)
    next(bar, None)

    def tick() -> None:
        next(bar, None)

    return tick, bar.close


# --- mha ablate -------------------------------------------------------------------------------------------------------


@app.command(
    epilog=examples(
        'mha ablate "ROMEO: I love thee. JULIET: I love thee." -l 1',
        'mha ablate "The cat sat. The cat sat." --method mean --loss-from 5 -f csv',
        "mha ablate --ids 352,277,303,2012,352,277,303,2012 -m sample-early -f json",
    )
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
    save: Annotated[SaveList, save_option("ablate")] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
) -> None:
    """Each head removed alone: the next-token loss against the intact model, in nats/token and %."""
    fmt = resolve_format(format, ("rich", "text", *MACHINE_FORMATS))
    if top < 1:
        raise UsageError(f"--top {top} must be at least 1")
    saves = saving.parse(save, "ablate", dpi=dpi)
    ckpt, tokenized = scored_texts(model, text, texts, truncate, max_memory, ids)
    c = ckpt.config
    check_selection(c.n_layer, c.n_head, layer, head)
    selected = [(lay, h) for lay in sorted(set(layer or range(c.n_layer))) for h in sorted(set(head or range(c.n_head)))]
    ablator, tally = make_ablator(ckpt, tokenized, method, loss_from, kinds=True)
    assert tally is not None
    tick, close = ticker(len(selected), "ablating heads")
    effects = ablate_each(ablator, selected, tick)
    close()
    first = tokenized[0]
    doc = {
        "model": ckpt.model_dict(), "tokens": first.tokens, "token_ids": first.ids.tolist(), "n_texts": len(tokenized),
        "method": method, "loss_from": loss_from, "n_targets": ablator.n_targets, "baseline_loss": ablator.baseline,
        "heads": [
            {"layer": e.layer, "head": e.head, "kv_head": c.kv_head(e.head), "kind": tally.kind((e.layer, e.head)),
             "loss": e.loss, "delta": e.delta, "delta_pct": e.delta_pct}
            for e in effects
        ],
    }  # fmt: skip
    saving.write_all(saves, saving.ablate_picture(saves, ckpt, tokenized, doc), dpi=dpi)
    if fmt in MACHINE_FORMATS:
        columns = ("layer", "head", "kind", "loss", "delta", "delta_pct")
        write_head_doc(sys.stdout, fmt, doc, columns, ([r[k] for k in columns] for r in doc["heads"]))
    elif fmt == "text":
        from mhacli.plain import write_ablate

        write_ablate(sys.stdout, doc)
    else:
        from mhacli.render import make_console, render_ablate

        render_ablate(make_console(), doc, top)


# --- mha prune --------------------------------------------------------------------------------------------------------


@app.command(
    epilog=examples(
        'mha prune "ROMEO: I love thee. JULIET: I love thee." --seeds 2 --step 0.25',
        'mha prune "The cat sat. The cat sat." --save-mask pruned.json -f json',
        'mha stats "The cat sat. The cat sat." --ablate @pruned.json',
    )
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
        float, typer.Option("--max-increase", help="Loss increase allowed, as a fraction of the baseline (0.05: 5%).")
    ] = 0.05,
    save_mask: Annotated[
        Path | None, typer.Option("--save-mask", metavar="FILE", help="Write the pruned heads as a mask file (JSON).")
    ] = None,
    format: FormatOpt = None,
    truncate: TruncateOpt = False,
    max_memory: MaxMemoryOpt = None,
    save: Annotated[SaveList, save_option("prune")] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
) -> None:
    """The pruning curve: heads removed least important first (re-measured every round) against random orders."""
    fmt = resolve_format(format, ("rich", "text", *MACHINE_FORMATS))
    if not 0.0 < step <= 1.0:
        raise UsageError(f"--step {step} must be in (0, 1]: the fraction of all heads removed per round")
    if seeds < 1:
        raise UsageError(f"--seeds {seeds} must be at least 1")
    if not max_increase >= 0.0 or max_increase == float("inf"):
        raise UsageError(f"--max-increase {max_increase} must be a finite fraction >= 0 (0.05 is 5%)")
    if save_mask is not None:
        check_writable(save_mask)
    saves = saving.parse(save, "prune", dpi=dpi)
    ckpt, tokenized = scored_texts(model, text, texts, truncate, max_memory, ids)
    c = ckpt.config
    ablator, _ = make_ablator(ckpt, tokenized, method, loss_from)
    n_heads = c.n_layer * c.n_head
    counts = schedule(n_heads, step)
    evaluations = sum(n_heads - n for n in counts[:-1]) + seeds * (len(counts) - 1)
    tick, close = ticker(evaluations, "pruning")
    curve = importance_curve(ablator, step, tick)
    rand = random_curve(ablator, step, seeds, tick)
    close()
    base = ablator.baseline
    imp_fraction = prunable_fraction([s.fraction for s in curve], [s.loss for s in curve], base, max_increase)
    rand_fraction = prunable_fraction([s.fraction for s in rand], [s.loss_mean for s in rand], base, max_increase)
    pruned = sorted(h for s in curve if s.fraction <= imp_fraction for h in s.removed)
    doc = {
        "model": ckpt.model_dict(), "n_texts": len(tokenized), "method": method, "loss_from": loss_from,
        "n_targets": ablator.n_targets, "baseline_loss": base, "step": step, "max_increase": max_increase,
        "importance": {
            "curve": [{"n_removed": s.n_removed, "fraction": s.fraction, "loss": s.loss, "removed": [list(h) for h in s.removed]} for s in curve],
            "prunable_fraction": imp_fraction,
        },
        "random": {
            "seeds": seeds,
            "curve": [{"n_removed": s.n_removed, "fraction": s.fraction, "loss_mean": s.loss_mean, "loss_std": s.loss_std} for s in rand],
            "prunable_fraction": rand_fraction,
        },
        "pruned": [list(h) for h in pruned],
    }  # fmt: skip
    if save_mask is not None:
        mask = {"model": {"n_layer": c.n_layer, "n_head": c.n_head}, "heads": [list(h) for h in pruned]}
        atomic_write_bytes(save_mask, (dumps(mask) + "\n").encode())
    saving.write_all(saves, saving.prune_picture(ckpt, tokenized, doc), dpi=dpi)
    if fmt == "json":
        sys.stdout.write(dumps(doc) + "\n")
    elif fmt in ("jsonl", "csv", "tsv"):
        rows = [["importance", s.n_removed, s.fraction, s.loss, None, " ".join(f"{a}.{b}" for a, b in s.removed)] for s in curve]
        rows += [["random", s.n_removed, s.fraction, s.loss_mean, s.loss_std, None] for s in rand]
        columns = ("order", "n_removed", "fraction", "loss", "loss_std", "removed")
        if fmt == "jsonl":
            for row in rows:
                sys.stdout.write(dumps(dict(zip(columns, row))) + "\n")
        else:
            write_table(sys.stdout, fmt, columns, rows)
    elif fmt == "text":
        from mhacli.plain import write_prune

        write_prune(sys.stdout, doc)
    else:
        from mhacli.render import make_console, render_prune

        render_prune(make_console(), doc)
