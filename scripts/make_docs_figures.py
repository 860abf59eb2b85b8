"""Regenerate the pictures the README shows, from the bundled sample model (deterministic: same bytes each run).

.venv/bin/python scripts/make_docs_figures.py        # writes docs/inspect.png and docs/stats.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from mhacli.cli import run

DOCS = Path(__file__).resolve().parent.parent / "docs"
TEXT = "The cat sat on the mat. The cat sat on the mat."


def main() -> int:
    DOCS.mkdir(exist_ok=True)
    runs = [
        ["inspect", TEXT, "-m", "sample", "--save", str(DOCS / "inspect.png"), "--dpi", "150", "-f", "json"],
        ["stats", TEXT, "-m", "sample", "--save", str(DOCS / "stats.png"), "--dpi", "150", "-f", "json"],
    ]
    for argv in runs:
        code = run(argv)  # stdout: the JSON document, not needed here
        if code != 0:
            return code
    for name in ("inspect.png", "stats.png"):
        print(f"wrote {DOCS / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
