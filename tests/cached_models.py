"""Tiny test checkpoints built once per machine and reused (the builders of tests/helpers.py, cached on disk).

Mutation testing (mutmut) runs a fresh pytest session for every mutant, so a session fixture that trains the
tokenizer and builds a model costs seconds per mutant. Here each checkpoint is built with conftest's own
`train_tokenizer` and `build_model` into a directory keyed by its arguments and by conftest's source (a changed
builder builds anew), written to a temporary name and renamed into place, so concurrent sessions never see half a
model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import helpers

ROOT = Path(tempfile.gettempdir()) / "mhacli-test-models"


def _key(*parts) -> str:
    source = Path(helpers.__file__).read_bytes()
    return hashlib.sha256(repr(parts).encode() + source).hexdigest()[:16]


def _cached(name: str, key: str, build) -> Path:
    final = ROOT / f"{name}-{key}"
    if not (final / ".complete").exists():
        ROOT.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=ROOT))
        build(work / "m")
        (work / "m" / ".complete").touch()
        try:
            os.rename(work / "m", final)
        except OSError:  # another session finished first
            pass
        shutil.rmtree(work, ignore_errors=True)
    return final


def tokenizer() -> Path:
    """helpers.train_tokenizer's BPE (vocab 400)."""
    return _cached("tokenizer", _key("tokenizer"), helpers.train_tokenizer)


def model(name: str, **kwargs) -> Path:
    """helpers.build_model(directory, tokenizer(), **kwargs), built once."""
    tok = tokenizer()
    return _cached(name, _key(name, sorted(kwargs.items())), lambda d: helpers.build_model(d, tok, **kwargs))
