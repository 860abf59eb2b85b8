"""`mha census`.

Every head's statistics and kind over seeded probes and a corpus, run in parallel (local worker processes or a Dask
cluster). The census itself is mhacli.ops.census (which mhacli.census runs too); this module parses the options, shows
progress and the failed texts, and writes the outputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, TextIO, cast

import typer

from mhacli.api import PROBES, ProbeSpec
from mhacli.cli._app import app, examples
from mhacli.cli._common import (
    FormatOpt,
    MaxMemoryOpt,
    ModelOpt,
    PackTokensOpt,
    TruncateOpt,
    check_pack_tokens,
    cli_words,
    environment,
    load,
    output,
    warn,
)
from mhacli.cli._save import DpiOpt, SaveList, save_option
from mhacli.errors import UsageError
from mhacli.ops.census import PACK_TOKENS, CensusOutcome, CensusRequest, CensusResult, census_picture, take_census
from mhacli.views import save as saving
from mhacli.views.formats import AtomicFile, check_writable
from mhacli.views.output import FORMATS

MAX_WARNINGS = 10  # failed texts named one by one on stderr; the rest are counted


def cli_where(n: int, line: int | None) -> str:
    """A corpus text's name in messages: its line of --texts FILE."""
    return f"--texts line {line}"


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


@app.command(
    rich_help_panel="The model",
    epilog=examples(
        "mha census --probe-count 4 -j 1",
        "mha census -m sample-early --probes repeat --probe-count 4 -j 1 -f csv",
        "printf 'The cat.\\nA dog.\\n' | mha census --texts - --probes none -j 1",
        "mha census --probe-count 4 -j 1 --pack-tokens 1",
    ),
)
def census(
    model: ModelOpt = None,
    texts: Annotated[
        str | None,
        typer.Option(
            "--texts",
            metavar="FILE",
            help="Corpus, streamed: each non-blank line of FILE ('-': stdin), or the \"text\" field of each line of "
            "a FILE.jsonl/.ndjson.",
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
    pack_tokens: PackTokensOpt = PACK_TOKENS,
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
    save: Annotated[SaveList, save_option(CensusResult.PICTURES)] = None,
    dpi: DpiOpt = saving.DEFAULT_DPI,
) -> None:
    """Every head's kind over probes and a corpus, with confidence.

    With each kind's evidence and confidence; every definition in docs/census.md."""
    out = output(format, FORMATS)
    chosen = parse_probes(probes)
    if not chosen and texts is None:
        raise UsageError("nothing to run: --probes none needs --texts FILE")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers} must be at least 1")
    check_pack_tokens(pack_tokens)
    if probe_count < 1 and chosen:
        raise UsageError(f"--probe-count {probe_count} must be at least 1")
    if top < 1:
        raise UsageError(f"--top {top} must be at least 1")
    if per_text is not None:
        check_writable(per_text, "--per-text")
    saves = saving.parse(save, CensusResult.PICTURES, dpi=dpi)
    ckpt, tokenizer = load(model, cache=None)
    spec = ProbeSpec(probe_count, repeat_length, random_length, seed)
    request = CensusRequest(
        chosen, spec, None, texts, truncate, workers, dask, max_memory, strict, where=cli_where, words=cli_words,
        pack_tokens=pack_tokens,
    )  # fmt: skip
    doc = run_shown(ckpt, tokenizer, request, per_text).doc
    saving.write_all(saves, census_picture(ckpt, doc), dpi=dpi)
    out.emit(CensusResult(doc, top))


def run_shown(ckpt, tokenizer, request: CensusRequest, per_text: Path | None) -> CensusOutcome:
    """The census (mhacli.ops.census.take_census) with a progress bar and failed texts on stderr.

    The first MAX_WARNINGS failed texts are named, the rest counted; the --per-text file is written whole or not at
    all.
    """
    writer = AtomicFile(per_text, text=True) if per_text is not None else None
    failures = FailureLines()
    texts = request.corpus_path
    total = len(request.probes) * request.spec.count + (count_lines(texts) or 0 if texts is not None else 0)
    try:
        with census_progress(total if texts is None or count_lines(texts) is not None else None) as tick:
            done = take_census(
                ckpt,
                tokenizer,
                request,
                per_text=cast(TextIO, writer.file) if writer else None,
                on_failure=failures,
                tick=tick,
            )
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    if failures.count > MAX_WARNINGS:
        warn(f"{failures.count - MAX_WARNINGS} more texts failed; --per-text FILE lists them all")
    if writer is not None:
        writer.commit()
    return done


def census_progress(total: int | None):
    """A context giving a tick() that advances a progress bar on stderr (terminal only)."""
    from contextlib import contextmanager

    @contextmanager
    def bar():
        env = environment()
        if not env.show_progress:
            yield lambda: None
            return
        from rich.progress import Progress

        with Progress(console=env.stderr_console(), transient=True) as progress:
            task = progress.add_task("census: texts", total=total)
            yield lambda: progress.advance(task)

    return bar()
