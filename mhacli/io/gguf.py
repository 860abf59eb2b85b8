"""GGUF files (llama.cpp, Ollama): header, config and tensors read and checked here, dequantised by `gguf`.

A GGUF is a binary from strangers, and gguf's own GGUFReader trusts it (a lying array length is an allocation
of that size). So the header is parsed here, from a read-only memory map, with every count, length, dimension,
offset and the alignment checked against the bytes that remain before anything is built from it: a lying file is
one WeightsError. It is also fast: GGUFReader needs about 1.6 s for SmolLM2's 49,152 tokens and 48,900 merges,
this parser a few tens of milliseconds. The `gguf` package (the extra `gguf`) supplies what is hard: the
quantisation types' block sizes and `gguf.quants.dequantize`. Tensors are dequantised one at a time, when the
forward asks for them, to float32.

The GGUF layout (llama.cpp's gguf-py/README, ggml/docs/gguf.md), all little-endian:
    magic "GGUF" | u32 version (2, 3) | u64 n_tensors | u64 n_kv
    n_kv x (string key | u32 type | value)        string = u64 length + UTF-8 bytes; array = u32 type + u64 count
    n_tensors x (string name | u32 n_dims | n_dims x u64 ne | u32 ggml type | u64 offset)
    padding to `general.alignment` (default 32) | the data section; tensor offsets are relative to its start.
`ne` is ggml's order, fastest-varying first: NumPy's shape is ne reversed.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mhacli.errors import WeightsError, missing_extra
from mhacli.io.files import open_regular, quoted, show

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 used 32-bit counts and lengths; llama.cpp dropped it long ago
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_DEPTH = 2  # arrays of arrays: GGUF allows them, nothing real nests deeper
MAX_KEY_BYTES = 65_535
MAX_LIST_ELEMENTS = 1 << 22  # strings or arrays in one array: real vocabularies and merges hold under 300,000
# value type -> (struct format, size); 8 string, 9 array
SCALARS = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
    7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}  # fmt: skip
NUMPY_TYPES = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "<u1",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}
STRING, ARRAY = 8, 9


def _gguf() -> Any:
    """The `gguf` package, imported only when a GGUF is read."""
    try:
        import gguf
    except ImportError as exc:
        raise missing_extra("reading a GGUF file", "the gguf package", "gguf") from exc
    return gguf


@dataclass(frozen=True)
class GgufTensor:
    """One tensor of a GGUF: ggml type (number and name), NumPy shape (ne reversed), absolute byte range."""

    name: str
    type_id: int
    type_name: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class GgufFile:
    """A GGUF's metadata (key -> value: ints, floats, bools, strings, lists) and its tensors, all checked."""

    path: Path
    size: int
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GgufTensor] = field(repr=False)
    alignment: int
    data_offset: int


class _Cursor:
    """Bounded reads from a memory map: every read checks the bytes remain, naming what was being read."""

    def __init__(self, buf: mmap.mmap | bytes, file: str) -> None:
        self.buf, self.pos, self.size, self.file = buf, 0, len(buf), file

    def fail(self, message: str) -> WeightsError:
        return WeightsError(f"{self.file}: {message}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(
                f"{what} at byte {self.pos} runs past the end of the {self.size}-byte file (truncated or corrupt)"
            )

    def scalar(self, fmt: str, n: int, what: str) -> Any:
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", 8, what))

    def string(self, what: str, limit: int | None = None) -> str:
        n = self.u64(f"the length of {what}")
        if limit is not None and n > limit:
            raise self.fail(f"{what} is {n} bytes long; at most {limit} are allowed")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})") from exc


def _value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> Any:
    """One metadata value of type `vtype`; arrays of numbers as NumPy arrays, of strings as lists."""
    if vtype in SCALARS:
        fmt, n = SCALARS[vtype]
        return cur.scalar(fmt, n, f"the value of {quoted(key)}")
    if vtype == STRING:
        return cur.string(f"the value of {quoted(key)}")
    if vtype != ARRAY:
        raise cur.fail(f"metadata {quoted(key)} has unknown value type {vtype}")
    if depth >= MAX_DEPTH:
        raise cur.fail(f"metadata {quoted(key)} nests arrays more than {MAX_DEPTH} deep")
    etype = cur.u32(f"the element type of {quoted(key)}")
    count = cur.u64(f"the length of {quoted(key)}")
    if etype in SCALARS:
        n = SCALARS[etype][1]
        cur.need(count * n, f"the {count} values of {quoted(key)}")
        array = np.frombuffer(cur.buf, dtype=NUMPY_TYPES[etype], count=count, offset=cur.pos).copy()
        cur.pos += count * n
        return array.astype(bool) if etype == 7 else array
    if etype not in (STRING, ARRAY):
        raise cur.fail(f"metadata {quoted(key)} is an array of unknown type {etype}")
    if count > MAX_LIST_ELEMENTS:  # each becomes a Python object: ~50 bytes for an 8-byte empty string
        raise cur.fail(f"metadata {quoted(key)} has {count} elements; at most {MAX_LIST_ELEMENTS} are allowed")
    cur.need(count * (8 if etype == STRING else 12), f"the {count} elements of {quoted(key)}")  # each at least this
    return [_value(cur, etype, key, depth + 1) for _ in range(count)]


def _check_magic(cur: _Cursor) -> int:
    cur.need(4, "the magic number")
    if bytes(cur.buf[:4]) != MAGIC:
        raise cur.fail("not a GGUF file (it does not start with the bytes GGUF)")
    cur.pos = 4
    version = cur.u32("the version")
    if version not in VERSIONS:
        if version & 0xFFFF and not version >> 16 and version != 1:
            raise cur.fail(f"GGUF version {version} is not supported (supported: 2, 3)")
        if int.from_bytes(version.to_bytes(4, "little"), "big") in VERSIONS:
            raise cur.fail("a big-endian GGUF; only little-endian files are supported")
        raise cur.fail(f"GGUF version {version} is not supported (supported: 2, 3)")
    return version


def _tensor_info(cur: _Cursor, gguf: Any, index: int) -> tuple[str, int, tuple[int, ...], int]:
    name = cur.string(f"the name of tensor {index}", limit=MAX_KEY_BYTES)
    n_dims = cur.u32(f"the dimension count of tensor {quoted(name)}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise cur.fail(f"tensor {quoted(name)} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
    ne = tuple(cur.u64(f"the dimensions of tensor {quoted(name)}") for _ in range(n_dims))
    type_id = cur.u32(f"the type of tensor {quoted(name)}")
    offset = cur.u64(f"the offset of tensor {quoted(name)}")
    if any(d < 1 or d > cur.size * 8 for d in ne):  # never more values than a quarter-byte each could give
        raise cur.fail(f"tensor {quoted(name)} has impossible dimensions {list(ne)}")
    return name, type_id, ne, offset


def _tensor(cur: _Cursor, gguf: Any, raw: tuple[str, int, tuple[int, ...], int], base: int, align: int) -> GgufTensor:
    name, type_id, ne, offset = raw
    try:
        qtype = gguf.GGMLQuantizationType(type_id)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise cur.fail(f"tensor {quoted(name)} has unknown ggml type {type_id}") from None
    if ne[0] % block:
        raise cur.fail(
            f"tensor {quoted(name)}: its rows of {ne[0]} values are not whole {qtype.name} blocks of {block}"
        )
    nbytes = math.prod(ne) // block * type_size
    if offset % align:
        raise cur.fail(f"tensor {quoted(name)}: offset {offset} is not a multiple of the alignment {align}")
    start = base + offset
    if start + nbytes > cur.size:
        raise cur.fail(f"tensor {quoted(name)} ({qtype.name} {list(ne)}, {nbytes} bytes) runs past the end of the file")
    return GgufTensor(name, type_id, qtype.name, tuple(reversed(ne)), start, start + nbytes)


def _read(path: Path, buf: mmap.mmap | bytes, gguf: Any) -> GgufFile:
    file = show(path.name)
    cur = _Cursor(buf, file)
    version = _check_magic(cur)
    n_tensors = cur.u64("the tensor count")
    n_kv = cur.u64("the metadata count")
    if n_kv * 13 > cur.size or n_tensors * 29 > cur.size:  # the smallest entry of each kind
        raise cur.fail(f"counts {n_kv} metadata and {n_tensors} tensors cannot fit in the {cur.size}-byte file")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key {i}", limit=MAX_KEY_BYTES)
        if key in metadata:
            raise cur.fail(f"metadata {quoted(key)} is given twice")
        metadata[key] = _value(cur, cur.u32(f"the type of {quoted(key)}"), key)
    align = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or isinstance(align, bool) or align < 1 or align & (align - 1) or align > 1 << 20:
        raise cur.fail(f"general.alignment {align!r} is not a power of two")
    raws = [_tensor_info(cur, gguf, i) for i in range(n_tensors)]
    base = -(-cur.pos // align) * align
    tensors: dict[str, GgufTensor] = {}
    for raw in raws:
        if raw[0] in tensors:
            raise cur.fail(f"tensor {quoted(raw[0])} is given twice")
        tensors[raw[0]] = _tensor(cur, gguf, raw, base, align)
    _check_overlap(cur, tensors)
    return GgufFile(path, cur.size, version, metadata, tensors, align, base)


def _check_overlap(cur: _Cursor, tensors: dict[str, GgufTensor]) -> None:
    end, previous = 0, ""
    for t in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if t.start < end:
            raise cur.fail(f"tensors {quoted(previous)} and {quoted(t.name)} overlap in the data section")
        end, previous = t.end, t.name


def read_gguf(path: Path) -> GgufFile:
    """Parse and check a GGUF's header, metadata and tensor table (no tensor data read); cached per file state."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise WeightsError(f"{show(path.name)}: cannot open: {exc.strerror}") from exc
    return _read_cached(Path(path), st.st_size, st.st_mtime_ns, st.st_ino)


@lru_cache(maxsize=4)
def _read_cached(path: Path, size: int, mtime_ns: int, inode: int) -> GgufFile:
    gguf = _gguf()
    with open_regular(path, "weights", WeightsError) as f:
        if size == 0:
            raise WeightsError(f"{show(path.name)}: not a GGUF file (empty)")
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _read(path, buf, gguf)
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{show(path.name)}: cannot map: {exc}") from exc


def is_gguf(path: Path) -> bool:
    """Whether `path` names a GGUF by its suffix."""
    return path.suffix.lower() == ".gguf"


def read_raw(gf: GgufFile, tensor: GgufTensor) -> np.ndarray:
    """The tensor's bytes, [rows, bytes per row] as uint8 (what gguf.quants.dequantize takes)."""
    with open_regular(gf.path, "weights", WeightsError) as f:
        try:
            f.seek(tensor.start)
            buf = f.read(tensor.end - tensor.start)
        except OSError as exc:
            raise WeightsError(
                f"{show(gf.path.name)}: cannot read tensor {quoted(tensor.name)}: {exc.strerror}"
            ) from exc
    if len(buf) != tensor.end - tensor.start:
        raise WeightsError(
            f"{show(gf.path.name)}: tensor {quoted(tensor.name)} is truncated (file changed while reading?)"
        )
    rows = math.prod(tensor.shape[:-1])
    return np.frombuffer(buf, dtype=np.uint8).reshape(rows, -1)


def dequantise(gf: GgufFile, tensor: GgufTensor) -> np.ndarray:
    """One tensor as float32 in NumPy's shape; an unsupported type or NaN/Inf values: WeightsError."""
    gguf = _gguf()
    qtype = gguf.GGMLQuantizationType(tensor.type_id)
    raw = read_raw(gf, tensor)
    try:
        with np.errstate(all="ignore"):
            values = _dequantize_rows(gguf, raw, qtype)
    except NotImplementedError as exc:
        raise WeightsError(
            f"{show(gf.path.name)}: tensor {quoted(tensor.name)} has type {qtype.name}, which the gguf package cannot "
            "dequantise"
        ) from exc
    array = np.asarray(values, dtype=np.float32).reshape(tensor.shape)
    if not np.isfinite(array).all():
        raise WeightsError(f"tensor {quoted(tensor.name)} in {show(gf.path.name)} holds NaN or Inf values")
    return array


ROWS_CHUNK_VALUES = 1 << 20  # values dequantised per call: bounds the temporaries of a block type's arithmetic


def _dequantize_rows(gguf: Any, raw: np.ndarray, qtype: Any) -> np.ndarray:
    """gguf.quants.dequantize, without its per-16-rows Python loop.

    the type's own dequantize_rows (the same arithmetic) over chunks of about ROWS_CHUNK_VALUES values; 3x faster on
    SmolLM2's Q4_1 tensors.
    """
    traits = getattr(gguf.quants, "_type_traits", {}).get(qtype)
    rows_fn = getattr(traits, "dequantize_rows", None)
    if traits is None or rows_fn is None or not hasattr(traits, "block_size"):
        return gguf.quants.dequantize(raw, qtype)  # F32, F16, or a gguf whose internals differ
    if hasattr(traits, "init_grid"):
        traits.init_grid()
    n_values = raw.shape[1] // traits.type_size * traits.block_size
    out = np.empty((raw.shape[0], n_values), dtype=np.float32)
    step = max(1, ROWS_CHUNK_VALUES // max(n_values, 1))
    for i in range(0, raw.shape[0], step):
        out[i : i + step] = rows_fn(raw[i : i + step])
    return out


def check_types(file: str, tensors: Iterable[GgufTensor]) -> None:
    """Every tensor's type can be dequantised (one zero block of each type tried).

    else a WeightsError naming the first tensor of a type that cannot.
    """
    gguf = _gguf()
    seen: set[int] = set()
    for t in tensors:
        if t.type_id in seen:
            continue
        qtype = gguf.GGMLQuantizationType(t.type_id)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        try:
            _dequantize_rows(gguf, np.zeros((1, size), dtype=np.uint8), qtype)
        except NotImplementedError:
            raise WeightsError(
                f"{show(file)}: tensor {quoted(t.name)} has type {qtype.name}, which the gguf package "
                f"{gguf_version()} cannot dequantise"
            ) from None
        except Exception:  # noqa: BLE001 - zeros may be invalid for some types (scales); the type is implemented
            pass
        seen.add(t.type_id)


def gguf_version() -> str:
    try:
        from importlib.metadata import version

        return version("gguf")
    except Exception:  # noqa: BLE001
        return ""
