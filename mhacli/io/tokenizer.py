"""Tokenizing with the `tokenizers` library (fast to import; `transformers` is not needed here).

Ids match `GPT2TokenizerFast` on the same files. Display strings come from the tokens' bytes, so a byte-level
`Ġ` shows as a space and a multi-byte character split across tokens shows its bytes, not a wrong character.

The library runs behind a guard, because a hostile or broken tokenizer.json can make it panic (a Rust panic
surfaces as `pyo3_runtime.PanicException`, a BaseException that `except Exception` misses, after a message and
backtrace written straight to file descriptor 2) or abort the process on a failed allocation:
- tokenizer.json is read and checked here (a regular file, bounded size, bounded integers) and handed to the
  library as a string; `padding` and `truncation` are dropped (the tool never pads, and cuts texts itself: a
  fixed padding of 10^12 tokens aborts, a truncation stride >= max_length panics); normalizers and
  pre-tokenizers that can expand text without bound or panic are refused by name (`check_tokenizer_json`);
- every call into the library (loading, encoding) runs with fd 2 captured: its output is replayed when the call
  succeeds and dropped when it fails, and any exception it raises, panics included, becomes a TokenizerError;
- `encode_prefix` tokenizes a prefix of the text sized from the number of tokens wanted, growing it only while
  it yields too few, instead of tokenizing megabytes to keep the first n_positions tokens.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from mhacli.errors import TokenizerError
from mhacli.io.bytelevel import byte_alphabet
from mhacli.io.files import check_regular, read_json, show

ENDOFTEXT = "<|endoftext|>"
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024  # real tokenizer.json files are at most a few tens of MB
MAX_EXPANSION = 64  # characters a Replace normalizer may put in place of its match, or a Prepend put before a text
MAX_NESTING = 32  # Sequence normalizers / pre-tokenizers / processors inside one another
CHARS_PER_TOKEN = 8  # the first prefix tried: this many characters per token wanted (text averages about 4)
PREFIX_MARGIN = 64  # tokens beyond the ones wanted, so the prefix's cut cannot change them
_WHITESPACE = re.compile(r"\s")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted."""
    return {c: b for b, c in byte_alphabet().items()}


@dataclass
class Tokenizer:
    backend: Any  # tokenizers.Tokenizer (an optional dependency, imported when a tokenizer is loaded)
    byte_level: bool

    def encode(self, text: str) -> list[int]:
        """The token ids of the whole text (special tokens as the tokenizer's post-processor adds them)."""
        with guarded("the tokenizer failed on this text"):
            return list(self.backend.encode(text).ids)

    def encode_prefix(self, text: str, max_tokens: int) -> tuple[list[int], int]:
        """(ids, n_chars):

        the ids of text[:n_chars], where n_chars == len(text) (the whole text) or the prefix holds more than
        max_tokens + PREFIX_MARGIN tokens, so its first max_tokens are the whole text's. The prefix starts at
        CHARS_PER_TOKEN characters per token and grows four-fold while it holds too few."""
        chars = CHARS_PER_TOKEN * (max_tokens + PREFIX_MARGIN)
        while True:
            if chars >= len(text):
                return self.encode(text), len(text)
            cut = _cut(text, chars)
            ids = self.encode(text[:cut])
            if len(ids) > max_tokens + PREFIX_MARGIN:
                return ids, cut
            chars *= 4

    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size, its added tokens included (0 when the library cannot say)."""
        try:
            return int(self.backend.get_vocab_size(with_added_tokens=True))
        except Exception:  # noqa: BLE001 - only for a message: a broken backend is reported by encode
            return 0

    def ordinary_ids(self, vocab_size: int) -> list[int]:
        """Ids below `vocab_size` (the model's) that the tokenizer's vocabulary holds, without its added tokens.

        Special tokens are left out too: this is what `mha census` draws random tokens from."""
        added = set(self.backend.get_added_tokens_decoder())
        top = min(vocab_size, self.backend.get_vocab_size(with_added_tokens=True))
        return [i for i in range(top) if i not in added and self.backend.id_to_token(i) is not None]

    def prefix_id(self) -> int | None:
        """The token a probe sequence starts with:

        the BOS the tokenizer adds to every text (its post-processor), else GPT-2's document separator
        <|endoftext|> or a conventional BOS in the vocabulary, else None."""
        ids = self.backend.encode("").ids
        if ids:
            return int(ids[0])
        for token in (ENDOFTEXT, "<|begin_of_text|>", "<s>", "<bos>"):
            found = self.backend.token_to_id(token)
            if found is not None:
                return int(found)
        return None

    def display(self, ids: list[int]) -> list[str]:
        """One human-readable string per token id."""
        return [self._display_one(i) for i in ids]

    def _display_one(self, token_id: int) -> str:
        piece = self.backend.id_to_token(token_id)
        if piece is None:
            return f"<{token_id}>"
        if not self.byte_level:
            return piece.replace("▁", " ")
        table = _byte_decoder()
        if not all(ch in table for ch in piece):  # an added/special token, stored as plain text
            return piece
        raw = bytes(table[ch] for ch in piece)
        return raw.decode("utf-8", errors="backslashreplace")


def quoted(token: str) -> str:
    """A displayed token in quotes, as repr() writes it but escaped once.

    Tokenizer.display already spells a partial UTF-8 sequence as `\\xf0`, which repr() would double."""
    return repr(token).replace("\\\\", "\\")


def _cut(text: str, chars: int) -> int:
    """Where to cut a prefix of about `chars` characters:

    after the last whitespace in its second half, so no word is split (pre-tokenizers split on whitespace), else at
    `chars`."""
    found = [m.end() for m in _WHITESPACE.finditer(text, chars // 2, chars)]
    return found[-1] if found else chars


@contextmanager
def _fd2_captured() -> Iterator[IO[bytes] | None]:
    """Route file descriptor 2 into a temporary file for the duration; yields the file.

    It catches what the Rust library writes there on a panic: a message and a backtrace."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all: nothing to protect
        yield None
        return
    try:
        captured = tempfile.TemporaryFile()
    except OSError:  # no usable temporary directory: run unguarded rather than not at all
        os.close(saved)
        yield None
        return
    try:
        with captured:
            if sys.stderr is not None:
                sys.stderr.flush()
            os.dup2(captured.fileno(), 2)
            try:
                yield captured
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


@contextmanager
def guarded(what: str) -> Iterator[None]:
    """Run a call into the tokenizers library:

    any exception it raises, its panics included (PanicException derives from BaseException), becomes
    TokenizerError(`what (...)`); what it wrote on fd 2 is replayed only when the call succeeds."""
    with _fd2_captured() as captured:
        try:
            yield
        except (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError, TokenizerError):
            raise
        except BaseException as exc:  # noqa: BLE001 - pyo3_runtime.PanicException is a BaseException
            text = str(exc).strip()
            message = text.splitlines()[0][:200] if text else type(exc).__name__
            raise TokenizerError(f"{what} ({message})") from exc
        if captured is not None and captured.tell():
            captured.seek(0)
            replay = captured.read()
        else:
            replay = b""
    if replay:
        os.write(2, replay)


def _fail(path: Path, message: str) -> TokenizerError:
    return TokenizerError(f"{show(path)}: {message}")


def check_tokenizer_json(doc: object, path: Path) -> dict:
    """The tokenizer.json document with padding and truncation removed.

    The settings that can panic, abort or expand a text without bound refused by name."""
    if not isinstance(doc, dict):
        raise _fail(path, "tokenizer files are corrupt (not a JSON object)")
    doc = dict(doc)
    doc["padding"] = None  # the tool never pads, and a fixed padding length is an allocation
    doc["truncation"] = None  # texts are cut to n_positions by the tool, with a warning, never silently
    _check_component(doc.get("normalizer"), "normalizer", path, 0)
    _check_component(doc.get("pre_tokenizer"), "pre_tokenizer", path, 0)
    _check_component(doc.get("post_processor"), "post_processor", path, 0)
    _check_bpe_prefix(doc.get("model"), path)
    return doc


def _check_bpe_prefix(model: object, path: Path) -> None:
    """BPE with a continuing_subword_prefix strips that many bytes from the second token of every merge.

    When a merge's second token does not start with the prefix, the library cuts a character in two and the process
    aborts (pyo3: "uncaught panic at ffi boundary") while it reports the error."""
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE":
        return
    prefix = model.get("continuing_subword_prefix")
    merges = model.get("merges")
    if not isinstance(prefix, str) or not prefix or not isinstance(merges, list):
        return
    for rank, merge in enumerate(merges):
        second = merge.split(" ", 1)[1] if isinstance(merge, str) and " " in merge else None
        if isinstance(merge, list) and len(merge) == 2:
            second = merge[1]
        if isinstance(second, str) and not second.startswith(prefix):
            raise _fail(
                path,
                f"model.continuing_subword_prefix is {prefix!r}, but merge {rank} ({str(merge)[:40]!r}) does not "
                "continue with it",
            )


_SEQUENCE_KEYS = {"normalizer": "normalizers", "pre_tokenizer": "pretokenizers", "post_processor": "processors"}


def _check_component(part: object, where: str, path: Path, depth: int) -> None:
    if part is None:
        return
    if not isinstance(part, dict):
        raise _fail(path, f"tokenizer files are corrupt ({where} is not an object)")
    if depth > MAX_NESTING:
        raise _fail(path, f"{where} nests Sequences more than {MAX_NESTING} deep")
    kind = part.get("type")
    kind_of = where.split("[")[0].split(".")[0]
    if kind == "Sequence":
        items = part.get(_SEQUENCE_KEYS[kind_of])
        if not isinstance(items, list):
            raise _fail(path, f"tokenizer files are corrupt ({where}: a Sequence without a list)")
        for i, item in enumerate(items):
            _check_component(item, f"{where}[{i}]", path, depth + 1)
        return
    _check_leaf(part, kind, where, path)


def _check_leaf(part: dict, kind: object, where: str, path: Path) -> None:
    """One component that is not a Sequence: the settings of its `kind` that make the library panic or blow up."""
    if kind == "Replace":
        content, pattern = part.get("content"), part.get("pattern")
        if isinstance(content, str) and len(content) > MAX_EXPANSION:
            raise _fail(
                path,
                f"{where} (Replace) puts {len(content)} characters in place of each match; at most {MAX_EXPANSION} "
                "are allowed",
            )
        if isinstance(pattern, dict) and pattern.get("String") == "":
            raise _fail(path, f"{where} (Replace) has an empty pattern, which makes the tokenizer library panic")
    elif kind == "Prepend":
        prepend = part.get("prepend")
        if isinstance(prepend, str) and len(prepend) > MAX_EXPANSION:
            raise _fail(
                path, f"{where} (Prepend) prepends {len(prepend)} characters; at most {MAX_EXPANSION} are allowed"
            )
    elif kind == "Precompiled":
        _check_precompiled(part.get("precompiled_charsmap"), where, path)
    elif kind == "FixedLength":
        length = part.get("length")
        if isinstance(length, int) and not isinstance(length, bool) and length < 1:
            raise _fail(path, f"{where} (FixedLength) has length {length}; it must be at least 1")
    elif kind == "TemplateProcessing":
        _check_template(part, where, path)


def _check_precompiled(charsmap: object, where: str, path: Path) -> None:
    """A SentencePiece normalization map: a little-endian u32 trie size, the trie, then the normalized strings.

    A size that runs past the data makes the library panic or allocate up to 16 GB."""
    if charsmap is None:
        return
    try:
        blob = base64.b64decode(charsmap, validate=True) if isinstance(charsmap, str) else None
    except (binascii.Error, ValueError):
        blob = None
    if blob is None or len(blob) < 4 or int.from_bytes(blob[:4], "little") > len(blob) - 4:
        raise _fail(path, f"{where} (Precompiled) has a corrupt precompiled_charsmap")


def _check_template(part: dict, where: str, path: Path) -> None:
    """Every special token a template uses must be defined in its special_tokens (else the library panics)."""
    specials = part.get("special_tokens")
    names = set(specials) if isinstance(specials, dict) else set()
    for key in ("single", "pair"):
        pieces = part.get(key)
        for piece in pieces if isinstance(pieces, list) else ():
            special = piece.get("SpecialToken") if isinstance(piece, dict) else None
            token = special.get("id") if isinstance(special, dict) else None
            if isinstance(token, str) and token not in names:
                raise _fail(
                    path,
                    f"{where} (TemplateProcessing) uses special token {token!r}, which its special_tokens do not "
                    "define",
                )
    for name, entry in specials.items() if isinstance(specials, dict) else ():
        ids = entry.get("ids") if isinstance(entry, dict) else None
        tokens = entry.get("tokens") if isinstance(entry, dict) else None
        if isinstance(ids, list) and isinstance(tokens, list) and len(ids) != len(tokens):
            raise _fail(
                path,
                f"{where} (TemplateProcessing): special token {name!r} has {len(ids)} ids but {len(tokens)} tokens",
            )


def load_tokenizer(directory: Path) -> Tokenizer:
    """tokenizer.json if present, else vocab.json + merges.txt built exactly as GPT2TokenizerFast builds them.

    Only regular files are read (a FIFO or device named like one is refused without blocking). A `.gguf` file:
    the tokenizer its metadata describes (mhacli.io.gguf_tokenizer).
    """
    if directory.suffix.lower() == ".gguf" or directory.is_file():  # a GGUF (an Ollama blob has no suffix)
        return _gguf_tokenizer(directory)
    from tokenizers import AddedToken, decoders, pre_tokenizers
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import BPE

    tok_json = directory / "tokenizer.json"
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    corrupt = f"{show(directory)}: tokenizer files are corrupt"
    if os.path.lexists(tok_json):
        doc = check_tokenizer_json(
            read_json(tok_json, "tokenizer", TokenizerError, max_bytes=MAX_TOKENIZER_BYTES), tok_json
        )
        with guarded(corrupt):
            backend = Backend.from_str(json.dumps(doc))
        byte_level = "ByteLevel" in json.dumps(doc.get("pre_tokenizer"))
    elif os.path.lexists(vocab) and os.path.lexists(merges):
        for path in (vocab, merges):
            check_regular(path, "tokenizer", TokenizerError, max_bytes=MAX_TOKENIZER_BYTES)
        with guarded(corrupt):
            backend = Backend(
                BPE.from_file(
                    str(vocab),
                    str(merges),
                    dropout=None,
                    continuing_subword_prefix="",
                    end_of_word_suffix="",
                    fuse_unk=False,
                )
            )
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            backend.decoder = decoders.ByteLevel()
            specials = _special_tokens(directory)
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
        byte_level = True
    else:
        raise TokenizerError(f"{show(directory)}: no tokenizer (need tokenizer.json, or vocab.json and merges.txt)")
    with guarded(corrupt):  # tokenizer.json may have set them again through the model; the tool wants neither
        backend.no_padding()
        backend.no_truncation()
    return Tokenizer(backend, byte_level)


def _special_tokens(directory: Path) -> list[str]:
    """Special tokens GPT2TokenizerFast would add: <|endoftext|> plus any added tokens tokenizer_config.json lists."""
    specials = [ENDOFTEXT]
    config = directory / "tokenizer_config.json"
    if os.path.lexists(config):
        doc = read_json(config, "tokenizer", TokenizerError, max_bytes=MAX_TOKENIZER_BYTES)
        added = doc.get("added_tokens_decoder") if isinstance(doc, dict) else None
        if isinstance(added, dict):
            specials += [
                v["content"] for v in added.values() if isinstance(v, dict) and isinstance(v.get("content"), str)
            ]
    return list(dict.fromkeys(specials))


def _gguf_tokenizer(path: Path) -> Tokenizer:
    from mhacli.io.gguf import read_gguf
    from mhacli.io.gguf_tokenizer import gguf_backend

    gf = read_gguf(path)
    with guarded(f"{show(path.name)}: the GGUF's tokenizer metadata is corrupt"):
        backend, byte_level = gguf_backend(gf)
        backend.no_padding()
        backend.no_truncation()
    return Tokenizer(backend, byte_level)
