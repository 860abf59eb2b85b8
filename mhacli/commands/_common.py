"""Options and steps every command shares: model, text, format."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Annotated, TypeVar

import typer

from mhacli.errors import UsageError
from mhacli.textin import TokenizedText, read_text, tokenize
from mhacli.tokenizer import Tokenizer, load_tokenizer
from mhacli.weights import Checkpoint, load_model

T = TypeVar("T")

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", metavar="MODEL",
        help="Model directory, .safetensors file or Hugging Face id (default: $MHA_MODEL, else the bundled sample).",
    ),
]  # fmt: skip
TextArg = Annotated[str | None, typer.Argument(metavar="TEXT", help="Text to run; '-' or a pipe reads stdin.")]
FormatOpt = Annotated[
    str | None,
    typer.Option("--format", "-f", metavar="FORMAT", help="rich (default on a terminal), text (default when piped), json, jsonl, csv, tsv."),
]
TruncateOpt = Annotated[bool, typer.Option("--truncate", help="Keep the first n_positions tokens of a longer text.")]
LayerOpt = Annotated[list[int] | None, typer.Option("--layer", "-l", help="Layer to show (repeatable; default all).")]
HeadOpt = Annotated[list[int] | None, typer.Option("--head", "-H", help="Head to show (repeatable; default all).")]


def resolve_format(fmt: str | None, allowed: tuple[str, ...]) -> str:
    if fmt is None:
        return "rich" if sys.stdout.isatty() else "text"
    fmt = fmt.lower()
    if fmt not in allowed:
        raise UsageError(f"--format {fmt!r} is not one of: {', '.join(allowed)}")
    return fmt


def load(model: str | None) -> tuple[Checkpoint, Tokenizer]:
    ckpt = load_model(model)
    return ckpt, load_tokenizer(ckpt.files.directory)


def prepare(model: str | None, text: str | None, *, truncate: bool = False) -> tuple[Checkpoint, TokenizedText]:
    """Read the text first (a bad text fails fast), then load the model and tokenize."""
    raw = read_text(text)
    ckpt, tokenizer = load(model)
    tokens = tokenize(tokenizer, raw, ckpt.config.n_positions, truncate=truncate)
    if tokens.truncated_from is not None:
        warn(f"text truncated to the first {ckpt.config.n_positions} of {tokens.truncated_from} tokens")
    return ckpt, tokens


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def progress(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """A progress bar on stderr, only when stderr is a terminal; otherwise the items as they are."""
    if not sys.stderr.isatty() or os.environ.get("MHA_NO_PROGRESS"):
        yield from items
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
