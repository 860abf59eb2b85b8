"""Plain text views (the default when stdout is not a terminal): aligned, no colour, no ANSI, no box drawing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

import numpy as np

from mhacli.display import token_label
from mhacli.heads import HeadView
from mhacli.output import CSV_COLUMNS, format_cell, stats_row


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def head_line(view: HeadView) -> str:
    s = view.stats
    stats = "  ".join(f"{k}={fmt(v)}" for k, v in s.values.items())
    return f"layer {s.layer} head {s.head}  kind={s.kind}  {stats}"


def write_inspect(
    out: TextIO, views: Sequence[HeadView], tokens: Sequence[str], *, query: int | None = None, top: int | None = None
) -> None:
    labels = [token_label(t, 12) for t in tokens]
    out.write("tokens: " + " ".join(f"{i}:{t}" for i, t in enumerate(labels)) + "\n")
    for view in views:
        out.write("\n" + head_line(view) + "\n")
        attn = view.attention
        if query is not None:
            for j in range(query + 1):
                out.write(f"{j:>5} {labels[j]:<12} {attn[query, j]:.4f}\n")
        elif top is not None:
            for i in range(attn.shape[0]):
                best = np.argsort(attn[i, : i + 1])[::-1][:top]
                keys = ", ".join(f"{j}:{labels[j]} {attn[i, j]:.3f}" for j in best)
                out.write(f"{i:>5} {labels[i]:<12} -> {keys}\n")
        else:
            n = attn.shape[0]
            out.write(" " * 19 + "".join(f"{j:>6}" for j in range(n)) + "\n")
            for i in range(n):
                cells = "".join(f"{attn[i, j]:6.2f}" if j <= i else "      " for j in range(n))
                out.write(f"{i:>5} {labels[i]:<12} {cells.rstrip()}\n")


def write_stats(out: TextIO, views: Sequence[HeadView]) -> None:
    rows = [[format_cell(c) or "-" for c in stats_row(v)] for v in views]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(CSV_COLUMNS)]
    out.write("  ".join(h.ljust(w) for h, w in zip(CSV_COLUMNS, widths)).rstrip() + "\n")
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
