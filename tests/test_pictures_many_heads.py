"""Pictures at real-model scale (issue 36 item 10): SmolLM2-135M has 30 layers x 9 heads.

In Chromium, the page of a 30 x 9 model keeps the opened head's map in view while the grid scrolls, and its head
filter (every page, the census page included) hides the heads and rows that do not match; the static figure of
30 x 9 maps has one shared colour bar, no label under the stated minimum and pages within the stated cap
(docs/pictures-many-heads.md).
"""

from __future__ import annotations

import pytest
from helpers import Opened, page_views_of

N_LAYER, N_HEAD, N_TOK = 30, 9, 24


@pytest.fixture(scope="module")
def views():
    return page_views_of(N_LAYER, N_HEAD, N_TOK)


def tokens() -> list[str]:
    return [f" w{i}" for i in range(N_TOK)]


def in_viewport(o: Opened, selector: str) -> bool:
    box = o.page.locator(selector).first.bounding_box()
    vp = o.page.viewport_size
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= vp["height"] and box["height"] > 0


def test_the_opened_map_stays_in_view_while_the_grid_scrolls(browser, views, tmp_path):  # noqa: F811
    from mhacli.views.page import inspect_page

    path = tmp_path / "270.html"
    path.write_text(inspect_page(views=views, tokens=tokens(), caption="30 x 9"), encoding="utf-8")
    o = Opened(browser, path)
    o.check_clean()
    assert o.page.locator("#grid .cell:not(.empty)").count() == N_LAYER * N_HEAD
    last = o.page.locator("#grid .cell:not(.empty)").last
    last.scroll_into_view_if_needed()
    o.page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    assert o.page.evaluate("window.scrollY") > 500, "the grid is taller than the window"
    assert in_viewport(o, "#grid .cell:not(.empty) >> nth=-1"), "scrolled to the grid's end"
    assert in_viewport(o, "#maps canvas.map"), "the opened head's map is still in view"
    last.click()
    o.wait_until("() => document.documentElement.dataset.head === 'L29H8'")
    assert in_viewport(o, "#maps canvas.map")
    o.check_clean()


def visible_rows(o: Opened) -> int:
    return o.page.evaluate(
        "() => Array.from(document.querySelectorAll('#grid .rowhead')).filter((e) => e.offsetParent !== null).length"
    )


def visible_cells(o: Opened) -> int:
    return o.page.evaluate(
        """() => Array.from(document.querySelectorAll('#grid .cell:not(.empty)'))
                 .filter((e) => e.offsetParent !== null && getComputedStyle(e).visibility === 'visible').length"""
    )


def census_doc() -> dict:
    kinds = ["induction", "previous-token", "broad", "self"]
    heads = []
    for layer in range(N_LAYER):
        for head in range(N_HEAD):
            kind = kinds[(layer * N_HEAD + head) % 7 % 4]
            heads.append(
                {
                    "layer": layer, "head": head, "kind": kind, "confidence": 0.5,
                    "evidence": {"statistic": "x", "source": "probe", "mean": 0.5},
                    "by_source": {"probe": {"n_texts": 3, "mean": {"x": 0.5}}},
                }
            )  # fmt: skip
    return {"heads": heads}


def test_the_census_page_filter_hides_rows(browser, tmp_path):  # noqa: F811
    from mhacli.analyses.stats import KINDS
    from mhacli.views.page import census_page

    doc = census_doc()
    assert {h["kind"] for h in doc["heads"]} <= set(KINDS)
    path = tmp_path / "census.html"
    path.write_text(census_page(doc=doc, caption="30 x 9 census"), encoding="utf-8")
    o = Opened(browser, path)
    o.check_clean()
    assert visible_rows(o) == N_LAYER and visible_cells(o) == N_LAYER * N_HEAD
    assert not o.page.locator("#search").is_visible(), "no text: no token search that would do nothing"
    o.page.fill("#filter", "L7")
    assert visible_rows(o) == 1 and visible_cells(o) == N_HEAD
    o.page.fill("#filter", "L12H3")
    assert visible_rows(o) == 1 and visible_cells(o) == 1
    o.page.fill("#filter", "induction")
    want = sum(h["kind"] == "induction" for h in doc["heads"])
    assert visible_cells(o) == want
    assert visible_rows(o) == len({h["layer"] for h in doc["heads"] if h["kind"] == "induction"})
    assert f"{want} of {N_LAYER * N_HEAD}" in o.page.inner_text("#filter-count")
    o.page.fill("#filter", "H2 induction")
    assert visible_cells(o) == sum(h["kind"] == "induction" and h["head"] == 2 for h in doc["heads"])
    o.page.fill("#filter", "")
    assert visible_rows(o) == N_LAYER and visible_cells(o) == N_LAYER * N_HEAD
    o.check_clean()


def test_the_inspect_page_filter_and_token_search_both_work(browser, views, tmp_path):  # noqa: F811
    from mhacli.views.page import inspect_page

    path = tmp_path / "270.html"
    path.write_text(inspect_page(views=views, tokens=tokens(), caption="30 x 9"), encoding="utf-8")
    o = Opened(browser, path)
    o.page.fill("#filter", "L3 H4")
    assert visible_rows(o) == 1 and visible_cells(o) == 1
    o.page.fill("#search", "w1")
    assert o.page.locator("#strip .tok.match").count() == sum("w1" in t for t in tokens())
    o.check_clean()


# --- static figures -------------------------------------------------------------------------------------------------


def page_list(fig) -> list:
    return list(fig) if isinstance(fig, list) else [fig]


def texts_of(fig) -> list:
    from matplotlib.text import Text

    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def test_a_30_by_9_inspect_figure_pages_with_one_colour_bar_and_readable_labels(views):
    pytest.importorskip("matplotlib")
    import re

    from mhacli.views import figures

    with figures.style():
        fig = figures.inspect_figure(views=views, tokens=tokens(), caption="30 x 9")
    pages = page_list(fig)
    assert len(pages) > 1, "30 layers of maps do not fit one page: they page"
    shown = []
    for page in pages:
        w, h = page.get_size_inches()
        assert w <= figures.PAGE_IN[0] + 1e-9 and h <= figures.PAGE_IN[1] + 1e-9, (w, h)
        figures.to_bytes(page, "png", 60)  # drawn: constrained layout and ticks settled
        bars = [ax for ax in page.axes if ax.get_label() == "<colorbar>"]
        assert len(bars) == 1, "one colour bar a page, shared by every panel"
        small = [(t.get_text(), t.get_fontsize()) for t in texts_of(page) if t.get_fontsize() < figures.MIN_PT]
        assert small == [], small[:5]
        shown += [m.group(0) for ax in page.axes if (m := re.match(r"L\d+H\d+", ax.get_title()))]
    assert sorted(shown) == sorted(f"L{v.layer}H{v.head}" for v in views), "every head once, on some page"
    pdfs = []
    for _ in range(2):
        with figures.style():
            pdfs.append(
                figures.to_bytes(figures.inspect_figure(views=views, tokens=tokens(), caption="30 x 9"), "pdf", 60)
            )
    assert len(re.findall(rb"/Type /Page\b", pdfs[0])) == len(pages), "the PDF holds every page"
    assert pdfs[0] == pdfs[1], "the same bytes every run"
    png = figures.to_bytes(fig, "png", 60)
    import io

    import matplotlib.image

    h, w = matplotlib.image.imread(io.BytesIO(png), format="png").shape[:2]
    first = pages[0].get_size_inches() * 60
    assert abs(w - first[0]) <= 1 and abs(h - first[1]) <= 1, "a PNG holds the first page"
    assert len(figures.to_pages(fig, "png", 60)) == len(pages)
    assert "page 1 of" in " ".join(t.get_text() for t in texts_of(pages[0])), "and says so"
    figures.close(fig)


def test_a_small_grid_stays_one_page(views):
    pytest.importorskip("matplotlib")
    from mhacli.views import figures

    with figures.style():
        fig = figures.inspect_figure(views=views[: 2 * N_HEAD], tokens=tokens(), caption="2 x 9")
    assert not isinstance(fig, list)
    w, h = fig.get_size_inches()
    assert w <= figures.PAGE_IN[0] and h <= figures.PAGE_IN[1]
    figures.close(fig)


def test_a_30_by_9_stats_and_census_grid_fit_the_cap(views):
    pytest.importorskip("matplotlib")
    from mhacli.views import figures

    doc = {"model": {"n_layer": N_LAYER, "n_head": N_HEAD}, **census_doc()}
    with figures.style():
        made = [
            figures.stats_figure(views=views, n_layer=N_LAYER, n_head=N_HEAD, stat="auto", caption="30 x 9"),
            figures.census_figure(doc=doc, caption="30 x 9 census"),
        ]
    for fig in made:
        w, h = fig.get_size_inches()
        assert w <= figures.PAGE_IN[0] + 0.5 and h <= figures.PAGE_IN[1] + 0.5, (w, h)  # census: its legend
        figures.to_bytes(fig, "png", 60)
        assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) <= 1
        small = [(t.get_text(), t.get_fontsize()) for t in texts_of(fig) if t.get_fontsize() < figures.MIN_PT]
        assert small == [], small[:5]
        figures.close(fig)


def test_the_ablate_and_stats_page_filters_and_token_search(browser, views, tmp_path):  # noqa: F811
    from mhacli.views.page import ablate_page, stats_page

    heads = [
        {"layer": v.layer, "head": v.head, "kind": v.stats.kind, "delta": 0.01 * (v.head - 4), "delta_pct": 0.0,
         "loss": 3.0}
        for v in views
    ]  # fmt: skip
    doc = {"heads": heads, "baseline_loss": 3.0, "method": "zero"}
    pages = {
        "ablate.html": ablate_page(doc=doc, views=views, tokens=tokens(), caption="30 x 9 ablate"),
        "stats.html": stats_page(views=views, tokens=tokens(), caption="30 x 9 stats", stat="entropy"),
    }
    for name, text in pages.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        o = Opened(browser, path)
        o.check_clean()
        o.page.fill("#filter", "H8")
        assert visible_rows(o) == N_LAYER and visible_cells(o) == N_LAYER, name
        o.page.fill("#filter", "L29 H8")
        assert visible_rows(o) == 1 and visible_cells(o) == 1, name
        o.page.fill("#search", "w2")
        assert o.page.locator("#strip .tok.match").count() == sum("w2" in t for t in tokens()) > 0, name
        o.check_clean()
