"""Text input: an argument, `-` for stdin, or a piped stdin when no argument is given; then tokenized and checked."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from mhacli.errors import TextError, TokenizerError
from mhacli.tokenizer import Tokenizer

MAX_TEXT_BYTES = 8 * 1024 * 1024
MAX_TEXTS_BYTES = 64 * 1024 * 1024  # --texts FILE: one text per line


def read_text(arg: str | None, stdin: BinaryIO | None = None) -> str:
    """The text to analyse. Raises TextError for missing, empty or non-UTF-8 text."""
    if arg is not None and arg != "-":
        text = arg
    else:
        stream = stdin if stdin is not None else _stdin()
        if stream is None:
            raise TextError("no text given and stdin is closed: pass TEXT, or pipe text on stdin")
        try:
            if arg is None and stream.isatty():
                raise TextError("no text given: pass TEXT, or pipe text on stdin (use - to read stdin explicitly)")
            raw = stream.read(MAX_TEXT_BYTES + 1)
        except (OSError, ValueError) as exc:  # a closed or unreadable stdin
            raise TextError(f"cannot read text from stdin: {getattr(exc, 'strerror', None) or exc}") from exc
        if len(raw) > MAX_TEXT_BYTES:
            raise TextError(f"text on stdin is larger than {MAX_TEXT_BYTES // (1024 * 1024)} MiB")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TextError(f"text on stdin is not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from exc
        if text.startswith("\ufeff"):
            text = text[1:]
    try:
        text.encode("utf-8")  # an argument with invalid bytes arrives as lone surrogates
    except UnicodeEncodeError as exc:
        raise TextError("text is not valid UTF-8") from exc
    if text.strip() == "":
        raise TextError("text is empty")
    return text


def _stdin() -> BinaryIO | None:
    """The binary stdin; None when the process was started with stdin closed (`<&-`: sys.stdin is None)."""
    return getattr(sys.stdin, "buffer", None) if sys.stdin is not None else None


def read_texts(path: str) -> list[tuple[int, str]]:
    """--texts FILE ('-': stdin): (line number, text) for every non-blank line."""
    try:
        if path == "-":
            stream = _stdin()
            if stream is None:
                raise TextError("--texts -: stdin is closed")
            raw = stream.read(MAX_TEXTS_BYTES + 1)
        else:
            with open(path, "rb") as f:
                raw = f.read(MAX_TEXTS_BYTES + 1)
    except FileNotFoundError as exc:
        raise TextError(f"--texts {path}: no such file") from exc
    except IsADirectoryError as exc:
        raise TextError(f"--texts {path}: is a directory") from exc
    except OSError as exc:
        raise TextError(f"--texts {path}: cannot read: {exc.strerror}") from exc
    except ValueError as exc:  # a NUL byte in the name, a closed stdin
        raise TextError(f"--texts {path!r}: cannot read ({exc})") from exc
    if len(raw) > MAX_TEXTS_BYTES:
        raise TextError(f"--texts {path}: larger than {MAX_TEXTS_BYTES // (1024 * 1024)} MiB")
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TextError(f"--texts {path}: line {line} is not valid UTF-8") from exc
    content = content.removeprefix("\ufeff")
    texts = [(n, line.removesuffix("\r")) for n, line in enumerate(content.split("\n"), start=1)]
    texts = [(n, t) for n, t in texts if t.strip()]
    if not texts:
        raise TextError(f"--texts {path}: holds no text (every line is blank)")
    return texts


def check_ids_fit(ids: list[int], vocab_size: int) -> None:
    """A token id past the embedding table means tokenizer and weights do not belong together."""
    if ids and max(ids) >= vocab_size:
        raise TokenizerError(
            f"the tokenizer produced id {max(ids)}, but the model's vocab_size is {vocab_size}: "
            "tokenizer and weights do not belong together"
        )


@dataclass(frozen=True)
class TokenizedText:
    ids: np.ndarray  # [n_seq] int64
    tokens: list[str]  # display string per token
    truncated_from: int | None  # the original token count when --truncate cut the text (a lower bound: see below)
    counted_all: bool = True  # False: only a prefix of the text was tokenized; it has more than truncated_from tokens

    def original_length(self) -> str:
        """The text's token count for messages: '1234', or 'more than 1234' when only a prefix was tokenized."""
        return str(self.truncated_from) if self.counted_all else f"more than {self.truncated_from}"


def tokenize(
    tokenizer: Tokenizer, text: str, n_positions: int, *, vocab_size: int, truncate: bool = False
) -> TokenizedText:
    """The text's ids, at most n_positions of them (--truncate) or an error. Only a prefix of a long text is
    tokenized (Tokenizer.encode_prefix): megabytes of text cost what n_positions tokens cost."""
    ids, n_chars = tokenizer.encode_prefix(text, n_positions)
    counted_all = n_chars == len(text)
    if not ids:
        raise TextError("text produced no tokens")
    check_ids_fit(ids, vocab_size)
    truncated_from = None
    if len(ids) > n_positions:
        count = str(len(ids)) if counted_all else f"more than {len(ids)}"
        if not truncate:
            raise TextError(
                f"text is {count} tokens, longer than the model's n_positions ({n_positions}); "
                "shorten it or pass --truncate to keep the first tokens"
            )
        truncated_from, ids = len(ids), ids[:n_positions]
    return TokenizedText(np.asarray(ids, dtype=np.int64), tokenizer.display(ids), truncated_from, counted_all)
