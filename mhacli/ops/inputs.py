"""What a request runs on.

A model (checked, then loaded with its tokenizer) and its input (a text from an argument or stdin, --ids, or --texts
FILE), tokenized or checked against the model by one rule (mhacli.io.textin).
"""

from __future__ import annotations

from mhacli.errors import UsageError
from mhacli.io import weights
from mhacli.io.textin import (
    TokenizedText,
    from_ids,
    read_ids,
    read_text,
    read_texts,
    tokenize,
)
from mhacli.io.tokenizer import Tokenizer, load_tokenizer
from mhacli.io.weights import Checkpoint, ModelFiles, load_model


def check_model(model: str | None) -> ModelFiles | None:
    """The model's files resolved, and checked to exist, before any input is read (a wrong path is named first).

    None for a well-formed hub id, resolved when the model loads.
    """
    return weights.check_model(model)


def open_model(
    model: str | None, *, cache: bool | None = False, files: ModelFiles | None = None
) -> tuple[Checkpoint, Tokenizer]:
    """The model and its tokenizer. cache=False (one pass over the layers).

    Each layer's tensors are read when the forward reaches it and dropped after; None keeps them for models under
    weights.CACHE_LIMIT_BYTES. `files`: what check_model resolved already.
    """
    ckpt = load_model(model, cache=cache, files=files)
    return ckpt, load_tokenizer(ckpt.files.tokenizer_path)


def check_text_or_ids(text: str | None, ids: str | None, texts: str | None = None) -> None:
    """TEXT, --ids and --texts are three ways to give the input: at most one."""
    given = [name for name, v in (("TEXT", text), ("--ids", ids), ("--texts FILE", texts)) if v is not None]
    if len(given) > 1:
        raise UsageError(f"give {' or '.join(given)}, not both")


def read_input(text: str | None, ids: str | None) -> str | list[int]:
    """The raw input: the text (argument, `-`, piped stdin), or with --ids the token ids."""
    check_text_or_ids(text, ids)
    return read_ids(ids) if ids is not None else read_text(text)


def read_inputs(text: str | None, ids: str | None, texts: str | None) -> list[tuple[str | list[int], str]]:
    """TEXT, --ids or --texts FILE (at most one): each input (a text, or token ids) with its name in messages."""
    check_text_or_ids(text, ids, texts)
    if texts is not None:
        return [(raw, f"--texts line {n}") for n, raw in read_texts(texts)]
    if ids is not None:
        return [(read_ids(ids), "--ids")]
    return [(read_text(text), "the text")]


def encode(raw: str | list[int], ckpt: Checkpoint, tokenizer: Tokenizer, *, truncate: bool) -> TokenizedText:
    """A text tokenized, or given ids checked (vocab_size, n_positions), with the same truncation rule."""
    c = ckpt.config
    if isinstance(raw, list):
        return from_ids(tokenizer, raw, c.n_positions, vocab_size=c.vocab_size, truncate=truncate)
    return tokenize(tokenizer, raw, c.n_positions, vocab_size=c.vocab_size, truncate=truncate)
