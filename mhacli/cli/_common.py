"""Options and steps every command shares: model, text, format."""

from __future__ import annotations

from collections.abc import Generator, Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

import typer

from mhacli.errors import TextError, TokenizerError, UsageError
from mhacli.ops.census import PACK_TOKENS
from mhacli.ops.inputs import check_model, encode, open_model, read_input
from mhacli.views.output import FORMATS, Environment, Output, default_format

if TYPE_CHECKING:
    from mhacli.api import Checkpoint, ModelFiles, TokenizedText, Tokenizer

T = TypeVar("T")

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        metavar="MODEL",
        help="Model directory, .safetensors file, Hugging Face id (ID@REVISION: a branch, tag or commit), or a bundled "
        "model: sample (trained), sample-early "
        "(before its induction head formed). Default: $MHA_MODEL, else sample.",
    ),
]
TextArg = Annotated[
    str | None,
    typer.Argument(metavar="TEXT", help="Text to run; '-' or a pipe reads stdin (one trailing newline dropped)."),
]
IdsOpt = Annotated[
    str | None,
    typer.Option(
        "--ids",
        metavar="IDS",
        help="Token ids instead of TEXT: 464,3797,... or '-' (a JSON array on stdin); checked against vocab_size.",
    ),
]
ALL_FORMATS = FORMATS
REPORT_FORMATS = ("rich", "text", "json")


def one_of(values: tuple[str, ...]) -> str:
    """'a, b or c': a list of choices for help texts."""
    return ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else values[0]


def format_option(formats: tuple[str, ...]):  # noqa: ANN201 - a typing.Annotated alias
    """-f/--format limited to `formats`.

    They are listed in --help (in the text: a long `<a|b|...>` type column wraps badly), completed by the shell,
    and any other value is refused with one usage error naming them (exit 2). Case-insensitive; None when not
    given (resolve_format decides by the terminal).
    """
    return Annotated[
        Literal[formats] | None,  # type: ignore[valid-type]
        typer.Option(
            "--format",
            "-f",
            metavar="FORMAT",
            case_sensitive=False,
            help=f"{one_of(formats)} (default: {formats[0]} on a terminal, {formats[1]} when piped).",
        ),
    ]


FormatOpt = format_option(ALL_FORMATS)
ReportFormatOpt = format_option(REPORT_FORMATS)
TruncateOpt = Annotated[bool, typer.Option("--truncate", help="Keep the first n_positions tokens of a longer text.")]
LayerOpt = Annotated[
    list[int] | None, typer.Option("--layer", "-l", metavar="LAYER", help="Layer to show (repeatable; default all).")
]
HeadOpt = Annotated[
    list[int] | None, typer.Option("--head", "-H", metavar="HEAD", help="Head to show (repeatable; default all).")
]
PackTokensOpt = Annotated[
    int,
    typer.Option(
        "--pack-tokens",
        metavar="N",
        help="Short texts run together in forwards of up to N tokens, each attending only to itself "
        f"(1: each alone). Default: {PACK_TOKENS}.",
    ),
]


def check_pack_tokens(pack_tokens: int) -> None:
    if pack_tokens < 1:
        raise UsageError(f"--pack-tokens {pack_tokens} must be at least 1")


MaxMemoryOpt = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        metavar="SIZE",
        help="Refuse a request needing more memory than SIZE (e.g. 2G, 500M; default 80% of available RAM).",
    ),
]


# The CLI's words for what an error names (mhacli.errors): a parameter is its flag (max_memory: --max-memory); the
# ways out of the memory guard (ResourceError.narrow) name the flags that narrow a request.
CLI_WORDS = {
    "narrow:text": "use a shorter text",
    "narrow:texts": "use shorter texts",
    "narrow:maps": "narrow it with --layer/--head or a shorter text (mha stats streams without maps)",
    "narrow:layer_map": "narrow it with --layer or a shorter text",
    "narrow:scoring": "score fewer or shorter texts",
    "narrow:workers": "use fewer --workers, or a shorter --truncate'd corpus",
}


def cli_words(name: str) -> str:
    """How the shell names a parameter: its flag (`--max-memory`), or CLI_WORDS' phrase."""
    return CLI_WORDS.get(name) or "--" + name.replace("_", "-")


# The environment of the command running now: mhacli.cli.run(argv, env=...) sets it (a test's streams); else each
# command reads the process's streams when it starts.
CURRENT: ContextVar[Environment | None] = ContextVar("mha_environment", default=None)


def environment() -> Environment:
    """The door's environment: the one run() was given, else the process's streams as they are now."""
    env = CURRENT.get()
    return env if env is not None else Environment()


def resolve_format(fmt: str | None, allowed: tuple[str, ...], env: Environment | None = None) -> str:
    if fmt is None:
        return default_format(env or environment())
    fmt = fmt.lower()
    if fmt not in allowed:
        raise UsageError(f"--format {fmt!r} is not one of: {', '.join(allowed)}")
    return fmt


def output(fmt: str | None, allowed: tuple[str, ...]) -> Output:
    """The command's one output sink: its format resolved once (-f, else by whether stdout is a terminal)."""
    env = environment()
    return Output(resolve_format(fmt, allowed, env), env)


def load(
    model: str | None, *, cache: bool | None = False, files: ModelFiles | None = None
) -> tuple[Checkpoint, Tokenizer]:
    """The model and its tokenizer (mhacli.ops.inputs.open_model)."""
    return open_model(model, cache=cache, files=files)


def tokens_of(
    raw: str | list[int], ckpt: Checkpoint, tokenizer: Tokenizer, *, truncate: bool, where: str = "text"
) -> TokenizedText:
    """A text tokenized, or given ids checked (vocab_size, n_positions), with the same truncation rule and warning."""
    c = ckpt.config
    try:
        tokens = encode(raw, ckpt, tokenizer, truncate=truncate)
    except (TextError, TokenizerError) as exc:
        if not where.startswith("--texts"):
            raise
        raise type(exc)(f"{where}: {exc.args[0] if exc.args else exc}", params=exc.params) from exc  # the line
    if isinstance(raw, list):
        where = "--ids" if where == "text" else where
    if tokens.truncated_from is not None:
        warn(f"{where} truncated to the first {c.n_positions} of {tokens.original_length()} tokens")
    return tokens


def prepare(
    model: str | None, text: str | None, *, truncate: bool = False, ids: str | None = None
) -> tuple[Checkpoint, TokenizedText]:
    """The model and the tokenized input, each checked as early as it can be.

    Check -m first (a missing path is named before stdin is read), then read the text or the ids (a bad text fails
    before the weights load), then load the model and tokenize.
    """
    files = check_model(model)
    raw = read_input(text, ids)
    ckpt, tokenizer = load(model, files=files)
    return ckpt, tokens_of(raw, ckpt, tokenizer, truncate=truncate)


def warn(message: str) -> None:
    environment().warn(message)


def note(message: str) -> None:
    """A remark for the reader of a plain-text view, on stderr so stdout stays a table."""
    environment().note(message)


def progress(items: Iterable[T], total: int, description: str) -> Generator[T, None, None]:
    """A progress bar on stderr, only when stderr is a terminal; otherwise the items as they are."""
    return environment().progress(items, total, description)
