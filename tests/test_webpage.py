"""The `--save FILE.html` page in a real browser.

Headless Chromium (Debian's package, never downloaded) driven by Playwright. The page must load from file:// with no
console error and no network request at all, show every head, change the large map when a head is clicked, highlight a
row and the attended tokens on hover, search tokens, switch to log weights, keep hostile tokens as text, and open a 12 x
12 x 1,024-token page (timing: benchmarks/).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
from helpers import Opened, page_views_of

TEXT = "The cat sat on the mat. The cat sat on the mat."


@pytest.fixture(scope="module")
def inspect_html(tmp_path_factory) -> Path:
    from mhacli.cli import run

    out = tmp_path_factory.mktemp("page") / "heads.html"
    assert run(["inspect", TEXT, "--save", str(out), "-f", "json"]) == 0
    return out


def test_page_loads_offline_with_every_head(browser, inspect_html):
    o = Opened(browser, inspect_html)
    o.check_clean()
    assert o.page.locator("#grid .cell:not(.empty)").count() == 8  # 2 layers x 4 heads
    assert o.page.locator("#grid canvas.thumb").count() == 8
    assert o.page.locator("#strip .tok").count() == o.page.evaluate(
        "JSON.parse(document.getElementById('mha-data').textContent).tokens.length"
    )
    # a thumbnail is drawn, not blank
    ink = o.page.evaluate(
        "() => { const c = document.querySelector('canvas.thumb'); "
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " return new Set(Array.from(d)).size; }"
    )
    assert ink > 5
    html = inspect_html.read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html, "no address to fetch"


def test_clicking_a_head_changes_the_large_map(browser, inspect_html):
    o = Opened(browser, inspect_html)
    first = o.page.evaluate("document.documentElement.dataset.head")
    before = o.map_pixels()
    other = o.page.locator("#grid .cell:not(.selected)").first
    name = other.get_attribute("title").split()[0]
    other.click()
    o.wait_until("(n) => document.documentElement.dataset.head === n", name)
    after = o.map_pixels()
    assert name != first
    assert len(before) == len(after) and before != after, "the large map shows the clicked head"
    assert o.page.inner_text("#head-title").startswith(name)
    o.check_clean()


def test_hovering_a_token_highlights_its_row_and_the_tokens_it_attends_to(browser, inspect_html):
    o = Opened(browser, inspect_html)
    assert o.overlay_ink() == 0
    o.page.hover("#strip .tok >> nth=11")
    assert o.page.evaluate("document.documentElement.dataset.query") == "11"
    assert o.overlay_ink() > 0, "the row is outlined on the map"
    weights = o.page.evaluate(
        "Array.from(document.querySelectorAll('#strip .tok'))"
        ".map(s => s.dataset.w === undefined ? null : Number(s.dataset.w))"
    )
    assert all(w is not None for w in weights[:12]) and all(w is None for w in weights[12:]), "keys 0..11 are weighed"
    assert sum(weights[:12]) == pytest.approx(1.0, abs=12 / 255), "a query row's weights sum to 1"
    assert "query" in o.page.get_attribute("#strip .tok >> nth=11", "class")
    lit = o.page.evaluate(
        "Array.from(document.querySelectorAll('#strip .tok')).filter(s => s.style.backgroundColor).length"
    )
    assert lit >= 1
    # hovering the map picks the row under the mouse
    box = o.page.locator("#maps .stack").first.bounding_box()
    n = len(weights)
    o.page.mouse.move(box["x"] + 2, box["y"] + box["height"] * (4.5 / n))
    assert o.page.evaluate("document.documentElement.dataset.query") == "4"
    assert "query 4" in o.page.inner_text("#hover")
    o.check_clean()


def test_search_and_log_weights(browser, inspect_html):
    o = Opened(browser, inspect_html)
    tokens = o.page.evaluate("JSON.parse(document.getElementById('mha-data').textContent).tokens")
    o.page.fill("#search", "at")
    assert o.page.locator("#strip .tok.match").count() == sum("at" in t.lower() for t in tokens) > 0
    assert o.overlay_ink() > 0, "matching rows are marked on the map"
    before = o.map_pixels()
    o.page.check("#scale-log")
    o.wait_until("() => document.querySelector('.colourbar .what').textContent.includes('log')")
    assert o.map_pixels() != before
    o.check_clean()


def test_hostile_tokens_and_caption_stay_text(browser, tmp_path):
    from mhacli.views.page import inspect_page

    tokens = [
        "</script><script>window.pwned=1</script>",
        "<img src=x onerror=window.pwned=2>",
        "&amp;",
        "\u2028",
        '"',
        "'",
    ]
    views = page_views_of(1, 2, len(tokens))
    caption = "<b>model</b> </script> & \u2029"
    path = tmp_path / "hostile.html"
    path.write_text(inspect_page(views=views, tokens=tokens, caption=caption), encoding="utf-8")
    o = Opened(browser, path)
    o.check_clean()
    assert o.page.evaluate("window.pwned === undefined")
    assert o.page.inner_text("#caption").startswith("<b>model</b> </script> &")
    assert o.page.locator("#strip img").count() == 0
    assert o.page.evaluate("JSON.parse(document.getElementById('mha-data').textContent).tokens") == tokens


def test_diff_and_census_pages(browser, tmp_path):
    from mhacli.cli import run

    diff = tmp_path / "diff.html"
    assert run(["diff", "sample", "sample-early", TEXT, "--save", str(diff), "-f", "json"]) == 0
    o = Opened(browser, diff)
    o.check_clean()
    assert o.page.locator("#maps canvas.map").count() == 3, "A, B and B - A side by side"
    assert [t.strip() for t in o.page.locator("#maps figcaption").all_inner_texts()] == ["MODEL_A", "MODEL_B", "B − A"]
    assert o.map_pixels(0) != o.map_pixels(1)
    census = tmp_path / "census.html"
    assert run(["census", "--probe-count", "3", "-j", "1", "--save", str(census), "-f", "json"]) == 0
    o = Opened(browser, census)
    o.check_clean()
    assert o.page.locator("#grid .cell:not(.empty)").count() == 8
    o.page.locator("#grid .cell >> nth=3").click()
    assert "confidence" in o.page.inner_text("#info")


def test_a_1024_token_12_by_12_page_opens(browser, tmp_path):
    """Loads and becomes ready (timing is benchmarks/html_page.py's job, not a test's)."""
    from mhacli.views.page import inspect_page

    n = 1024
    views = page_views_of(12, 12, n)
    path = tmp_path / "big.html"
    path.write_text(
        inspect_page(views=views, tokens=[f" t{i}" for i in range(n)], caption="synthetic"), encoding="utf-8"
    )
    assert path.stat().st_size < 40e6
    o = Opened(browser, path)
    o.check_clean()
    assert o.page.locator("#grid canvas.thumb").count() == 144
    assert o.page.evaluate("document.querySelector('#maps canvas.map').width") == n
    o.page.locator("#grid .cell >> nth=100").click()
    o.wait_until("() => document.documentElement.dataset.head === 'L8H4'")
    o.check_clean()


DECODE_IN_PAGE = """async () => {
  const data = JSON.parse(document.getElementById('mha-data').textContent);
  const out = [];
  for (const s of data.maps.A) {
    const bin = atob(s);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'));
    out.push(Array.from(new Uint8Array(await new Response(stream).arrayBuffer())));
  }
  return {levels: out, cells: Array.from(document.querySelectorAll('#grid .cell'), (c) => c.getAttribute('title'))};
}"""


def test_the_browser_decodes_the_json_heads_in_order(browser, tmp_path):
    """In Chromium, the page's data decodes to every head's lower triangle of `-f json`, heads in its order.

    Decoded with the browser's own DecompressionStream, within the stated quantisation (round(255 w)); the grid's
    cells name the heads in the json's order (issue 37 item 7).
    """
    from helpers import parse_json

    from mhacli.cli import run

    page = tmp_path / "heads.html"
    json_out = tmp_path / "heads.json"
    with open(json_out, "w", encoding="utf-8") as f, contextlib.redirect_stdout(f):
        assert run(["inspect", TEXT, "--save", str(page), "-f", "json"]) == 0
    doc = parse_json(json_out.read_bytes())
    o = Opened(browser, page)
    got = o.page.evaluate(DECODE_IN_PAGE)
    assert [t.split()[0] for t in got["cells"]] == [f"L{h['layer']}H{h['head']}" for h in doc["heads"]]
    for levels, head in zip(got["levels"], doc["heads"], strict=True):
        want = np.concatenate([np.asarray(r) for r in head["attention"]])
        err = float(np.abs(np.asarray(levels) / 255 - want).max())
        assert err <= 0.5 / 255 + 1e-6, f"L{head['layer']}H{head['head']}: decoded map off by {err:.4f}"
    o.check_clean()
