"""Our tokenizer (the `tokenizers` library directly) against transformers' GPT2TokenizerFast on the same files."""

from __future__ import annotations

import shutil

import pytest
from helpers import SAMPLE, TRICKY_TEXTS

from mhacli.io.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def vocab_merges_only(tmp_path_factory, tokenizer_dir):
    directory = tmp_path_factory.mktemp("vm")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tokenizer_dir / name, directory / name)
    return directory


@pytest.mark.parametrize("layout", ["tokenizer.json", "vocab+merges"])
@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_ids_match_gpt2_tokenizer_fast(tokenizer_dir, vocab_merges_only, layout, text):
    from transformers import GPT2TokenizerFast

    directory = tokenizer_dir if layout == "tokenizer.json" else vocab_merges_only
    reference = GPT2TokenizerFast.from_pretrained(directory)
    assert load_tokenizer(directory).encode(text) == reference(text)["input_ids"]


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_sample_model_tokenizer_matches(text):
    from transformers import GPT2TokenizerFast

    reference = GPT2TokenizerFast.from_pretrained(SAMPLE)
    assert load_tokenizer(SAMPLE).encode(text) == reference(text)["input_ids"]


def test_display_strings_rebuild_the_text(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    for text in ["hello world", " leading space", "tabs\tand\nnewlines", "Café résumé"]:
        ids = tok.encode(text)
        assert "".join(tok.display(ids)) == text
        assert not any("Ġ" in piece or "Ċ" in piece for piece in tok.display(ids))


def test_split_multibyte_character_shows_its_bytes(tokenizer_dir):
    """An emoji the vocabulary does not know is split into byte tokens; each shows its bytes, never a wrong char."""
    tok = load_tokenizer(tokenizer_dir)
    ids = tok.encode("🦜")  # not in the training text: falls back to byte tokens
    pieces = tok.display(ids)
    assert len(ids) > 1
    assert "".join(pieces).startswith("\\x") and "\\x" in pieces[-1]
    raw = b"".join(bytes.fromhex(p.replace("\\x", "")) for p in pieces)
    assert raw.decode("utf-8") == "🦜"


def test_special_token_is_one_id(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    ids = tok.encode("a<|endoftext|>b")
    assert tok.display(ids) == ["a", "<|endoftext|>", "b"]
