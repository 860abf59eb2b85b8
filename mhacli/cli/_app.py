"""The Typer app every command registers on.

Command modules import it from here, and mhacli.cli imports the command modules: imports run one way only.
"""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperGroup

# `mha --help` lists the commands in the groups a user thinks in, in this order (each command names its group with
# `rich_help_panel=` on its @app.command); within a group, in ORDER, then any other command as registered.
PANELS = ("Looking", "Comparing", "Causes", "The model", "Weights")
ORDER = ("inspect", "stats", "explain", "browse", "diff", "ablate", "prune", "attribute", "lens", "patch", "info",
         "verify", "census", "circuits")  # fmt: skip


class _GroupedCommands(TyperGroup):
    """The app's group.

    commands listed by PANELS then ORDER, in the rich help (typer draws one panel per group) and in the plain help
    (click would print one flat "Commands:" list: here one section per group).
    """

    def list_commands(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        def rank(name: str) -> tuple[int, int]:
            panel = getattr(self.commands[name], "rich_help_panel", None)
            return (
                PANELS.index(panel) if panel in PANELS else len(PANELS),
                ORDER.index(name) if name in ORDER else len(ORDER),
            )

        return sorted(super().list_commands(ctx), key=rank)  # stable: registration order breaks ties

    def format_commands(self, ctx, formatter) -> None:  # noqa: ANN001 - click's signature
        commands = [(n, c) for n in self.list_commands(ctx) if (c := self.get_command(ctx, n)) and not c.hidden]
        if not commands:
            return
        width = max(len(name) for name, _ in commands)
        limit = formatter.width - 6 - width
        sections: dict[str, list[tuple[str, str]]] = {}
        for name, cmd in commands:  # names padded alike: the summaries line up across the sections
            panel = getattr(cmd, "rich_help_panel", None) or "Commands"
            sections.setdefault(panel, []).append((name.ljust(width), cmd.get_short_help_str(limit)))
        for panel, rows in sections.items():
            with formatter.section(panel):
                formatter.write_dl(rows)


def examples(*lines: str) -> str:
    """A command's --help epilog: one real command per line, each runnable offline on the bundled models.

    `\b` stops click (plain help) and typer's rich help from rewrapping the paragraph. tests/test_help.py runs every
    one.
    """
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


app = typer.Typer(
    name="mha",
    cls=_GroupedCommands,
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
