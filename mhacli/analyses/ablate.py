"""Which heads matter:

the next-token loss with heads removed, one at a time (ablation) or cumulatively (pruning curves, with a random-order
baseline). Pure NumPy; no I/O.

Removing a head replaces its slice of the concatenated head outputs (the input of the output projection W_O):
`zero` sets it to 0 (what HF's old `head_mask` did), `mean` to the head's mean output over every position of every
text (TransformerLens' convention), measured once on the intact model. A query head is removed alone: on GQA/MQA
models the K/V head it reads stays for the others.

Layers before the first one with a newly removed head compute exactly what they computed before, so each text's
residual stream entering every layer is cached for a fixed set of removed heads (the `base`), and every evaluation
reruns the model from the first layer it changes. Evaluations that part from the base at the same layer run together
as one batch of variants ([B, n_seq, n_embd]: the projections and the MLP one GEMM over every variant's rows): the
layer where they part computes its attention once, and each variant gets its own copy of the heads' outputs to edit
(`variant_edit`). `batch` bounds the variants run at once (the memory guard's choice).

A base may be pinned (`Removal`: a mask file's heads, zeroed or set to the means it records): those heads keep their
recorded values, and every further removal uses the Ablator's own method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mhacli.analyses.loss import first_target, output_head, scored_losses, scored_positions
from mhacli.engine.attention import DISCARD, Sink, one_blas_thread
from mhacli.engine.blocks import Params, ZEdit
from mhacli.engine.forward import LayerTrace, embed, forward, forward_from
from mhacli.engine.segments import Segments, end_to_end, pack_groups, packed
from mhacli.errors import UsageError

Head = tuple[int, int]  # (layer, query head)
METHODS = ("zero", "mean")


class Observer(Protocol):
    """Watches the intact model's run over each text: where each layer's attention goes, then each layer.

    `index` is the text's; with `segments`, the run is a pack of texts index, index + 1, ... (mhacli.engine.segments)
    and the trace the pack's: a sink that splits it per text is mhacli.engine.segments.PackSink."""

    def sinks(self, index: int, segments: Segments | None = None) -> Callable[[int], Sink | None]: ...

    def __call__(self, index: int, trace: LayerTrace) -> None: ...


def discard_all(layer: int) -> Sink:
    """No map is kept: the forward's layers without their attention (a loss needs only the residual stream)."""
    return DISCARD


class _DiscardInOrder:
    """DISCARD for a forward that runs on one of several worker threads: its attention blocks on that thread alone.

    The workers are the parallelism; a pool of attention threads inside each (a pack's layer is large enough to
    get one) would oversubscribe the cores. The numbers do not change: a block is computed the same on any thread."""

    concurrent = False

    def add(self, h: int, a: int, b: int, lo: int, p: np.ndarray) -> None:
        pass


_IN_ORDER = _DiscardInOrder()


def discard_in_order(layer: int) -> Sink:
    return _IN_ORDER


def parse_heads(spec: str, n_layer: int, n_head: int) -> list[Head]:
    """`L.H[,L.H...]` -> [(layer, head), ...] in the order given, duplicates dropped; UsageError naming a bad one."""
    heads: list[Head] = []
    for part in spec.split(","):
        part = part.strip()
        layer, dot, head = part.partition(".")
        if not (dot and _digits(layer) and _digits(head)):
            raise UsageError(
                f"{{ablate}}: {part[:40]!r} is not a head; write LAYER.HEAD, e.g. 1.2 (comma-separated for several)",
                params=("ablate",),
            )
        if max(len(layer), len(head)) > MAX_INDEX_DIGITS:  # past int()'s 4,300 digits too: out of range, said short
            raise UsageError(
                f"{{ablate}}: {part[:40]!r} is out of range (this model has layers 0..{n_layer - 1}, heads "
                f"0..{n_head - 1})",
                params=("ablate",),
            )
        check_head((int(layer), int(head)), n_layer, n_head)
        if (int(layer), int(head)) not in heads:
            heads.append((int(layer), int(head)))
    return heads


MAX_INDEX_DIGITS = 18  # a layer or head index longer than this is no model's


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '٣' and '²', which int() reads or refuses."""
    return text.isascii() and text.isdigit()


def check_head(head: Head, n_layer: int, n_head: int) -> None:
    layer, h = head
    if not 0 <= layer < n_layer:
        raise UsageError(f"head {layer}.{h}: layer {layer} is out of range (this model has layers 0..{n_layer - 1})")
    if not 0 <= h < n_head:
        raise UsageError(f"head {layer}.{h}: head {h} is out of range (this model has heads 0..{n_head - 1})")


def head_edit(heads: Sequence[int], means: np.ndarray | None) -> ZEdit:
    """An edit of one layer's head outputs z [n_head, n_seq, d_head]:

    the given heads set to 0 (means None) or to their mean output means[h] [d_head]."""
    index = np.asarray(sorted(heads), dtype=np.int64)

    def edit(z: np.ndarray) -> np.ndarray:
        z = z.copy()
        z[index] = 0.0 if means is None else means[index][:, None, :]
        return z

    return edit


def removal_edits(removed: Iterable[Head], means: np.ndarray | None = None) -> dict[int, ZEdit]:
    """The forward's edits that remove `removed`: zeroed, or set to means [n_layer, n_head, d_head]."""
    by_layer: dict[int, list[int]] = {}
    for layer, h in removed:
        by_layer.setdefault(layer, []).append(h)
    return {layer: head_edit(hs, None if means is None else means[layer]) for layer, hs in by_layer.items()}


# One layer's removals in one variant: the query heads [k] and what each is set to, [k, d_head] float32.
LayerFill = tuple[np.ndarray, np.ndarray]


def variant_edit(fills: Sequence[LayerFill]) -> ZEdit:
    """One layer's edit for a batch of B variants, variant b's heads fills[b][0] set to fills[b][1]:

    z [n_head, n_seq, d_head] (the layer where the variants part from their common input: each gets a copy) or
    [B, n_head, n_seq, d_head] -> [B, n_head, n_seq, d_head]."""

    def edit(z: np.ndarray) -> np.ndarray:
        out = np.repeat(z[None], len(fills), axis=0) if z.ndim == 3 else z.copy()
        for b, (index, values) in enumerate(fills):
            if len(index):
                out[b, index] = values[:, None, :]
        return out

    return edit


@dataclass(frozen=True)
class Removal:
    """Heads removed before anything is measured (`--ablate`, a mask file), and how.

    method `zero`: set to 0; `mean`: head i set to means[i] [d_head] float32, the values the mask file records
    (measured by `prune` on its own texts), so a replay computes what prune measured.
    """

    heads: tuple[Head, ...]
    method: str = "zero"
    means: np.ndarray | None = None  # [len(heads), d_head] float32 for `mean`

    def fill(self, d_head: int) -> dict[Head, np.ndarray]:
        """Each head's replacement output [d_head] float32."""
        if self.means is None:
            return {h: np.zeros(d_head, dtype=np.float32) for h in self.heads}
        return {h: self.means[i] for i, h in enumerate(self.heads)}

    def edits(self, d_head: int) -> dict[int, ZEdit]:
        """The forward's edits that remove these heads (one text, one model)."""
        by_layer: dict[int, list[tuple[int, np.ndarray]]] = {}
        for (layer, h), value in self.fill(d_head).items():
            by_layer.setdefault(layer, []).append((h, value))
        return {layer: fill_edit(pairs) for layer, pairs in by_layer.items()}


def fill_edit(pairs: Sequence[tuple[int, np.ndarray]]) -> ZEdit:
    """z [n_head, n_seq, d_head] with head h set to value [d_head] for each (h, value)."""
    index = np.asarray([h for h, _ in pairs], dtype=np.int64)
    values = np.stack([v for _, v in pairs]).astype(np.float32)  # [k, d_head]

    def edit(z: np.ndarray) -> np.ndarray:
        z = z.copy()
        z[index] = values[:, None, :]
        return z

    return edit


@dataclass(frozen=True)
class Pack:
    """Texts first.. run as one forward: their ids end to end, where each starts, and the positions scored."""

    first: int  # index of its first text
    ids: np.ndarray  # [n_seq] int64
    segments: Segments | None  # None: one text, run unpacked
    scored: np.ndarray  # [n_targets] positions whose next token is scored (loss.scored_positions)


def make_packs(texts: Sequence[np.ndarray], pack_tokens: int, loss_from: int) -> list[Pack]:
    """Consecutive texts in packs of at most `pack_tokens` tokens (pack_groups: a longer text alone)."""
    packs = []
    for group in pack_groups([len(t) for t in texts], pack_tokens):
        ids, segments = end_to_end([texts[i] for i in group])
        scored = scored_positions([len(texts[i]) for i in group], loss_from)
        packs.append(Pack(group[0], ids, segments, scored))
    return packs


@dataclass
class Ablator:
    """The losses of one model on a set of texts with heads removed, reusing every layer it can.

    texts: token ids per text; every text needs a target at position >= max(1, loss_from).
    observe: called with every layer of the intact model's run over each text (e.g. for statistics and kinds);
    its `sinks(index)` says where that text's attention goes (no maps are kept otherwise: every forward here
    streams its attention away, so memory does not grow with n_seq^2).
    pinned: heads removed from the start (a mask), with their own values; the baseline is that model's loss, and
    the mean outputs (`mean`) are measured on it.
    batch: variants run at once (at least 1). workers: threads that run batches side by side.
    pack_tokens: consecutive short texts run as one forward of up to this many tokens (mhacli.engine.segments),
    each attending only to itself; the losses are those of the texts run alone, to float32 rounding. 1: each alone.

    BLAS runs on one thread in everything the Ablator computes, and parallelism comes from `workers` threads each
    running whole batches: a batch is computed the same way whatever the number of workers (OpenBLAS's float32
    GEMMs round differently on one thread and on two), so the numbers do not depend on the machine's cores or
    load, and a busy core slows the workers down instead of stalling BLAS threads that wait on each other.
    """

    params: Params
    texts: Sequence[np.ndarray]
    method: str = "zero"
    loss_from: int = 1
    observe: Observer | None = None
    pinned: Removal | None = None
    batch: int = 64
    workers: int = 1
    pack_tokens: int = 1
    n_targets: int = field(init=False)
    means: np.ndarray | None = field(init=False, default=None)  # [n_layer, n_head, d_head] float32 for `mean`
    baseline: float = field(init=False)
    _base: frozenset[Head] = field(init=False, default=frozenset())
    _base_loss: float = field(init=False)  # the loss of the cached base (the output head is the costliest step)
    _packs: list[Pack] = field(init=False, default_factory=list, repr=False)
    _inputs: list[list[np.ndarray]] = field(init=False, default_factory=list)  # per pack: entering layer 0..n_layer
    _w: np.ndarray = field(init=False, repr=False)
    _fixed: dict[Head, np.ndarray] = field(init=False, default_factory=dict, repr=False)  # the pinned heads' values
    _z_sums: np.ndarray | None = field(init=False, default=None, repr=False)  # float64 [n_layer, n_head, d_head]
    _z_count: int = field(init=False, default=0, repr=False)  # positions summed

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"{{method}} {self.method!r} is not one of: {', '.join(METHODS)}", params=("method",))
        if not self.texts:
            raise UsageError("no text to score")
        self.batch = max(1, int(self.batch))
        c = self.params.config
        self.n_targets = sum(len(ids) - first_target(len(ids), self.loss_from) for ids in self.texts)
        self._packs = make_packs(self.texts, self.pack_tokens, self.loss_from)
        self._w = output_head(self.params)
        if self.pinned is not None:
            self._fixed = self.pinned.fill(c.d_head)
            self._base = frozenset(self._fixed)
        with one_blas_thread():
            self._inputs = [self._first_run(pack) for pack in self._packs]
            if self.method == "mean":
                self.means = self._mean_outputs()
            self.baseline = self._base_loss = self._loss_from_inputs(self._inputs)

    @property
    def heads(self) -> list[Head]:
        c = self.params.config
        return [(layer, h) for layer in range(c.n_layer) for h in range(c.n_head)]

    def _first_run(self, pack: Pack) -> list[np.ndarray]:
        """The run every evaluation starts from: the intact model, or the pinned one."""
        with packed(pack.segments):
            inputs = [embed(self.params, pack.ids)]
        sinks: Callable[[int], Sink | None] = discard_all
        if self.observe is not None:  # a pack's sinks are asked with its segments; one text's as before
            args = (pack.first,) if pack.segments is None else (pack.first, pack.segments)
            sinks = self.observe.sinks(*args)
        edits = self.pinned.edits(self.params.config.d_head) if self.pinned is not None else None
        for trace in forward(self.params, pack.ids, edits=edits, sinks=sinks, segments=pack.segments):
            inputs.append(trace.residual)
            if self.observe is not None:
                self.observe(pack.first, trace)
            if self.method == "mean":
                self._accumulate_z(trace)
        return inputs

    def _accumulate_z(self, trace: LayerTrace) -> None:
        c = self.params.config
        if self._z_sums is None:
            self._z_sums, self._z_count = np.zeros((c.n_layer, c.n_head, c.d_head)), 0
        self._z_sums[trace.layer] += trace.z.sum(axis=1, dtype=np.float64)  # [n_head, d_head]
        if trace.layer == 0:
            self._z_count += trace.z.shape[1]

    def _mean_outputs(self) -> np.ndarray:
        assert self._z_sums is not None  # every text has at least one token and the model one layer
        return (self._z_sums / self._z_count).astype(np.float32)

    def _value(self, head: Head) -> np.ndarray:
        """What a removed head's output is set to, [d_head] float32: its pinned value, its mean, or 0."""
        if head in self._fixed:
            return self._fixed[head]
        if self.means is not None:
            return self.means[head]
        return np.zeros(self.params.config.d_head, dtype=np.float32)

    def _fills(self, removed: frozenset[Head], layer: int) -> LayerFill:
        heads = sorted(h for lay, h in removed if lay == layer)
        d_head = self.params.config.d_head
        values = np.stack([self._value((layer, h)) for h in heads]) if heads else np.zeros((0, d_head), np.float32)
        return np.asarray(heads, dtype=np.int64), values

    def _edits(self, variants: Sequence[frozenset[Head]], start: int) -> dict[int, ZEdit]:
        """Each layer's variant_edit from `start` on (at `start` always: there the variants part)."""
        edits = {}
        for layer in range(start, self.params.config.n_layer):
            fills = [self._fills(removed, layer) for removed in variants]
            if layer == start or any(len(index) for index, _ in fills):
                edits[layer] = variant_edit(fills)
        return edits

    def _run(self, removed: frozenset[Head], start: int) -> list[list[np.ndarray]]:
        """Per pack, the residual streams entering layers start..n_layer with `removed` heads removed.

        Computed from the cached streams of the base (which must agree with `removed` below `start`)."""
        edits = self._edits([removed], start)
        runs = []
        for inputs, pack in zip(self._inputs, self._packs):
            streams = [inputs[start]]
            for trace in forward_from(
                self.params, inputs[start], start, self.params.config.n_layer, edits=edits, sinks=discard_all,
                segments=pack.segments,
            ):  # fmt: skip
                streams.append(trace.residual[0])  # a batch of one variant
            runs.append(streams)
        return runs

    def _loss_from_inputs(self, runs: list[list[np.ndarray]]) -> float:
        total = 0.0
        for streams, pack in zip(runs, self._packs):
            losses = scored_losses(self.params, streams[-1], pack.ids, pack.scored, self._w)  # [n_targets]
            total += float(losses.sum(dtype=np.float64))
        return total / self.n_targets

    def set_base(self, removed: Iterable[Head]) -> float:
        """Make `removed` (and the pinned heads) the cached base (its streams kept for later evaluations).

        Returns its loss."""
        removed = frozenset(removed) | frozenset(self._fixed)
        new = removed ^ self._base
        if new:
            start = min(layer for layer, _ in new)
            with one_blas_thread():
                runs = self._run(removed, start)
                self._inputs = [inputs[:start] + streams for inputs, streams in zip(self._inputs, runs)]
                self._base = removed
                self._base_loss = self._loss_from_inputs(self._inputs)
        return self._base_loss

    def loss(self, extra: Iterable[Head] = ()) -> float:
        """The loss with the base's heads and `extra` removed (nats/token, token-weighted over the texts)."""
        return self.losses([extra])[0]

    def losses(self, extras: Sequence[Iterable[Head]], tick: Callable[[], None] | None = None) -> list[float]:
        """loss(extra) for each of `extras`; those that part from the base at the same layer run as one batch.

        `tick` is called once per extra as its loss is known."""
        wanted = [frozenset(extra) - self._base for extra in extras]
        out = [self._base_loss] * len(wanted)
        by_start: dict[int, list[int]] = {}
        for i, extra in enumerate(wanted):
            if extra:
                by_start.setdefault(min(layer for layer, _ in extra), []).append(i)
            elif tick is not None:
                tick()
        units = [
            (start, members[a : a + self.batch])
            for start, members in sorted(by_start.items())
            for a in range(0, len(members), self.batch)
        ]  # the earliest layers (the longest reruns) first
        for chunk, losses in zip((c for _, c in units), self._run_units(units, wanted)):
            for i, loss in zip(chunk, losses):
                out[i] = loss
                if tick is not None:
                    tick()
        return out

    def _run_units(self, units: list[tuple[int, list[int]]], wanted: list[frozenset[Head]]) -> Iterator[list[float]]:
        """Each unit's losses, in order: on this thread, or on `workers` threads taking the next unit as they go.

        BLAS on one thread throughout (threadpoolctl's limit is process-wide: set once, here)."""
        variants = [[self._base | wanted[i] for i in chunk] for _, chunk in units]
        with one_blas_thread():
            if self.workers <= 1 or len(units) <= 1:
                for (start, _), batch in zip(units, variants):
                    yield self._batch_losses(batch, start, discard_all)
                return
            pool = ThreadPoolExecutor(min(self.workers, len(units)), thread_name_prefix="mha-ablate")
            try:
                futures = [
                    pool.submit(self._batch_losses, batch, start, discard_in_order)  # the workers are the threads
                    for (start, _), batch in zip(units, variants)
                ]
                for future in futures:
                    yield future.result()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C or an error: units not started are dropped

    def _batch_losses(
        self, variants: list[frozenset[Head]], start: int, sinks: Callable[[int], Sink | None]
    ) -> list[float]:
        """The loss of each variant (which all agree with the base below `start`), run as one batch.

        `sinks`: discard_all on this thread alone (the attention may share its blocks among threads), else
        discard_in_order (one of several workers: its attention stays on its thread)."""
        c = self.params.config
        edits = self._edits(variants, start)
        totals = np.zeros(len(variants))
        for inputs, pack in zip(self._inputs, self._packs):
            x = inputs[start]  # [n_seq, n_embd]: the first layer's edit fans it out to [B, n_seq, n_embd]
            for trace in forward_from(
                self.params, x, start, c.n_layer, edits=edits, sinks=sinks, segments=pack.segments
            ):
                x = trace.residual
            losses = scored_losses(self.params, x, pack.ids, pack.scored, self._w)  # [B, n_targets]
            totals += losses.sum(axis=1, dtype=np.float64)
        return [float(t) / self.n_targets for t in totals]


@dataclass(frozen=True)
class HeadEffect:
    layer: int
    head: int
    loss: float
    delta: float  # loss - baseline, nats/token
    delta_pct: float  # delta in % of the baseline


def ablate_each(ablator: Ablator, heads: Sequence[Head], tick: Callable[[], None] | None = None) -> list[HeadEffect]:
    """Remove each head alone; sorted by delta, largest first (ties: layer, head)."""
    ablator.set_base(())
    base = ablator.baseline
    effects = []
    for head, loss in zip(heads, ablator.losses([[head] for head in heads], tick)):
        effects.append(HeadEffect(head[0], head[1], loss, loss - base, 100.0 * (loss - base) / base if base else 0.0))
    return sorted(effects, key=lambda e: (-e.delta, e.layer, e.head))


@dataclass(frozen=True)
class PruneStep:
    n_removed: int
    fraction: float
    loss: float
    removed: list[Head]  # the heads removed in this round


@dataclass(frozen=True)
class RandomStep:
    n_removed: int
    fraction: float
    loss_mean: float
    loss_std: float


def schedule(n_heads: int, step: float) -> list[int]:
    """Heads removed after each round: round(step x n_heads) more per round (at least 1), up to all of them."""
    if not 0.0 < step <= 1.0:
        raise UsageError(
            f"{{step}} {step} must be in (0, 1]: the fraction of all heads removed per round", params=("step",)
        )
    per_round = max(1, round(step * n_heads))
    counts = list(range(per_round, n_heads, per_round))
    return [0, *counts, n_heads]


def importance_curve(ablator: Ablator, step: float, tick: Callable[[], None] | None = None) -> list[PruneStep]:
    """Michel et al.'s iterative pruning, with exact importances:

    each round, every remaining head's importance is the loss increase from removing it from the already pruned
    model; the least important go first."""
    heads = ablator.heads
    counts = schedule(len(heads), step)
    removed: list[Head] = []
    curve = [PruneStep(0, 0.0, ablator.set_base(()), [])]
    for target in counts[1:]:
        remaining = [h for h in heads if h not in removed]
        importance = dict(zip(remaining, ablator.losses([[h] for h in remaining], tick)))
        chosen = sorted(remaining, key=lambda h: (importance[h], h))[: target - len(removed)]
        removed += chosen
        curve.append(PruneStep(len(removed), len(removed) / len(heads), ablator.set_base(removed), sorted(chosen)))
    return curve


MAX_SEEDS = 10_000  # random orders a prune may average over


def random_curve(ablator: Ablator, step: float, seeds: int, tick: Callable[[], None] | None = None) -> list[RandomStep]:
    """The same schedule with heads removed in random orders (numpy default_rng(seed), seed = 0..seeds-1):

    the loss's mean and standard deviation (ddof 0) over the orders after each round."""
    if seeds < 1:
        raise UsageError(f"{{seeds}} {seeds} must be at least 1", params=("seeds",))
    if seeds > MAX_SEEDS:  # 10**20 orders would never finish: refused, not a run without end
        raise UsageError(f"{{seeds}} {seeds} must be at most {MAX_SEEDS}", params=("seeds",))
    heads = ablator.heads
    counts = schedule(len(heads), step)
    ablator.set_base(())
    orders = [[heads[i] for i in np.random.default_rng(seed).permutation(len(heads))] for seed in range(seeds)]
    wanted = [order[:n] for order in orders for n in counts[1:]]  # n = 0 is the baseline itself
    for _ in range(seeds if tick is not None else 0):
        tick()  # type: ignore[misc]  # the baseline point of each order: one tick per point, as before
    measured = np.asarray(ablator.losses(wanted, tick)).reshape(seeds, len(counts) - 1)
    losses = np.concatenate([np.full((seeds, 1), ablator.baseline), measured], axis=1)
    return [
        RandomStep(n, n / len(heads), float(losses[:, j].mean()), float(losses[:, j].std()))
        for j, n in enumerate(counts)
    ]


def prunable_fraction(
    fractions: Sequence[float], losses: Sequence[float], baseline: float, max_increase: float
) -> float:
    """Where the curve first crosses the bound: the fraction removed just before the loss first exceeds it.

    The bound is (1 + max_increase) x baseline, the fractions in the curve's (increasing) order. A curve that dips
    back under the bound after crossing it does not count: pruning that far passed through a worse model.
    """
    bound = baseline * (1.0 + max_increase)
    reached = 0.0
    for fraction, loss in zip(fractions, losses):
        if loss > bound:
            break
        reached = fraction
    return reached
