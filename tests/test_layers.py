"""The house is layered: mhacli's modules import downward only, with no cycle, imports inside functions included.

CLI -> API -> views -> analyses -> forward and I/O -> architecture families -> building blocks -> the I/O-free
core (errors, config). Every `import` and `from ... import` statement is read with `ast`, wherever it stands
(module level, inside a function, under `if TYPE_CHECKING:`), so a deferred import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mhacli"

# Layers, lowest first: the folders of mhacli/. A module may import modules of its own layer or below, never above;
# within a layer the graph must still be acyclic. A new module inherits its layer from its folder; the first
# matching prefix names it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("mhacli.errors", "mhacli.config")),
    ("engine", ("mhacli.engine",)),  # kernel, building blocks, forward, arch/ families
    ("io", ("mhacli.io",)),  # models, hub, safetensors, checkpoint (applies a family's key layout), tokenizer, text
    ("analyses", ("mhacli.analyses",)),
    ("views", ("mhacli.views",)),
    # the public objects (api_args: the types of their arguments), and the operations they and the commands run
    ("api", ("mhacli.api", "mhacli.api_args", "mhacli.ops")),
    ("package", ("mhacli",)),  # mhacli/__init__.py: the API's names, imported lazily
    ("doors", ("mhacli.cli", "mhacli.browse", "mhacli.__main__")),
]
# What each bottom module may import at all: the kernel, the statistics and partial-map sinks and the core import
# nothing of ours above them (the sinks are handed to the kernel, which never imports them).
ALLOWED = {
    "mhacli.errors": set(),
    "mhacli.engine.attention": {"mhacli.engine.segments"},
    "mhacli.engine.segments": set(),
    "mhacli.analyses.stats": set(),
    "mhacli.analyses.partial": set(),
    "mhacli.engine.blocks": {"mhacli.config"},
}


# The CLI stands on the API: a command parses options, calls the API (mhacli.api and its operations, mhacli.ops),
# picks a view and writes. So the CLI's modules import, of mhacli, only these (a name, or a package and its
# modules): never the analyses, the engine or io directly.
CLI_MODULES = ("mhacli.cli", "mhacli.__main__")
CLI_MAY_IMPORT = (
    "mhacli",  # the package itself: __version__
    "mhacli.api", "mhacli.ops",  # the API layer
    "mhacli.views",  # views and writers
    "mhacli.errors", "mhacli.io.files",  # the typed errors and exit codes; printable names
    "mhacli.cli",  # the CLI's own modules (_app, _common, _save; a shared option)
    "mhacli.browse",  # mha browse's Textual app, itself on the API
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every mhacli module `path` imports, anywhere in its body.

    A name imported from a package counts as the submodule when there is one, else as the package.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def layer_of(name: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS in tests/test_layers.py")


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_imports_inside_functions():
    """The check must count deferred imports: model.family once imported mhacli.engine.arch inside a function."""
    g = graph()
    assert "mhacli.engine.arch" in g["mhacli.engine.forward"]
    assert "mhacli.views.figures" in g["mhacli.views.save"]  # save imports figures inside a function only


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles among mhacli's modules: " + "; ".join(" <-> ".join(c) for c in found)


def test_every_import_goes_downward():
    upward = [
        f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
        for a, targets in sorted(graph().items())
        for b in sorted(targets)
        if layer_of(b) > layer_of(a)
    ]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_bottom_modules_import_nothing_above_them(name):
    assert graph()[name] <= ALLOWED[name], f"{name} imports {sorted(graph()[name] - ALLOWED[name])}"


# `mha browse` (mhacli.browse: the Textual app and its state; its panes are drawn by mhacli.views.terminal.browse)
# stands on the public API and the terminal views only: never the engine's modules (weights, model, stats, heads, ...)
# directly.
BROWSE_MAY_IMPORT = ("mhacli.api", "mhacli.errors", "mhacli.views.terminal", "mhacli.browse")


def test_browse_uses_only_the_api_and_the_drawing_primitives():
    g = graph()
    browse = [name for name in g if name == "mhacli.browse" or name.startswith("mhacli.browse.")]
    assert {"mhacli.browse.app", "mhacli.browse.state"} <= set(browse)
    for name in browse:
        bad = sorted(m for m in g[name] if not any(m == p or m.startswith(p + ".") for p in BROWSE_MAY_IMPORT))
        assert not bad, f"{name} imports {bad}: go through mhacli.api (or mhacli.views.terminal for drawing)"


def test_the_browse_command_imports_the_app_only_when_it_runs():
    """Textual is an extra: `mhacli.cli.browse` imports the app inside the command, never at module level."""
    import ast

    tree = ast.parse((PACKAGE / "cli" / "browse.py").read_text(encoding="utf-8"))
    top = {a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names}
    top |= {node.module or "" for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert not {m for m in top if m.startswith(("textual", "mhacli.browse"))}, top


def test_families_never_import_the_forward():
    g = graph()
    for name in g:
        if name.startswith("mhacli.engine.arch"):
            assert not {m for m in g[name] if layer_of(m) > layer_of("mhacli.engine.arch")}, name


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_cli_uses_only_the_api():
    """No command reaches into weights, model, stats, heads, ... : what a command needs comes through the API."""
    allowed = set(CLI_MAY_IMPORT) - {"mhacli"}
    reached = [
        f"{a} imports {b}"
        for a, targets in sorted(graph().items())
        if _within(a, CLI_MODULES)
        for b in sorted(targets)
        if not (b == "mhacli" or _within(b, tuple(allowed)))
    ]
    assert not reached, "the CLI reaches past the API:\n" + "\n".join(reached)


def test_the_cli_rule_is_checked_on_real_imports():
    g = graph()
    assert "mhacli.ops.census" in g["mhacli.cli.census"]
    assert "mhacli.ops.heads" in g["mhacli.cli.stats"]
