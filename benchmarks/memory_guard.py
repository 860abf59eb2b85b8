"""The memory guard's estimate against a real run's peak RSS: one command, a ratio per request.

    python benchmarks/memory_guard.py [--out DIR]

Builds a random 2-layer, 8-head GPT-2 (n_embd 128) with transformers, then, in a fresh child process per request,
measures how far the peak RSS rises above the resident size just before the request (weights read, code warm) and
prints it beside the guard's estimate (mhacli.analyses.heads.memory_needed) for the same request: `stats` at 6,000
tokens (streamed: linear in n_seq) and `inspect -l 0` at 1,500 tokens (one layer's maps kept: quadratic). The
model of the guard was fitted to these measurements; a ratio far from 1 means the code's working set moved and the
constants in mhacli/analyses/heads.py need refitting. Measured here, not asserted in the tests: RSS depends on the
allocator, the machine and what else runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys
import numpy as np
from mhacli.analyses.heads import analyse
from mhacli.io.weights import load_model


def status(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))


ckpt = load_model(sys.argv[1], cache=True)
n, keep = int(sys.argv[2]), sys.argv[3] == "maps"
list(analyse(ckpt, np.arange(4), keep_maps=keep, layers=[0] if keep else None))  # weights read, code warm
before = status("VmRSS")
ids = np.arange(n) % ckpt.config.vocab_size
views = list(analyse(ckpt, ids, keep_maps=keep, layers=[0] if keep else None))
# VmHWM, not ru_maxrss: that one starts from the parent's size at fork
print(status("VmHWM") - before)
"""


def build(directory: Path, n_positions: int) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=8, n_embd=128, n_positions=n_positions, vocab_size=400)
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def peak_growth(model: Path, n: int, what: str) -> int:
    # glibc's allocator settings change the peak: the child runs with the defaults a user's process has
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "OPENBLAS_", "OMP_", "MKL_"))}
    out = subprocess.run([sys.executable, "-c", CHILD, str(model), str(n), what], capture_output=True, env=env)
    if out.returncode:
        raise SystemExit(out.stderr.decode())
    return int(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="where the model is built (default: a temp dir)")
    args = parser.parse_args()
    if not Path("/proc/self/status").exists():
        raise SystemExit("peak RSS is read from /proc: Linux only")
    from mhacli.analyses.heads import memory_needed
    from mhacli.io.weights import load_model

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        print("request           measured MiB  estimated MiB  estimate/measured")
        for what, n_seq in (("stats", 6000), ("maps", 1500)):
            model = build(out / f"m{n_seq}", n_seq)
            config = load_model(str(model)).config
            keep = what == "maps"
            grew = peak_growth(model, n_seq, what)
            kwargs = dict(kept_layers=keep, kept_heads=8 * keep, keep_maps=keep)
            est = memory_needed(config, n_seq, **kwargs) - memory_needed(config, 1, **kwargs)
            print(f"{what:6} T={n_seq:<6}  {grew / 2**20:12.0f}  {est / 2**20:13.0f}  {est / grew:17.2f}")


if __name__ == "__main__":
    main()
