"""Packed forwards: several texts concatenated into one sequence, each attending only to itself.

A `Segments` says where each text of a pack starts; `packed(segments)` makes it the current one while the forward runs
a block or the embedding, and the shared helpers read it: the attention kernel (mhacli.engine.attention) hides keys
before the query's text start, the rotary tables (mhacli.engine.arch.rope) and learned position embeddings restart
at 0 at every text. With no current segments (the default) every helper runs its one-text path, unchanged.

A family built on those helpers (grouped_attention or causal_attention with keep_scores=False, rope_tables) needs
nothing; one with learned positions reads `positions(n_seq)` instead of 0..n_seq-1. Nothing of ours is imported.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Segments:
    """Texts of lengths `lengths` laid end to end: text t holds tokens bounds[t][0]..bounds[t][1]-1 of the pack."""

    lengths: tuple[int, ...]
    starts: np.ndarray = field(init=False, repr=False)  # [n_seq] each token's text start in the pack
    positions: np.ndarray = field(init=False, repr=False)  # [n_seq] each token's position in its own text

    def __post_init__(self) -> None:
        if any(n < 1 for n in self.lengths):
            raise ValueError(f"every text of a pack has at least one token, got lengths {self.lengths}")
        firsts = np.cumsum((0, *self.lengths[:-1]), dtype=np.int64)
        starts = np.repeat(firsts, self.lengths)
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
