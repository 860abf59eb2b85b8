"""Every head's statistics and kind over many texts (`census`, mhacli.census).

The seeded probes and a corpus, run in this process, in local worker processes or on a Dask cluster
(mhacli.analyses.parallel), folded in text order into one Tally per source (mhacli.analyses.census), and the verdicts.
The CLI and the API run this one implementation; what differs is what happens to a failed text (`on_failure`, `strict`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

import numpy as np

from mhacli.analyses.census import (
    PROBES,
    SOURCES,
    TALLIED,
    ProbeSpec,
    Tally,
    TextStats,
    probe,
    text_kinds,
    verdicts,
)
from mhacli.analyses.parallel import (
    PACK_TOKENS,
    InOrder,
    Item,
    chunk_tokens,
    dask_executor,
    default_workers,
    drive,
    local_pool,
    remember,
)
from mhacli.analyses.stats import KINDS, MIN_SUPPORT, SUPPORTED_STATS
from mhacli.errors import MhaError, TextError, UsageError, Words, python_words
from mhacli.io.textin import iter_texts, tokenize
from mhacli.ops.memory import Size, census_bytes, check_memory
from mhacli.views.formats import dumps, written
from mhacli.views.save import Picture, Pictures

if TYPE_CHECKING:
    from rich.console import Console, RenderableType


MAX_PROBE_COUNT = 1_000_000  # probes of each kind a census may run
MAX_WORKERS = 256  # local worker processes (or a LocalCluster's) a census may start; the default is capped to it


def census_workers(workers: int | None, dask: str | None) -> int:
    """The worker processes a census runs on: `workers` checked (1..MAX_WORKERS), None: one per core (capped).

    Worker processes start in the working directory: when it was deleted, the default runs in this process
    instead, and a pool asked for by name is refused (UsageError) rather than failing to start.
    """
    if workers is not None and not 1 <= workers <= MAX_WORKERS:  # 10**20 workers: refused, not a memory estimate
        raise UsageError(f"{{workers}} {workers} must be between 1 and {MAX_WORKERS}", params=("workers",))
    chosen = workers if workers is not None else min(default_workers(), MAX_WORKERS)
    spawns = dask == "local" or (dask is None and chosen > 1)
    if spawns and not _cwd_exists():
        if workers is None and dask is None:
            return 1
        raise UsageError(
            "the working directory no longer exists, and worker processes cannot start in it: cd to a directory "
            "that exists" + (", or run in this process with {workers} 1" if dask is None else ""),
            params=("workers",),
        )
    return chosen


def _cwd_exists() -> bool:
    try:
        os.getcwd()
    except OSError:  # deleted (FileNotFoundError), or unreadable
        return False
    return True


def probe_tokens(ckpt, tokenizer, probes: tuple[str, ...], spec: ProbeSpec) -> tuple[int | None, np.ndarray]:
    """The probes' prefix token and the ordinary tokens they are drawn from.

    The prefix is None when the tokenizer has none the model can read; each probe's length is checked against the
    model.
    """
    c = ckpt.config
    if probes and not 1 <= spec.count <= MAX_PROBE_COUNT:  # 10**20 probes would never finish: refused
        raise UsageError(
            f"{{probe_count}} {spec.count} must be between 1 and {MAX_PROBE_COUNT}", params=("probe_count",)
        )
    if probes and spec.seed < 0:
        raise UsageError(f"{{seed}} {spec.seed} must be at least 0", params=("seed",))
    prefix = tokenizer.prefix_id()
    if prefix is not None and prefix >= c.vocab_size:
        prefix = None
    ordinary = np.asarray(tokenizer.ordinary_ids(c.vocab_size), dtype=np.int64)
    if probes and len(ordinary) == 0:
        raise UsageError("the tokenizer has no ordinary tokens below the model's vocab_size to draw probes from")
    for p in probes:
        n = spec.n_tokens(p, prefix)
        low = 3 if p == "repeat" else 2
        if (spec.repeat_length if p == "repeat" else spec.random_length) < low:
            raise UsageError(f"{{{p}_length}} must be at least {low}", params=(f"{p}_length",))
        if n > c.n_positions:
            raise UsageError(
                f"a {p} probe is {n} tokens, longer than the model's n_positions ({c.n_positions}); "
                f"lower {{{p}_length}}",
                params=(f"{p}_length",),
            )
    return prefix, ordinary


def check_census_memory(
    ckpt,
    probes: tuple[str, ...],
    spec: ProbeSpec,
    prefix: int | None,
    corpus: bool,
    workers: int,
    dask: str | None,
    max_memory: Size,
) -> None:
    """One forward of the longest text per local worker process (none on a remote cluster) against max_memory."""
    c = ckpt.config
    longest = c.n_positions if corpus else max(spec.n_tokens(p, prefix) for p in probes)
    local = 0 if dask not in (None, "local") else (1 if workers == 1 and dask is None else workers)
    check_memory(census_bytes(ckpt, longest, local), max_memory, "workers")


class CensusRun:
    """The parent's side of a census: the work in text order, the per-source tallies, the per-text records.

    A failed text goes to on_failure(where, why) and is counted, or with strict raises TextError. `words`: how
    the door that runs it names a parameter in a failed text's message (mhacli.errors; strict errors carry their
    parameters instead).
    """

    def __init__(
        self,
        shape: tuple[int, int],
        *,
        per_text: TextIO | None = None,
        strict: bool = False,
        on_failure: Callable[[str, str], None] | None = None,
        words: Words = python_words,
    ) -> None:
        self.words = words
        self.tallies = {s: Tally(shape) for s in SOURCES}
        self.meta: dict[
            int, tuple[str, int, int | None, list[int], str]
        ] = {}  # seq -> (source, index, line, ids, where)
        self.per_text = per_text
        self.strict = strict
        self.on_failure = on_failure
        self.failures = 0
        self.seq = 0
        self.done = 0
        self.tick: Callable[[], None] = lambda: None

    def item(self, source: str, index: int, line: int | None, ids: np.ndarray, first_row: int, where: str) -> Item:
        self.meta[self.seq] = (
            source,
            index,
            line,
            ids.tolist() if self.per_text is not None else [0] * len(ids),
            where,
        )
        self.seq += 1
        return Item(self.seq - 1, ids, first_row)

    def failure(
        self, source: str, index: int, line: int | None, error: str | MhaError, where: str
    ) -> tuple[int, str | MhaError]:
        self.meta[self.seq] = (source, index, line, [], where)
        self.seq += 1
        return self.seq - 1, error

    def fold(self, seq: int, outcome: TextStats | str | MhaError) -> None:
        source, index, line, ids, where = self.meta.pop(seq)
        n_tokens = len(ids)
        tally = self.tallies[source]
        record: dict = {"source": source, "index": index} | ({"line": line} if line is not None else {})
        if isinstance(outcome, (str, MhaError)):
            if self.strict:
                raise failed_text(where, outcome)
            if isinstance(outcome, MhaError):
                outcome = outcome.spelled(self.words)
            tally.failed += 1
            if self.on_failure is not None:
                self.on_failure(where, outcome)
            self.failures += 1
            record["error"] = outcome
        else:
            tally.add(outcome, n_tokens)
            if self.per_text is not None:
                record |= {
                    "n_tokens": n_tokens,
                    "token_ids": ids,
                    "rows": outcome.n_rows,
                    "support": dict(zip(SUPPORTED_STATS, outcome.support)),
                    "heads": text_heads(outcome),
                }
        if self.per_text is not None:
            self.per_text.write(dumps(record) + "\n")
        self.done += 1
        self.tick()

    def ran(self) -> dict[str, Tally]:
        """The tallies of the sources that counted a text."""
        return {s: self.tallies[s] for s in SOURCES if self.tallies[s].n_texts > 0}


def text_heads(result: TextStats) -> list[dict]:
    """One text's heads for --per-text: kind and every statistic (null where undefined)."""
    _, kinds = text_kinds(result.values, result.support)
    n_layer, n_head = kinds.shape
    return [
        {"layer": layer, "head": head, "kind": KINDS[int(kinds[layer, head])],
         "stats": {name: finite(result.values[k, layer, head]) for k, name in enumerate(TALLIED)}}
        for layer in range(n_layer) for head in range(n_head)
    ]  # fmt: skip


def finite(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def failed_text(where: str, outcome: str | MhaError) -> TextError:
    """The error that stops a strict census: the failed text's, its parameters kept for the door to spell."""
    if isinstance(outcome, str):
        return TextError(f"{where}: {outcome} ({{strict}})", params=("strict",))
    template = str(outcome.args[0]) if outcome.args else ""
    return TextError(f"{where}: {template} ({{strict}})", params=("strict", *outcome.params))


def corpus_work(
    census: CensusRun,
    texts: Iterable[tuple[int | None, str]],
    tokenizer,
    config,
    truncate: bool,
    where: Callable[[int, int | None], str],
) -> Iterator[Item | tuple[int, str | MhaError]]:
    """The corpus, streamed: each text tokenized as it is read; texts that cannot run become failures."""
    for n, (line, text) in enumerate(texts):
        if not text.strip():
            yield census.failure("corpus", n, line, "text is empty", where(n, line))
            continue
        try:  # a bounded prefix of the text is tokenized (textin.tokenize): a huge line costs n_positions tokens
            tokens = tokenize(tokenizer, text, config.n_positions, vocab_size=config.vocab_size, truncate=truncate)
        except TextError as exc:
            yield census.failure("corpus", n, line, exc, where(n, line))
            continue
        yield census.item("corpus", n, line, tokens.ids, 0, where(n, line))


def api_where(n: int, line: int | None) -> str:
    """A corpus text's name in messages: its index among the texts given."""
    return f"text {n}"


def run_census(
    census: CensusRun,
    ckpt,
    tokenizer,
    probes: tuple[str, ...],
    spec: ProbeSpec,
    prefix: int | None,
    ordinary: np.ndarray,
    corpus: Iterable[tuple[int | None, str]] | None = None,
    *,
    truncate: bool = False,
    workers: int = 1,
    dask: str | None = None,
    where: Callable[[int, int | None], str] = api_where,
    pack_tokens: int = PACK_TOKENS,
) -> None:
    """Every probe, then every corpus text (line number, text), through the model.

    In this process (workers=1, no dask), in `workers` local processes, or on a Dask cluster (`dask`: an address or
    'local'); each result folded into `census` in text order, whatever order the executor returns it in.
    """

    def work() -> Iterator[Item | tuple[int, str | MhaError]]:
        for p in probes:
            for index in range(spec.count):
                ids, first_row = probe(p, index, spec, ordinary, prefix)
                yield census.item(p, index, None, ids, first_row, f"{p} probe {index}")
        if corpus is not None:
            yield from corpus_work(census, corpus, tokenizer, ckpt.config, truncate, where)

    sink = InOrder(census.fold)
    size = chunk_tokens(2.0 * ckpt.layer_parameter_count(), pack_tokens)
    if dask is not None:
        with dask_executor(dask, workers) as executor:
            drive(work(), ckpt.files, executor, sink, in_flight=4 * workers, pack_tokens=pack_tokens, chunk_size=size)
    elif workers == 1:
        remember(ckpt.files, ckpt)
        drive(work(), ckpt.files, None, sink, in_flight=1, pack_tokens=pack_tokens, chunk_size=size)
    else:
        with local_pool(workers) as executor:
            drive(work(), ckpt.files, executor, sink, in_flight=2 * workers, pack_tokens=pack_tokens, chunk_size=size)


@dataclass(frozen=True)
class CensusRequest:
    """A census: the probes, the corpus (line number or None, text), and where it runs."""

    probes: tuple[str, ...] = PROBES
    spec: ProbeSpec = field(default_factory=ProbeSpec)
    corpus: Iterable[tuple[int | None, str]] | None = None  # None: the lines of corpus_path, streamed
    corpus_path: str | None = None  # a file of texts, one a line ('-': stdin; None: the texts given, or none)
    truncate: bool = False
    workers: int | None = 1  # None: one per core
    dask: str | None = None
    max_memory: Size = None
    strict: bool = True  # a failed text stops the census (TextError), else it is counted (on_failure)
    where: Callable[[int, int | None], str] = api_where  # a corpus text's name in messages
    words: Words = python_words  # the parameters a failed text's message names, in the door's words (not strict)
    pack_tokens: int = PACK_TOKENS  # tokens per packed forward (mhacli.engine.segments); 1: every text alone

    @property
    def has_corpus(self) -> bool:
        return self.corpus is not None or self.corpus_path is not None


@dataclass(frozen=True)
class CensusOutcome:
    run: CensusRun
    doc: dict  # `mha census --format json`'s document


def take_census(
    ckpt,
    tokenizer,
    request: CensusRequest,
    *,
    per_text: TextIO | None = None,
    on_failure: Callable[[str, str], None] | None = None,
    tick: Callable[[], None] | None = None,
) -> CensusOutcome:
    """`mha census` and mhacli.census: the probes' tokens, the memory guard, the run, the document.

    The one orchestration both doors run; `per_text` gets every text's record, `on_failure` each failed text (not
    strict), `tick` each text done. A corpus read from a file that gave no text is refused (TextError).
    """
    c, r = ckpt.config, request
    workers = census_workers(r.workers, r.dask)
    corpus = r.corpus if r.corpus is not None or r.corpus_path is None else iter_texts(r.corpus_path)
    prefix, ordinary = probe_tokens(ckpt, tokenizer, r.probes, r.spec)
    check_census_memory(ckpt, r.probes, r.spec, prefix, r.has_corpus, workers, r.dask, r.max_memory)
    census = CensusRun((c.n_layer, c.n_head), per_text=per_text, strict=r.strict, on_failure=on_failure, words=r.words)
    if tick is not None:
        census.tick = tick
    run_census(
        census, ckpt, tokenizer, r.probes, r.spec, prefix, ordinary, corpus,
        truncate=r.truncate, workers=workers, dask=r.dask, where=r.where, pack_tokens=r.pack_tokens,
    )  # fmt: skip
    corpus_tally = census.tallies["corpus"]
    if r.corpus_path is not None and corpus_tally.n_texts == 0:
        if corpus_tally.failed:
            raise TextError(
                f"{{texts}} {r.corpus_path}: every text failed ({corpus_tally.failed}); see the warnings above",
                params=("texts",),
            )
        raise TextError(f"{{texts}} {r.corpus_path}: holds no text (every line is blank)", params=("texts",))
    doc = build_doc(
        census, ckpt.model_dict(), r.spec, r.probes, prefix, r.corpus_path, c.kv_head, has_corpus=r.has_corpus
    )
    return CensusOutcome(census, doc)


def build_doc(
    census: CensusRun,
    model: dict,
    spec: ProbeSpec,
    probes: tuple[str, ...],
    prefix: int | None,
    corpus: str | None,
    kv_head,
    *,
    has_corpus: bool | None = None,
) -> dict:
    """`mha census --format json`.

    The sources run, and every head's verdict with its per-source statistics. corpus: the --texts path
    (has_corpus=True with corpus None: texts given directly, the path null).
    """
    has_corpus = corpus is not None if has_corpus is None else has_corpus
    sources: dict = {}
    for p in probes:
        t = census.tallies[p]
        first_row = (0 if prefix is None else 1) + spec.repeat_length if p == "repeat" else 0
        sources[p] = {
            "n_texts": t.n_texts,
            "n_tokens": spec.n_tokens(p, prefix),
            "first_row": first_row,
            "seed": spec.seed,
            "failed": t.failed,
        }
    if has_corpus:
        t = census.tallies["corpus"]
        sources["corpus"] = {"n_texts": t.n_texts, "failed": t.failed, "n_tokens": t.n_tokens, "path": corpus}
    ran = [s for s in SOURCES if s in sources and census.tallies[s].n_texts > 0]
    stats = {s: (census.tallies[s].means(), census.tallies[s].stds()) for s in ran}
    heads = []
    for v in verdicts({s: census.tallies[s] for s in ran}):
        by_source = {}
        for s in ran:
            mean, std = stats[s]
            by_source[s] = {
                "n_texts": census.tallies[s].n_texts,
                "mean": {name: finite(mean[k, v.layer, v.head]) for k, name in enumerate(TALLIED)},
                "std": {name: finite(std[k, v.layer, v.head]) for k, name in enumerate(TALLIED)},
                "support": {name: int(census.tallies[s].support[k]) for k, name in enumerate(SUPPORTED_STATS)},
            }
        heads.append({
            "layer": v.layer, "head": v.head, "kv_head": kv_head(v.head), "kind": v.kind, "confidence": v.confidence,
            "evidence": {"source": v.source, "statistic": v.statistic, "mean": v.mean}, "by_source": by_source,
        })  # fmt: skip
    return {"model": model, "sources": sources, "min_support": MIN_SUPPORT, "heads": heads}


# --- the result: what census shows, in every format -------------------------------------------------------------------


@dataclass
class CensusResult:
    """`mha census`: every head's kind with its evidence; csv and tsv give one row per head and source."""

    doc: dict
    top: int = 5
    PICTURES = Pictures("census", figure="census_figure", page="census_page")

    @property
    def COLUMNS(self) -> Sequence[str]:  # noqa: N802 - the protocol's name
        from mhacli.views.plain import CENSUS_COLUMNS

        return CENSUS_COLUMNS

    def to_dict(self) -> dict:
        return self.doc

    def records(self) -> list[dict]:
        return self.doc["heads"]

    def rows(self) -> Iterator[list]:
        from mhacli.views.plain import census_rows

        return census_rows(self.doc)

    def plain(self) -> str:
        from mhacli.views.plain import write_census

        return written(lambda out: write_census(out, self.doc))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal.census import census_view

        return census_view(console, self.doc, self.top)


def census_picture(ckpt, doc: dict) -> Picture:
    ran = ", ".join(f"{name} ({s.get('n_texts', 0)} texts)" for name, s in doc["sources"].items())
    return Picture(CensusResult.PICTURES, f"{ckpt.source} · census over {ran}", {"doc": doc})
