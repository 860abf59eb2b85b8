"""The HTML page at scale.

A 12-layer x 12-head page of a 1,024-token text (synthetic causal maps, no model), its size, and the time headless
Chromium takes to make it ready (the grid's 144 thumbnails drawn and the first head's 1,024 x 1,024 map decoded and
drawn). Needs playwright and Debian's chromium (/usr/bin/chromium, or $MHA_CHROMIUM).

    .venv/bin/python benchmarks/html_page.py [--tokens 1024] [--layers 12] [--heads 12] [--out page.html]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mhacli.analyses.heads import HeadView
from mhacli.analyses.stats import layer_stats
from mhacli.views.page import inspect_page


def synthetic_views(n_layer: int, n_head: int, n_seq: int, seed: int = 0) -> tuple[list[HeadView], list[str]]:
    """Random causal maps, sharpened like trained heads (a few keys per row carry most of the weight)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 500, size=n_seq)
    tokens = [f" w{i}" for i in ids]
    mask = np.tril(np.ones((n_seq, n_seq), dtype=bool))
    views = []
    for layer in range(n_layer):
        logits = rng.normal(0.0, 3.0, size=(n_head, n_seq, n_seq)).astype(np.float32)
        logits = np.where(mask, logits, -np.inf)
        attn = np.exp(logits - logits.max(axis=-1, keepdims=True))
        attn = (attn / attn.sum(axis=-1, keepdims=True)).astype(np.float32)
        views += [HeadView(s, attn[s.head]) for s in layer_stats(layer, attn, ids)]
    return views, tokens


def time_in_chromium(path: Path, runs: int = 3) -> list[float]:
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    chromium = os.environ.get("MHA_CHROMIUM", "/usr/bin/chromium")
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for _ in range(runs):
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(path.resolve().as_uri())
            page.wait_for_function("document.documentElement.dataset.ready", timeout=120_000)
            times.append(page.evaluate("window.mhaReadyMs") / 1000)
            page.close()
        browser.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    t = time.perf_counter()
    views, tokens = synthetic_views(args.layers, args.heads, args.tokens)
    t_views = time.perf_counter() - t
    t = time.perf_counter()
    page = inspect_page(
        views=views, tokens=tokens, caption=f"synthetic {args.layers}x{args.heads}, {args.tokens} tokens"
    )
    t_build = time.perf_counter() - t
    out = args.out or Path(tempfile.mkdtemp()) / "page.html"
    out.write_text(page, encoding="utf-8")
    size = out.stat().st_size
    print(f"page: {args.layers} layers x {args.heads} heads x {args.tokens} tokens -> {out}")
    print(f"size: {size / 1e6:.1f} MB ({size:,} bytes); maps built in {t_views:.1f} s, page written in {t_build:.1f} s")
    try:
        times = time_in_chromium(out)
    except Exception as exc:  # noqa: BLE001 - no browser here: report the size only
        print(f"browser timing skipped: {type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return
    print("ready in chromium (s, performance.now at the ready flag): " + ", ".join(f"{x:.2f}" for x in times))


if __name__ == "__main__":
    main()
