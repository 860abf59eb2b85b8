"""The `mha` command line: a thin Typer app. Commands live in mhacli/cli/, one module each, found by themselves.

Each command writes through one environment (mhacli.views.output.Environment: streams, terminals, width, colour):
`run(argv, env=...)` takes one, the process's streams otherwise.

Errors: the core raises MhaError subclasses; `main` is the one place that turns them (and click's usage errors,
broken pipes, a full disk and Ctrl-C) into one `error:` line on stderr and an exit code. MHA_DEBUG=1 shows
tracebacks. The line is printable: characters that could drive a terminal (escape sequences, bidi overrides,
newlines in a name read from a file) are shown escaped, and a very long line is clipped. Python warnings raised
while a command runs (numpy's RuntimeWarnings), and libraries' log records of level WARNING and above (matplotlib's
when HOME is read-only), are held back: shown as one `warning:` line each after a success, dropped before an
error, so no warning ever precedes the `error:` line.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import pkgutil
import sys
import warnings

import typer

from mhacli.cli._app import app
from mhacli.cli._common import CURRENT, cli_words, environment
from mhacli.errors import ExitCode, MhaError
from mhacli.io.files import escape_unprintable
from mhacli.views.formats import one_run
from mhacli.views.output import Environment

# Each command module registers its command on `app` (mhacli.cli._app) when imported: every module of this package
# is one, except the private `_`-prefixed ones (the app, shared options, --save). A new command is a new module.
for _command in pkgutil.iter_modules(__path__):
    if not _command.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_command.name}")

MAX_LINE = 1000  # characters of an error line; the rest is clipped
# Writing stdout failed for a reason outside the program: the disk or quota is full, the file is too large.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


class Terminated(BaseException):  # noqa: N818 - a signal, as KeyboardInterrupt is
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C (temporary files removed, workers stopped), exit 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _catch_signals() -> None:
    """SIGTERM and SIGHUP end `mha` as Ctrl-C does: one `error:` line, nothing partial left, exit 143 or 129."""
    import signal

    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None:
            try:
                signal.signal(signum, _terminate)
            except (ValueError, OSError):  # not the main thread, or a platform without it
                pass


def _error(message: str, code: int, *, first_line: bool = False) -> int:
    """One `error:` line on stderr.

    An MhaError's message is one line by construction (a newline in it can only come from a name, and is escaped);
    another exception's message is cut at its first line.
    """
    text = message.strip()
    if first_line:
        text = text.splitlines()[0] if text else ""
    text = escape_unprintable(text or "unknown error")
    if len(text) > MAX_LINE:
        text = text[: MAX_LINE - 3] + "..."
    stderr = environment().stderr
    if stderr is not None:
        print(f"error: {text}", file=stderr)
    return code


def _quiet_broken_pipe() -> int:
    # The reader went away (`mha ... | head -1`): stop quietly, and keep Python from complaining at exit.
    _drop_stdout()
    return ExitCode.OK


def _drop_stdout() -> None:
    """Point stdout's file descriptor at /dev/null, so that flushing what is left (at exit) cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, AttributeError, ValueError):
        pass


def _write_failed(exc: OSError) -> int:
    _drop_stdout()
    return _error(f"cannot write the output: {exc.strerror or exc}", ExitCode.BAD_INPUT)


def _show_warnings(caught: list[warnings.WarningMessage], logged: list[logging.LogRecord]) -> None:
    """After a success: each warning and log record held back while the command ran, as one `warning:` line."""
    texts = [(str(w.message).strip(), w.category.__name__) for w in caught]
    for record in logged:
        try:
            texts.append((record.getMessage().strip(), record.levelname))
        except Exception:  # noqa: BLE001 - a record whose arguments do not fit its format
            texts.append((str(record.msg).strip(), record.levelname))
    for text, kind in texts:
        line = text.splitlines()[0] if text else kind
        stderr = environment().stderr
        if stderr is not None:
            print(f"warning: {escape_unprintable(line)}", file=stderr)


class _HeldLogs(logging.Handler):
    """Log records of WARNING and above from the libraries mha uses, held back as Python warnings are.

    matplotlib logs two multi-line records when its config directory cannot be made (HOME read-only or a file);
    Python's last-resort handler would print them to stderr as they come, before an `error:` line too.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run(argv: list[str] | None = None, env: Environment | None = None) -> int:
    """Run `mha` with `argv` (default: the process's arguments) in `env` (default: the process's streams)."""
    token = CURRENT.set(env)
    held = _HeldLogs()
    logging.getLogger().addHandler(held)
    try:
        with warnings.catch_warnings(record=True) as caught, one_run():  # one_run: no output path named twice
            code = _run(argv)
        if code == ExitCode.OK:
            _show_warnings(caught, held.records)
        return code
    finally:
        logging.getLogger().removeHandler(held)
        CURRENT.reset(token)


def _debug() -> bool:
    return os.environ.get("MHA_DEBUG", "") not in ("", "0")


def _run(argv: list[str] | None) -> int:
    """The command's exit code; every exception it raises turned into an exit code and at most one line."""
    try:
        result = app(args=argv, prog_name="mha", standalone_mode=False)
        if result == ExitCode.INTERRUPTED:  # typer turns Ctrl-C into Exit(130) without a word
            return _error("interrupted", ExitCode.INTERRUPTED)
        return int(result) if isinstance(result, int) else ExitCode.OK
    except (KeyboardInterrupt, typer.Abort):
        return _error("interrupted", ExitCode.INTERRUPTED)
    except Terminated as exc:
        import signal

        return _error(f"terminated ({signal.Signals(exc.signum).name})", 128 + exc.signum)
    except typer.Exit as exc:
        return exc.exit_code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except SystemExit:
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":  # typer met a broken pipe and exits 1: not a failure
            return _quiet_broken_pipe()
        raise
    except MemoryError:
        if _debug():
            raise
        return _error("out of memory: narrow the request (--layer, --head, shorter text)", ExitCode.BAD_INPUT)
    except Exception as exc:  # noqa: BLE001
        if _debug() and type(exc).__name__ != "NoArgsIsHelpError":
            raise
        return _failed(exc)


def _failed(exc: Exception) -> int:
    """An exception's exit code and `error:` line (MHA_DEBUG unset): ours, the OS's, click's, or a bug."""
    if isinstance(exc, MhaError):
        return _error(exc.spelled(cli_words), exc.exit_code)
    if isinstance(exc, OSError):
        return _write_failed(exc) if exc.errno in WRITE_ERRNOS else _internal(exc)
    if type(exc).__name__ == "NoArgsIsHelpError":
        print(exc.ctx.get_help(), file=environment().stdout)  # type: ignore[attr-defined]
        return ExitCode.OK
    if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click's usage errors (typer vendors click)
        # typer words a refused choice "Invalid value for '--metric': Value error, 'x' is not one of ..."
        message = exc.format_message().replace(": Value error, ", ": ")
        return _error(message, ExitCode.BAD_INPUT, first_line=True)
    return _internal(exc)


def _internal(exc: BaseException) -> int:
    message = f"internal error (a bug in mha): {type(exc).__name__}: {exc} (run with MHA_DEBUG=1 for a traceback)"
    return _error(message, ExitCode.INTERNAL, first_line=True)


def _standard_streams() -> int | None:
    """Make stdout and stderr usable before anything runs.

    A closed stderr (`2>&-`) is /dev/null, a closed stdout (`>&-`) is an error, and characters stdout's encoding
    lacks (PYTHONIOENCODING=ascii) are written as backslash escapes instead of failing (JSON is written with \\u
    escapes then: mhacli.views.formats.dumps).
    """
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    if sys.stdout is None:
        return _error("stdout is closed: redirect it to a file or /dev/null", ExitCode.BAD_INPUT)
    if hasattr(sys.stdout, "reconfigure"):
        try:
            sys.stdout.reconfigure(errors="backslashreplace")
        except (ValueError, OSError):
            pass
    return None


def main() -> None:
    _catch_signals()
    code = _standard_streams()
    if code is None:
        code = run()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = _quiet_broken_pipe()
    except OSError as exc:
        code = _write_failed(exc) if exc.errno in WRITE_ERRNOS else _internal(exc)
    except AttributeError:  # stdout closed
        pass
    if code in (128 + 1, 128 + 15):  # SIGHUP, SIGTERM: all unwound; skip the atexit joins of a stopped pool's threads
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        if "multiprocessing.util" in sys.modules:  # unlink the pool's semaphores (else its tracker warns), join nothing
            sys.modules["multiprocessing.util"]._run_finalizers(0)
        os._exit(code)
    sys.exit(code)
