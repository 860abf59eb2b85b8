"""`mha census`: every head's statistics and kind over seeded probes and a corpus, run in parallel (local worker
processes or a Dask cluster). The census itself is mhacli.ops.census (which mhacli.census runs too); this module
parses the options, shows progress and the failed texts, and writes the outputs."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from mhacli.cli._app import app, examples
from mhacli.cli._common import FormatOpt, MaxMemoryOpt, ModelOpt, TruncateOpt, load, resolve_format, warn
from mhacli.cli._save import DpiOpt, SaveList, save_option
from mhacli.errors import TextError, UsageError
from mhacli.ops.census import (
    PROBES,
    SUPPORTED_STATS,
    TALLIED,
    CensusRun,
    ProbeSpec,
    build_doc,
    check_census_memory,
    cli_spell,
    default_workers,
    probe_tokens,
    run_census,
)
from mhacli.ops.inputs import iter_texts
from mhacli.views import save as saving
from mhacli.views.formats import MACHINE_FORMATS, check_writable, write_head_doc

MAX_WARNINGS = 10  # failed texts named one by one on stderr; the rest are counted


def parse_probes(spec: str) -> tuple[str, ...]:
    names = [p.strip() for p in spec.split(",") if p.strip()]
    if names == ["none"]:
        return ()
    for name in names:
        if name not in PROBES:
            raise UsageError(f"--probes {spec!r}: {name!r} is not one of: {', '.join(PROBES)} (or none)")
    return tuple(dict.fromkeys(names))


class FailureLines:
    """Failed texts on stderr: the first MAX_WARNINGS named one by one, the rest counted."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, where: str, why: str) -> None:
        if self.count < MAX_WARNINGS:
            warn(f"{where}: {why}; skipped")
        self.count += 1


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


CSV_STATS = TALLIED


def csv_rows(doc: dict) -> Iterator[list]:
    for h in doc["heads"]:
        for source, s in h["by_source"].items():
            yield [
                h["layer"],
                h["head"],
                h["kind"],
                h["confidence"],
                source,
                s["n_texts"],
                *(x for name in CSV_STATS for x in (s["mean"][name], s["std"][name])),
                *(s["support"][name] for name in SUPPORTED_STATS),
            ]


CSV_COLUMNS = (
    "layer",
    "head",
    "kind",
    "confidence",
    "source",
    "n_texts",
    *(f"{w}_{name}" for name in CSV_STATS for w in ("mean", "std")),
    "duplicate_rows",
    "induction_rows",
)


@app.command(
    rich_help_panel="The model",
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
        typer.Option(
            "--texts",
            metavar="FILE",
            help="Corpus: one text per line ('-': stdin; FILE.jsonl: a \"text\" field per line), streamed.",
        ),
    ] = None,
    probes: Annotated[
        str,
        typer.Option(
            "--probes",
            metavar="LIST",
            help=f"Built-in probes, comma-separated: {', '.join(PROBES)}, or none. Default: all.",
        ),
    ] = ",".join(PROBES),
    probe_count: Annotated[int, typer.Option("--probe-count", metavar="R", help="Sequences per probe.")] = 20,
    repeat_length: Annotated[
        int, typer.Option("--repeat-length", metavar="N", help="Random tokens per copy of a repeat probe.")
    ] = 20,
    random_length: Annotated[int, typer.Option("--random-length", metavar="N", help="Tokens of a random probe.")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the probes.")] = 0,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            "-j",
            metavar="N",
            help="Local worker processes (default: the core count; 1 runs in this process).",
        ),
    ] = None,
    dask: Annotated[
        str | None,
        typer.Option(
            "--dask",
            metavar="ADDRESS",
            help="Run on a Dask cluster: a scheduler address, or 'local' for a LocalCluster.",
        ),
    ] = None,
    per_text: Annotated[
        Path | None,
        typer.Option(
            "--per-text", metavar="FILE.jsonl", help="Also write every text's statistics, one JSON object per line."
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="A text that fails stops the census (exit 2) instead of being counted.")
    ] = False,
    top: Annotated[int, typer.Option("--top", "-k", help="Heads per kind in the terminal table.")] = 5,
    format: FormatOpt = None,
    truncate: TruncateOpt = False,
    max_memory: MaxMemoryOpt = None,
    save: Annotated[SaveList, save_option("census")] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
) -> None:
    """Every head's kind over probes and a corpus, with confidence.

    With each kind's evidence and confidence; every definition in docs/census.md."""
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
    prefix, ordinary = probe_tokens(ckpt, tokenizer, chosen, spec, cli_spell)
    check_census_memory(ckpt, chosen, spec, prefix, texts is not None, n_workers, dask, max_memory)

    census = run_shown(
        ckpt, tokenizer, chosen, spec, prefix, ordinary, texts, per_text, strict, truncate, n_workers, dask
    )
    doc = build_doc(census, ckpt.model_dict(), spec, chosen, prefix, texts, c.kv_head)
    saving.write_all(saves, saving.census_picture(ckpt, doc), dpi=dpi)
    if fmt in MACHINE_FORMATS:
        write_head_doc(sys.stdout, fmt, doc, CSV_COLUMNS, csv_rows(doc))
    elif fmt == "text":
        from mhacli.views.plain import write_census

        write_census(sys.stdout, doc)
    else:
        from mhacli.views.terminal import make_console, render_census

        render_census(make_console(), doc, top)


def run_shown(
    ckpt,
    tokenizer,
    chosen: tuple[str, ...],
    spec: ProbeSpec,
    prefix: int | None,
    ordinary,
    texts: str | None,
    per_text: Path | None,
    strict: bool,
    truncate: bool,
    n_workers: int,
    dask: str | None,
) -> CensusRun:
    """The census (mhacli.ops.census.run_census) with a progress bar, failed texts on stderr and the --per-text
    file written whole or not at all; refused when the corpus gave no text."""
    c = ckpt.config
    writer = AtomicText(per_text) if per_text is not None else None
    failures = FailureLines()
    census = CensusRun(
        (c.n_layer, c.n_head), per_text=writer.file if writer else None, strict=strict, on_failure=failures
    )
    total = len(chosen) * spec.count + (count_lines(texts) or 0 if texts is not None else 0)
    try:
        with census_progress(total if texts is None or count_lines(texts) is not None else None) as tick:
            census.tick = tick
            corpus = iter_texts(texts) if texts is not None else None
            run_census(
                census,
                ckpt,
                tokenizer,
                chosen,
                spec,
                prefix,
                ordinary,
                corpus,
                truncate=truncate,
                workers=n_workers,
                dask=dask,
            )
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
    if failures.count > MAX_WARNINGS:
        warn(f"{failures.count - MAX_WARNINGS} more texts failed; --per-text FILE lists them all")
    if writer is not None:
        writer.commit()
    return census


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
