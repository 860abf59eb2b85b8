"""Packed forwards: several texts concatenated into one sequence, each attending only to itself.

A `Segments` says where each text of a pack starts; `packed(segments)` makes it the current one while the forward runs
a block or the embedding, and the shared helpers read it: the attention kernel (mhacli.engine.attention) hides keys
before the query's text start, the rotary tables (mhacli.engine.arch.rope) and learned position embeddings restart
at 0 at every text. With no current segments (the default) every helper runs its one-text path, unchanged.

A family built on those helpers (grouped_attention or causal_attention with keep_scores=False, rope_tables) needs
nothing; one with learned positions reads `positions(n_seq)` instead of 0..n_seq-1. Nothing of ours is imported.

Callers that run many texts group them with `pack_groups` (consecutive texts up to a token budget) and split what a
pack's attention hands out per text with `PackSink` (each text's tiles in its own coordinates, as if it ran alone).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Tokens per packed forward (census, diff, ablate and prune --pack-tokens): short texts run together, their
# projections and MLP one GEMM. Measured on this machine (docs/performance.md): 1,024 beat 512 on GPT-2 small, 512
# the bundled model by 10%.
PACK_TOKENS = 1024


@dataclass(frozen=True)
class Segments:
    """Texts of lengths `lengths` laid end to end: text t holds tokens bounds[t][0]..bounds[t][1]-1 of the pack."""

    lengths: tuple[int, ...]
    starts: np.ndarray = field(init=False, repr=False)  # [n_seq] each token's text start in the pack
    positions: np.ndarray = field(init=False, repr=False)  # [n_seq] each token's position in its own text

    firsts: np.ndarray = field(init=False, repr=False)  # [n_texts] each text's first token in the pack

    def __post_init__(self) -> None:
        if any(n < 1 for n in self.lengths):
            raise ValueError(f"every text of a pack has at least one token, got lengths {self.lengths}")
        firsts = np.cumsum((0, *self.lengths[:-1]), dtype=np.int64)
        starts = np.repeat(firsts, self.lengths)
        object.__setattr__(self, "firsts", firsts)
        object.__setattr__(self, "starts", starts)
        object.__setattr__(self, "positions", np.arange(len(starts), dtype=np.int64) - starts)

    @property
    def n_seq(self) -> int:
        return len(self.starts)

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """(start, end) of each text in the pack."""
        ends = np.cumsum(self.lengths)
        return [(int(e - n), int(e)) for n, e in zip(self.lengths, ends)]

    @classmethod
    def of(cls, texts: Sequence[Sequence[int] | np.ndarray]) -> Segments:
        return cls(tuple(len(t) for t in texts))

    def pieces(self, a: int, b: int, lo: int) -> Iterator[tuple[int, int, int, int]]:
        """The texts a tile of rows a..b-1 over keys lo..b-1 covers: (text, rows ra..rb-1, first key klo) each.

        In pack coordinates; the text's own part of the tile p [.., b - a, b - lo] is p[:, ra - a : rb - a,
        klo - lo : rb - lo] (every other key of those rows is another text's, hidden)."""
        t = int(np.searchsorted(self.firsts, a, side="right")) - 1  # the text of row a
        while t < len(self.lengths) and self.firsts[t] < b:
            s = int(self.firsts[t])
            yield t, max(a, s), min(b, s + self.lengths[t]), max(lo, s)
            t += 1


def pack_groups(lengths: Sequence[int], pack_tokens: int) -> list[list[int]]:
    """Consecutive texts (by index) grouped into packs of at most `pack_tokens` tokens; a longer text is alone."""
    groups: list[list[int]] = []
    tokens = 0
    for i, n in enumerate(lengths):
        if groups and tokens + n <= pack_tokens:
            groups[-1].append(i)
            tokens += n
        else:
            groups.append([i])
            tokens = n
    return groups


def end_to_end(texts: Sequence[Sequence[int] | np.ndarray]) -> tuple[np.ndarray, Segments | None]:
    """Texts as one forward's input: their ids end to end ([n_seq] int64) and their Segments.

    The Segments are None for one text, which runs unpacked (the one-text path)."""
    members = [np.asarray(t, dtype=np.int64) for t in texts]
    return np.concatenate(members), (Segments.of(members) if len(members) > 1 else None)


def per_text(segments: Segments | None, sinks: Sequence) -> Any:
    """What a layer's attention streams to, given one sink per text of the pack `segments`.

    The text's own sink when it runs alone (segments None), else a PackSink handing each text its part."""
    return sinks[0] if segments is None else PackSink(segments, sinks)


class PackSink:
    """A pack's attention split per text, each text's part of every tile to its own sink.

    Rows and keys of text t go to sinks[t] in the text's own coordinates, as if it ran alone (any sink: statistics,
    a kept map). Concurrent when every text's sink is."""

    def __init__(self, segments: Segments, sinks: Sequence) -> None:
        self.segments = segments
        self.sinks = sinks
        self.concurrent = all(getattr(s, "concurrent", False) for s in sinks)

    def add(self, h: int, a: int, b: int, lo: int, p: np.ndarray) -> None:
        for t, ra, rb, klo in self.segments.pieces(a, b, lo):
            s = int(self.segments.firsts[t])
            self.sinks[t].add(h, ra - s, rb - s, klo - s, p[:, ra - a : rb - a, klo - lo : rb - lo])


_CURRENT: ContextVar[Segments | None] = ContextVar("mha_segments", default=None)


@contextmanager
def packed(segments: Segments | None) -> Iterator[None]:
    """Make `segments` the current pack for the duration (None: no pack, the one-text path)."""
    token = _CURRENT.set(segments)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current(n_seq: int) -> Segments | None:
    """The current pack when it covers a sequence of `n_seq` tokens (None otherwise: one text)."""
    seg = _CURRENT.get()
    return seg if seg is not None and seg.n_seq == n_seq else None


def positions(n_seq: int) -> np.ndarray | slice:
    """What indexes a learned position table for a sequence of n_seq tokens: each token's position in its text.

    A slice 0..n_seq-1 outside a pack (the one-text path, as before)."""
    seg = current(n_seq)
    return slice(0, n_seq) if seg is None else seg.positions
