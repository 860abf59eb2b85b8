"""`mha info` on a terminal: the config as a two-column table."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text


def info_table(lines: Sequence[tuple[str, str]]) -> Table:
    """The (key, value) lines as a borderless two-column table, keys in bold."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in lines:
        table.add_row(key, Text(value))  # Text: a file name like "[red]x" is not rich markup
    return table
