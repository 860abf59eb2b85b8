"""`--save FILE.png` with an unusable home: no warning lines from matplotlib about its config directory.

Tests may run as root, where a read-only directory is still writable: the home here lies under a regular file, which
nobody can make a directory in.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

TEXT = "The cat sat on the mat."
MPL_VARS = ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")


def said(got: subprocess.CompletedProcess) -> list[str]:
    """Its stderr lines, less matplotlib's notice that it builds its font cache (a fresh config directory, >5 s)."""
    return [line for line in got.stderr.decode().splitlines() if "building the font cache" not in line]


def save_png(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`mha inspect TEXT --save map.png` in a fresh interpreter, matplotlib's variables unset unless given."""
    full = {k: v for k, v in os.environ.items() if k not in ("MHA_MODEL", "MHA_DEBUG", *MPL_VARS)}
    full |= {"PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path / "tmp")} | env
    (tmp_path / "tmp").mkdir(exist_ok=True)
    png = tmp_path / "map.png"
    command = [sys.executable, "-m", "mhacli", "inspect", TEXT, "--save", str(png), "-f", "json"]
    return subprocess.run(command, capture_output=True, env=full, timeout=300), png


@pytest.fixture
def blocked_home(tmp_path) -> str:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    return str(blocker / "home")


def test_an_unusable_home_gives_no_warning_lines(tmp_path, blocked_home):
    pytest.importorskip("matplotlib")
    for run in (1, 2):
        got, png = save_png(tmp_path, HOME=blocked_home)
        assert got.returncode == 0, got.stderr
        assert said(got) == [], got.stderr
        assert png.read_bytes().startswith(b"\x89PNG")
        private = list((tmp_path / "tmp").iterdir())
        assert [p.name for p in private] == [f"mha-matplotlib-{os.getuid()}"], "one directory, kept for the next run"
        assert private[0].stat().st_mode & 0o777 == 0o700
        assert any(p.name.startswith("fontlist") for p in private[0].iterdir()), "matplotlib's font cache is kept"


def test_a_private_directory_someone_else_may_enter_is_not_used(tmp_path, blocked_home):
    pytest.importorskip("matplotlib")
    shared = tmp_path / "tmp" / f"mha-matplotlib-{os.getuid()}"
    shared.mkdir(parents=True)
    shared.chmod(0o777)
    got, png = save_png(tmp_path, HOME=blocked_home)
    assert got.returncode == 0, got.stderr
    assert said(got) == [], got.stderr
    assert list(shared.iterdir()) == [], "a directory others may write is not trusted"
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == [shared.name], "a fresh one is removed at exit"


def test_an_unusable_xdg_cache_alone_gives_no_warning_lines(tmp_path, blocked_home):
    pytest.importorskip("matplotlib")
    home = tmp_path / "home"
    home.mkdir()
    got, png = save_png(tmp_path, HOME=str(home), XDG_CACHE_HOME=blocked_home)
    assert got.returncode == 0, got.stderr
    assert said(got) == [], got.stderr
    assert (home / ".config" / "matplotlib").is_dir()  # the usable default is still matplotlib's own


def test_the_users_mplconfigdir_is_kept(tmp_path, blocked_home):
    pytest.importorskip("matplotlib")
    mine = tmp_path / "mine"
    mine.mkdir()
    got, _ = save_png(tmp_path, HOME=blocked_home, MPLCONFIGDIR=str(mine))
    assert got.returncode == 0, got.stderr
    assert said(got) == [], got.stderr
    found = sorted(p.name for p in mine.iterdir())
    assert any(name.startswith("fontlist") for name in found), (found, got.stderr)  # matplotlib caches its fonts there
