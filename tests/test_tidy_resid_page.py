"""The `patch --site resid` page names its grid: layers by positions, not heads (its columns are positions)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import Opened, run_mha

REPEAT = "a b c d e f g h a b c d e f g"
CHANGED = "h g f e d c b a a b c d e f g"
PATCH = ["patch", REPEAT, CHANGED, "--answer", " h", "--wrong", " f", "-f", "json"]


def heading(html: str) -> str:
    found = re.search(r'<section id="grid-box"><h2>(.*?)</h2>', html)
    assert found, "no grid heading"
    return found.group(1)


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("resid-page")
    made = {}
    for site in ("resid", "z"):
        made[site] = folder / f"{site}.html"
        out = run_mha(*PATCH, "--site", site, "--save", str(made[site]))
        assert out.returncode == 0, out.stderr
    return made


def test_the_resid_grid_is_headed_layer_by_position(pages):
    resid = heading(pages["resid"].read_text())
    assert "position" in resid and "head" not in resid, resid
    assert "layer × head" in heading(pages["z"].read_text())  # the heads' page keeps its heading


def test_the_resid_grid_corner_names_positions_in_a_browser(browser, pages):
    o = Opened(browser, pages["resid"])
    o.check_clean()
    assert o.page.inner_text("#grid .corner") == "L\\pos"
    assert "position" in o.page.inner_text("#grid-box h2")
    z = Opened(browser, pages["z"])
    assert z.page.inner_text("#grid .corner") == "L\\H"
