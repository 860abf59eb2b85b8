"""Machine formats: json, jsonl, csv, tsv, npz. Strict JSON (no NaN/Infinity); no ANSI anywhere."""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any, TextIO

import numpy as np

from mhacli.analyses.heads import HeadView
from mhacli.analyses.partial import PartialMap
from mhacli.analyses.stats import STAT_NAMES, SUPPORTED_STATS
from mhacli.errors import UsageError
from mhacli.io.files import file_kind, input_at, inputs_of_one_run

SUPPORT_COLUMNS = ("duplicate_rows", "induction_rows")  # support of duplicate_token and induction (docs/formats.md)
CSV_COLUMNS = ("layer", "head", "kind", *STAT_NAMES, *SUPPORT_COLUMNS)
ATTENTION_DECIMALS = 8  # 5e-9 rounding: far below the 1e-6 parity the numbers are checked to


def written(write: Callable[[io.StringIO], None]) -> str:
    """What `write(out)` writes, as a string (a result's plain text, from a writer of mhacli.views.plain)."""
    buf = io.StringIO()
    write(buf)
    return buf.getvalue()


def dumps(doc: Any, *, ensure_ascii: bool | None = None) -> str:
    """Strict JSON; non-ASCII characters as themselves, or as \\u escapes when stdout cannot encode them.

    PYTHONIOENCODING=ascii or a latin-1 locale give the same document either way. `ensure_ascii` None asks the
    process's stdout; a door passes what its environment knows (mhacli.views.output.Environment).
    """
    if ensure_ascii is None:
        ensure_ascii = not stdout_is_unicode()
    return json.dumps(doc, allow_nan=False, ensure_ascii=ensure_ascii)


def stdout_is_unicode() -> bool:
    """Whether stdout's encoding can encode every character (UTF-8, UTF-16, UTF-32, GB18030)."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return False
    return name.startswith("utf") or name == "gb18030"


def lower_triangle(attention: np.ndarray) -> list[list[float]]:
    """[n_seq, n_seq] -> rows, row i holding the weights of query i over keys 0..i."""
    rounded = np.round(attention.astype(np.float64), ATTENTION_DECIMALS)
    return [rounded[i, : i + 1].tolist() for i in range(rounded.shape[0])]


def head_record(view: HeadView, *, with_attention: bool) -> dict:
    """A query head's object: layer, head, kv_head (the K/V head it reads), kind, stats[, attention]."""
    s = view.stats.to_dict()
    kv_head = view.head if view.kv_head is None else view.kv_head
    record = {"layer": s.pop("layer"), "head": s.pop("head"), "kv_head": kv_head} | s
    if with_attention and view.attention is not None:
        record["attention"] = lower_triangle(view.whole_map())
    return record


def stats_row(view: HeadView) -> list:
    s = view.stats
    return [
        s.layer,
        s.head,
        s.kind,
        *(s.values[name] for name in STAT_NAMES),
        *(s.support.get(n, 0) for n in SUPPORTED_STATS),
    ]


def format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def write_table(out: TextIO, fmt: str, columns: Sequence[str], rows: Iterable[Sequence]) -> None:
    writer = csv.writer(out, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_cell(v) for v in row])


class AtomicFile:
    """An output written to a temporary file beside its final name, then renamed into place (`commit`).

    Readers and other writers of the same name see the old file or a whole new one, never a partial one: two `mha`
    processes saving to one path at once leave one whole result (the last rename), and an error, Ctrl-C or a
    signal leaves the old file and no temporary (`discard`). Every output of the CLI is written through this class.
    The file gets the mode a plain `open(path, "w")` would give it (an existing file's mode; else 0o666 less the
    umask). `commit` refuses to replace a file this process read as an input (mhacli.io.files.input_at: the model's
    weights, the --texts corpus), so no output ever takes a model's place.
    """

    def __init__(self, path: Path, *, text: bool = False) -> None:
        self.path = path
        directory = path.parent if str(path.parent) else Path(".")
        try:
            self.mode = _mode_for(path)
            fd, self.tmp = tempfile.mkstemp(prefix=".mha-", suffix=".tmp", dir=directory)  # short: path's may be long
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
        self.file: IO = os.fdopen(fd, "w", encoding="utf-8") if text else os.fdopen(fd, "wb")

    def commit(self) -> None:
        """Put the whole file in place; on any failure nothing is left but the old file (UsageError on an OSError)."""
        with self.discarded_on_failure():
            self.file.flush()
            os.fchmod(self.file.fileno(), self.mode)  # mkstemp creates 0o600
            self.file.close()
            refuse_input(self.path)
            os.replace(self.tmp, self.path)

    @contextmanager
    def discarded_on_failure(self) -> Iterator[None]:
        """Any failure in the block removes the temporary file; an OSError is one UsageError naming the path."""
        try:
            yield
        except OSError as exc:
            self.discard()
            raise UsageError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Remove the temporary file (the old file, if any, stays as it was)."""
        try:
            self.file.close()
        except OSError:  # what was left in the buffer cannot be written (a full disk): it is discarded anyway
            pass
        Path(self.tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all (AtomicFile)."""
    out = AtomicFile(path)
    with out.discarded_on_failure():
        out.file.write(data)
    out.commit()


def refuse_input(path: Path) -> None:
    """An output must not replace a file this process read as an input: the model would be gone."""
    what = input_at(path)
    if what is not None:
        raise UsageError(f"cannot write {path}: it is a file this run reads ({what}); refused, choose another name")


def _mode_for(path: Path) -> int:
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except FileNotFoundError:
        pass
    umask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(umask)
    return 0o666 & ~umask


# The outputs the current run writes (resolved path -> the option that names it), so that one run never writes one
# path twice (`--save x.html --per-text x.html`). The CLI opens one scope per command (one_run); outside any scope
# (the Python API) nothing is tracked.
_OUTPUTS: ContextVar[dict[str, str] | None] = ContextVar("mha_outputs", default=None)


@contextmanager
def one_run() -> Iterator[None]:
    """One command's scope for its files.

    Every output path checked (check_writable) may be named once, and no output may replace a file the command read
    (mhacli.io.files.inputs_of_one_run).
    """
    token = _OUTPUTS.set({})
    try:
        with inputs_of_one_run():
            yield
    finally:
        _OUTPUTS.reset(token)


def check_writable(path: Path, option: str = "") -> None:
    """Fail before any work if `path` cannot be written, naming why; `option` names it in messages ('--save').

    Refused: a NUL byte, a directory or another file that is not regular (a FIFO, a device), a missing directory or
    one under a path that is a file, a name longer than the file system takes, a directory no file can be made in
    (read-only, no permission: tried by making and removing a temporary file there, which is true for root, ACLs and
    read-only mounts alike), a file this process read as an input, and a path this run already writes.
    """
    directory = path.parent if str(path.parent) else Path(".")
    try:
        if path.exists() and not path.is_file():
            kind = file_kind(os.stat(path).st_mode)
            raise UsageError(f"cannot write {path}: it is {kind}" + ("" if path.is_dir() else ", not a regular file"))
        if not directory.is_dir():
            raise UsageError(f"cannot write {path}: {_missing(directory)}")
        if len(os.fsencode(path.name)) > _name_max(directory):
            raise UsageError(f"cannot write {path}: File name too long")
        fd, probe = tempfile.mkstemp(prefix=".mha-", suffix=".tmp", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
    except ValueError as exc:  # a NUL byte
        raise UsageError(f"cannot write {path!r}: {exc}") from exc
    refuse_input(path)
    _claim(path, option)


def _missing(directory: Path) -> str:
    """Why `directory` cannot hold a file: the first of its ancestors that exists is a file, or it does not exist."""
    for ancestor in (directory, *directory.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                return f"{ancestor} is not a directory"
            break
    return f"directory {directory} does not exist"


def _claim(path: Path, option: str) -> None:
    claimed = _OUTPUTS.get()
    if claimed is None:
        return
    key = os.path.realpath(path)
    if key in claimed:
        other = claimed[key]
        if option == other:
            raise UsageError(f"{option or 'the output'} {path} is given twice")
        raise UsageError(f"cannot write {path}: {other} names it too; give each output its own name")
    claimed[key] = option


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def save_npz(path: Path, views: Sequence[HeadView], token_ids: Sequence[int], tokens: Sequence[str]) -> None:
    """attention[layer, head, q, k] over the selected layers/heads, with token_ids, tokens, layers, heads."""
    layers = sorted({v.layer for v in views})
    heads = sorted({v.head for v in views})
    n_seq = len(token_ids)
    attention = np.zeros((len(layers), len(heads), n_seq, n_seq), dtype=np.float32)
    for v in views:
        if isinstance(v.attention, PartialMap):
            raise TypeError(f"head L{v.layer}H{v.head} holds only part of its map")
        attention[layers.index(v.layer), heads.index(v.head)] = v.attention
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        attention=attention,
        token_ids=np.asarray(token_ids, dtype=np.int64),
        tokens=np.asarray(list(tokens), dtype=np.str_),
        layers=np.asarray(layers, dtype=np.int64),
        heads=np.asarray(heads, dtype=np.int64),
    )
    atomic_write_bytes(path, buf.getvalue())
