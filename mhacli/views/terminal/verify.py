"""`mha verify` on a terminal: each layer's errors, the verdict in colour."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Group
from rich.text import Text


def verify_view(lines: Sequence[str], passed: bool) -> Group:
    """Each line as it is, a failing layer in red, the verdict (the last line) bold green or bold red."""
    shown = [Text(line, style="red" if line.endswith("FAIL") else "") for line in lines[:-1]]
    return Group(*shown, Text(lines[-1], style="bold green" if passed else "bold red"))
