"""Reading files named by a model directory: regular files only, bounded JSON, names shown escaped.

Every weights, config and tokenizer file is opened through `open_regular`: a FIFO, device or directory named
like one is refused without blocking (opened with O_NONBLOCK, checked with fstat on the opened descriptor, so
nothing can swap the file between the check and the read). JSON is parsed with integers bounded to
MAX_INT_DIGITS digits (no real config has a longer one; Python itself refuses past 4,300 with a ValueError)
and, where asked, with duplicate keys refused. `show` escapes names read from files or directories
(repr-style: `\\x1b`, `\\n`, `\\u202e`) so that an escape sequence in a tensor or file name never reaches the
terminal.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import BinaryIO

from mhacli.errors import MhaError, ModelError

MAX_INT_DIGITS = 64


MAX_NAME = 160  # characters of a name shown in a message; a longer one is shown as its start ... its end


def show(name: object) -> str:
    """A name for a message: as it is when every character is printable and it has no quotes; else repr().

    A name longer than MAX_NAME is clipped in the middle."""
    text = str(name)
    if text and text.isprintable() and "'" not in text and '"' not in text:
        return _clip_middle(text)
    return quoted(text)


def quoted(name: object) -> str:
    """repr(name), clipped in the middle when longer than MAX_NAME: always quoted, always escaped."""
    return _clip_middle(repr(str(name)))


def _clip_middle(text: str) -> str:
    if len(text) <= MAX_NAME:
        return text
    return text[: MAX_NAME // 2] + "..." + text[-MAX_NAME // 4 :]


def escape_unprintable(text: str) -> str:
    """Every character that is not printable (control characters, bidi overrides) as its repr-style escape."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def utf8_text(text: str) -> str | None:
    """The text as UTF-8 says it, or None when it is not valid UTF-8.

    A command-line argument reaches Python decoded with the locale's encoding; under LANG=C (ASCII, with UTF-8
    mode off) each non-ASCII byte arrives as a surrogate escape (U+DC80..U+DCFF). Those bytes are recovered
    (os.fsencode) and read as UTF-8, so `mha stats "café"` means the same in every locale; a lone surrogate that
    no bytes explain (U+D800, or bytes that are not UTF-8) is None.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    for recover in (os.fsencode, lambda t: t.encode("utf-8", "surrogateescape")):
        try:
            return recover(text).decode("utf-8")
        except (UnicodeError, ValueError):
            continue
    return None


def file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


# Every file read as an input (a model's weights, config and tokenizer files, --texts, a mask file), by identity: an
# output must never take its place (mhacli.views.formats refuses to), or `--save`, `--per-text` or `--save-mask` onto
# the weights would leave a picture where the model was. The identity includes size and modification time, so a file
# made later under a reused inode number is not mistaken for an input. A CLI run keeps its own (inputs_of_one_run:
# a mask one run read may be another run's output in the same process); the Python API, the process's.
_PROCESS_INPUTS: dict[tuple[int, int, int, int], str] = {}
_RUN_INPUTS: ContextVar[dict[tuple[int, int, int, int], str] | None] = ContextVar("mha_inputs", default=None)


def _inputs() -> dict[tuple[int, int, int, int], str]:
    run = _RUN_INPUTS.get()
    return run if run is not None else _PROCESS_INPUTS


@contextmanager
def inputs_of_one_run() -> Iterator[None]:
    """A scope whose inputs are its own: what it reads is protected from what it writes, and only that."""
    token = _RUN_INPUTS.set({})
    try:
        yield
    finally:
        _RUN_INPUTS.reset(token)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def note_input(fd: int, what: str) -> None:
    """Remember the regular file open on `fd` as an input (`what`: 'weights', 'config', '--texts', ...)."""
    _note(os.fstat(fd), what)


def note_input_path(path: Path, what: str) -> None:
    """Remember the regular file at `path`, if there is one, as an input (a model's file its loader may read)."""
    try:
        _note(os.stat(path), what)
    except (OSError, ValueError):
        pass


def _note(st: os.stat_result, what: str) -> None:
    if stat.S_ISREG(st.st_mode):
        _inputs().setdefault(_identity(st), what)


def input_at(path: Path) -> str | None:
    """What the file at `path` (symlinks followed) was read as, when this process read it as an input; else None."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return _inputs().get(_identity(st))


def open_regular(path: Path, what: str, error: type[MhaError] = ModelError) -> BinaryIO:
    """Open `path` for reading if it is a regular file (symlinks followed); anything else is `error`, at once.

    The file is remembered as an input (note_input), which no output may replace."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"{what}: cannot open {show(path)}: {exc.strerror}") from exc
    except ValueError as exc:  # an embedded NUL byte
        raise error(f"{what}: {show(path)} is not a usable file name ({exc})") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{what}: {show(path)} is {file_kind(mode)}, not a regular file; refused")
        note_input(fd, what)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: Path, what: str, error: type[MhaError] = ModelError, *, max_bytes: int | None = None) -> None:
    """Refuse `path` unless it is a regular file (of at most max_bytes), for files a library opens by name."""
    with open_regular(path, what, error) as f:
        size = os.fstat(f.fileno()).st_size
    if max_bytes is not None and size > max_bytes:
        raise error(f"{what}: {show(path.name)} is {size} bytes, too large")


class _Duplicate(ValueError):
    pass


class _HugeInt(ValueError):
    pass


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise _HugeInt(f"an integer of {len(digits.lstrip('-'))} digits")
    return int(digits)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    doc: dict = {}
    for key, value in pairs:
        if key in doc:
            raise _Duplicate(key)
        doc[key] = value
    return doc


def parse_json(raw: bytes, where: str, error: type[MhaError], *, unique_keys: bool = False) -> object:
    """JSON from UTF-8 bytes.

    Not JSON, an integer over MAX_INT_DIGITS digits or (unique_keys) a key given twice in one object is `error`,
    naming `where`."""
    try:
        return json.loads(
            raw.decode("utf-8"), parse_int=_bounded_int, object_pairs_hook=_unique_keys if unique_keys else None
        )
    except _HugeInt as exc:
        raise error(f"{where} holds {exc}, too large for any field (corrupt or hostile file?)") from exc
    except _Duplicate as exc:
        raise error(f"{where} names {quoted(exc.args[0])} twice (corrupt or hostile file?)") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise error(f"{where} is not valid JSON ({first})") from exc


def read_json(path: Path, what: str, error: type[MhaError] = ModelError, *, max_bytes: int) -> object:
    """A JSON file of at most max_bytes, read only if it is a regular file."""
    with open_regular(path, what, error) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise error(f"{what}: {show(path.name)} is {size} bytes, too large to be a JSON {what}")
            raw = f.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{what}: cannot read {show(path)}: {exc.strerror}") from exc
    if len(raw) > max_bytes:
        raise error(f"{what}: {show(path.name)} is over {max_bytes} bytes, too large to be a JSON {what}")
    return parse_json(raw, f"{what}: {show(path)}", error)
