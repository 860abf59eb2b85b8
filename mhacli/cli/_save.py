"""The `--save FILE` (repeatable) and `--dpi N` options every command that shows heads shares (mhacli.views.save)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mhacli.views.save import DEFAULT_DPI, Pictures


def save_option(pictures: Pictures) -> object:
    """The --save option of a command whose result declares `pictures` (its PICTURES): what it writes."""
    kinds = ", ".join(f".{k}" for k in pictures.kinds)
    return typer.Option(
        "--save",
        metavar="FILE",
        help=f"Also write FILE, its kind chosen by suffix: {kinds} (repeatable; .html: one offline interactive page).",
    )


DpiOpt = Annotated[int, typer.Option("--dpi", metavar="N", help="Resolution of --save FILE.png (dots per inch).")]
SaveList = list[Path] | None
DEFAULT = DEFAULT_DPI
