"""The Python door's argument checks: the type of every value a caller passes to mhacli's public functions.

The CLI's parser gives the operations an int where they want an int; a Python caller can pass anything. Each public
function of mhacli.api checks its arguments' types here first, so a wrong one is a UsageError naming the keyword
("top must be an int, got str"), never a TypeError, IndexError or ValueError from deep inside. Ranges are left to
the operations, whose checks both doors share (the same words as the CLI, each door spelling the parameter).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mhacli.errors import UsageError

MAX_SHOWN = 60  # characters of a bad value's repr in a message


def _type(value: object) -> str:
    return type(value).__name__


def is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(value: object, name: str) -> int:
    """An int (a NumPy integer too), never a bool or a float."""
    if not is_int(value):
        raise UsageError(f"{name} must be an int, got {_type(value)}")
    return int(value)  # type: ignore[call-overload]


def optional_integer(value: object, name: str) -> int | None:
    return None if value is None else integer(value, name)


def boolean(value: object, name: str) -> bool:
    """True or False (a NumPy bool too): a truthy string is not a yes."""
    if not isinstance(value, (bool, np.bool_)):
        raise UsageError(f"{name} must be True or False, got {_type(value)}")
    return bool(value)


def optional_boolean(value: object, name: str) -> bool | None:
    return None if value is None else boolean(value, name)


def string(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{name} must be a str, got {_type(value)}")
    return value


def optional_string(value: object, name: str) -> str | None:
    return None if value is None else string(value, name)


def _items(value: object, name: str, what: str) -> list[Any]:
    """The items of a list-like argument (not a str, bytes or mapping, which iterate as something else)."""
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, (Iterable, np.ndarray)):
        raise UsageError(f"{name} must be a list of {what}, got {_type(value)}")
    return list(value)


def list_of(value: object, name: str) -> list[Any]:
    """A list (tuple, any iterable but a str, bytes or dict) of anything: the caller checks the items."""
    return _items(value, name, "items")


def integers(value: object, name: str) -> list[int]:
    """A list (tuple, range, 1-D array) of ints."""
    items = _items(value, name, "ints")
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise UsageError(f"{name} must be a list of ints, got an array of shape {value.shape}")
    for item in items:
        if not is_int(item):
            raise UsageError(f"{name} must be a list of ints, got an item {repr(item)[:MAX_SHOWN]}")
    return [int(x) for x in items]


def optional_integers(value: object, name: str) -> list[int] | None:
    return None if value is None else integers(value, name)


def strings(value: object, name: str) -> list[str]:
    """A list (tuple) of str; a single str is not one (it would iterate as its characters)."""
    items = _items(value, name, "str")
    for item in items:
        if not isinstance(item, str):
            raise UsageError(f"{name} must be a list of str, got an item {repr(item)[:MAX_SHOWN]}")
    return items


def text_or_texts(value: object, name: str) -> list[str]:
    """One text (a str) or several (a list of str)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (bytes, dict)) or not isinstance(value, Iterable):
        raise UsageError(f"{name} must be a str or a list of str, got {_type(value)}")
    return strings(value, name)


def token(value: object, name: str) -> str | int | None:
    """One token, as its text (' Paris') or its id (an int), or None."""
    if value is None or isinstance(value, str):
        return value
    if is_int(value):
        return int(value)  # type: ignore[call-overload]
    raise UsageError(f"{name} must be a token's text (a str) or its id (an int), got {_type(value)}")


def callback(value: object, name: str) -> Callable | None:
    if value is not None and not callable(value):
        raise UsageError(f"{name} must be a function or None, got {_type(value)}")
    return value  # type: ignore[return-value]


def path(value: object, name: str) -> Path:
    """A file name: a str or an os.PathLike (bytes are not a name here)."""
    if not isinstance(value, (str, os.PathLike)) or isinstance(value, bytes):
        raise UsageError(f"{name} must be a path (a str or pathlib.Path), got {_type(value)}")
    got = os.fspath(value)
    if not isinstance(got, str):
        raise UsageError(f"{name} must be a path (a str or pathlib.Path), got {_type(value)}")
    return Path(got)


def of_type(value: object, kind: type, name: str, what: str) -> Any:
    """An instance of `kind` (a Model, say), named `what` in the message."""
    if not isinstance(value, kind):
        raise UsageError(f"{name} must be {what}, got {_type(value)}")
    return value
