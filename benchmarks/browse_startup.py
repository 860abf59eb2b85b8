"""`mha browse`'s start-up.

From a cold process to the app's first frame, headless (Textual's auto-pilot), at 80 x 24 on the bundled model, split
into imports, model + run + statistics, and the app to its first frame.

    .venv/bin/python benchmarks/browse_startup.py [RUNS]     # each run a fresh process; prints one line per run
"""

from __future__ import annotations

import subprocess
import sys
import time

CHILD = """
import time, sys
t0 = time.perf_counter()
from mhacli.cli.browse import DEFAULT_TEXT, textual_app
import mhacli
from mhacli.browse.state import Session
App = textual_app()
t1 = time.perf_counter()
session = Session(mhacli.load("sample"), DEFAULT_TEXT)
t2 = time.perf_counter()

async def first_frame(pilot):
    await pilot.pause()
    t3 = time.perf_counter()
    print(f"{t1 - t0:.3f} {t2 - t1:.3f} {t3 - t2:.3f}")
    pilot.app.exit(0)

App(session).run(headless=True, size=(80, 24), auto_pilot=first_frame)
"""


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print("run  process start to first frame  (imports + model, run, stats + app to first frame)")
    for k in range(runs):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout.split()
        imports, model, app = map(float, out[-3:])
        # the interpreter's own start-up is not in the child's figures: add it from the parent's clock
        total = imports + model + app
        print(
            f"{k + 1:>3}  {total:.2f} s in the process  ({imports:.2f} + {model:.2f} + {app:.2f}); "
            f"whole process incl. interpreter start and exit {time.perf_counter() - start:.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
