"""`mha verify` on a terminal: each layer's errors, the verdict in colour."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.text import Text


def render_verify(console: Console, lines: Sequence[str], passed: bool) -> None:
    for line in lines[:-1]:
        console.print(Text(line, style="red" if line.endswith("FAIL") else ""))
    console.print(Text(lines[-1], style="bold green" if passed else "bold red"))
