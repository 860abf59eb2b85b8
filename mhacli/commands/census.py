"""`mha census`: every head's statistics and kind over seeded probes and a corpus, run in parallel (local worker
processes or a Dask cluster). The computation is mhacli.census; the executors mhacli.parallel."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, TextIO

import numpy as np
import typer

from mhacli.kinds import PROBES, SOURCES, TALLIED, ProbeSpec, Tally, TextStats, probe, text_kinds, verdicts
from mhacli.commands._app import app, examples
from mhacli import save as saving
from mhacli.commands._save import DpiOpt, SaveList, save_option
from mhacli.commands._common import (
    FormatOpt, MaxMemoryOpt, ModelOpt, TruncateOpt, check_memory, load, resolve_format, warn,
)  # fmt: skip
from mhacli.errors import TextError, UsageError
from mhacli.heads import memory_needed
from mhacli.output import MACHINE_FORMATS, check_writable, dumps, write_head_doc
from mhacli.parallel import InOrder, Item, dask_executor, default_workers, drive, local_pool, remember
from mhacli.stats import KINDS, MIN_SUPPORT, SUPPORTED_STATS
from mhacli.textin import iter_texts, tokenize

MAX_WARNINGS = 10  # failed texts named one by one on stderr; the rest are counted


def parse_probes(spec: str) -> tuple[str, ...]:
    names = [p.strip() for p in spec.split(",") if p.strip()]
    if names == ["none"]:
        return ()
    for name in names:
        if name not in PROBES:
            raise UsageError(f"--probes {spec!r}: {name!r} is not one of: {', '.join(PROBES)} (or none)")
    return tuple(dict.fromkeys(names))


class Census:
    """The parent's side of a census: the work in text order, the per-source tallies, the per-text file."""

    def __init__(self, shape: tuple[int, int], per_text: TextIO | None, strict: bool) -> None:
        self.tallies = {s: Tally(shape) for s in SOURCES}
        self.meta: dict[int, tuple[str, int, int | None, list[int]]] = {}  # seq -> (source, index, line, token ids)
        self.per_text = per_text
        self.strict = strict
        self.warned = 0
        self.seq = 0
        self.done = 0
        self.tick = lambda: None

    def item(self, source: str, index: int, line: int | None, ids: np.ndarray, first_row: int) -> Item:
        self.meta[self.seq] = (source, index, line, ids.tolist() if self.per_text is not None else [0] * len(ids))
        self.seq += 1
        return Item(self.seq - 1, ids, first_row)

    def failure(self, source: str, index: int, line: int | None, error: str) -> tuple[int, str]:
        self.meta[self.seq] = (source, index, line, [])
        self.seq += 1
        return self.seq - 1, error

    def fold(self, seq: int, outcome: TextStats | str) -> None:
        source, index, line, ids = self.meta.pop(seq)
        n_tokens = len(ids)
        tally = self.tallies[source]
        where = f"--texts line {line}" if line is not None else f"{source} probe {index}"
        record: dict = {"source": source, "index": index} | ({"line": line} if line is not None else {})
        if isinstance(outcome, str):
            if self.strict:
                raise TextError(f"{where}: {outcome} (--strict)")
            tally.failed += 1
            if self.warned < MAX_WARNINGS:
                warn(f"{where}: {outcome}; skipped")
            self.warned += 1
            record["error"] = outcome
        else:
            tally.add(outcome, n_tokens)
            if self.per_text is not None:
                record |= {"n_tokens": n_tokens, "token_ids": ids, "rows": outcome.n_rows,
                           "support": dict(zip(SUPPORTED_STATS, outcome.support)), "heads": text_heads(outcome)}  # fmt: skip
        if self.per_text is not None:
            self.per_text.write(dumps(record) + "\n")
        self.done += 1
        self.tick()


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


def corpus_work(census: Census, path: str, tokenizer, config, truncate: bool) -> Iterator[Item | tuple[int, str]]:
    """The corpus, streamed: each line tokenized as it is read; texts that cannot run become failures."""
    n = 0
    for n, (line, text) in enumerate(iter_texts(path)):
        if not text.strip():
            yield census.failure("corpus", n, line, "text is empty")
            continue
        try:  # a bounded prefix of the text is tokenized (textin.tokenize): a huge line costs n_positions tokens
            tokens = tokenize(tokenizer, text, config.n_positions, vocab_size=config.vocab_size, truncate=truncate)
        except TextError as exc:
            yield census.failure("corpus", n, line, str(exc))
            continue
        ids = tokens.ids
        yield census.item("corpus", n, line, ids, 0)


def count_lines(path: str) -> int | None:
    """Lines of a regular file, for the progress bar (None for stdin or a pipe)."""
    if path == "-" or not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return None


class AtomicText:
    """A text file written beside its final name and renamed into place when complete (removed otherwise)."""

    def __init__(self, path: Path) -> None:
        directory = path.parent if str(path.parent) else Path(".")
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        self.path = path
        self.file = os.fdopen(fd, "w", encoding="utf-8")

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.file.close()
        Path(self.tmp).unlink(missing_ok=True)


def build_doc(census: Census, model: dict, spec: ProbeSpec, probes: tuple[str, ...], prefix: int | None, corpus: str | None, kv_head) -> dict:
    sources: dict = {}
    for p in probes:
        t = census.tallies[p]
        first_row = (0 if prefix is None else 1) + spec.repeat_length if p == "repeat" else 0
        sources[p] = {"n_texts": t.n_texts, "n_tokens": spec.n_tokens(p, prefix), "first_row": first_row, "seed": spec.seed,
                      "failed": t.failed}  # fmt: skip
    if corpus is not None:
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


CSV_STATS = TALLIED


def csv_rows(doc: dict) -> Iterator[list]:
    for h in doc["heads"]:
        for source, s in h["by_source"].items():
            yield [h["layer"], h["head"], h["kind"], h["confidence"], source, s["n_texts"],
                   *(x for name in CSV_STATS for x in (s["mean"][name], s["std"][name])),
                   *(s["support"][name] for name in SUPPORTED_STATS)]  # fmt: skip


CSV_COLUMNS = ("layer", "head", "kind", "confidence", "source", "n_texts",
               *(f"{w}_{name}" for name in CSV_STATS for w in ("mean", "std")), "duplicate_rows", "induction_rows")  # fmt: skip


@app.command(
    epilog=examples(
        "mha census --probe-count 4 -j 1",
        "mha census -m sample-early --probes repeat --probe-count 4 -j 1 -f csv",
        "printf 'The cat.\\nA dog.\\n' | mha census --texts - --probes none -j 1",
    )
)
def census(
    model: ModelOpt = None,
    texts: Annotated[
        str | None,
        typer.Option("--texts", metavar="FILE", help="Corpus: one text per line ('-': stdin; FILE.jsonl: a \"text\" field per line), streamed."),
    ] = None,
    probes: Annotated[str, typer.Option("--probes", metavar="LIST", help=f"Built-in probes, comma-separated: {', '.join(PROBES)}, or none. Default: all.")] = ",".join(PROBES),
    probe_count: Annotated[int, typer.Option("--probe-count", metavar="R", help="Sequences per probe.")] = 20,
    repeat_length: Annotated[int, typer.Option("--repeat-length", metavar="N", help="Random tokens per copy of a repeat probe.")] = 20,
    random_length: Annotated[int, typer.Option("--random-length", metavar="N", help="Tokens of a random probe.")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the probes.")] = 0,
    workers: Annotated[int | None, typer.Option("--workers", "-j", metavar="N", help="Local worker processes (default: the core count; 1 runs in this process).")] = None,
    dask: Annotated[str | None, typer.Option("--dask", metavar="ADDRESS", help="Run on a Dask cluster: a scheduler address, or 'local' for a LocalCluster.")] = None,
    per_text: Annotated[Path | None, typer.Option("--per-text", metavar="FILE.jsonl", help="Also write every text's statistics, one JSON object per line.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="A text that fails stops the census (exit 2) instead of being counted.")] = False,
    top: Annotated[int, typer.Option("--top", "-k", help="Heads per kind in the terminal table.")] = 5,
    format: FormatOpt = None,
    truncate: TruncateOpt = False,
    max_memory: MaxMemoryOpt = None,
    save: Annotated[SaveList, save_option("census")] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
) -> None:
    """Every head's kind over seeded probes and a corpus, with its evidence and confidence (docs/census.md)."""
    fmt = resolve_format(format, ("rich", "text", *MACHINE_FORMATS))
    chosen = parse_probes(probes)
    if not chosen and texts is None:
        raise UsageError("nothing to run: --probes none needs --texts FILE")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers} must be at least 1")
    if probe_count < 1 and chosen:
        raise UsageError(f"--probe-count {probe_count} must be at least 1")
    if top < 1:
        raise UsageError(f"--top {top} must be at least 1")
    if per_text is not None:
        check_writable(per_text)
    saves = saving.parse(save, "census", dpi=dpi)
    n_workers = workers if workers is not None else default_workers()
    ckpt, tokenizer = load(model, cache=None)
    c = ckpt.config
    spec = ProbeSpec(probe_count, repeat_length, random_length, seed)
    prefix = tokenizer.prefix_id()
    if prefix is not None and prefix >= c.vocab_size:
        prefix = None
    ordinary = np.asarray(tokenizer.ordinary_ids(c.vocab_size), dtype=np.int64)
    if chosen and len(ordinary) == 0:
        raise UsageError("the tokenizer has no ordinary tokens below the model's vocab_size to draw probes from")
    for p in chosen:
        n = spec.n_tokens(p, prefix)
        low = 3 if p == "repeat" else 2
        if (repeat_length if p == "repeat" else random_length) < low:
            raise UsageError(f"--{p}-length must be at least {low}")
        if n > c.n_positions:
            raise UsageError(f"a {p} probe is {n} tokens, longer than the model's n_positions ({c.n_positions}); lower --{p}-length")
    longest = c.n_positions if texts is not None else max(spec.n_tokens(p, prefix) for p in chosen)
    local = 0 if dask not in (None, "local") else (1 if n_workers == 1 and dask is None else n_workers)
    per_worker = memory_needed(c, longest, weight_bytes=ckpt.weight_bytes())
    check_memory(local * per_worker, max_memory, "use fewer --workers, or a shorter --truncate'd corpus")

    writer = AtomicText(per_text) if per_text is not None else None
    census = Census((c.n_layer, c.n_head), writer.file if writer else None, strict)

    def work() -> Iterator[Item | tuple[int, str]]:
        for p in chosen:
            for index in range(probe_count):
                ids, first_row = probe(p, index, spec, ordinary, prefix)
                yield census.item(p, index, None, ids, first_row)
        if texts is not None:
            yield from corpus_work(census, texts, tokenizer, c, truncate)

    total = len(chosen) * probe_count + (count_lines(texts) or 0 if texts is not None else 0)
    try:
        with census_progress(total if texts is None or count_lines(texts) is not None else None) as tick:
            census.tick = tick
            sink = InOrder(census.fold)
            if dask is not None:
                with dask_executor(dask, n_workers) as executor:
                    drive(work(), ckpt.files, executor, sink, in_flight=4 * n_workers)
            elif n_workers == 1:
                remember(ckpt.files, ckpt)
                drive(work(), ckpt.files, None, sink, in_flight=1)
            else:
                with local_pool(n_workers) as executor:
                    drive(work(), ckpt.files, executor, sink, in_flight=2 * n_workers)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    corpus_tally = census.tallies["corpus"]
    if texts is not None and corpus_tally.n_texts == 0:
        if writer is not None:
            writer.discard()
        if corpus_tally.failed:
            raise TextError(f"--texts {texts}: every text failed ({corpus_tally.failed}); see the warnings above")
        raise TextError(f"--texts {texts}: holds no text (every line is blank)")
    if census.warned > MAX_WARNINGS:
        warn(f"{census.warned - MAX_WARNINGS} more texts failed; --per-text FILE lists them all")
    if writer is not None:
        writer.commit()
    doc = build_doc(census, ckpt.model_dict(), spec, chosen, prefix, texts, c.kv_head)
    saving.write_all(saves, saving.census_picture(ckpt, doc), dpi=dpi)
    if fmt in MACHINE_FORMATS:
        write_head_doc(sys.stdout, fmt, doc, CSV_COLUMNS, csv_rows(doc))
    elif fmt == "text":
        from mhacli.plain import write_census

        write_census(sys.stdout, doc)
    else:
        from mhacli.render import make_console, render_census

        render_census(make_console(), doc, top)


def census_progress(total: int | None):
    """A context giving a tick() that advances a progress bar on stderr (terminal only)."""
    from contextlib import contextmanager

    @contextmanager
    def bar():
        if not sys.stderr.isatty() or os.environ.get("MHA_NO_PROGRESS"):
            yield lambda: None
            return
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("census: texts", total=total)
            yield lambda: progress.advance(task)

    return bar()

