"""`mha browse`.

An interactive terminal browser of every head (the Textual app in mhacli.browse, the `browse` extra, imported only here
and only when the command runs).
"""

from __future__ import annotations

import os
import shutil
from typing import Annotated, cast

import typer

from mhacli.cli._app import app, examples
from mhacli.cli._common import MaxMemoryOpt, ModelOpt, TextArg, TruncateOpt, check_model, environment
from mhacli.cli.ablate import AblateOpt
from mhacli.errors import ExitCode, TextError, UsageError, missing_extra
from mhacli.ops import inputs
from mhacli.ops.ablation import ablation, check_ablate_spec
from mhacli.ops.memory import check_memory, memory_limit

# Shown when no TEXT is given on a terminal: a sentence said twice, so the bundled model's previous-token (L0H3)
# and induction (L1H2) heads show at once.
DEFAULT_TEXT = "The cat sat on the mat. The cat sat on the mat."
MIN_COLUMNS, MIN_LINES = 60, 16


@app.command(
    rich_help_panel="Looking",
    epilog=examples(
        'mha browse "The cat sat on the mat. The cat sat on the mat."',
        'mha browse "ROMEO: I love thee. ROMEO: I love thee." --diff sample-early',
        'mha browse "The cat sat on the mat. The cat sat on the mat." --ablate 0.3',
    ),
)
def browse(
    text: TextArg = None,
    model: ModelOpt = None,
    diff_model: Annotated[
        str | None,
        typer.Option("--diff", metavar="MODEL_B", help="A second model to compare with (d): A, B and |A−B| per head."),
    ] = None,
    ablate: AblateOpt = None,
    truncate: TruncateOpt = False,
    max_memory: MaxMemoryOpt = None,
) -> int:
    """Browse every head interactively under the arrow keys.

    Grid, maps, tokens, diff, explain and ablation in one terminal app."""
    app_class = textual_app()
    check_ablate_spec(ablate)
    check_terminal()
    check_model(model)
    if diff_model is not None:
        check_model(diff_model)
    raw = read_input(text)
    import mhacli
    from mhacli.browse.state import Session

    m = mhacli.load(model)
    b = mhacli.load(diff_model) if diff_model is not None else None
    ids = m.tokenize(raw, truncate=truncate).ids.tolist()
    limit = memory_limit(max_memory)
    check_memory(m.memory_needed(len(ids)) * (2 if b is not None else 1), max_memory)
    if b is not None and b.tokenize(raw, truncate=truncate).ids.tolist() != ids:
        raise TextError(
            "MODEL_A's and MODEL_B's tokenizers give different token ids for the text: --diff needs the same"
        )
    removal = ablation(ablate, m.checkpoint)
    if removal is not None and removal.method != "zero":
        raise UsageError(f"--ablate {ablate}: browse zeroes heads; this mask sets them to means (mha stats replays it)")
    removed = () if removal is None else removal.heads
    session = Session(m, raw, model_b=b, removed=removed, memory_limit=limit, truncate=truncate)
    code = app_class(session).run()
    # q and Ctrl+C exit 0; anything else is the app failing (Textual has printed its traceback): a bug, exit 3
    return ExitCode.OK if code in (None, 0) else ExitCode.INTERNAL


def textual_app():  # noqa: ANN201 - the app class, from the optional extra
    """The Textual app, imported now: without the `browse` extra, one error line naming its install command."""
    try:
        import textual  # noqa: F401
    except ImportError:
        raise missing_extra("mha browse", "textual", "browse") from None
    from mhacli.browse.app import BrowseApp

    return BrowseApp


def check_terminal() -> None:
    """An interactive app needs a terminal on stdout, and room for its panes."""
    if not environment().stdout_isatty:
        raise UsageError(
            "mha browse is interactive and needs a terminal on stdout; mha stats and mha inspect print to pipes"
        )
    size = shutil.get_terminal_size((0, 0))
    if size.columns < MIN_COLUMNS or size.lines < MIN_LINES:
        raise UsageError(
            f"the terminal is {size.columns}×{size.lines}; mha browse needs at least {MIN_COLUMNS}×{MIN_LINES} "
            "(80×24 or more is best)"
        )


def read_input(text: str | None) -> str:
    """TEXT, `-` or piped stdin (then the keys are read from the terminal, /dev/tty).

    The built-in text when none is given on a terminal.
    """
    env = environment()
    if text is None and env.stdin is not None and env.stdin_isatty:
        return DEFAULT_TEXT
    raw = cast(str, inputs.read_input(text, None))  # no --ids here: always a text
    if text is None or text == "-":
        try:
            tty = os.open("/dev/tty", os.O_RDWR)
        except OSError as exc:
            raise UsageError(
                f"the text came on stdin, and the keys need a terminal: cannot open /dev/tty ({exc.strerror})"
            ) from exc
        os.dup2(tty, 0)  # Textual reads keys from file descriptor 0
        os.close(tty)
    return raw
