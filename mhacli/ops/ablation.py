"""Heads removed (`ablate`, `prune`, the --ablate option, Run.ablate).

The heads named by a spec or a mask file, each head's effect on the loss, and the pruning curves. Progress is the
caller's: `ticker(total, description)` returns (tick, close).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mhacli.analyses.ablate import (
    METHODS,
    Ablator,
    Head,
    HeadEffect,
    Removal,
    ablate_each,
    check_head,
    importance_curve,
    parse_heads,
    prunable_fraction,
    random_curve,
    schedule,
)
from mhacli.analyses.heads import analyse, check_selection
from mhacli.analyses.stats import StatsAccumulator, TextIndex, head_stats
from mhacli.engine.blocks import ZEdit
from mhacli.engine.forward import LayerTrace
from mhacli.engine.segments import PACK_TOKENS, PackSink, Segments, pack_groups, per_text
from mhacli.errors import Cancelled, UsageError
from mhacli.io.files import note_input
from mhacli.io.textin import TokenizedText
from mhacli.ops.memory import Size, check_memory, memory_limit, scoring_bytes, variant_bytes
from mhacli.views.ablated import Ablated
from mhacli.views.formats import written
from mhacli.views.save import Picture, Pictures, Target, caption, wants

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

MAX_MASK_BYTES = 1024 * 1024
Ticker = Callable[[int, str], tuple[Callable[[], None], Callable[[], None]]]
Progress = Callable[[int, int], bool | None]  # (heads done, heads in all) -> False to stop


def progress_tick(progress: Progress | None, total: int, what: str = "heads") -> Callable[[], None] | None:
    """A tick for the analyses' per-step hook that reports (done, total) to `progress` after every step.

    When `progress` returns False the tick raises Cancelled, which stops the loop between two steps (the result so
    far is discarded). `progress(0, total)` is called first, so a caller can stop before any work.
    """
    if progress is None:
        return None
    done = 0

    def stop() -> None:
        raise Cancelled(f"stopped after {done} of {total} {what}", done=done, total=total)

    if progress(0, total) is False:
        stop()

    def tick() -> None:
        nonlocal done
        done += 1
        if progress(done, total) is False:
            stop()

    return tick


def progress_ticker(progress: Progress | None) -> Ticker:
    """`progress` as a Ticker (what ablate_doc and prune_and_mask take): each step calls progress_tick's tick."""

    def ticker(total: int, description: str) -> tuple[Callable[[], None], Callable[[], None]]:
        return progress_tick(progress, total) or (lambda: None), (lambda: None)

    return ticker


def _no_ticker(total: int, description: str) -> tuple[Callable[[], None], Callable[[], None]]:
    return (lambda: None), (lambda: None)


# --- --ablate on inspect / stats / diff ----------------------------------------------------------------------------


def read_mask(path: str, n_layer: int, n_head: int, d_head: int | None = None) -> Removal:
    """A mask file (`mha prune --save-mask`), checked against this model: the heads and how they are removed.

    {"model": {"n_layer", "n_head", "d_head"}, "method": "zero" | "mean", "heads": [[layer, head], ...],
    "means": [[d_head floats], ...] (mean: head i's replacement output, float32 written exactly)}. A file without
    "method" (written before masks recorded it) is zero; one without "d_head" is not checked for it.
    """
    doc = _mask_json(path)
    shape = doc.get("model") if isinstance(doc, dict) else None
    heads = doc.get("heads") if isinstance(doc, dict) else None
    if not isinstance(shape, dict) or not isinstance(heads, list):
        raise UsageError(
            f'--ablate @{path}: expected {{"model": {{"n_layer": L, "n_head": H}}, "heads": [[layer, head], ...]}}'
        )
    if (shape.get("n_layer"), shape.get("n_head")) != (n_layer, n_head):
        raise UsageError(
            f"--ablate @{path}: the mask is for a model of {str(shape.get('n_layer'))[:20]} layers x "
            f"{str(shape.get('n_head'))[:20]} heads; "
            f"this one has {n_layer} x {n_head}"
        )
    if d_head is not None and "d_head" in shape and shape["d_head"] != d_head:
        raise UsageError(
            f"--ablate @{path}: the mask is for heads of d_head {str(shape['d_head'])[:20]}; this model's have {d_head}"
        )
    result: list[Head] = []
    for item in heads:
        ok = isinstance(item, list) and len(item) == 2 and all(type(v) is int for v in item)
        if not ok:
            raise UsageError(f"--ablate @{path}: {str(item)[:40]} is not a [layer, head] pair")
        try:
            check_head((item[0], item[1]), n_layer, n_head)
        except UsageError as exc:
            raise UsageError(f"--ablate @{path}: {exc}") from exc
        if (item[0], item[1]) in result:
            raise UsageError(f"--ablate @{path}: head {item[0]}.{item[1]} is listed twice")
        result.append((item[0], item[1]))
    method = doc.get("method", "zero")
    if method not in METHODS:
        raise UsageError(f"--ablate @{path}: method {str(method)[:20]!r} is not one of: {', '.join(METHODS)}")
    means = _mask_means(path, doc.get("means"), len(result), d_head) if method == "mean" else None
    if method == "zero" and "means" in doc:
        raise UsageError(f"--ablate @{path}: means are given but the method is zero")
    return Removal(tuple(result), method, means)


def _mask_json(path: str):
    try:
        with open(path, "rb") as f:
            note_input(f.fileno(), "--ablate mask")
            raw = f.read(MAX_MASK_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"--ablate @{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_MASK_BYTES:
        raise UsageError(f"--ablate @{path}: larger than {MAX_MASK_BYTES // 1024**2} MiB; a mask file lists heads")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except NotANumber as exc:
        raise UsageError(f"--ablate @{path}: {exc}") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UsageError(f"--ablate @{path}: not a JSON mask file ({type(exc).__name__})") from exc


class NotANumber(ValueError):
    """NaN or Infinity in a mask file: JSON does not have them, and no recorded mean is one."""


def _no_constant(name: str):
    raise NotANumber(f"{name} is not a number a mask file may hold")


def _mask_means(path: str, means, n_heads: int, d_head: int | None) -> np.ndarray:
    """A mean mask's "means": one list of d_head finite numbers per head -> [n_heads, d_head] float32."""
    rows = means if isinstance(means, list) and len(means) == n_heads else None
    width = d_head if d_head is not None else len(rows[0]) if rows else 0
    if rows is None or not all(isinstance(r, list) and len(r) == width for r in rows):
        raise UsageError(
            f'--ablate @{path}: a mean mask needs "means": one list of {width or "d_head"} numbers per head '
            f"({n_heads} heads)"
        )
    if not all(type(v) in (int, float) for r in rows for v in r):
        raise UsageError(f'--ablate @{path}: "means" holds something that is not a number')
    try:
        with np.errstate(over="ignore"):
            values = np.asarray(rows, dtype=np.float64).astype(np.float32).reshape(n_heads, width)
    except OverflowError:  # an integer past float64's range
        values = np.full((n_heads, width), np.inf, dtype=np.float32)
    if not np.isfinite(values).all():
        raise UsageError(f'--ablate @{path}: "means" holds a value beyond float32\'s range')
    return values


def mask_doc(
    n_layer: int,
    n_head: int,
    heads: Sequence[Head],
    *,
    d_head: int | None = None,
    method: str = "zero",
    means: np.ndarray | None = None,
) -> dict:
    """What read_mask reads: the model's shape, the method and the heads, as [layer, head] pairs.

    For `mean`, each head's replacement output (means [n_layer, n_head, d_head] float32, as the Ablator measured
    them): each float32 written as the shortest decimal that reads back to it, so a replay is exact.
    """
    model = {"n_layer": n_layer, "n_head": n_head} | ({} if d_head is None else {"d_head": d_head})
    doc: dict = {"model": model, "method": method, "heads": [list(h) for h in heads]}
    if method == "mean":
        assert means is not None  # the Ablator of a mean prune has them
        doc["means"] = [[float(v) for v in means[layer, h]] for layer, h in heads]
    return doc


def selected_heads(n_layer: int, n_head: int, layers: Sequence[int] | None, heads: Sequence[int] | None) -> list[Head]:
    """The heads of the selected layers and heads (each in range; None: all), in order."""
    check_selection(n_layer, n_head, layers, heads)
    return [(lay, h) for lay in sorted(set(layers or range(n_layer))) for h in sorted(set(heads or range(n_head)))]


def check_ablate_spec(spec: str | None) -> None:
    """--ablate @FILE: the file must exist (checked before stdin is read; its heads need the model's shape)."""
    if spec is None or not spec.startswith("@"):
        return
    path = Path(spec[1:])
    try:
        regular, directory = path.is_file(), path.is_dir()
    except (OSError, ValueError):
        regular = directory = False
    if not regular:
        if directory:
            raise UsageError(f"--ablate {spec}: is a directory; give a mask file (as mha prune --save-mask writes)")
        raise UsageError(f"--ablate {spec}: cannot read: no such file (a mask file, as mha prune --save-mask writes)")


def ablation(spec: str | Sequence[Head] | None, ckpt) -> Removal | None:
    """The heads removed, each checked against the model; None when not given.

    --ablate's `L.H,...` (zeroed) or `@FILE.json` (as the mask file says), or the API's (layer, head) pairs (zeroed;
    sorted, duplicates dropped).
    """
    if spec is None:
        return None
    c = ckpt.config
    if not isinstance(spec, str):
        heads = sorted(set(spec))
        for h in heads:
            check_head(h, c.n_layer, c.n_head)
        return Removal(tuple(heads))
    if spec.startswith("@"):
        return read_mask(spec[1:], c.n_layer, c.n_head, c.d_head)
    return Removal(tuple(parse_heads(spec, c.n_layer, c.n_head)))


def ablated_heads(spec: str | Sequence[Head] | None, ckpt) -> list[Head]:
    """The heads removed (--ablate's `L.H,...` or `@FILE.json`, or the API's pairs); [] when not given."""
    removal = ablation(spec, ckpt)
    return [] if removal is None else list(removal.heads)


def removal_edits_of(removal: Removal | None, ckpt) -> dict[int, ZEdit] | None:
    """A removal (`ablation`) as the forward's edits, heads zeroed or set to a mean mask's means; None when none."""
    return removal.edits(ckpt.config.d_head) if removal is not None and removal.heads else None


# --- texts scored, and each head's kind on them -------------------------------------------------------------------


def scorable(text: TokenizedText, where: str) -> TokenizedText:
    """The text, which must have a next token to score (`where` names it in the message)."""
    if len(text.ids) < 2:
        raise UsageError(f"{where} is one token long: there is no next token to score")
    return text


def check_scorable(
    ckpt, texts: Sequence[tuple[TokenizedText, str]], max_memory: Size, pack_tokens: int = PACK_TOKENS
) -> None:
    """Every text has a next token to score (`where` names it), and the scoring fits max_memory (ResourceError).

    A checkpoint that keeps its tensors (cache on: every evaluation reruns layers, so weights read once are kept,
    whatever their size) drops the cache when only streaming them layer by layer fits: the guard decides. The
    forwards are those of the packs of up to `pack_tokens` tokens the texts run in (pack_lengths).
    """
    for t, where in texts:
        scorable(t, where)
    lengths = pack_lengths([len(t.ids) for t, _ in texts], pack_tokens)
    if ckpt.cache is not None and scoring_bytes(ckpt, lengths) > memory_limit(max_memory):
        ckpt.cache = None  # weights streamed by layer: slower (read or dequantised per evaluation), but it fits
    check_memory(scoring_bytes(ckpt, lengths), max_memory, "scoring")


def pack_lengths(lengths: Sequence[int], pack_tokens: int) -> list[int]:
    """The length of each forward the scoring runs: texts packed up to `pack_tokens` tokens (pack_groups)."""
    return [sum(lengths[i] for i in group) for group in pack_groups(lengths, pack_tokens)]


MAX_BATCH = 64  # variants run at once, at most (ablate's are a layer's heads; prune's random orders more)


def scoring_batch(ckpt, lengths: Sequence[int], max_memory: Size, workers: int = 1) -> int:
    """How many variants each of `workers` runs at once: what is left under max_memory after the scoring's needs.

    At least 1 (check_scorable refused what does not fit one), at most MAX_BATCH. The batches' composition is the
    GEMMs' shape: a smaller batch (a tight --max-memory) may change the losses in their last float32 bits.
    """
    spare = memory_limit(max_memory) - scoring_bytes(ckpt, list(lengths))
    return int(max(1, min(MAX_BATCH, 1 + spare // (workers * variant_bytes(ckpt, max(lengths))))))


def ablation_workers() -> int:
    """Threads that run the Ablator's batches side by side (one BLAS thread each): the CPUs this process may use.

    $MHA_THREADS overrides (the attention kernel's own setting, mhacli.engine.attention.threads_for). Measured on
    2 cores (SmolLM2-135M, 64 tokens, 270 heads; benchmarks/ablate_speed.py): see docs/commands/ablate.md.
    """
    given = os.environ.get("MHA_THREADS", "")
    return int(given) if given.isdigit() and int(given) > 0 else len(os.sched_getaffinity(0))


class KindTally:
    """Each head's kind on every text of the intact model's run; a head's kind is its most frequent one."""

    def __init__(self, texts: list[TokenizedText], n_head: int) -> None:
        self.texts = texts
        self.n_head = n_head
        self.kinds: dict[Head, Counter] = {}
        self._streams: dict[int, list[StatsAccumulator]] = {}

    def sinks(self, index: int, segments: Segments | None = None):
        """Each layer's statistics, streamed from its attention (no map kept).

        Of text `index`, or of the pack `segments` of texts index, index + 1, ... (split per text: PackSink)."""
        count = 1 if segments is None else len(segments.lengths)
        indexes = [TextIndex(self.texts[i].ids) for i in range(index, index + count)]  # once for all layers

        def sink(layer: int) -> StatsAccumulator | PackSink:
            accs = [StatsAccumulator(self.n_head, x.ids, 0, x) for x in indexes]
            self._streams[layer] = accs
            return per_text(segments, accs)

        return sink

    def __call__(self, index: int, trace: LayerTrace) -> None:
        for acc in self._streams.pop(trace.layer):  # the texts in order: a tie goes to the kind seen first
            for s in head_stats(trace.layer, acc.result()):
                self.kinds.setdefault((s.layer, s.head), Counter())[s.kind] += 1

    def kind(self, head: Head) -> str:
        return self.kinds[head].most_common(1)[0][0]  # ties: the kind seen first


def make_ablator(
    ckpt,
    texts: list[TokenizedText],
    method: str,
    loss_from: int,
    *,
    kinds: bool = False,
    pinned: Removal | None = None,
    max_memory: Size = None,
    pack_tokens: int = PACK_TOKENS,
) -> tuple[Ablator, KindTally | None]:
    """The Ablator over the texts, as many variants at once as max_memory allows (scoring_batch).

    With kinds=True, each head's kind from the same first run (statistics of every layer of every text: only
    `ablate` shows them). `pinned`: heads removed first (--ablate). Short texts run in packs of up to
    `pack_tokens` tokens (1: each alone).
    """
    if loss_from < 0:
        raise UsageError(f"{{loss_from}} {loss_from} must be 0 or more", params=("loss_from",))
    tally = KindTally(texts, ckpt.config.n_head) if kinds else None
    workers = ablation_workers()
    batch = scoring_batch(ckpt, pack_lengths([len(t.ids) for t in texts], pack_tokens), max_memory, workers)
    ablator = Ablator(
        ckpt, [t.ids for t in texts], method, loss_from, tally, pinned=pinned, batch=batch, workers=workers,
        pack_tokens=pack_tokens,
    )  # fmt: skip
    return ablator, tally


# --- ablate and prune ---------------------------------------------------------------------------------------------


def ablate_heads(
    ckpt,
    texts: list[TokenizedText],
    heads: Sequence[Head] | None,
    method: str,
    loss_from: int,
    *,
    kinds: bool = False,
    ticker: Ticker = _no_ticker,
    pinned: Removal | None = None,
    max_memory: Size = None,
    pack_tokens: int = PACK_TOKENS,
) -> tuple[Ablator, list[HeadEffect], KindTally | None]:
    """Each of `heads` (None: every head) removed alone: the one orchestration of `mha ablate` and Run.ablate.

    Returns the Ablator (baseline loss, targets scored), each head's effect (largest delta first) and, with kinds,
    each head's kind on the intact run. `pinned`: heads removed first (--ablate); max_memory bounds the batch.
    """
    ablator, tally = make_ablator(
        ckpt, texts, method, loss_from, kinds=kinds, pinned=pinned, max_memory=max_memory, pack_tokens=pack_tokens
    )
    chosen = ablator.heads if heads is None else ablated_heads(heads, ckpt)
    tick, close = ticker(len(chosen), "ablating heads")
    effects = ablate_each(ablator, chosen, tick)
    close()
    return ablator, effects, tally


def ablate_doc(
    ckpt,
    texts: list[TokenizedText],
    heads: Sequence[Head],
    method: str,
    loss_from: int,
    ticker: Ticker = _no_ticker,
    *,
    pinned: Removal | None = None,
    max_memory: Size = None,
    pack_tokens: int = PACK_TOKENS,
) -> dict:
    """`mha ablate`'s document: each of `heads` removed alone, with its kind on the first run, largest delta first.

    `pinned` (--ablate): heads removed first; the baseline is that model's loss and each head a further removal.
    """
    c = ckpt.config
    ablator, effects, tally = ablate_heads(
        ckpt, texts, heads, method, loss_from, kinds=True, ticker=ticker, pinned=pinned, max_memory=max_memory,
        pack_tokens=pack_tokens,
    )  # fmt: skip
    assert tally is not None
    first = texts[0]
    return {
        "model": ckpt.model_dict(), "tokens": first.tokens, "token_ids": first.ids.tolist(), "n_texts": len(texts),
        "method": method, "loss_from": loss_from, "n_targets": ablator.n_targets, "baseline_loss": ablator.baseline,
        "heads": [
            {"layer": e.layer, "head": e.head, "kv_head": c.kv_head(e.head), "kind": tally.kind((e.layer, e.head)),
             "loss": e.loss, "delta": e.delta, "delta_pct": e.delta_pct}
            for e in effects
        ],
    }  # fmt: skip


def prune_and_mask(
    ckpt,
    texts: list[TokenizedText],
    method: str,
    loss_from: int,
    step: float,
    seeds: int,
    max_increase: float,
    ticker: Ticker = _no_ticker,
    *,
    max_memory: Size = None,
    pack_tokens: int = PACK_TOKENS,
) -> tuple[dict, dict]:
    """`mha prune`'s document, and the mask file of its pruned heads (mask_doc: the method, for mean the means).

    The document: the importance order's curve (re-measured every round) against `seeds` random orders, each one's
    prunable fraction at `max_increase`, and the pruned heads (`pruned`).
    """
    c = ckpt.config
    n_heads = c.n_layer * c.n_head
    counts = schedule(n_heads, step)
    ablator, _ = make_ablator(ckpt, texts, method, loss_from, max_memory=max_memory, pack_tokens=pack_tokens)
    tick, close = ticker(sum(n_heads - n for n in counts[:-1]) + seeds * len(counts), "pruning")
    curve = importance_curve(ablator, step, tick)
    rand = random_curve(ablator, step, seeds, tick)
    close()
    base = ablator.baseline
    imp_fraction = prunable_fraction([s.fraction for s in curve], [s.loss for s in curve], base, max_increase)
    rand_fraction = prunable_fraction([s.fraction for s in rand], [s.loss_mean for s in rand], base, max_increase)
    pruned = sorted(h for s in curve if s.fraction <= imp_fraction for h in s.removed)
    mask = mask_doc(c.n_layer, c.n_head, pruned, d_head=c.d_head, method=method, means=ablator.means)
    doc = {
        "model": ckpt.model_dict(), "n_texts": len(texts), "method": method, "loss_from": loss_from,
        "n_targets": ablator.n_targets, "baseline_loss": base, "step": step, "max_increase": max_increase,
        "importance": {
            "curve": [
                {
                    "n_removed": s.n_removed,
                    "fraction": s.fraction,
                    "loss": s.loss,
                    "removed": [list(h) for h in s.removed],
                }
                for s in curve
            ],
            "prunable_fraction": imp_fraction,
        },
        "random": {
            "seeds": seeds,
            "curve": [
                {"n_removed": s.n_removed, "fraction": s.fraction, "loss_mean": s.loss_mean, "loss_std": s.loss_std}
                for s in rand
            ],
            "prunable_fraction": rand_fraction,
        },
        "pruned": [list(h) for h in pruned],
    }  # fmt: skip
    return doc, mask


def ablate_picture(targets: list[Target], ckpt, texts, doc: dict, ablated: Ablated | None = None) -> Picture:
    """ablate: the document; the page also gets the intact model's maps of the first text."""
    first = texts[0]
    views = list(analyse(ckpt, first.ids, keep_maps=True)) if wants(targets, "html") else None
    text = caption(ckpt.source, "".join(first.tokens), len(first.ids))
    if len(texts) > 1:
        text += f"; loss over {len(texts)} texts, the first shown"
    return Picture(AblateResult.PICTURES, text, {"doc": doc, "views": views, "tokens": list(first.tokens)}, ablated)


def prune_picture(ckpt, texts, doc: dict) -> Picture:
    first = texts[0]
    text = caption(ckpt.source, "".join(first.tokens), len(first.ids))
    if len(texts) > 1:
        text += f"; loss over {len(texts)} texts"
    return Picture(PruneResult.PICTURES, text, {"doc": doc})


# --- the results: what ablate and prune show, in every format ---------------------------------------------------------


@dataclass
class AblateResult:
    """`mha ablate`: each head removed alone; `top` heads in the terminal ranking."""

    doc: dict
    top: int = 10
    ablated: Ablated | None = None  # heads removed before every measurement (--ablate): the baseline's model
    COLUMNS = ("layer", "head", "kind", "loss", "delta", "delta_pct")
    PICTURES = Pictures("ablate", figure="ablate_figure", page="ablate_page")

    def _pinned(self) -> dict:
        """The --ablate heads; their method is `ablated_method` (`method` is how each listed head is removed)."""
        return self.ablated.to_dict("ablated_") if self.ablated else {}

    def to_dict(self) -> dict:
        return self.doc | self._pinned()

    def records(self) -> list[dict]:
        return [h | self._pinned() for h in self.doc["heads"]]

    def rows(self) -> Iterator[list]:
        return ([r[k] for k in self.COLUMNS] for r in self.doc["heads"])

    def plain(self) -> str:
        from mhacli.views.plain import write_ablate

        return written(lambda out: write_ablate(out, self.doc))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal.ablate import ablate_view

        return ablate_view(console, self.doc, self.top)


@dataclass
class PruneResult:
    """`mha prune`: the importance and random pruning curves; jsonl, csv and tsv give one row per curve point."""

    doc: dict
    PICTURES = Pictures("prune", figure="prune_figure")
    COLUMNS = ("order", "n_removed", "fraction", "loss", "loss_std", "removed")

    def to_dict(self) -> dict:
        return self.doc

    def rows(self) -> list[list]:
        curve, rand = self.doc["importance"]["curve"], self.doc["random"]["curve"]
        rows = [
            [
                "importance",
                s["n_removed"],
                s["fraction"],
                s["loss"],
                None,
                " ".join(f"{a}.{b}" for a, b in s["removed"]),
            ]
            for s in curve
        ]
        return rows + [["random", s["n_removed"], s["fraction"], s["loss_mean"], s["loss_std"], None] for s in rand]

    def records(self) -> Iterator[dict]:
        return (dict(zip(self.COLUMNS, row)) for row in self.rows())

    def plain(self) -> str:
        from mhacli.views.plain import write_prune

        return written(lambda out: write_prune(out, self.doc))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal.ablate import prune_view

        return prune_view(console, self.doc)
