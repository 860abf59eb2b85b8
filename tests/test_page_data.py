"""The HTML page's embedded data, decoded here, equals what `-f json` says of the same run.

The page (`--save FILE.html`) carries every head's map as round(255 w) bytes of its lower triangle, deflated and
base64-encoded, and a max-pooled thumbnail (mhacli/views/page.py). A page whose heads came in another order, or
were quantised or pooled wrongly, would look plausible in a browser; decoded with zlib and compared with the json
of the same command, it cannot (issue 37 item 7).
"""

from __future__ import annotations

import base64
import html.parser
import json
import zlib

import numpy as np
import pytest
from helpers import parse_json

TEXT = "When Mary and John went to the store, John gave a drink to"
HALF_LEVEL = 0.5 / 255 + 1e-6  # the stated quantisation: round(255 w)


class DataBlock(html.parser.HTMLParser):
    """The text of <script id="mha-data">."""

    def __init__(self) -> None:
        super().__init__()
        self.inside, self.text = False, ""

    def handle_starttag(self, tag, attrs):
        self.inside = tag == "script" and dict(attrs).get("id") == "mha-data"

    def handle_endtag(self, tag):
        self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.text += data


def page_data(path) -> dict:
    parser = DataBlock()
    parser.feed(path.read_text(encoding="utf-8"))
    return json.loads(parser.text)


def triangle(encoded: str, n: int) -> np.ndarray:
    """base64 -> deflated bytes -> the lower triangle, row by row, as an [n, n] array of levels (upper: 0)."""
    raw = np.frombuffer(zlib.decompress(base64.b64decode(encoded)), dtype=np.uint8)
    assert raw.size == n * (n + 1) // 2
    out = np.zeros((n, n), dtype=np.uint8)
    out[np.tril_indices(n)] = raw
    return out


def pooled(levels: np.ndarray, side: int) -> np.ndarray:
    """The thumbnail's definition: the largest level of each of side x side blocks (block starts floor(k n / side))."""
    n = len(levels)
    starts = [k * n // side for k in range(side)] + [n]
    return np.array(
        [[levels[starts[r] : starts[r + 1], starts[c] : starts[c + 1]].max() for c in range(side)] for r in range(side)]
    )


@pytest.mark.parametrize("args", [["-l", "1"], []], ids=["one-layer", "every-head"])
def test_page_maps_and_order_equal_the_json(mha, tmp_path, args):
    page = tmp_path / "heads.html"
    result = mha("inspect", TEXT, *args, "--save", str(page), "-f", "json")
    assert result.returncode == 0, result.stderr
    doc = parse_json(result.stdout)
    data = page_data(page)
    n = len(doc["tokens"])
    assert data["tokens"] == doc["tokens"]
    assert [(c["layer"], c["head"]) for c in data["cells"]] == [(h["layer"], h["head"]) for h in doc["heads"]]
    assert [c["name"] for c in data["cells"]] == [f"L{h['layer']}H{h['head']}" for h in doc["heads"]]
    assert len(data["maps"]["A"]) == len(data["thumbs"]) == len(doc["heads"])
    for k, head in enumerate(doc["heads"]):
        levels = triangle(data["maps"]["A"][k], n)
        want = np.zeros((n, n))
        for i, row in enumerate(head["attention"]):
            want[i, : len(row)] = row
        err = float(np.abs(levels / 255 - want).max())
        assert err <= HALF_LEVEL, f"L{head['layer']}H{head['head']}: page map off by {err:.4f}"
        side = data["thumb_size"]
        thumb = np.frombuffer(base64.b64decode(data["thumbs"][k]), dtype=np.uint8).reshape(side, side)
        assert np.array_equal(thumb, pooled(levels, side)), f"L{head['layer']}H{head['head']}: thumbnail"


def test_the_heads_differ_so_order_matters(mha):
    """The premise of the order check: no two heads of the bundled model have the same map on this text."""
    doc = parse_json(mha("inspect", TEXT, "-f", "json").stdout)
    keys = {round(sum(w * j for row in h["attention"] for j, w in enumerate(row)), 6) for h in doc["heads"]}
    assert len(keys) == len(doc["heads"])  # the attention-weighted key index of each head
