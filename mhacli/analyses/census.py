"""Head kinds as a property of the model:

every head's statistics over many texts, from seeded probes and a corpus, reduced to a mean, a spread, a support and a
kind with its evidence (definitions: docs/census.md). Pure NumPy.

A census is a fold over texts. Each text is run on its own (`text_stats`: the forward and every layer's statistics,
the work a worker does); `Tally` folds the per-text results of one source, in text order, so the numbers do not
depend on which worker ran which text or when it finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from mhacli.analyses.stats import (
    KIND_RULES,
    KINDS,
    MIN_SUPPORT,
    STAT_NAMES,
    SUPPORTED_STATS,
    StatsAccumulator,
    TextIndex,
    kinds_from_holds,
    rule_holds,
)
from mhacli.engine.blocks import Params
from mhacli.engine.forward import forward
from mhacli.engine.segments import PackSink, end_to_end, per_text

SOURCES = ("repeat", "random", "corpus")
PROBES = ("repeat", "random")
# Reduced per head besides STAT_NAMES: entropy over the entropy of uniform attention on the same rows (`broad`).
TALLIED = (*STAT_NAMES, "relative_entropy")

# Which source's evidence decides each kind, in order of preference (the first one the census ran): induction and
# duplicate-token on the repeated probe, where every row of the second copy has a target; previous-token and self
# on random tokens, where no language can explain them; sink and broad on the user's text.
EVIDENCE: dict[str, tuple[str, ...]] = {
    "induction": ("repeat", "corpus"),
    "previous-token": ("random", "corpus", "repeat"),
    "duplicate-token": ("repeat", "corpus"),
    "self": ("random", "corpus", "repeat"),
    "sink": ("corpus", "random", "repeat"),
    "broad": ("corpus", "random", "repeat"),
    "mixed": ("corpus", "random", "repeat"),
}


@dataclass(frozen=True)
class ProbeSpec:
    """The built-in probes: `count` sequences each, drawn from `seed`."""

    count: int = 20
    repeat_length: int = 20  # random tokens per copy: a repeat probe is [prefix] + s + s
    random_length: int = 64  # tokens of a random probe, prefix included
    seed: int = 0

    def n_tokens(self, source: str, prefix: int | None) -> int:
        extra = 0 if prefix is None else 1
        return extra + 2 * self.repeat_length if source == "repeat" else self.random_length


def probe(source: str, index: int, spec: ProbeSpec, ordinary: np.ndarray, prefix: int | None) -> tuple[np.ndarray, int]:
    """Probe `index` of `source`: (token ids, first row the statistics read).

    Each probe has its own generator, seeded by (seed, source, index), so a probe does not depend on how many were
    drawn or in what order.

    repeat: [prefix] + s + s, s distinct random ordinary tokens; read on the second copy.
    random: [prefix] + random ordinary tokens, distinct while the vocabulary allows; read on every row."""
    rng = np.random.default_rng([spec.seed, SOURCES.index(source), index])
    head = [] if prefix is None else [prefix]
    if source == "repeat":
        s = rng.choice(ordinary, spec.repeat_length, replace=spec.repeat_length > len(ordinary))
        return np.asarray(head + s.tolist() * 2, dtype=np.int64), len(head) + spec.repeat_length
    if source == "random":
        n = spec.random_length - len(head)
        s = rng.choice(ordinary, n, replace=n > len(ordinary))
        return np.asarray(head + s.tolist(), dtype=np.int64), 0
    raise ValueError(f"not a probe: {source}")


@dataclass(frozen=True)
class TextStats:
    """One text's statistics:

    values [n_tallied, n_layer, n_head] float64 (NaN where undefined; TALLIED order), the rows behind the
    token-pattern statistics (SUPPORTED_STATS order), and the rows read."""

    values: np.ndarray
    support: tuple[int, ...]
    n_rows: int


def text_stats(params: Params, ids: np.ndarray, first_row: int = 0) -> TextStats:
    """Run the model on one text and reduce every layer's attention to its statistics over rows first_row.."""
    return pack_stats(params, [(np.asarray(ids), first_row)])[0]


def pack_stats(params: Params, texts: Sequence[tuple[np.ndarray, int]]) -> list[TextStats]:
    """Run the model once on several texts packed end to end (each attending only to itself, its positions from 0).

    (token ids, first row) each -> each text's statistics, as `text_stats` of it alone gives them (to float32
    rounding: the products run in other block shapes). One text runs unpacked."""
    n_head = params.config.n_head
    ids, segments = end_to_end([t for t, _ in texts])
    layers: list[list] = [[] for _ in texts]
    streams: dict[int, list[StatsAccumulator]] = {}
    indexes = [TextIndex(t) for t, _ in texts]  # each text's token matches, made once for all layers

    def sinks(layer: int) -> StatsAccumulator | PackSink:  # statistics streamed block by block: no map is kept
        streams[layer] = [StatsAccumulator(n_head, t, r, x) for (t, r), x in zip(texts, indexes)]
        return per_text(segments, streams[layer])

    for trace in forward(params, ids, sinks=sinks, segments=segments, attention_only_last=True):
        for t, acc in enumerate(streams.pop(trace.layer)):
            layers[t].append(acc.result())
    return [_text_result(per_layer) for per_layer in layers]


def _text_result(per_layer: list) -> TextStats:
    """One text's LayerStats, layer by layer -> its TextStats."""
    values = []
    for ls in per_layer:
        relative = (
            ls.values["entropy"] / ls.uniform_entropy
            if ls.uniform_entropy > 0
            else np.full_like(ls.values["entropy"], np.nan)
        )
        values.append(np.stack([ls.values[name] for name in STAT_NAMES] + [relative]))
    last = per_layer[-1]
    return TextStats(np.stack(values, axis=1), tuple(last.support[s] for s in SUPPORTED_STATS), last.n_rows)


def text_kinds(values: np.ndarray, support: Sequence[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per head of one text:

    whether each kind's rule holds ([n_layer, n_head] bool per kind) and the kind the rules decide (indices into
    KINDS), from `text_stats` values."""
    named = {name: values[k] for k, name in enumerate(TALLIED)}
    holds = rule_holds(named, dict(zip(SUPPORTED_STATS, support)), uniform=float("nan"))  # relative_entropy given
    return holds, kinds_from_holds(holds)


@dataclass
class Tally:
    """Running reduction of one source over its texts, folded in text order.

    Welford's mean and spread, per head and statistic, over the texts where the statistic is defined."""

    shape: tuple[int, int]  # (n_layer, n_head)
    n_texts: int = 0
    n_tokens: int = 0
    failed: int = 0
    count: np.ndarray = field(init=False)
    mean: np.ndarray = field(init=False)
    m2: np.ndarray = field(init=False)
    support: np.ndarray = field(init=False)  # [len(SUPPORTED_STATS)] total rows
    holds: np.ndarray = field(init=False)  # [len(KINDS), n_layer, n_head]: texts where the kind's rule holds
    decided: np.ndarray = field(init=False)  # [len(KINDS), n_layer, n_head]: texts whose own kind it is

    def __post_init__(self) -> None:
        full = (len(TALLIED), *self.shape)
        self.count = np.zeros(full, dtype=np.int64)
        self.mean = np.zeros(full)
        self.m2 = np.zeros(full)
        self.support = np.zeros(len(SUPPORTED_STATS), dtype=np.int64)
        self.holds = np.zeros((len(KINDS), *self.shape), dtype=np.int64)
        self.decided = np.zeros((len(KINDS), *self.shape), dtype=np.int64)

    def add(self, result: TextStats, n_tokens: int) -> None:
        x = result.values
        seen = ~np.isnan(x)
        self.count += seen
        delta = np.where(seen, x - self.mean, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean += np.where(seen, delta / np.maximum(self.count, 1), 0.0)
        self.m2 += np.where(seen, delta * (np.nan_to_num(x) - self.mean), 0.0)
        self.support += np.asarray(result.support, dtype=np.int64)
        holds, kinds = text_kinds(x, result.support)
        for k, kind in enumerate(KINDS):
            if kind in holds:
                self.holds[k] += holds[kind]
            else:  # mixed: no rule holds
                self.holds[k] += kinds == k
            self.decided[k] += kinds == k
        self.n_texts += 1
        self.n_tokens += n_tokens

    def means(self) -> np.ndarray:
        """[n_tallied, n_layer, n_head], NaN where no text defines the statistic."""
        return np.where(self.count > 0, self.mean, np.nan)

    def stds(self) -> np.ndarray:
        """Population standard deviation over the texts that define the statistic (0 for one text)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, np.sqrt(np.maximum(self.m2, 0.0) / self.count), np.nan)


@dataclass(frozen=True)
class HeadVerdict:
    layer: int
    head: int
    kind: str
    confidence: float | None  # fraction of the evidence source's texts where the kind's rule holds
    source: str | None  # the evidence source
    statistic: str | None
    mean: float | None  # the evidence: the statistic's mean over that source's texts


def verdicts(tallies: dict[str, Tally]) -> list[HeadVerdict]:
    """Each head's kind:

    the first rule (KIND_RULES order) whose statistic, averaged over the texts of the first source in EVIDENCE[kind]
    that ran, reaches its threshold (induction and duplicate-token also with at least MIN_SUPPORT rows in total);
    else mixed."""
    ran = {s: t for s, t in tallies.items() if t.n_texts > 0}
    if not ran:
        return []
    n_layer, n_head = next(iter(ran.values())).shape
    means = {s: t.means() for s, t in ran.items()}
    out = []
    for layer in range(n_layer):
        for head in range(n_head):
            verdict: tuple[str, str, str, float | None] | None = None
            for kind, stat, threshold in KIND_RULES:
                source = next((s for s in EVIDENCE[kind] if s in ran), None)
                if source is None:
                    continue
                value = means[source][TALLIED.index(stat), layer, head]
                enough = stat not in SUPPORTED_STATS or ran[source].support[SUPPORTED_STATS.index(stat)] >= MIN_SUPPORT
                if enough and not np.isnan(value) and value >= threshold:
                    verdict = (kind, source, stat, float(value))
                    break
            if verdict is None:
                source = next(s for s in EVIDENCE["mixed"] if s in ran)
                value = means[source][TALLIED.index("max_weight"), layer, head]
                verdict = ("mixed", source, "max_weight", None if np.isnan(value) else float(value))
            kind, source, stat, value = verdict
            t = ran[source]
            confidence = float(t.holds[KINDS.index(kind), layer, head] / t.n_texts)
            out.append(HeadVerdict(layer, head, kind, confidence, source, stat, value))
    return out
