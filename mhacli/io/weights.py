"""All model I/O: resolving what `-m` names, reading config.json and safetensors files.

Safetensors headers are parsed here rather than trusted to a library: every length, offset, dtype and shape is
checked against the file before a byte of tensor data is read, and tensors are read one at a time, on demand, so
a model never has to fit in memory twice. What the safetensors library refuses is refused here too: a tensor
named twice, a field given twice, metadata that is not strings, tensors that leave gaps in the data section or
do not reach its end. Pickle checkpoints are refused by name and never opened. Files are opened only when they
are regular files (mhacli.io.files), and names read from files are shown escaped in messages.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mhacli.config import ModelConfig, parse_config
from mhacli.engine.arch import check_config, family
from mhacli.errors import ConfigError, ModelError, WeightsError
from mhacli.io.files import note_input_path, open_regular, parse_json, quoted, read_json, show

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_HEADER_BYTES = 16 * 1024 * 1024  # real headers are KBs; safetensors itself caps at 100 MB
MAX_JSON_BYTES = 50 * 1024 * 1024
MAX_U64 = 2**64 - 1  # safetensors shapes and offsets are usize
# Every dtype the safetensors format defines, with its size in bytes; the float ones can be read as weights.
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8,
}  # fmt: skip
FLOAT_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}
SAMPLE_MODEL = "tiny-shakespeare"
# The bundled checkpoints by the names `-m` takes: the final sample model and one from before its induction head
# formed (sample_weights/tiny-shakespeare-early/README.md). `sample:<directory>` (the source `mha info` shows)
# names them too, and is never taken for a path.
SAMPLE_NAMES = {"sample": SAMPLE_MODEL, "sample-early": "tiny-shakespeare-early"}
SAMPLE_PREFIX = "sample:"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# `ID@REVISION`: a branch, tag or commit of a hub id (Pythia's training checkpoints are branches: step1000, ...)
HUB_REVISION = re.compile(r"^(?P<id>[^@]+)@(?P<rev>[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)*)$")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies: absolute byte range [start, end) in `file`."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class ModelFiles:
    """What `-m` resolved to: a directory with config and tokenizer, and the weight files."""

    source: str
    directory: Path
    weight_files: tuple[Path, ...]

    @property
    def gguf(self) -> Path | None:
        """The GGUF file when the model is one (its config and tokenizer are in its metadata), else None."""
        one = self.weight_files[0] if len(self.weight_files) == 1 else None
        ollama = self.source.startswith("ollama:")  # a blob named sha256-<hex> (mhacli.io.ollama)
        return one if one is not None and (one.suffix.lower() == ".gguf" or ollama) else None

    @property
    def tokenizer_path(self) -> Path:
        """What load_tokenizer reads: the GGUF, else the directory."""
        return self.gguf or self.directory


def _pickle_refusal(path: Path) -> ModelError:
    return ModelError(
        f"{show(path.name)} is a pickle checkpoint, which can run arbitrary code when loaded; mha reads safetensors "
        "only. "
        'Convert it first, e.g. `python -c "from transformers import AutoModel; '
        "AutoModel.from_pretrained('DIR').save_pretrained('OUT', safe_serialization=True)\"`"
    )


def sample_model_dir(name: str = SAMPLE_MODEL) -> Path:
    """A bundled sample model (a directory name under sample_weights/):

    package data when installed, the repo's sample_weights/ when editable."""
    package = Path(__file__).resolve().parent.parent  # mhacli/
    for root in (package / "sample_weights", package.parent / "sample_weights"):
        if (root / name / "config.json").is_file():
            return root / name
    which = "the bundled sample model" if name == SAMPLE_MODEL else f"the bundled model {name}"
    raise ModelError(f"{which} is missing from this installation; pass -m MODEL or set MHA_MODEL")


def sample_name(spec: str) -> str | None:
    """The bundled directory `spec` names (`sample`, `sample-early`, `sample:tiny-shakespeare`, ...), else None.

    Bare names are only names when no file or directory of that name exists: a path on disk always wins."""
    if spec.startswith(SAMPLE_PREFIX):
        name = spec[len(SAMPLE_PREFIX) :]
        if name in SAMPLE_NAMES.values():
            return name
        known = ", ".join(SAMPLE_PREFIX + n for n in SAMPLE_NAMES.values())
        raise ModelError(f"{spec}: no bundled model of that name (bundled: {known})")
    if spec in SAMPLE_NAMES and not os.path.lexists(spec):
        return SAMPLE_NAMES[spec]
    return None


def _sample_files(name: str) -> ModelFiles:
    directory = sample_model_dir(name)
    return ModelFiles(SAMPLE_PREFIX + name, directory, _weights_in_dir(directory, directory))


def check_model(spec: str | None) -> ModelFiles | None:
    """`-m` checked without touching the network:

    the files of a local or bundled model, None for a well-formed hub id (resolved later, by resolve_model). A
    missing path or a bad name raises ModelError. Commands call it before reading stdin, so a wrong -m is reported
    as such, not as an empty text."""
    return resolve_model(spec, hub=False)


def resolve_model(spec: str | None, *, hub: bool = True) -> ModelFiles | None:
    """Resolve `-m` (a directory, a .safetensors file, a bundled name, a hub id), else $MHA_MODEL, else the sample.

    An existing path wins over a bundled name, a bundled name over a hub id. hub=False: a hub id is only
    checked for its form, and gives None."""
    if spec is None or spec == "":
        env = os.environ.get("MHA_MODEL", "")
        if env:
            try:
                return resolve_model(env, hub=hub)
            except ModelError as exc:
                raise ModelError(f"MHA_MODEL={env}: {exc}") from exc
        return _sample_files(SAMPLE_MODEL)
    if spec.startswith("ollama:"):
        from mhacli.io.ollama import resolve_ollama

        blob = resolve_ollama(spec)
        return ModelFiles(spec, blob.parent, (blob,))
    bundled = sample_name(spec)
    if bundled is not None:
        return _sample_files(bundled)
    path = Path(spec).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise _pickle_refusal(path)
    kind = _kind(path, spec)
    if kind == "dir":
        return ModelFiles(spec, path, _weights_in_dir(path, path))
    if kind == "file":
        return _model_file(spec, path)
    if kind == "other":
        raise ModelError(f"{show(spec)}: not a regular file or directory")
    repo_id, revision = hub_revision(spec)
    if HUB_ID.match(repo_id) and not spec.startswith((".", "~")):
        if not hub:
            return None
        directory, root = _from_hub(repo_id, revision)
        return ModelFiles(spec, directory, _weights_in_dir(directory, root))
    raise ModelError(f"{show(spec)}: no such file or directory")


def hub_revision(spec: str) -> tuple[str, str | None]:
    """`ID@REVISION` -> (ID, REVISION); anything else -> (spec, None). A malformed revision is a ModelError."""
    if "@" not in spec:
        return spec, None
    m = HUB_REVISION.match(spec)
    if m is None or not HUB_ID.match(m.group("id")) or ".." in m.group("rev"):
        raise ModelError(
            f"{show(spec)}: no such file or directory, nor a hub id with a revision (ID@REVISION: a branch, tag or "
            "commit, e.g. EleutherAI/pythia-70m@step3000)"
        )
    return m.group("id"), m.group("rev")


def _model_file(spec: str, path: Path) -> ModelFiles:
    """`-m` naming a regular file: a shard index, a lone .safetensors file or a .gguf file (see ModelFiles.gguf)."""
    if path.name.endswith(".safetensors.index.json"):
        return ModelFiles(spec, path.parent, _sharded(path, path.parent))
    if path.suffix != ".safetensors" and path.suffix.lower() != ".gguf":
        raise ModelError(f"{show(spec)}: not a model (expected a directory, a .safetensors or a .gguf file)")
    return ModelFiles(spec, path.parent, (path,))


def _kind(path: Path, spec: str) -> str:
    """'dir', 'file' (regular), 'other' (a FIFO, device, socket) or 'missing'.

    A name the OS cannot take (too long, a NUL byte) is a ModelError, not an internal error."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "missing"
    except NotADirectoryError:
        return "missing"
    except OSError as exc:
        raise ModelError(f"{show(spec)}: cannot open: {exc.strerror}") from exc
    except ValueError as exc:
        raise ModelError(f"{show(spec)}: not a usable file name ({exc})") from exc
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def _present(path: Path) -> bool:
    """Whether anything (a file, or a FIFO or directory to be refused when opened) is at `path`."""
    try:
        return os.path.lexists(path)
    except (OSError, ValueError):
        return False


def _weights_in_dir(directory: Path, root: Path) -> tuple[Path, ...]:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if _present(single):  # anything but a regular file is refused when it is opened, never read
        return (single,)
    if _present(index):
        return _sharded(index, root)
    try:
        others = sorted(directory.glob("*.safetensors"))
        listing = sorted(directory.iterdir())
    except OSError as exc:
        raise ModelError(f"{show(directory)}: cannot list: {exc.strerror}") from exc
    if len(others) == 1:
        return (others[0],)
    pickles = [p for p in listing if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise _pickle_refusal(pickles[0])
    if len(others) > 1:
        raise ModelError(f"{show(directory)}: several .safetensors files and no model.safetensors.index.json")
    raise ModelError(f"{show(directory)}: not a model directory (no model.safetensors or model.safetensors.index.json)")


def _read_json(path: Path, what: str, error: type[ModelError] = ModelError) -> object:
    return read_json(path, what, error, max_bytes=MAX_JSON_BYTES)


def _shard_names(index: Path, weight_map: dict) -> list[str]:
    """The distinct file names a weight_map's values give, each checked to be a usable relative file name."""
    names: set[str] = set()
    for tensor, name in weight_map.items():
        if not isinstance(name, str) or not name:
            shown = repr(name)[:60] if not isinstance(name, (dict, list)) else type(name).__name__
            raise ModelError(f"{index.name}: weight_map[{show(tensor)}] is not a file name (got {shown})")
        if "\0" in name:
            raise ModelError(f"{index.name}: weight_map[{show(tensor)}] = {quoted(name)} holds a NUL byte; refused")
        names.add(name)
    return sorted(names)


def _sharded(index: Path, root: Path) -> tuple[Path, ...]:
    """The shard files an index names, each required to lie inside `root` (no ../, absolute paths or symlinks out)."""
    doc = _read_json(index, "sharded index")
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelError(f"{index.name}: has no weight_map object")
    root_real = root.resolve()
    files: list[Path] = []
    for name in _shard_names(index, weight_map):
        if os.path.isabs(name) or ".." in Path(name).parts or "\\" in name:
            raise ModelError(f"{index.name}: shard {quoted(name)} lies outside the model directory; refused")
        shard = index.parent / name
        try:
            inside = shard.resolve().is_relative_to(root_real)
            kind = _kind(shard, name)
        except OSError as exc:  # resolve(): a symlink loop
            raise ModelError(f"{index.name}: shard {quoted(name)}: {exc.strerror}") from exc
        except ModelError as exc:
            raise ModelError(f"{index.name}: shard {exc}") from exc
        if not inside:
            raise ModelError(f"{index.name}: shard {quoted(name)} links outside the model directory; refused")
        if shard.suffix.lower() in PICKLE_SUFFIXES:
            raise _pickle_refusal(shard)
        if kind == "missing":
            raise ModelError(f"{index.name}: shard {quoted(name)} is missing")
        files.append(shard)  # not a regular file: refused when opened
    return tuple(files)


def _from_hub(repo_id: str, revision: str | None = None) -> tuple[Path, Path]:
    """A hub id (at a revision: a branch, tag or commit) through the local HF cache.

    Downloaded only when the network is allowed."""
    from huggingface_hub import snapshot_download  # only on this path: it costs start-up time

    patterns = ["config.json", "*.safetensors", "model.safetensors.index.json", *TOKENIZER_FILES]
    # read at call time (huggingface_hub reads it once at import)
    cache_dir = os.environ.get("HF_HUB_CACHE") or (
        str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None
    )
    name = repo_id if revision is None else f"{repo_id}@{revision}"
    try:
        path = Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=patterns, local_files_only=True, cache_dir=cache_dir
            )
        )
    except Exception as exc:  # noqa: BLE001 - any failure here means "not in the cache"
        _check_cache_dir(name, cache_dir)
        if _hub_offline():
            raise hub_error(name, exc) from exc
        try:
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir))
        except Exception as exc2:  # noqa: BLE001 - mapped to one of three messages below
            raise hub_error(name, exc2) from exc2
    # Cache snapshots are symlinks into ../../blobs: the repository's cache folder is the containment root.
    return path, path.parent.parent


CACHE_VARIABLES = ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HOME")  # what places the HF cache, first wins


def _check_cache_dir(name: str, cache_dir: str | None) -> None:
    """The HF cache must be a directory, or a path that can become one: a ModelError naming the variable else.

    HF_HOME pointing at a file made huggingface_hub report the model as not cached and the Hub as unreachable.
    """
    if cache_dir is None:
        from huggingface_hub import constants

        cache_dir = constants.HF_HUB_CACHE
    path = Path(cache_dir).expanduser()
    for part in (path, *path.parents):  # the nearest part that exists must be a directory
        try:
            if not part.exists():
                continue
        except OSError:
            return
        if part.is_dir():
            return
        var = next((v for v in CACHE_VARIABLES if os.environ.get(v)), "HOME")
        other = "" if var.startswith("HF_") else " (or set HF_HOME to one)"
        raise ModelError(
            f"{name}: the Hugging Face cache {show(path)} cannot be made: {show(part)} is not a directory; point "
            f"{var} at a directory{other}"
        )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


# Network failures as httpx, requests and the OS name them (matched by name: no import of either library here).
NETWORK_ERRORS = {
    "ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "TimeoutException",
    "NetworkError", "ProxyError", "RemoteProtocolError", "ConnectionError", "Timeout", "SSLError",
    "ConnectionRefusedError", "ConnectionResetError", "TimeoutError", "gaierror", "OfflineModeIsEnabled",
}  # fmt: skip


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and what it was raised from (huggingface_hub wraps the HTTP or network error)."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain and len(chain) < 16:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return chain


def hub_error(repo_id: str, exc: BaseException) -> ModelError:
    """What fetching `repo_id` from the Hugging Face Hub failed on, as one of:

    offline or unreachable (no network, HF_HUB_OFFLINE with the model not cached), not found
    (RepositoryNotFoundError, HTTP 404; a private model looks the same), gated (GatedRepoError, HTTP 401/403 on a
    model that needs its terms accepted and a login)."""
    chain = _causes(exc)
    mro_names = {cls.__name__ for e in chain for cls in type(e).__mro__}
    status = next(
        (
            getattr(getattr(e, "response", None), "status_code", None)
            for e in chain
            if isinstance(getattr(getattr(e, "response", None), "status_code", None), int)
        ),
        None,
    )
    where = f"{repo_id}: not a local path"
    if "GatedRepoError" in mro_names or status == 403:
        return ModelError(
            f"{where}; on the Hugging Face Hub it is gated: accept its terms on its page, then log in "
            "(`hf auth login`, or set HF_TOKEN)"
        )
    if "RevisionNotFoundError" in mro_names:
        return ModelError(
            f"{where}; on the Hugging Face Hub the model has no such revision (check the branch, tag or commit after @)"
        )
    if "RepositoryNotFoundError" in mro_names or status in (401, 404):
        return ModelError(
            f"{where}, and not found on the Hugging Face Hub (check the id; a private model needs `hf auth login` "
            "or HF_TOKEN)"
        )
    if _hub_offline() or "OfflineModeIsEnabled" in mro_names:
        return ModelError(
            f"{repo_id}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set (offline): unset it to "
            "download the model, or pass a local directory"
        )
    network = next((e for e in chain if type(e).__name__ in NETWORK_ERRORS), None)
    if network is not None or "LocalEntryNotFoundError" in mro_names:
        reason = network if network is not None else chain[-1]
        text = str(reason).strip().splitlines()[0][:120] if str(reason).strip() else ""
        detail = f"{type(reason).__name__}: {text}" if text else type(reason).__name__
        return ModelError(
            f"{where}, not in the local Hugging Face cache, and the Hub is unreachable (offline? {detail}); "
            "connect to download it, or pass a local directory"
        )
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    if status is not None:
        return ModelError(f"{where}; the Hugging Face Hub answered HTTP {status} ({first})")
    return ModelError(f"{where}; fetching it from the Hugging Face Hub failed ({type(exc).__name__}: {first})")


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and check a safetensors header against the file: sizes, offsets, dtypes, overlaps."""
    file = show(path.name)
    with open_regular(path, "weights", WeightsError) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise WeightsError(f"{file}: not a safetensors file ({size} bytes, too short for a header)")
            n = int.from_bytes(head, "little")
            if n > size - 8 or n > MAX_HEADER_BYTES:
                raise WeightsError(
                    f"{file}: header length {n} runs past the end of the {size}-byte file (truncated or corrupt)"
                )
            raw = f.read(n)
        except OSError as exc:
            raise WeightsError(f"{file}: cannot read: {exc.strerror}") from exc
    header = parse_json(raw, f"{file}: safetensors header", WeightsError, unique_keys=True)
    if not isinstance(header, dict):
        raise WeightsError(f"{file}: safetensors header is not a JSON object")
    metadata = header.get("__metadata__")
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise WeightsError(
            f"{file}: safetensors __metadata__ must map names to strings (as the safetensors library requires)"
        )
    base = 8 + n
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        infos[name] = _tensor_info(path, name, entry, base, size)
    _check_layout(file, infos, base, size)
    return infos


def _check_layout(file: str, infos: dict[str, TensorInfo], base: int, size: int) -> None:
    """The tensors, in the order of their offsets, must tile the data section exactly.

    As the safetensors library requires: no overlap, no gap, nothing after the last one."""
    end, previous = base, None
    for start, stop, name in sorted((i.start, i.end, i.name) for i in infos.values()):
        if start < end:
            raise WeightsError(f"{file}: tensors {quoted(previous)} and {quoted(name)} overlap in the data section")
        if start > end:
            raise WeightsError(
                f"{file}: {start - end} bytes before tensor {quoted(name)} belong to no tensor (the safetensors "
                "library "
                "refuses gaps)"
            )
        end, previous = stop, name
    if end != size:
        raise WeightsError(
            f"{file}: {size - end} bytes after the last tensor belong to no tensor (the safetensors library refuses "
            "such a file)"
        )


def _tensor_info(path: Path, name: str, entry: object, base: int, size: int) -> TensorInfo:
    where = f"{show(path.name)}: tensor {quoted(name)}"
    if not isinstance(entry, dict):
        raise WeightsError(f"{where}: header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise WeightsError(f"{where}: unknown dtype {_clip(dtype)}")
    if not isinstance(shape, list) or len(shape) > 8 or not all(_is_nonneg_int(d) for d in shape):
        raise WeightsError(f"{where}: bad shape {_clip(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_nonneg_int(o) for o in offsets)):
        raise WeightsError(f"{where}: bad data_offsets {_clip(offsets)}")
    begin, end = offsets
    nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
    if end < begin or end - begin != nbytes:
        raise WeightsError(
            f"{where}: header says {dtype} {shape} ({nbytes} bytes) but its offsets span {end - begin} bytes"
        )
    if base + end > size:
        raise WeightsError(f"{where}: data runs past the end of the file (truncated?)")
    return TensorInfo(name, path, dtype, tuple(shape), base + begin, base + end)


def _is_nonneg_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_U64


def _clip(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def normalise_key(key: str, model_type: str = "gpt2") -> str | None:
    """Checkpoint key -> our key:

    the family's prefix (`transformer.`, `model.`) stripped; None for buffers and heads we do not use
    (attention-mask buffers, lm_head)."""
    return family(model_type).normalise_key(key)


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the forward reads, with the shape the config implies, in the checkpoint's own layout.

    GPT-2's Conv1D weights are [in, out], everyone else's nn.Linear weights [out, in]."""
    return family(config.model_type).expected_shapes(config)


def load_config(directory: Path) -> ModelConfig:
    """config.json parsed, then checked for what the forward will compute from it (mhacli.engine.arch.check_config)."""
    path = directory / "config.json"
    if not _present(path):
        raise ConfigError(f"{show(directory)}: no config.json beside the weights")
    config = parse_config(_read_json(path, "config.json", ConfigError))
    check_config(config)
    return config


@dataclass
class Checkpoint:
    """A model's config and the location of each tensor; tensors are read on demand, float32, checked finite."""

    files: ModelFiles
    config: ModelConfig
    tensors: dict[str, TensorInfo]
    cache: dict[str, np.ndarray] | None = field(default=None, repr=False)
    # A GGUF (mhacli.io.gguf_model): its loader dequantises a tensor by our key into our layout; its ggml types
    # with their tensor counts; llama.cpp's K/V cache type. None for safetensors.
    loader: Callable[[str], np.ndarray] | None = field(default=None, repr=False)
    quantisation: dict[str, int] | None = None
    kv_cache_dtype: str | None = None

    @property
    def source(self) -> str:
        return self.files.source

    def get(self, name: str) -> np.ndarray:
        if self.cache is not None and name in self.cache:
            return self.cache[name]
        array = read_tensor(self.tensors[name]) if self.loader is None else self.loader(name)
        if self.cache is not None:
            self.cache[name] = array
        return array

    def layer(self, layer: int) -> dict[str, np.ndarray]:
        """One block's tensors, keyed without the `h.{layer}.` / `layers.{layer}.` prefix."""
        prefix = family(self.config.model_type).LAYER_PREFIX.format(layer)
        return {k[len(prefix) :]: self.get(k) for k in self.tensors if k.startswith(prefix)}

    def parameter_count(self) -> int:
        return sum(math.prod(info.shape) for info in self.tensors.values())

    def layer_parameter_count(self) -> int:
        """Values in the blocks' tensors (the headers' shapes): about half the FLOPs a token costs in a forward."""
        prefixes = tuple(family(self.config.model_type).LAYER_PREFIX.format(i) for i in range(self.config.n_layer))
        return sum(math.prod(info.shape) for name, info in self.tensors.items() if name.startswith(prefixes))

    def weight_bytes(self, *, extra_layers: int = 0) -> int:
        """The most bytes of weights a pass over the layers holds at once, from the headers alone.

        No tensor is read; every tensor is float32 once read, 4 bytes per value whatever its dtype on disk.

        A caching checkpoint keeps every tensor it reads: all of them, after one pass. Otherwise tensors are
        dropped after use: the forward holds two layers' tensors at a hand-over (the next layer is read while the
        last one is still referenced), the embeddings and final norm are read outside the layers, and the caller
        may hold `extra_layers` more layers of its own (explain keeps the explained layer's tensors)."""
        sizes = {name: 4 * math.prod(info.shape) for name, info in self.tensors.items()}
        if self.cache is not None:
            return sum(sizes.values())
        prefixes = [family(self.config.model_type).LAYER_PREFIX.format(i) for i in range(self.config.n_layer)]
        per_layer = [sum(n for name, n in sizes.items() if name.startswith(p)) for p in prefixes]
        outside = sum(n for name, n in sizes.items() if not name.startswith(tuple(prefixes)))
        largest = max(per_layer, default=0)
        return extra_layers * largest + max(outside, 2 * largest)

    def model_dict(self) -> dict:
        c = self.config
        return {
            "source": self.source,
            "model_type": c.model_type,
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "n_kv_head": c.n_kv_head,
            "d_head": c.d_head,
            "layout": c.layout,
            "n_embd": c.n_embd,
            "n_positions": c.n_positions,
            "vocab_size": c.vocab_size,
        }

    def kv_dtype(self) -> str:
        """The safetensors dtype K and V are stored in (layer 0's K projection); a GGUF's llama.cpp cache type."""
        if self.kv_cache_dtype is not None:
            return self.kv_cache_dtype
        arch = family(self.config.model_type)
        return self.tensors[arch.LAYER_PREFIX.format(0) + arch.KV_WEIGHT].dtype


CACHE_LIMIT_BYTES = 512 * 1024 * 1024  # models smaller than this keep their tensors once read


def open_checkpoint(files: ModelFiles, *, cache: bool | None = None) -> Checkpoint:
    """Read config and headers, check every needed tensor is present with the config's shape (no data read yet)."""
    return _open_gguf(files, cache) if files.gguf is not None else _open_safetensors(files, cache)


def _note_model_files(directory: Path) -> None:
    """The model's files beside its config, read or not, as inputs: no output of the run may replace one."""
    for name in (*TOKENIZER_FILES, "model.safetensors.index.json", "generation_config.json"):
        note_input_path(directory / name, name)


def _open_safetensors(files: ModelFiles, cache: bool | None) -> Checkpoint:
    config = load_config(files.directory)
    _note_model_files(files.directory)
    arch = family(config.model_type)
    found: dict[str, TensorInfo] = {}
    for path in files.weight_files:
        for key, info in read_safetensors_header(path).items():
            ours = arch.normalise_key(key)
            if ours is None:
                continue
            if ours in found:  # two files, or a key with and without the prefix: which one HF reads is unclear
                other = found[ours]
                raise WeightsError(
                    f"tensor {quoted(ours)} is given twice: as {quoted(other.name)} in {show(other.file.name)} and "
                    f"as {quoted(key)} "
                    f"in {show(path.name)}; refused as ambiguous"
                )
            found[ours] = info
    tensors: dict[str, TensorInfo] = {}
    for key, shape in arch.expected_shapes(config).items():
        wanted = found.get(key)
        if wanted is None:
            raise WeightsError(
                f"tensor {quoted(key)} is missing from the weights (looked for it with and without {arch.KEY_PREFIX!r})"
            )
        if wanted.shape != shape:
            raise WeightsError(
                f"tensor {quoted(wanted.name)} in {show(wanted.file.name)} has shape {list(wanted.shape)}, "
                f"but config.json implies {list(shape)}"
            )
        if wanted.dtype not in FLOAT_DTYPES:
            raise WeightsError(
                f"tensor {quoted(wanted.name)} in {show(wanted.file.name)} has dtype {wanted.dtype}; "
                "expected a float type"
            )
        tensors[key] = wanted
    head = found.get(arch.LM_HEAD)
    if not config.tie_word_embeddings and head is not None:  # optional: only the loss reads it (mhacli.analyses.loss)
        if head.shape != (config.vocab_size, config.n_embd) or head.dtype not in FLOAT_DTYPES:
            raise WeightsError(
                f"tensor {quoted(head.name)} in {show(head.file.name)} has shape {list(head.shape)} and dtype "
                f"{head.dtype}, "
                f"but config.json implies {[config.vocab_size, config.n_embd]} float"
            )
        tensors[arch.LM_HEAD] = head
    if cache is None:
        cache = 4 * sum(math.prod(s.shape) for s in tensors.values()) <= CACHE_LIMIT_BYTES
    return Checkpoint(files, config, tensors, {} if cache else None)


GGUF_KV_CACHE_DTYPE = "F16"  # llama.cpp's default K/V cache type


def _open_gguf(files: ModelFiles, cache: bool | None) -> Checkpoint:
    """A GGUF's Checkpoint: config and tensors from mhacli.io.gguf_model, tensors dequantised on demand."""
    from mhacli.io.gguf_model import open_gguf

    model = open_gguf(files.gguf)  # type: ignore[arg-type]
    path = model.gguf.path
    tensors = {k: TensorInfo(t.name, path, t.type_name, t.shape, t.start, t.end) for k, t in model.tensors.items()}
    if cache is None:
        cache = 4 * sum(math.prod(t.shape) for t in tensors.values()) <= CACHE_LIMIT_BYTES
    return Checkpoint(
        files, model.config, tensors, {} if cache else None, loader=model.load, quantisation=model.quantisation,
        kv_cache_dtype=GGUF_KV_CACHE_DTYPE,
    )  # fmt: skip


def read_tensor(info: TensorInfo) -> np.ndarray:
    """Read one tensor as float32 (float16 widened, bfloat16 rebuilt from its bits); NaN/Inf is an error."""
    count = info.end - info.start
    file = show(info.file.name)
    with open_regular(info.file, "weights", WeightsError) as f:
        try:
            f.seek(info.start)
            buf = f.read(count)
        except OSError as exc:
            raise WeightsError(f"{file}: cannot read tensor {quoted(info.name)}: {exc.strerror}") from exc
    if len(buf) != count:
        raise WeightsError(f"{file}: tensor {quoted(info.name)} is truncated (file changed while reading?)")
    raw = np.frombuffer(buf, dtype=FLOAT_DTYPES[info.dtype])
    if info.dtype == "F32":
        array = raw
    elif info.dtype == "BF16":
        array = (raw.astype(np.uint32) << 16).view(np.float32)  # bfloat16 is the top half of a float32
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32's range: reported below
            array = raw.astype(np.float32)
    array = array.reshape(info.shape)
    if not np.isfinite(array).all():
        if info.dtype == "F64" and np.isfinite(raw).all():
            raise WeightsError(f"tensor {quoted(info.name)} in {file} holds float64 values beyond float32's range")
        raise WeightsError(f"tensor {quoted(info.name)} in {file} holds NaN or Inf values")
    return array


def load_model(spec: str | None, *, cache: bool | None = None, files: ModelFiles | None = None) -> Checkpoint:
    """The checkpoint `-m spec` names; `files`: what check_model already resolved (None: resolve now)."""
    if files is None:
        files = resolve_model(spec)  # with hub=True: resolved or raised, never None
    return open_checkpoint(files, cache=cache)  # type: ignore[arg-type]
