"""Typed errors raised by the core; the CLI maps each to one `error:` line and an exit code.

An error that names a parameter carries it as a field: its message holds `{name}` where the parameter is named
(`{max_memory}`), and `params` lists those names. Each door spells them: `str(error)` is the Python door's words
(`max_memory`, `truncate=True`), and the CLI renders `error.spelled(its_words)` (`--max-memory`, `--truncate`).
A ResourceError also carries `narrow`, which way out of the memory guard fits the request; each door words it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import IntEnum

Words = Callable[[str], str]  # a parameter's name (or a ResourceError's `narrow` key) -> the door's words for it

# The Python door (mhacli.api): a parameter is its keyword; these read as a keyword argument, or say it in words.
PYTHON_WORDS = {
    "truncate": "truncate=True",
    "strict": "a failed text stops the census",
    "ablate": "the heads to remove",
    # ways out of the memory guard, by ResourceError.narrow
    "narrow:text": "use a shorter text",
    "narrow:texts": "use shorter texts",
    "narrow:maps": "use a shorter text (stats() streams without maps)",
    "narrow:layer_map": "ask for fewer layers, or use a shorter text",
    "narrow:scoring": "score fewer or shorter texts",
    "narrow:workers": "use fewer workers",
}


def python_words(name: str) -> str:
    """How the Python door names a parameter: its keyword (`max_memory`), or PYTHON_WORDS' phrase."""
    return PYTHON_WORDS.get(name, name)


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1  # a check ran and failed (verify mismatch, diff --fail-above)
    BAD_INPUT = 2  # bad usage or bad input: arguments, files, text
    INTERNAL = 3  # a bug in mha: the message says so
    INTERRUPTED = 130


class MhaError(Exception):
    """Base class: a problem the user can fix. The message is one line, shown as `error: <message>`.

    `params`: the parameters the message names, each written `{name}` in it and spelled by the door (`spelled`).
    """

    exit_code: ExitCode = ExitCode.BAD_INPUT

    def __init__(self, message: str = "", *, params: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.params = tuple(params)

    def spelled(self, words: Words) -> str:
        """The message with each parameter named in `words` (a door's: python_words, the CLI's flags)."""
        text = str(self.args[0]) if self.args else ""
        for name in self.params:
            text = text.replace("{" + name + "}", words(name))
        return text

    def __str__(self) -> str:
        return self.spelled(python_words)


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
    """A request would need more memory than allowed (the memory guard, parameter max_memory).

    Its message says about how much (`needed`, `limit` in bytes) and how to narrow the request: `narrow` names the
    way out that fits it (text, texts, maps, layer_map, scoring, workers), each door words it (`narrow:<key>`).
    """

    def __init__(
        self, message: str = "", *, params: Sequence[str] = (), needed: int = 0, limit: int = 0, narrow: str = "text"
    ) -> None:
        super().__init__(message, params=params)
        self.needed, self.limit, self.narrow = needed, limit, narrow


class DependencyError(MhaError):
    """An optional dependency (torch for `verify`) is not installed."""


class NumericsError(MhaError):
    """The forward pass produced NaN or Inf."""


class CheckFailed(MhaError):
    """A check ran and failed (exit 1)."""

    exit_code = ExitCode.CHECK_FAILED


def install_hint(extra: str) -> str:
    """The one way every message names the install command of an optional extra.

    The extras are pyproject's [project.optional-dependencies]; the hint gives the PyPI form and a checkout's.
    """
    return f'pip install "mhacli[{extra}]" (from a checkout: pip install ".[{extra}]")'


def missing_extra(what: str, packages: str, extra: str, *, params: Sequence[str] = ()) -> DependencyError:
    """`what` needs `packages`, which the `extra` extra installs: one `error:` line saying how to install them.

    `what` may name parameters (`{dask}`), listed in `params`, for each door to spell.
    """
    return DependencyError(f"{what} needs {packages}: {install_hint(extra)}", params=params)
