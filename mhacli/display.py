"""Shared helpers for the human views (rich and plain): token labels and windows. No rich import here."""

from __future__ import annotations

VISIBLE = {" ": "·", "\n": "↵", "\t": "→", "\r": "␍"}


def token_label(token: str, width: int = 10) -> str:
    """A token made visible (spaces as ·, newlines as ↵) and abbreviated to `width` characters."""
    shown = "".join(VISIBLE.get(ch, ch if ch.isprintable() else "�") for ch in token) or "∅"
    if len(shown) > width:
        shown = shown[: width - 1] + "…"
    return shown


def window(n_seq: int, start: int, size: int) -> tuple[int, int]:
    """Query rows [lo, hi) to show: `size` rows from `start`, clamped to the text."""
    size = max(1, size)
    lo = min(max(0, start), max(0, n_seq - 1))
    return lo, min(n_seq, lo + size)


def key_window(hi: int, size: int) -> tuple[int, int]:
    """Key columns [lo, hi) for query rows ending at `hi`: the `size` keys ending at the last shown query."""
    return max(0, hi - size), hi
