"""The tools that keep the house: ruff's format and lint, and mypy, all clean.

Configured in pyproject.toml and installed by the test extra, so the README's test command (what CI runs) stops
a change that breaks the format, the lint rules or the types. Locally, without the tools, these tests skip; under
CI they must run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed: the test extra installs it")
        pytest.skip(f"{name} is not installed (pip install '.[test]')")
    return found


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_format_is_clean():
    done = run(tool("ruff"), "format", "--check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_lint_is_clean():
    done = run(tool("ruff"), "check", ".")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr


def test_mypy_is_clean_on_the_package():
    done = run(tool("mypy"))  # pyproject's [tool.mypy]: the whole package
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr
