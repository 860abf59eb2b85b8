"""Text input: an argument, `-` for stdin, or a piped stdin when no argument is given; then tokenized and checked.

Or token ids instead of a text (`--ids 464,3797` or `--ids -`: a JSON array on stdin), checked against the model.

Text read from stdin loses ONE trailing newline ("\n" or "\r\n"), the one `echo` and editors add: `echo "The cat
sat" | mha explain` explains "sat", not a newline token. Only stdin, only one: a text given as an argument is
kept as it is, and a second newline (an intended blank line) stays."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from mhacli.errors import TextError, TokenizerError
from mhacli.io.files import note_input, utf8_text
from mhacli.io.tokenizer import Tokenizer

MAX_TEXT_BYTES = 8 * 1024 * 1024
MAX_TEXTS_BYTES = 64 * 1024 * 1024  # --texts FILE: one text per line
# the parameters these messages name, each door spelling them (mhacli.errors: --texts in the shell, texts in Python)
TEXTS, TRUNCATE, IDS = ("texts",), ("truncate",), ("ids",)


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
            raise TextError(
                f"text on stdin is not valid UTF-8 (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})"
            ) from exc
        if text.startswith("\ufeff"):
            text = text[1:]
        text = strip_one_newline(text)
    text = valid_text(text)
    if text.strip() == "":
        raise TextError("text is empty")
    return text


def valid_text(text: str, what: str = "text") -> str:
    """The text as UTF-8 reads it (an argument's bytes, decoded by a non-UTF-8 locale, recovered: io.files.utf8_text).

    A TextError when it is not valid UTF-8 (bytes that are not UTF-8, a lone surrogate)."""
    fixed = utf8_text(text)
    if fixed is None:
        raise TextError(f"{what} is not valid UTF-8")
    return fixed


def strip_one_newline(text: str) -> str:
    """The text without one trailing "\r\n" or "\n" (the newline `echo` and editors end a file with)."""
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


def _stdin() -> BinaryIO | None:
    """The binary stdin; None when the process was started with stdin closed (`<&-`: sys.stdin is None)."""
    return getattr(sys.stdin, "buffer", None) if sys.stdin is not None else None


JSONL_SUFFIXES = (".jsonl", ".ndjson")


def iter_texts(path: str, *, limit: int | None = None) -> Iterator[tuple[int, str]]:
    """--texts FILE ('-': stdin), streamed: (line number, text) for every non-blank line, one line at a time.

    A `.jsonl`/`.ndjson` file holds one JSON object per line with a string field "text". What makes the file
    unusable raises TextError naming the line: not UTF-8, NUL bytes (a binary file), a line over MAX_TEXT_BYTES,
    a JSONL line that is not an object with a "text" string; and, with `limit`, more than `limit` bytes in all.
    Texts that are valid but cannot be run (blank after parsing, too long for the model) are the caller's to judge.
    """
    jsonl = path != "-" and path.lower().endswith(JSONL_SUFFIXES)
    for n, line in iter_lines(path, limit=limit):
        yield n, (_jsonl_text(line, path, n) if jsonl else line)


def iter_lines(path: str, *, param: str = "texts", limit: int | None = None) -> Iterator[tuple[int, str]]:
    """The non-blank lines of FILE ('-': stdin), streamed: (line number, line without its ending, CRLF or LF).

    What makes the file unusable raises TextError naming the parameter (`param`: `{texts}`, `{pairs}`), the file
    and the line: not UTF-8, NUL bytes, a line over MAX_TEXT_BYTES, more than `limit` bytes in all."""
    stdin = _stdin()
    stream = _open_lines(path, stdin, param)
    total = 0
    try:
        for n in itertools.count(1):
            try:
                raw = stream.readline(MAX_TEXT_BYTES + 1)
            except OSError as exc:
                raise TextError(f"{{{param}}} {path}: cannot read: {exc.strerror}", params=(param,)) from exc
            if not raw:
                return
            total += len(raw)
            if limit is not None and total > limit:
                raise TextError(f"{{{param}}} {path}: larger than {limit // (1024 * 1024)} MiB", params=(param,))
            line = _decode_line(raw, path, n, param)
            if line.strip():
                yield n, line
    finally:
        if stream is not stdin:
            stream.close()


def _open_lines(path: str, stdin: BinaryIO | None, param: str) -> BinaryIO:
    """FILE opened for reading bytes ('-': stdin); what stops it is a TextError naming the file."""
    where = f"{{{param}}} {path}"
    try:
        if path == "-":
            if stdin is None:
                raise TextError(f"{{{param}}} -: stdin is closed", params=(param,))
            return stdin
        stream = open(path, "rb")  # noqa: SIM115 - iter_lines closes it
        note_input(stream.fileno(), f"--{param}")  # no output of the run may replace it (--per-text onto the corpus)
        return stream
    except FileNotFoundError as exc:
        raise TextError(f"{where}: no such file", params=(param,)) from exc
    except IsADirectoryError as exc:
        raise TextError(f"{where}: is a directory", params=(param,)) from exc
    except OSError as exc:
        raise TextError(f"{where}: cannot read: {exc.strerror}", params=(param,)) from exc
    except ValueError as exc:  # a NUL byte in the name
        raise TextError(f"{{{param}}} {path!r}: cannot read ({exc})", params=(param,)) from exc


def _decode_line(raw: bytes, path: str, n: int, param: str) -> str:
    """Line n as read (at most MAX_TEXT_BYTES + 1 bytes) -> its text, without BOM and line ending."""
    where = f"{{{param}}} {path}: line {n}"
    if len(raw) > MAX_TEXT_BYTES and not raw.endswith(b"\n"):
        raise TextError(f"{where} is longer than {MAX_TEXT_BYTES // (1024 * 1024)} MiB", params=(param,))
    if b"\0" in raw:
        raise TextError(f"{where} holds NUL bytes; is it a text file?", params=(param,))
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextError(f"{where} is not valid UTF-8; is it a text file?", params=(param,)) from exc
    if n == 1:
        line = line.removeprefix("\ufeff")
    return line.removesuffix("\n").removesuffix("\r")


def read_json_lines(path: str, param: str) -> list[tuple[int, object]]:
    """FILE of JSON lines ('-': stdin), read whole (at most MAX_TEXTS_BYTES): (line number, value) per non-blank line.

    Errors as iter_lines', and a line that is not JSON (too deeply nested included) named."""
    rows: list[tuple[int, object]] = []
    for n, line in iter_lines(path, param=param, limit=MAX_TEXTS_BYTES):
        try:
            rows.append((n, json.loads(line)))
        except (ValueError, RecursionError) as exc:
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
            raise TextError(f"{{{param}}} {path}: line {n} is not JSON ({why})", params=(param,)) from exc
    return rows


def _jsonl_text(line: str, path: str, n: int) -> str:
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise TextError(
            f"{{texts}} {path}: line {n} is not a JSON object (JSONL needs one per line)", params=TEXTS
        ) from exc
    text = doc.get("text") if isinstance(doc, dict) else None
    if not isinstance(text, str):
        raise TextError(f'{{texts}} {path}: line {n} has no "text" string field', params=TEXTS)
    if utf8_text(text) != text:  # a "\\ud800" escape: no UTF-8 text holds a lone surrogate
        raise TextError(f'{{texts}} {path}: line {n}: its "text" is not valid UTF-8 (a lone surrogate)', params=TEXTS)
    return text


def read_texts(path: str) -> list[tuple[int, str]]:
    """--texts FILE ('-': stdin), read whole (at most MAX_TEXTS_BYTES): (line number, text) for every non-blank line.

    A FILE.jsonl gives each line's "text" field (iter_texts)."""
    texts = [(n, t) for n, t in iter_texts(path, limit=MAX_TEXTS_BYTES) if t.strip()]
    if not texts:
        raise TextError(f"{{texts}} {path}: holds no text (every line is blank)", params=TEXTS)
    return texts


def check_ids_fit(ids: list[int], vocab_size: int, tokenizer: Tokenizer | None = None) -> None:
    """A token id past the embedding table means tokenizer and weights do not belong together.

    The message names both sizes: the model's vocab_size and, when `tokenizer` is given, the tokenizer's vocabulary
    (its added tokens included)."""
    if ids and max(ids) >= vocab_size:
        size = "" if tokenizer is None else f" (a vocabulary of {tokenizer.vocab_size()} tokens)"
        raise TokenizerError(
            f"the tokenizer{size} produced id {max(ids)}, but the model's vocab_size is {vocab_size}: "
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
    """The text's ids, at most n_positions of them (--truncate) or an error.

    Only a prefix of a long text is tokenized (Tokenizer.encode_prefix): megabytes of text cost what n_positions
    tokens cost."""
    text = valid_text(text)
    ids, n_chars = tokenizer.encode_prefix(text, n_positions)
    counted_all = n_chars == len(text)
    if not ids:
        raise TextError("text produced no tokens")
    check_ids_fit(ids, vocab_size, tokenizer)
    truncated_from = None
    if len(ids) > n_positions:
        count = str(len(ids)) if counted_all else f"more than {len(ids)}"
        if not truncate:
            raise TextError(
                f"text is {count} tokens, longer than the model's n_positions ({n_positions}); "
                "shorten it or pass {truncate} to keep the first tokens",
                params=TRUNCATE,
            )
        truncated_from, ids = len(ids), ids[:n_positions]
    return TokenizedText(np.asarray(ids, dtype=np.int64), tokenizer.display(ids), truncated_from, counted_all)


# --- token ids instead of a text ---------------------------------------------------------------------------------

MAX_ID_DIGITS = 12  # a token id longer than this is no vocabulary's


def parse_ids(spec: str, where: str = "{ids}") -> list[int]:
    """`464,3797,...` (commas and/or spaces) or a JSON array of integers `[464, 3797]` -> the ids.

    Pure: raises TextError naming the first thing that is not a token id (negative, not an integer, a bool, a
    float)."""
    body = spec.strip()
    if not body:
        raise TextError(
            f"{where}: no token ids given (e.g. {{ids}} 464,3797 or a JSON array on stdin with {{ids}} -)", params=IDS
        )
    if body.startswith("["):
        try:
            values = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise TextError(f"{where}: not a JSON array of token ids ({type(exc).__name__})", params=IDS) from exc
        if not isinstance(values, list):
            raise TextError(f"{where}: not a JSON array of token ids", params=IDS)
        items: list[object] = values
    else:
        items = [p for p in body.replace(",", " ").split()]
    return ids_from_items(items, where)


def ids_from_items(items: list[object], where: str = "{ids}") -> list[int]:
    """Each item a token id: an integer >= 0 (or its decimal digits, as --ids spells them), never a bool or a float.

    Raises TextError naming the first item that is not one, or an empty list. The CLI's --ids and the API's ids=
    both go through here (and check_ids): one rule, the same messages."""
    ids: list[int] = []
    for n, item in enumerate(items):
        if isinstance(item, str) and item.isascii() and item.isdigit() and len(item) <= MAX_ID_DIGITS:
            ids.append(int(item))
        elif type(item) is int and 0 <= item < 10**MAX_ID_DIGITS:
            ids.append(item)
        else:
            shown = repr(item)[:40] if not isinstance(item, (list, dict)) else type(item).__name__
            huge = type(item) is int or (isinstance(item, str) and item.isascii() and item.isdigit())
            if huge and not str(item).startswith("-"):  # an integer, past any vocabulary (or int()'s 4,300 digits)
                raise TextError(f"{where}: item {n} ({shown}) is out of range: no vocabulary is that large", params=IDS)
            raise TextError(f"{where}: item {n} ({shown}) is not a token id (an integer >= 0)", params=IDS)
    if not ids:
        raise TextError(f"{where}: the list of token ids is empty", params=IDS)
    return ids


def read_ids(spec: str, stdin: BinaryIO | None = None) -> list[int]:
    """--ids SPEC: the ids it lists, or with `-` the JSON array (or comma-separated list) on stdin."""
    if spec != "-":
        return parse_ids(spec)
    stream = stdin if stdin is not None else _stdin()
    if stream is None:
        raise TextError("{ids} -: stdin is closed", params=IDS)
    try:
        raw = stream.read(MAX_TEXT_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise TextError(f"{{ids}} -: cannot read stdin: {getattr(exc, 'strerror', None) or exc}", params=IDS) from exc
    if len(raw) > MAX_TEXT_BYTES:
        raise TextError(f"{{ids}} -: stdin is larger than {MAX_TEXT_BYTES // (1024 * 1024)} MiB", params=IDS)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextError("{ids} -: stdin is not valid UTF-8", params=IDS) from exc
    return parse_ids(text, "{ids} -")


def check_ids(
    ids: list[int],
    vocab_size: int,
    n_positions: int,
    *,
    truncate: bool = False,
    where: str = "{ids}",
) -> tuple[list[int], int | None]:
    """Check given ids (--ids, or the API's ids=) against the embedding table and n_positions.

    They must index the embedding table (the first one that does not is named) and fit n_positions, or with
    truncate the first n_positions are kept. Returns (ids, the original count when
    cut, else None)."""
    for n, i in enumerate(ids):
        if i >= vocab_size:
            raise TextError(
                f"{where}: token id {i} (item {n}) is out of range: the model's vocab_size is {vocab_size} (ids "
                f"0..{vocab_size - 1})",
                params=IDS,
            )
    if len(ids) <= n_positions:
        return ids, None
    if not truncate:
        raise TextError(
            f"{where} gives {len(ids)} tokens, more than the model's n_positions ({n_positions}); "
            "give fewer or pass {truncate} to keep the first tokens",
            params=(*IDS, *TRUNCATE),
        )
    return ids[:n_positions], len(ids)


def from_ids(
    tokenizer: Tokenizer,
    ids: list[int],
    n_positions: int,
    *,
    vocab_size: int,
    truncate: bool = False,
    where: str = "{ids}",
) -> TokenizedText:
    """Given token ids as a TokenizedText:

    checked against vocab_size, cut to n_positions with --truncate (the same rule as a text's), each shown as the
    tokenizer's string for it."""
    ids, truncated_from = check_ids(ids, n_positions=n_positions, vocab_size=vocab_size, truncate=truncate, where=where)
    return TokenizedText(np.asarray(ids, dtype=np.int64), tokenizer.display(ids), truncated_from)
