"""Typed errors raised by the core; the CLI maps each to one `error:` line and an exit code."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1  # a check ran and failed (verify mismatch, diff --fail-above)
    BAD_INPUT = 2  # bad usage or bad input: arguments, files, text
    INTERNAL = 3  # a bug in mha: the message says so
    INTERRUPTED = 130


class MhaError(Exception):
    """Base class: a problem the user can fix. The message is one line, shown as `error: <message>`."""

    exit_code: ExitCode = ExitCode.BAD_INPUT


class ModelError(MhaError):
    """The model could not be resolved or loaded (paths, config, weights)."""


class ConfigError(ModelError):
    """config.json is missing, not JSON, of the wrong type or describes an impossible model."""


class WeightsError(ModelError):
    """A weight file is unreadable, lies about its contents, lacks a tensor or has one of the wrong shape."""


class TokenizerError(MhaError):
    """Tokenizer files are missing or corrupt."""


class TextError(MhaError):
    """The input text is empty, not UTF-8, or too long for the model."""


class UsageError(MhaError):
    """An option is out of range or inconsistent with the model."""


class ResourceError(UsageError):
    """A request would need more memory than allowed (the memory guard: --max-memory, max_memory=); its message
    says about how much, and how to narrow the request."""


class DependencyError(MhaError):
    """An optional dependency (torch for `verify`) is not installed."""


class NumericsError(MhaError):
    """The forward pass produced NaN or Inf."""


class CheckFailed(MhaError):
    """A check ran and failed (exit 1)."""

    exit_code = ExitCode.CHECK_FAILED


def install_hint(extra: str) -> str:
    """The one way every message names the install command of an optional extra (pyproject's
    [project.optional-dependencies]): the PyPI form, and the form for a checkout."""
    return f'pip install "mhacli[{extra}]" (from a checkout: pip install ".[{extra}]")'


def missing_extra(what: str, packages: str, extra: str) -> DependencyError:
    """`what` needs `packages`, which the `extra` extra installs: one `error:` line saying how to install them."""
    return DependencyError(f"{what} needs {packages}: {install_hint(extra)}")
