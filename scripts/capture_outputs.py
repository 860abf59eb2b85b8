"""Capture what every command prints, to prove a refactor changed no output.

Runs each command line below through the real entry point (`python -m mhacli`) on the bundled models, in every
format and at two terminal widths, and writes stdout, stderr and the exit code of each to a file in OUT_DIR.
Run it before and after a change and compare the two folders with `diff -r BEFORE AFTER`.

    python scripts/capture_outputs.py /tmp/before
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

TEXT = "When Mary and John went to the store, John gave a drink to"
REPEAT = "The cat sat on the mat. The cat sat on the mat."
FORMATS = ("rich", "text", "json", "jsonl", "csv", "tsv")

# name, arguments (the formats are added for each line that ends in a format-dependent command)
LINES: list[tuple[str, list[str]]] = [
    ("inspect", ["inspect", TEXT]),
    ("inspect-one", ["inspect", TEXT, "-l", "1", "-H", "2"]),
    ("inspect-query", ["inspect", TEXT, "-l", "0", "--query", "5"]),
    ("inspect-top", ["inspect", TEXT, "--top", "3"]),
    ("inspect-keys", ["inspect", TEXT, "-l", "1", "--keys", "2:10"]),
    ("inspect-ablate", ["inspect", TEXT, "--ablate", "0.1"]),
    ("stats", ["stats", REPEAT]),
    ("stats-entropy", ["stats", REPEAT, "--stat", "entropy"]),
    ("stats-ablate", ["stats", REPEAT, "--ablate", "1.2"]),
    ("explain", ["explain", TEXT, "--layer", "1", "--head", "2", "--query", "5"]),
    ("diff", ["diff", "sample", "sample-early", REPEAT]),
    ("diff-ablate", ["diff", "sample", "sample", REPEAT, "--ablate", "0.1"]),
    ("ablate", ["ablate", REPEAT]),
    ("prune", ["prune", REPEAT]),
    ("census", ["census", "--probe-count", "2"]),
    ("info", ["info"]),
    ("info-early", ["info", "-m", "sample-early"]),
    ("verify", ["verify", REPEAT]),
    ("attribute", ["attribute", REPEAT, "--wrong", " the"]),
    ("lens", ["lens", TEXT, "--top", "3"]),
]
ONE_FORMAT: list[tuple[str, list[str]]] = [
    ("help", ["--help"]),
    *[(f"help-{c}", [c, "--help"]) for c in
      ("inspect", "stats", "explain", "diff", "ablate", "prune", "census", "info", "verify", "browse", "attribute",
       "lens")],
    ("version", ["--version"]),
    ("error-empty", ["stats", ""]),
    ("error-model", ["stats", "x", "-m", "/nonexistent"]),
    ("error-layer", ["inspect", "x", "-l", "9"]),
    ("error-format", ["stats", "x", "-f", "yaml"]),
]  # fmt: skip


def run(args: list[str], columns: int, out: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MHA_MODEL", "MHA_DEBUG", "NO_COLOR", "FORCE_COLOR")}
    env.update(COLUMNS=str(columns), LINES="50", MHA_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "mhacli", *args], capture_output=True, env=env, input=b"")
    out.write_bytes(done.stdout + b"\n--- stderr\n" + done.stderr + f"\n--- exit {done.returncode}\n".encode())


def main(out_dir: str) -> None:
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        for name, args in LINES:
            for fmt in FORMATS:
                for columns in (80, 160) if fmt in ("rich", "text") else (80,):
                    run([*args, "-f", fmt], columns, root / f"{name}.{fmt}.{columns}")
        for name, args in ONE_FORMAT:
            for columns in (80, 160):
                run(args, columns, root / f"{name}.{columns}")


if __name__ == "__main__":
    main(sys.argv[1])
