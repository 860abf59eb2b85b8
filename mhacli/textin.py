"""Text input: an argument, `-` for stdin, or a piped stdin when no argument is given; then tokenized and checked."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from mhacli.errors import TextError, TokenizerError
from mhacli.tokenizer import Tokenizer

MAX_TEXT_BYTES = 8 * 1024 * 1024


def read_text(arg: str | None, stdin: BinaryIO | None = None) -> str:
    """The text to analyse. Raises TextError for missing, empty or non-UTF-8 text."""
    if arg is not None and arg != "-":
        text = arg
    else:
        stream = stdin if stdin is not None else sys.stdin.buffer
        if arg is None and stream.isatty():
            raise TextError("no text given: pass TEXT, or pipe text on stdin (use - to read stdin explicitly)")
        raw = stream.read(MAX_TEXT_BYTES + 1)
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
    truncated_from: int | None  # the original token count when --truncate cut the text


def tokenize(
    tokenizer: Tokenizer, text: str, n_positions: int, *, vocab_size: int, truncate: bool = False
) -> TokenizedText:
    ids = tokenizer.encode(text)
    if not ids:
        raise TextError("text produced no tokens")
    check_ids_fit(ids, vocab_size)
    truncated_from = None
    if len(ids) > n_positions:
        if not truncate:
            raise TextError(
                f"text is {len(ids)} tokens, longer than the model's n_positions ({n_positions}); "
                "shorten it or pass --truncate to keep the first tokens"
            )
        truncated_from, ids = len(ids), ids[:n_positions]
    return TokenizedText(np.asarray(ids, dtype=np.int64), tokenizer.display(ids), truncated_from)
