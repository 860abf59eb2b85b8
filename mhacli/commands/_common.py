"""Options and steps every command shares: model, text, format."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Annotated, Literal, TypeVar

import typer

from mhacli.errors import UsageError
from mhacli.textin import TokenizedText, from_ids, read_ids, read_text, tokenize
from mhacli.tokenizer import Tokenizer, load_tokenizer
from mhacli.weights import Checkpoint, ModelFiles, check_model, load_model

T = TypeVar("T")

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", metavar="MODEL",
        help="Model directory, .safetensors file, Hugging Face id, or a bundled model: sample (trained), sample-early "
             "(before its induction head formed). Default: $MHA_MODEL, else sample.",
    ),
]  # fmt: skip
TextArg = Annotated[
    str | None,
    typer.Argument(metavar="TEXT", help="Text to run; '-' or a pipe reads stdin (one trailing newline dropped)."),
]
IdsOpt = Annotated[
    str | None,
    typer.Option(
        "--ids", metavar="IDS",
        help="Token ids instead of TEXT: 464,3797,... or '-' (a JSON array on stdin); checked against vocab_size.",
    ),
]  # fmt: skip
ALL_FORMATS = ("rich", "text", "json", "jsonl", "csv", "tsv")
REPORT_FORMATS = ("rich", "text", "json")


def one_of(values: tuple[str, ...]) -> str:
    """'a, b or c': a list of choices for help texts."""
    return ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else values[0]


def format_option(formats: tuple[str, ...]):  # noqa: ANN201 - a typing.Annotated alias
    """-f/--format limited to `formats`: listed in --help (in the text: a long `<a|b|...>` type column wraps
    badly), completed by the shell, and any other value refused with one usage error naming them (exit 2).
    Case-insensitive; None when not given (resolve_format decides by the terminal)."""
    return Annotated[
        Literal[formats] | None,  # type: ignore[valid-type]
        typer.Option(
            "--format", "-f", metavar="FORMAT", case_sensitive=False,
            help=f"{one_of(formats)} (default: {formats[0]} on a terminal, {formats[1]} when piped).",
        ),
    ]  # fmt: skip


FormatOpt = format_option(ALL_FORMATS)
ReportFormatOpt = format_option(REPORT_FORMATS)
TruncateOpt = Annotated[bool, typer.Option("--truncate", help="Keep the first n_positions tokens of a longer text.")]
LayerOpt = Annotated[list[int] | None, typer.Option("--layer", "-l", metavar="LAYER", help="Layer to show (repeatable; default all).")]
HeadOpt = Annotated[list[int] | None, typer.Option("--head", "-H", metavar="HEAD", help="Head to show (repeatable; default all).")]
MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory", metavar="SIZE",
        help="Refuse a request needing more memory than SIZE (e.g. 2G, 500M; default 80% of available RAM).",
    ),
]  # fmt: skip
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4, "tb": 1024**4, "tib": 1024**4}  # fmt: skip


def resolve_format(fmt: str | None, allowed: tuple[str, ...]) -> str:
    if fmt is None:
        return "rich" if sys.stdout.isatty() else "text"
    fmt = fmt.lower()
    if fmt not in allowed:
        raise UsageError(f"--format {fmt!r} is not one of: {', '.join(allowed)}")
    return fmt


def load(model: str | None, *, cache: bool | None = False, files: ModelFiles | None = None) -> tuple[Checkpoint, Tokenizer]:
    """The model and its tokenizer. cache=False (one pass over the layers): each layer's tensors are read when the
    forward reaches it and dropped after; None keeps them for models under weights.CACHE_LIMIT_BYTES. `files`:
    what check_model resolved already."""
    ckpt = load_model(model, cache=cache, files=files)
    return ckpt, load_tokenizer(ckpt.files.directory)


def check_text_or_ids(text: str | None, ids: str | None, texts: str | None = None) -> None:
    """TEXT, --ids and --texts are three ways to give the input: at most one."""
    given = [name for name, v in (("TEXT", text), ("--ids", ids), ("--texts FILE", texts)) if v is not None]
    if len(given) > 1:
        raise UsageError(f"give {' or '.join(given)}, not both")


def read_input(text: str | None, ids: str | None) -> str | list[int]:
    """The raw input: the text (argument, `-`, piped stdin), or with --ids the token ids."""
    check_text_or_ids(text, ids)
    return read_ids(ids) if ids is not None else read_text(text)


def tokens_of(raw: str | list[int], ckpt: Checkpoint, tokenizer: Tokenizer, *, truncate: bool, where: str = "text") -> TokenizedText:
    """A text tokenized, or given ids checked (vocab_size, n_positions), with the same truncation rule and warning."""
    c = ckpt.config
    if isinstance(raw, list):
        tokens = from_ids(tokenizer, raw, c.n_positions, vocab_size=c.vocab_size, truncate=truncate)
        where = "--ids" if where == "text" else where
    else:
        tokens = tokenize(tokenizer, raw, c.n_positions, vocab_size=c.vocab_size, truncate=truncate)
    if tokens.truncated_from is not None:
        warn(f"{where} truncated to the first {c.n_positions} of {tokens.original_length()} tokens")
    return tokens


def prepare(
    model: str | None, text: str | None, *, truncate: bool = False, ids: str | None = None
) -> tuple[Checkpoint, TokenizedText]:
    """Check -m first (a missing path is named before stdin is read), then read the text or the ids (a bad text
    fails before the weights load), then load the model and tokenize."""
    files = check_model(model)
    raw = read_input(text, ids)
    ckpt, tokenizer = load(model, files=files)
    return ckpt, tokens_of(raw, ckpt, tokenizer, truncate=truncate)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def note(message: str) -> None:
    """A remark for the reader of a plain-text view, on stderr so stdout stays a table."""
    print(f"note: {message}", file=sys.stderr)


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


def parse_size(text: str) -> int:
    """'2G', '512M', '1.5GiB', '1000000' -> bytes."""
    import re

    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise UsageError(f"--max-memory {text!r} is not a size like 2G, 512M or 1.5GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def available_memory() -> int:
    """MemAvailable from /proc/meminfo; physical memory where that is missing."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def check_memory(needed: int, max_memory: str | None, how_to_narrow: str) -> None:
    """Refuse, with a way out, a request that would need more memory than allowed (instead of the OOM killer)."""
    limit = parse_size(max_memory) if max_memory else int(0.8 * available_memory())
    if needed > limit:
        source = "--max-memory" if max_memory else "80% of available memory"
        raise UsageError(
            f"this request needs about {format_bytes(needed)}, more than {format_bytes(limit)} ({source}); "
            f"{how_to_narrow}, or raise --max-memory"
        )
