"""Heads removed (`ablate`, `prune`, the --ablate option, Run.ablate).

The heads named by a spec or a mask file, each head's effect on the loss, and the pruning curves. Progress is the
caller's: `ticker(total, description)` returns (tick, close).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from mhacli.analyses.ablate import (
    Ablator,
    Head,
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
from mhacli.errors import Cancelled, UsageError
from mhacli.io.textin import TokenizedText
from mhacli.ops.memory import Size, check_memory, scoring_bytes
from mhacli.views.save import Picture, Target, caption, wants

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
    """`progress` as a Ticker (what ablate_doc and prune_doc take): each step calls progress_tick's tick."""

    def ticker(total: int, description: str) -> tuple[Callable[[], None], Callable[[], None]]:
        return progress_tick(progress, total) or (lambda: None), (lambda: None)

    return ticker


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


def ablated_heads(spec: str | None, ckpt) -> list[Head]:
    """--ablate: `L.H,...` or `@FILE.json` -> the heads; [] when not given."""
    if spec is None:
        return []
    c = ckpt.config
    if spec.startswith("@"):
        return read_mask(spec[1:], c.n_layer, c.n_head)
    return parse_heads(spec, c.n_layer, c.n_head)


def ablation_edits(spec: str | None, ckpt) -> dict[int, ZEdit] | None:
    """--ablate as the forward's edits (heads zeroed), None when not given."""
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
    ckpt, texts: list[TokenizedText], method: str, loss_from: int, *, kinds: bool = False, option: str = "--loss-from"
) -> tuple[Ablator, KindTally | None]:
    """The Ablator over the texts.

    With kinds=True, each head's kind from the same intact run (statistics of every layer of every text: only
    `ablate` shows them).
    """
    if loss_from < 0:
        raise UsageError(f"{option} {loss_from} must be 0 or more")
    tally = KindTally(texts, ckpt.config.n_head) if kinds else None
    return Ablator(ckpt, [t.ids for t in texts], method=method, loss_from=loss_from, observe=tally), tally


# --- ablate and prune ---------------------------------------------------------------------------------------------


def ablate_doc(
    ckpt, texts: list[TokenizedText], heads: Sequence[Head], method: str, loss_from: int, ticker: Ticker = _no_ticker
) -> dict:
    """`mha ablate`'s document: each of `heads` removed alone, with its kind on the intact run, largest delta first."""
    c = ckpt.config
    ablator, tally = make_ablator(ckpt, texts, method, loss_from, kinds=True)
    assert tally is not None
    tick, close = ticker(len(heads), "ablating heads")
    effects = ablate_each(ablator, list(heads), tick)
    close()
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
    return Picture("ablate", text, {"doc": doc, "views": views, "tokens": list(first.tokens)})
