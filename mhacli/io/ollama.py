"""`-m ollama:NAME[:TAG]`: a model pulled with Ollama, resolved offline to its GGUF blob.

Ollama keeps models under $OLLAMA_MODELS (default ~/.ollama/models):
    manifests/<host>/<namespace>/<name>/<tag>    JSON: {"layers": [{"mediaType": ..., "digest": "sha256:<hex>"}]}
    blobs/sha256-<hex>                           the layers' contents; the model's is a GGUF
NAME is `name`, `namespace/name` or `host/namespace/name` (defaults registry.ollama.ai and library), TAG
defaults to `latest`. Every part is checked to be a plain name and the digest to be 64 hex digits, so a manifest
or a name cannot point outside the models folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mhacli.errors import ModelError
from mhacli.io.files import quoted, read_json, show

PREFIX = "ollama:"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
MAX_MANIFEST_BYTES = 1024 * 1024


def models_dir() -> Path:
    """$OLLAMA_MODELS, else ~/.ollama/models."""
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def _parts(spec: str) -> tuple[str, str, str, str]:
    """`ollama:NAME[:TAG]` -> (host, namespace, name, tag), each a plain name."""
    rest = spec[len(PREFIX) :]
    name, _, tag = rest.rpartition(":") if ":" in rest.split("/")[-1] else (rest, "", DEFAULT_TAG)
    pieces = name.split("/")
    if not 1 <= len(pieces) <= 3:
        raise ModelError(
            f"{show(spec)}: expected ollama:NAME[:TAG], NAME being name, namespace/name or host/namespace/name"
        )
    pieces = [DEFAULT_HOST, DEFAULT_NAMESPACE][: 3 - len(pieces)] + pieces
    for part in (*pieces, tag):
        if not PART.match(part):
            raise ModelError(f"{show(spec)}: {quoted(part)} is not a plain Ollama name part")
    return pieces[0], pieces[1], pieces[2], tag


def resolve_ollama(spec: str) -> Path:
    """The GGUF blob of `ollama:NAME[:TAG]`, from the manifest's layer of type application/vnd.ollama.image.model."""
    host, namespace, name, tag = _parts(spec)
    root = models_dir()
    manifest = root / "manifests" / host / namespace / name / tag
    if not manifest.is_file():
        raise ModelError(
            f"{show(spec)}: no Ollama manifest at {show(manifest)} (pull it with `ollama pull`, or set OLLAMA_MODELS)"
        )
    doc = read_json(manifest, "Ollama manifest", ModelError, max_bytes=MAX_MANIFEST_BYTES)
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, list):
        raise ModelError(f"{show(manifest)}: Ollama manifest has no layers list")
    model = [x for x in layers if isinstance(x, dict) and x.get("mediaType") == MODEL_MEDIA_TYPE]
    if len(model) != 1:
        raise ModelError(f"{show(manifest)}: expected one layer of type {MODEL_MEDIA_TYPE}, found {len(model)}")
    match = DIGEST.match(str(model[0].get("digest", "")))
    if match is None:
        raise ModelError(f"{show(manifest)}: the model layer's digest is not sha256:<64 hex digits>")
    blob = root / "blobs" / f"sha256-{match.group(1)}"
    if not blob.is_file():
        raise ModelError(f"{show(spec)}: its model blob {show(blob.name)} is missing from {show(root / 'blobs')}")
    return blob
