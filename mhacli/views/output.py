"""The door's environment and its one output sink: a result written in the format resolved once.

`Environment` is what a door knows of the world it writes to: the three streams, whether each is a terminal, the
width, colour and encoding (httpie's `context.Environment`). The CLI builds one from the process per command;
tests pass their own (`Environment(stdout=io.StringIO(), stdout_isatty=True, width=80)`) instead of patching
`sys.stdout`. `Output` writes one result in one format (huggingface_hub's `cli/_output.py`): every result shares a
small protocol, so a command ends in `out.emit(result)` and a new machine format is one method here.

The protocol (each command's result implements it, beside its operation: mhacli.ops.NAME):
- `to_dict()` the JSON document (json); a result may stream it instead with `json_chunks(dumps)`;
- `records()` one object per line (jsonl);
- `COLUMNS` and `rows()` the table (csv, tsv);
- `plain()` the plain text (text: no colour, no ANSI);
- `view(console)` the rich view: a renderable to print (views never print);
- `notes(fmt)` (optional) remarks for the reader, written to stderr after the output.
"""

from __future__ import annotations

import codecs
import os
import sys
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol, TextIO, TypeVar

from mhacli.views.formats import dumps, write_table

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

T = TypeVar("T")
MACHINE_FORMATS = ("json", "jsonl", "csv", "tsv")  # each written by Output._NAME: a new one is a name and a method
FORMATS = ("rich", "text", *MACHINE_FORMATS)


def _isatty(stream: object) -> bool:
    try:
        return bool(stream is not None and stream.isatty())  # type: ignore[attr-defined]
    except (ValueError, OSError, AttributeError):  # a closed stream
        return False


def _encoding_is_unicode(encoding: str | None) -> bool:
    """Whether `encoding` can encode every character (UTF-8, UTF-16, UTF-32, GB18030)."""
    try:
        name = codecs.lookup(encoding or "utf-8").name
    except LookupError:
        return False
    return name.startswith("utf") or name == "gb18030"


@dataclass
class Environment:
    """The streams a door reads and writes and what it knows of them; None fields are read from the process.

    `width` None lets rich measure the terminal ($COLUMNS, else the terminal's size, else 80); `color` None lets rich
    decide (a terminal, $NO_COLOR, $FORCE_COLOR); `encoding` None is stdout's own.
    """

    stdin: TextIO | None = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    stdin_isatty: bool | None = None
    stdout_isatty: bool | None = None
    stderr_isatty: bool | None = None
    width: int | None = None
    color: bool | None = None
    encoding: str | None = None
    show_progress: bool | None = None

    def __post_init__(self) -> None:
        if self.stdin_isatty is None:
            self.stdin_isatty = _isatty(self.stdin)
        if self.stdout_isatty is None:
            self.stdout_isatty = _isatty(self.stdout)
        if self.stderr_isatty is None:
            self.stderr_isatty = _isatty(self.stderr)
        if self.encoding is None:
            self.encoding = getattr(self.stdout, "encoding", None) or "utf-8"
        if self.show_progress is None:
            self.show_progress = bool(self.stderr_isatty) and not os.environ.get("MHA_NO_PROGRESS")

    @property
    def unicode(self) -> bool:
        """Whether stdout can take every character (else JSON is written with \\u escapes)."""
        return _encoding_is_unicode(self.encoding)

    @cached_property
    def console(self) -> Console:
        """The rich console on stdout, made once: commands that size their work by the width share it."""
        from mhacli.views.terminal import make_console

        forced = self.stdout_isatty if self.stdout_isatty != _isatty(self.stdout) else None  # a test's stream
        if self.color:
            return make_console(file=self.stdout, width=self.width, force_terminal=True, color_system="truecolor")
        no_color = True if self.color is False else None
        return make_console(file=self.stdout, width=self.width, force_terminal=forced, no_color=no_color)

    def stderr_console(self) -> Console:
        """A rich console on stderr (progress bars)."""
        from rich.console import Console

        return Console(file=self.stderr)

    def dumps(self, doc: Any) -> str:
        """Strict JSON, with \\u escapes where stdout cannot encode a character."""
        return dumps(doc, ensure_ascii=not self.unicode)

    def note(self, message: str) -> None:
        """A remark for the reader, on stderr so stdout stays data."""
        print(f"note: {message}", file=self.stderr)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=self.stderr)

    def progress(self, items: Iterable[T], total: int | None, description: str) -> Generator[T, None, None]:
        """A progress bar on stderr, only when stderr is a terminal; otherwise the items as they are."""
        if not self.show_progress:
            yield from items
            return
        from rich.progress import Progress

        with Progress(console=self.stderr_console(), transient=True) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task)


class Result(Protocol):
    """What every result offers (the formats a command does not allow may be missing)."""

    def to_dict(self) -> dict: ...

    def plain(self) -> str: ...

    def view(self, console: Console) -> RenderableType: ...


def default_format(env: Environment) -> str:
    """rich on a terminal, text when piped."""
    return "rich" if env.stdout_isatty else "text"


class Output:
    """One result written to `env`'s stdout in format `fmt` (one of FORMATS), notes after it on stderr."""

    def __init__(self, fmt: str, env: Environment | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.fmt = fmt
        self.env = env if env is not None else Environment()

    @property
    def machine(self) -> bool:
        return self.fmt in MACHINE_FORMATS

    def emit(self, result: Any) -> None:
        getattr(self, "_" + self.fmt)(result)
        notes = getattr(result, "notes", None)
        for message in notes(self.fmt) if notes is not None else ():
            self.env.note(message)

    def _json(self, result: Any) -> None:
        out, chunks = self.env.stdout, getattr(result, "json_chunks", None)
        if chunks is None:
            out.write(self.env.dumps(result.to_dict()) + "\n")
            return
        for chunk in chunks(self.env.dumps):
            out.write(chunk)

    def _jsonl(self, result: Any) -> None:
        for record in result.records():
            self.env.stdout.write(self.env.dumps(record) + "\n")

    def _table(self, result: Any, fmt: str) -> None:
        columns: Sequence[str] = result.COLUMNS
        write_table(self.env.stdout, fmt, columns, result.rows())

    def _csv(self, result: Any) -> None:
        self._table(result, "csv")

    def _tsv(self, result: Any) -> None:
        self._table(result, "tsv")

    def _text(self, result: Any) -> None:
        self.env.stdout.write(result.plain())

    def _rich(self, result: Any) -> None:
        console = self.env.console
        console.print(result.view(console))
