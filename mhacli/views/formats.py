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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from mhacli.analyses.heads import HeadView
from mhacli.analyses.partial import PartialMap
from mhacli.analyses.stats import STAT_NAMES, SUPPORTED_STATS
from mhacli.errors import UsageError

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename.

    The file appears whole or not at all, with the mode a plain `open(path, "w")` would give it (an existing file's
    mode; else 0o666 less the umask).
    """
    directory = path.parent if str(path.parent) else Path(".")
    try:
        mode = _mode_for(path)
        fd, tmp = tempfile.mkstemp(prefix=".mha-", suffix=".tmp", dir=directory)  # a short name: path's may be long
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)  # mkstemp creates 0o600
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def check_writable(path: Path) -> None:
    """Fail before any work if `path` cannot be written.

    A missing directory, a directory, no permission, a name the OS cannot take.
    """
    directory = path.parent if str(path.parent) else Path(".")
    try:
        if path.is_dir():
            raise UsageError(f"cannot write {path}: it is a directory")
        if not directory.is_dir():
            raise UsageError(f"cannot write {path}: directory {directory} does not exist")
        if len(os.fsencode(path.name)) > _name_max(directory):
            raise UsageError(f"cannot write {path}: File name too long")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
    except ValueError as exc:  # a NUL byte
        raise UsageError(f"cannot write {path!r}: {exc}") from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path}: permission denied")


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
