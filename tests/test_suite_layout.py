"""The test suite's own layout: no test file imports another test file or conftest.

A test file imports what it shares from tests/helpers.py (plain functions and constants) and gets fixtures from
conftest.py by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` statement names, at any depth (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom):  # from . import test_x, from .test_x import y
            found |= {f".{node.module or alias.name}" for alias in node.names}
    return found


def forbidden(module: str) -> bool:
    last = module.lstrip(".").split(".")[-1] if module.startswith(".") else module.removeprefix("tests.")
    return last == "conftest" or last.startswith("test_")


def test_no_test_file_imports_another_test_file_or_conftest():
    offenders = [
        f"{path.name}: {module}"
        for path in sorted(TESTS.glob("test_*.py"))
        for module in sorted(imported_modules(path))
        if forbidden(module)
    ]
    assert not offenders, "import shared helpers from tests/helpers.py instead:\n" + "\n".join(offenders)


def test_the_check_sees_every_spelling(tmp_path):
    source = (
        "import test_a\nfrom test_b import x\nfrom tests.test_c import y\nfrom conftest import z\n"
        "def f():\n    from test_d import w\n"
        "from helpers import ok\nimport numpy\n"
    )
    (tmp_path / "test_sample.py").write_text(source, encoding="utf-8")
    found = {m for m in imported_modules(tmp_path / "test_sample.py") if forbidden(m)}
    assert found == {"test_a", "test_b", "tests.test_c", "conftest", "test_d"}
