"""The `mha` command line: a thin Typer app. Commands live in mhacli/commands/, one module each.

Errors: the core raises MhaError subclasses; `main` is the one place that turns them (and click's usage errors,
broken pipes and Ctrl-C) into one `error:` line on stderr and an exit code. MHA_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import os
import sys

import typer

# Each command module registers its command on `app` (mhacli.commands._app) when imported.
from mhacli.commands import ablate, census, diff, explain, info, inspect, stats, verify  # noqa: F401
from mhacli.commands._app import app
from mhacli.errors import ExitCode, MhaError


def _error(message: str, code: int) -> int:
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    print(f"error: {first}", file=sys.stderr)
    return code


def _quiet_broken_pipe() -> int:
    # The reader went away (`mha ... | head -1`): stop quietly, and keep Python from complaining at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    return ExitCode.OK


def run(argv: list[str] | None = None) -> int:
    debug = os.environ.get("MHA_DEBUG", "") not in ("", "0")
    try:
        result = app(args=argv, prog_name="mha", standalone_mode=False)
        if result == ExitCode.INTERRUPTED:  # typer turns Ctrl-C into Exit(130) without a word
            return _error("interrupted", ExitCode.INTERRUPTED)
        return int(result) if isinstance(result, int) else ExitCode.OK
    except MhaError as exc:
        if debug:
            raise
        return _error(str(exc), exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        return _error("interrupted", ExitCode.INTERRUPTED)
    except typer.Exit as exc:
        return exc.exit_code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except SystemExit:
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":  # typer met a broken pipe and exits 1: not a failure
            return _quiet_broken_pipe()
        raise
    except MemoryError:
        if debug:
            raise
        return _error("out of memory: narrow the request (--layer, --head, shorter text)", ExitCode.BAD_INPUT)
    except Exception as exc:  # noqa: BLE001
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.ctx.get_help())
            return ExitCode.OK
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click's usage errors (typer vendors click)
            if debug:
                raise
            return _error(exc.format_message(), ExitCode.BAD_INPUT)
        if debug:
            raise
        return _error(f"internal error: {type(exc).__name__}: {exc} (run with MHA_DEBUG=1 for a traceback)", 3)


def main() -> None:
    code = run()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = _quiet_broken_pipe()
    sys.exit(code)
