"""Heads removed (`ablate`, `prune`, the --ablate option, Run.ablate).

The heads named by a spec or a mask file, each head's effect on the loss, and the pruning curves. Progress is the
caller's: `ticker(total, description)` returns (tick, close).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mhacli.analyses.ablate import (
    Ablator,
    Head,
    HeadEffect,
    ablate_each,
    check_head,
    importance_curve,
    parse_heads,
    prunable_fraction,
    random_curve,
    removal_edits,
    schedule,
)
from mhacli.analyses.heads import analyse, check_selection
from mhacli.analyses.stats import StatsAccumulator, head_stats
from mhacli.engine.blocks import ZEdit
from mhacli.engine.forward import LayerTrace
from mhacli.errors import UsageError
from mhacli.io.textin import TokenizedText
from mhacli.ops.memory import Size, check_memory, scoring_bytes
from mhacli.views.formats import written
from mhacli.views.save import Picture, Pictures, Target, caption, wants

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

MAX_MASK_BYTES = 1024 * 1024
Ticker = Callable[[int, str], tuple[Callable[[], None], Callable[[], None]]]


def _no_ticker(total: int, description: str) -> tuple[Callable[[], None], Callable[[], None]]:
    return (lambda: None), (lambda: None)


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
        raise UsageError(
            f'--ablate @{path}: expected {{"model": {{"n_layer": L, "n_head": H}}, "heads": [[layer, head], ...]}}'
        )
    if (shape.get("n_layer"), shape.get("n_head")) != (n_layer, n_head):
        raise UsageError(
            f"--ablate @{path}: the mask is for a model of {shape.get('n_layer')} layers x "
            f"{shape.get('n_head')} heads; "
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


def mask_doc(n_layer: int, n_head: int, heads: Sequence[Head]) -> dict:
    """What read_mask reads: the model's shape and the heads, as [layer, head] pairs."""
    return {"model": {"n_layer": n_layer, "n_head": n_head}, "heads": [list(h) for h in heads]}


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
        regular = path.is_file()
    except (OSError, ValueError):
        regular = False
    if not regular:
        raise UsageError(f"--ablate {spec}: cannot read: no such file (a mask file, as mha prune --save-mask writes)")


def ablated_heads(spec: str | Sequence[Head] | None, ckpt) -> list[Head]:
    """The heads removed: --ablate's `L.H,...` or `@FILE.json`, or the API's (layer, head) pairs; [] when none.

    Each is checked against the model; pairs are sorted, duplicates dropped.
    """
    if spec is None:
        return []
    c = ckpt.config
    if not isinstance(spec, str):
        heads = sorted(set(spec))
        for h in heads:
            check_head(h, c.n_layer, c.n_head)
        return heads
    if spec.startswith("@"):
        return read_mask(spec[1:], c.n_layer, c.n_head)
    return parse_heads(spec, c.n_layer, c.n_head)


def ablation_edits(spec: str | Sequence[Head] | None, ckpt) -> dict[int, ZEdit] | None:
    """The heads removed (--ablate, or the API's pairs) as the forward's edits (heads zeroed), None when none."""
    heads = ablated_heads(spec, ckpt)
    return removal_edits(heads) if heads else None


# --- texts scored, and each head's kind on them -------------------------------------------------------------------


def scorable(text: TokenizedText, where: str) -> TokenizedText:
    """The text, which must have a next token to score (`where` names it in the message)."""
    if len(text.ids) < 2:
        raise UsageError(f"{where} is one token long: there is no next token to score")
    return text


def check_scorable(ckpt, texts: Sequence[tuple[TokenizedText, str]], max_memory: Size) -> None:
    """Every text has a next token to score (`where` names it), and the scoring fits max_memory (ResourceError)."""
    for t, where in texts:
        scorable(t, where)
    needed = scoring_bytes(ckpt, [len(t.ids) for t, _ in texts])
    check_memory(needed, max_memory, "scoring")


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
    ckpt, texts: list[TokenizedText], method: str, loss_from: int, *, kinds: bool = False
) -> tuple[Ablator, KindTally | None]:
    """The Ablator over the texts.

    With kinds=True, each head's kind from the same intact run (statistics of every layer of every text: only
    `ablate` shows them).
    """
    if loss_from < 0:
        raise UsageError(f"{{loss_from}} {loss_from} must be 0 or more", params=("loss_from",))
    tally = KindTally(texts, ckpt.config.n_head) if kinds else None
    return Ablator(ckpt, [t.ids for t in texts], method=method, loss_from=loss_from, observe=tally), tally


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
) -> tuple[Ablator, list[HeadEffect], KindTally | None]:
    """Each of `heads` (None: every head) removed alone: the one orchestration of `mha ablate` and Run.ablate.

    Returns the Ablator (baseline loss, targets scored), each head's effect (largest delta first) and, with kinds,
    each head's kind on the intact run.
    """
    ablator, tally = make_ablator(ckpt, texts, method, loss_from, kinds=kinds)
    chosen = ablator.heads if heads is None else ablated_heads(heads, ckpt)
    tick, close = ticker(len(chosen), "ablating heads")
    effects = ablate_each(ablator, chosen, tick)
    close()
    return ablator, effects, tally


def ablate_doc(
    ckpt, texts: list[TokenizedText], heads: Sequence[Head], method: str, loss_from: int, ticker: Ticker = _no_ticker
) -> dict:
    """`mha ablate`'s document: each of `heads` removed alone, with its kind on the intact run, largest delta first."""
    c = ckpt.config
    ablator, effects, tally = ablate_heads(ckpt, texts, heads, method, loss_from, kinds=True, ticker=ticker)
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


def prune_doc(
    ckpt,
    texts: list[TokenizedText],
    method: str,
    loss_from: int,
    step: float,
    seeds: int,
    max_increase: float,
    ticker: Ticker = _no_ticker,
) -> dict:
    """`mha prune`'s document.

    The importance order's curve (re-measured every round) against `seeds` random orders, each one's prunable
    fraction at `max_increase`, and the pruned heads (`pruned`).
    """
    c = ckpt.config
    ablator, _ = make_ablator(ckpt, texts, method, loss_from)
    n_heads = c.n_layer * c.n_head
    counts = schedule(n_heads, step)
    tick, close = ticker(sum(n_heads - n for n in counts[:-1]) + seeds * (len(counts) - 1), "pruning")
    curve = importance_curve(ablator, step, tick)
    rand = random_curve(ablator, step, seeds, tick)
    close()
    base = ablator.baseline
    imp_fraction = prunable_fraction([s.fraction for s in curve], [s.loss for s in curve], base, max_increase)
    rand_fraction = prunable_fraction([s.fraction for s in rand], [s.loss_mean for s in rand], base, max_increase)
    pruned = sorted(h for s in curve if s.fraction <= imp_fraction for h in s.removed)
    return {
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


def ablate_picture(targets: list[Target], ckpt, texts, doc: dict) -> Picture:
    """ablate: the document; the page also gets the intact model's maps of the first text."""
    first = texts[0]
    views = list(analyse(ckpt, first.ids, keep_maps=True)) if wants(targets, "html") else None
    text = caption(ckpt.source, "".join(first.tokens), len(first.ids))
    if len(texts) > 1:
        text += f"; loss over {len(texts)} texts, the first shown"
    return Picture(AblateResult.PICTURES, text, {"doc": doc, "views": views, "tokens": list(first.tokens)})


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
    COLUMNS = ("layer", "head", "kind", "loss", "delta", "delta_pct")
    PICTURES = Pictures("ablate", figure="ablate_figure", page="ablate_page")

    def to_dict(self) -> dict:
        return self.doc

    def records(self) -> list[dict]:
        return self.doc["heads"]

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
