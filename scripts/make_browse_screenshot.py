"""The README's picture of `mha browse`.

The app run headless by Textual's pilot on the bundled model, the induction head selected and the query on the second '
mat', saved as SVG (Textual's screenshot) and turned into a PNG by Debian's chromium through Playwright (never a
downloaded browser: apt-get install chromium).

    .venv/bin/python scripts/make_browse_screenshot.py    # writes docs/browse.png (and docs/browse.svg with --svg)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

import mhacli
from mhacli.browse.app import BrowseApp
from mhacli.browse.state import Session

DOCS = Path(__file__).resolve().parent.parent / "docs"
TEXT = "The cat sat on the mat. The cat sat on the mat."
SIZE = (100, 28)
# down, right, right: L1H2, the induction head; Tab: the tokens; left, left: query 15, the second ' m' (of ' mat')
KEYS = ("down", "right", "right", "tab", "left", "left")


def chromium() -> str:
    for candidate in (os.environ.get("MHA_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit("no chromium: apt-get install chromium (or set MHA_CHROMIUM)")


async def screenshot_svg() -> str:
    app = BrowseApp(Session(mhacli.load("sample"), TEXT))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        for key in KEYS:
            await pilot.press(key)
        await pilot.pause()
        return app.export_screenshot(title="mha browse")


def svg_to_png(svg: str, png: Path) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        page_file = Path(tmp) / "browse.html"
        page_file.write_text(
            f"<!doctype html><html><body style='margin:0;background:#fff'>{svg}</body></html>", encoding="utf-8"
        )
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(device_scale_factor=1)
            page.goto(page_file.as_uri())
            page.locator("svg").first.screenshot(path=str(png))
            browser.close()


def main() -> int:
    DOCS.mkdir(exist_ok=True)
    svg = asyncio.run(screenshot_svg())
    if "--svg" in sys.argv[1:]:
        (DOCS / "browse.svg").write_text(svg, encoding="utf-8")
    svg_to_png(svg, DOCS / "browse.png")
    print(f"wrote {DOCS / 'browse.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
