"""Tokenizing with the `tokenizers` library (fast to import; `transformers` is not needed here).

Ids match `GPT2TokenizerFast` on the same files. Display strings come from the tokens' bytes, so a byte-level
`Ġ` shows as a space and a multi-byte character split across tokens shows its bytes, not a wrong character.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from mhacli.errors import TokenizerError

ENDOFTEXT = "<|endoftext|>"


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (openai/gpt-2 encoder.py bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@dataclass
class Tokenizer:
    backend: object  # tokenizers.Tokenizer
    byte_level: bool

    def encode(self, text: str) -> list[int]:
        return list(self.backend.encode(text).ids)

    def ordinary_ids(self, vocab_size: int) -> list[int]:
        """Ids below `vocab_size` (the model's) that the tokenizer's vocabulary holds, without its added and
        special tokens: what `mha census` draws random tokens from."""
        added = set(self.backend.get_added_tokens_decoder())
        top = min(vocab_size, self.backend.get_vocab_size(with_added_tokens=True))
        return [i for i in range(top) if i not in added and self.backend.id_to_token(i) is not None]

    def prefix_id(self) -> int | None:
        """The token a probe sequence starts with: the BOS the tokenizer adds to every text (its post-processor),
        else GPT-2's document separator <|endoftext|> or a conventional BOS in the vocabulary, else None."""
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


def load_tokenizer(directory: Path) -> Tokenizer:
    """tokenizer.json if present, else vocab.json + merges.txt built exactly as GPT2TokenizerFast builds them."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, pre_tokenizers
    from tokenizers.models import BPE

    tok_json = directory / "tokenizer.json"
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    try:
        if tok_json.is_file():
            backend = Backend.from_file(str(tok_json))
            byte_level = "ByteLevel" in json.dumps(json.loads(tok_json.read_text("utf-8")).get("pre_tokenizer"))
        elif vocab.is_file() and merges.is_file():
            backend = Backend(
                BPE.from_file(str(vocab), str(merges), dropout=None, continuing_subword_prefix="",
                              end_of_word_suffix="", fuse_unk=False)
            )  # fmt: skip
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            backend.decoder = decoders.ByteLevel()
            specials = _special_tokens(directory)
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
            byte_level = True
        else:
            raise TokenizerError(f"{directory}: no tokenizer (need tokenizer.json, or vocab.json and merges.txt)")
    except TokenizerError:
        raise
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exceptions on corrupt files
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise TokenizerError(f"{directory}: tokenizer files are corrupt ({msg})") from exc
    return Tokenizer(backend, byte_level)


def _special_tokens(directory: Path) -> list[str]:
    """Special tokens GPT2TokenizerFast would add: <|endoftext|> plus any added tokens tokenizer_config.json lists."""
    specials = [ENDOFTEXT]
    config = directory / "tokenizer_config.json"
    if config.is_file():
        try:
            doc = json.loads(config.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TokenizerError(f"{config}: not valid JSON") from exc
        added = doc.get("added_tokens_decoder") if isinstance(doc, dict) else None
        if isinstance(added, dict):
            specials += [v["content"] for v in added.values() if isinstance(v, dict) and isinstance(v.get("content"), str)]
    return list(dict.fromkeys(specials))
