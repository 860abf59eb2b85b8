"""The Typer app every command registers on. Command modules import it from here, and mhacli.cli imports the
command modules: imports run one way only."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    name="mha",
    help="Look inside multi-head attention: per-head maps, statistics, head kinds, diffs and an HF parity check.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from mhacli import __version__

        print(f"mha {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print mha's version and exit.")
    ] = False,
) -> None:
    pass
