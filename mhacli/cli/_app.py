"""The Typer app every command registers on.

Command modules import it from here, and mhacli.cli imports the command modules: imports run one way only.
"""

from __future__ import annotations

from typing import Annotated

import typer


def examples(*lines: str) -> str:
    """A command's --help epilog: one real command per line, each runnable offline on the bundled models.

    `\b` stops click (plain help) and typer's rich help from rewrapping the paragraph. tests/test_help.py runs every
    one.
    """
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


app = typer.Typer(
    name="mha",
    help="Look inside multi-head attention: per-head maps, statistics, head kinds, diffs and an HF parity check.",
    add_completion=True,  # --install-completion / --show-completion (typer's, through shellingham)
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=examples(
        'mha stats "The cat sat on the mat. The cat sat on the mat."',
        'mha inspect "The cat sat on the mat." -l 0 -H 3',
        "mha info -m sample-early",
    )
    + "\n\nEvery command's --help has its own examples: mha inspect --help",
)


def _flags_show_no_type() -> None:
    """Show no type column for a flag in typer's rich help, as click's plain help does.

    Typer's rich help shows a flag's Python type (`--full <bool>`), which reads as if the flag took a value
    (`--full true`). A flag takes none.
    """
    try:
        from typer.core import TyperOption
    except ImportError:  # pragma: no cover - another typer layout: its own rendering
        return
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_mha_flags", False):  # pragma: no cover
        return

    def display_type_rich(self, ctx):  # noqa: ANN001, ANN202 - typer's signature
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich._mha_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_type()


def version_text() -> str:
    """`mha --version`.

    The package, the Python and NumPy it runs on, and the architectures (config.json model_type) the forward
    supports, read from the registry (mhacli.config.ARCHITECTURES).
    """
    import platform

    import numpy

    from mhacli import __version__
    from mhacli.ops.info import architectures

    archs = ", ".join(architectures())
    return (
        f"mha {__version__}\n"
        f"python {platform.python_version()}, numpy {numpy.__version__}\n"
        f"architectures (model_type): {archs}\n"
    )


def _print_version(value: bool) -> None:
    if value:
        print(version_text(), end="")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print mha's version, its Python and NumPy versions and the supported architectures, and exit.",
        ),
    ] = False,
) -> None:
    pass
