"""The figure's panels show the heads their titles name: read back from the SVG, pixel by pixel.

`--save FILE.svg` writes the same matplotlib figure as `.png` and `.pdf`, with each panel's map embedded as an
image inside its own axes group and the titles kept as text. Each panel's pixels are mapped back through the
colour map (viridis, 0-1) to weights and compared with the `-f json` map of the head its title names (issue 37
item 7): panels in the wrong order, a transposed map or a wrong colour scale fail here. The `stats` grid is read
back from its PNG the same way, cell by cell.
"""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from helpers import parse_json

pytest.importorskip("matplotlib", reason="the plot extra draws figures")

TEXT = "When Mary and John went to the store, John gave a drink to"
SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}href"
TOL = 2.5 / 255  # the colour map's 256 levels, and the nearest-colour inversion


def panels(svg: bytes) -> dict[str, np.ndarray]:
    """Head name (L1H2) -> its panel's RGBA pixels, for every axes group holding an image and a head title."""
    import matplotlib.image

    found = {}
    for group in ET.fromstring(svg).iter(f"{SVG}g"):
        if not group.get("id", "").startswith("axes_"):
            continue
        images = list(group.iter(f"{SVG}image"))
        names = [m.group(0) for t in group.iter(f"{SVG}text") if (m := re.match(r"L\d+H\d+", "".join(t.itertext())))]
        if len(images) == 1 and len(names) == 1:
            data = images[0].get(XLINK).split(",", 1)[1]
            pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png")
            flipped = "scale(1 -1)" in (images[0].get("transform") or "")  # matplotlib stores it bottom row first
            found[names[0]] = pixels[::-1] if flipped else pixels
    return found


def weights_from_pixels(rgba: np.ndarray, n: int) -> np.ndarray:
    """[n, n] weights read at each cell's centre through viridis (NaN where the pixel is the masked white)."""
    import matplotlib

    lut = matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3]
    h, w = rgba.shape[:2]
    out = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(n):
            pixel = rgba[int((i + 0.5) * h / n), int((j + 0.5) * w / n), :3]
            if np.all(pixel > 0.98):  # white: a masked key
                continue
            out[i, j] = np.argmin(((lut - pixel) ** 2).sum(axis=1)) / 255
    return out


def test_each_panel_shows_the_head_its_title_names(mha, tmp_path):
    figure = tmp_path / "heads.svg"
    result = mha("inspect", TEXT, "--save", str(figure), "-f", "json")
    assert result.returncode == 0, result.stderr
    doc = parse_json(result.stdout)
    shown = panels(figure.read_bytes())
    assert sorted(shown) == sorted(f"L{h['layer']}H{h['head']}" for h in doc["heads"])
    n = len(doc["tokens"])
    for head in doc["heads"]:
        name = f"L{head['layer']}H{head['head']}"
        got = weights_from_pixels(shown[name], n)
        want = np.full((n, n), np.nan)
        for i, row in enumerate(head["attention"]):
            want[i, : len(row)] = row
        assert np.array_equal(np.isnan(got), np.isnan(want)), f"{name}: the masked cells are not the upper triangle"
        err = float(np.nanmax(np.abs(got - want)))
        assert err <= TOL, f"{name}: its panel's colours differ from its weights by {err:.3f}"


def grid_cells(png: bytes, n_layer: int, n_head: int) -> np.ndarray:
    """[n_layer, n_head] values read back from a saved layer x head grid PNG through viridis (0-1).

    The grid and its colour bar are the only viridis-coloured regions: the leftmost run of columns holding such
    pixels is the grid, its rows the grid's height. Each cell is read near its top-left corner (the kind letter and
    the number sit in its centre), as the median of a small patch.
    """
    import matplotlib
    import matplotlib.image

    rgb = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    lut = matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3]
    near = np.min(((rgb[:, :, None, :] - lut[None, None]) ** 2).sum(-1), axis=-1) < 0.02**2
    columns = np.flatnonzero(near.sum(axis=0) > 10)
    x0 = columns[0]
    x1 = x0
    while x1 + 1 < near.shape[1] and near[:, x1 + 1].sum() > 10:
        x1 += 1
    rows = np.flatnonzero(near[:, x0 : x1 + 1].any(axis=1))
    y0, y1 = rows[0], rows[-1]
    w, h = (x1 - x0 + 1) / n_head, (y1 - y0 + 1) / n_layer
    out = np.empty((n_layer, n_head))
    for layer in range(n_layer):
        for head in range(n_head):
            top, left = int(y0 + layer * h), int(x0 + head * w)
            patch = rgb[top + int(0.06 * h) : top + int(0.18 * h), left + int(0.06 * w) : left + int(0.18 * w)]
            pixel = np.median(patch.reshape(-1, 3), axis=0)
            out[layer, head] = np.argmin(((lut - pixel) ** 2).sum(axis=1)) / 255
    return out


@pytest.mark.parametrize("stat", ["first_token", "max_weight", "previous_token"])
def test_each_stats_grid_cell_shows_the_head_it_stands_for(mha, tmp_path, stat):
    """Cell (L, H) of `stats --save x.png` has the colour of head (L, H)'s statistic in the json (issue 37 item 7).

    Heads in the wrong order, a transposed grid or a wrong colour scale fail: the heads' values differ by far more
    than the colour map's resolution.
    """
    figure = tmp_path / "grid.png"
    result = mha("stats", TEXT, "--stat", stat, "--save", str(figure), "-f", "json")
    assert result.returncode == 0, result.stderr
    doc = parse_json(result.stdout)
    n_layer, n_head = doc["model"]["n_layer"], doc["model"]["n_head"]
    want = np.full((n_layer, n_head), np.nan)
    for head in doc["heads"]:
        want[head["layer"], head["head"]] = head["stats"][stat]
    assert not np.isnan(want).any()
    assert np.ptp(want) > 10 * TOL, "the heads must differ for the test to tell them apart"
    got = grid_cells(figure.read_bytes(), n_layer, n_head)
    err = float(np.max(np.abs(got - want)))
    assert err <= TOL, f"the grid's colours differ from the heads' {stat} by {err:.3f}:\n{got}\n{want}"
