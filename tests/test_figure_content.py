"""The figure's panels show the heads their titles name: read back from the SVG, pixel by pixel.

`--save FILE.svg` writes the same matplotlib figure as `.png` and `.pdf`, with each panel's map embedded as an
image inside its own axes group and the titles kept as text. Each panel's pixels are mapped back through the
colour map (viridis, 0-1) to weights and compared with the `-f json` map of the head its title names (issue 37
item 7): panels in the wrong order, a transposed map or a wrong colour scale fail here.
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
