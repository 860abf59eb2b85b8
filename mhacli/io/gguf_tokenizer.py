"""The tokenizer a GGUF describes in its metadata, built with the `tokenizers` library.

Built as transformers builds it for `AutoTokenizer.from_pretrained(dir, gguf_file=name)`
(integrations/gguf/gguf_tokenizer_mapping.py), so the ids are the same:
- `tokenizer.ggml.model == "gpt2"`: byte-level BPE over `tokens` (a token outside the byte alphabet respelled in
  it) and `merges`; the pre-tokenizer GPT-2's ByteLevel, or the split regex `tokenizer.ggml.pre` names
  (llama3, qwen2, ...) followed by ByteLevel without its own regex;
- tokens typed CONTROL (3) added as special tokens (only those spelled in the byte alphabet), USER_DEFINED (4)
  as added tokens, so neither is cut into pieces;
- BOS prepended when `tokenizer.ggml.add_bos_token` says so (and EOS appended for `add_eos_token`).
- `tokenizer.ggml.model == "llama"`: SentencePiece BPE with byte fallback and merges recovered from `scores`
  (transformers' LlamaTokenizer: Metaspace on the first word only; BOS unless `add_bos_token` is false).
"""

from __future__ import annotations

from typing import Any

from mhacli.errors import TokenizerError
from mhacli.io.bytelevel import byte_alphabet
from mhacli.io.files import show
from mhacli.io.gguf import GgufFile

CONTROL, USER_DEFINED = 3, 4

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> the split regex its merges were learned with (transformers' GGUF_PRE_TOKENIZER_SPLITS);
# any other name: GPT-2's ByteLevel regex
PRE_SPLITS = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "falcon3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}  # fmt: skip


def _strings(gf: GgufFile, key: str, required: bool = True) -> list[str] | None:
    value = gf.metadata.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TokenizerError(f"{show(gf.path.name)}: GGUF metadata {key} is missing or not a list of strings")
    return value


def _flag(gf: GgufFile, key: str, default: bool) -> bool:
    value = gf.metadata.get(key, default)
    return bool(value) if isinstance(value, bool) else default


def _token_id(gf: GgufFile, key: str, n: int) -> int | None:
    value = gf.metadata.get(key)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n:
        return value
    return None


def byte_level_backend(gf: GgufFile) -> Any:
    """tokenizer.ggml.model == gpt2: byte-level BPE, as transformers' byte_level_tokenizer + GPT2Tokenizer."""
    from tokenizers import AddedToken, Regex, decoders, pre_tokenizers
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import BPE

    tokens = _strings(gf, "tokenizer.ggml.tokens")
    merges = _strings(gf, "tokenizer.ggml.merges", required=False) or []
    assert tokens is not None
    spelling = byte_alphabet()
    alphabet = set(spelling.values())
    vocab = {
        (t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))): i for i, t in enumerate(tokens)
    }
    pairs = []
    for rank, merge in enumerate(merges):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise TokenizerError(f"{show(gf.path.name)}: GGUF merge {rank} ({merge[:40]!r}) is not two tokens")
        pairs.append((parts[0], parts[1]))
    backend = Backend(
        BPE(
            vocab=vocab, merges=pairs, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
        )
    )
    split = PRE_SPLITS.get(str(gf.metadata.get("tokenizer.ggml.pre", "")))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    types = gf.metadata.get("tokenizer.ggml.token_type")
    kinds = [int(x) for x in types] if types is not None and len(types) == len(tokens) else []
    control = [t for t, k in zip(tokens, kinds) if k == CONTROL and set(t) <= alphabet]
    if control:
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    user = [t for t, k in zip(tokens, kinds) if k == USER_DEFINED and t in vocab]
    if user:
        backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    return backend


def sentencepiece_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """The merges a SentencePiece vocabulary implies (transformers' generate_merges with scores).

    every split of every token into two tokens of the vocabulary, best score first, then the shorter left and right
    parts.
    """
    vocab = {t: i for i, t in enumerate(tokens)}
    found: list[tuple[str, str, float]] = []
    for token, score in dict(zip(tokens, scores)).items():
        local = [
            (token[:i], token[i:], score) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab
        ]
        found.extend(sorted(local, key=lambda x: (vocab[x[0]], vocab[x[1]])))
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in found]


def sentencepiece_backend(gf: GgufFile) -> Any:
    """tokenizer.ggml.model == llama.

    SentencePiece BPE with byte fallback, as transformers' LlamaTokenizer (Metaspace "▁", prepended to the first
    word only; merges from the scores).
    """
    from tokenizers import AddedToken, decoders, pre_tokenizers
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import BPE

    tokens = _strings(gf, "tokenizer.ggml.tokens")
    assert tokens is not None
    scores = gf.metadata.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise TokenizerError(
            f"{show(gf.path.name)}: GGUF metadata tokenizer.ggml.scores is missing or of the wrong length"
        )
    merges = _strings(gf, "tokenizer.ggml.merges", required=False)
    pairs: list[tuple[str, str]]
    if merges:
        pairs = [(a, b) for a, _, b in (m.partition(" ") for m in merges)]
    else:
        pairs = sentencepiece_merges(tokens, [float(x) for x in scores])
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = Backend(BPE(vocab=vocab, merges=pairs, fuse_unk=True, byte_fallback=True, dropout=None))
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(content=" ", left=1)]
    )
    types = gf.metadata.get("tokenizer.ggml.token_type")
    kinds = [int(x) for x in types] if types is not None and len(types) == len(tokens) else []
    control = [t for t, k in zip(tokens, kinds) if k == CONTROL]
    if control:
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    user = [t for t, k in zip(tokens, kinds) if k == USER_DEFINED]
    if user:
        backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    return backend


def _post_processor(backend: Any, gf: GgufFile, tokens: list[str], default_bos: bool = False) -> None:
    """BOS / EOS around every text, as add_bos_token / add_eos_token say (transformers' update_post_processor)."""
    from tokenizers import processors

    bos = (
        _token_id(gf, "tokenizer.ggml.bos_token_id", len(tokens))
        if _flag(gf, "tokenizer.ggml.add_bos_token", default_bos)
        else None
    )
    eos = (
        _token_id(gf, "tokenizer.ggml.eos_token_id", len(tokens))
        if _flag(gf, "tokenizer.ggml.add_eos_token", False)
        else None
    )
    if bos is None and eos is None:
        return
    single = (
        ([f"{tokens[bos]}:0"] if bos is not None else []) + ["$A:0"] + ([f"{tokens[eos]}:0"] if eos is not None else [])
    )
    specials = [(tokens[i], i) for i in dict.fromkeys(x for x in (bos, eos) if x is not None)]
    backend.post_processor = processors.TemplateProcessing(single=" ".join(single), pair=None, special_tokens=specials)


def gguf_backend(gf: GgufFile) -> tuple[Any, bool]:
    """(tokenizers.Tokenizer, byte_level) for the tokenizer the GGUF describes."""
    model = gf.metadata.get("tokenizer.ggml.model")
    if model == "llama":
        backend = sentencepiece_backend(gf)
        tokens = _strings(gf, "tokenizer.ggml.tokens")
        assert tokens is not None
        _post_processor(backend, gf, tokens, default_bos=True)  # llama.cpp adds BOS unless the file says not to
        return backend, False
    if model != "gpt2":
        raise TokenizerError(
            f"{show(gf.path.name)}: GGUF tokenizer model {str(model)[:40]!r} is not supported yet "
            "(supported: gpt2 byte-level BPE)"
        )
    backend = byte_level_backend(gf)
    tokens = _strings(gf, "tokenizer.ggml.tokens")
    assert tokens is not None
    _post_processor(backend, gf, tokens)
    return backend, True
