"""Side-by-side benchmark of mha against Hugging Face transformers, as whole processes, in one run.

    python benchmarks/run.py              # bundled model, GPT-2 small (T=128, 1024), GPT-2 medium (T=1024)
    python benchmarks/run.py --xl         # also GPT-2 XL size (1.5B parameters, ~6 GB of disk in bench_out/)
    python benchmarks/run.py --quick      # bundled model and GPT-2 small only, fewer runs

Checkpoints are random-init GPT-2s of the real sizes, built with transformers into bench_out/ (reused across runs).
Every measurement is a fresh process (cold start included): the median wall time of --runs runs (default 5; 3 with
--quick) and the peak RSS (os.wait4). The forward's GFLOP/s is measured in-process and compared with numpy.matmul's
float32 GEMM rate measured in the same run (the roofline). Results: printed as Markdown tables, and written with the
machine, the library versions and every run's raw figures to benchmarks/results/latest.json (--results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLE = REPO / "sample_weights" / "tiny-shakespeare"
SIZES = {  # n_layer, n_head, n_embd (the GPT-2 family)
    "small": (12, 12, 768),
    "medium": (24, 16, 1024),
    "xl": (48, 25, 1600),
}
PASSAGE = (
    "ROMEO: But, soft! what light through yonder window breaks? It is the east, and Juliet is the sun. "
    "Arise, fair sun, and kill the envious moon, who is already sick and pale with grief, that thou her maid "
    "art far more fair than she. JULIET: O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse "
    "thy name; or, if thou wilt not, be but sworn my love, and I'll no longer be a Capulet. "
)


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def run_process(cmd: list[str]) -> tuple[float, int, bytes]:
    """Wall seconds, peak RSS bytes and stdout of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"benchmark command failed ({code}): {' '.join(cmd)[:200]}\n{err.decode()[-2000:]}")
    return wall, usage.ru_maxrss * 1024, out


def measure(cmd: list[str], runs: int) -> dict:
    walls, rss = [], []
    for _ in range(runs):
        wall, peak, _ = run_process(cmd)
        walls.append(wall)
        rss.append(peak)
    return {"wall_s": statistics.median(walls), "walls": walls, "peak_rss_bytes": max(rss), "peak_rss_runs": rss}


def gemm_peak(n: int = 2048, repeats: int = 7) -> dict:
    """float32 GFLOP/s of numpy.matmul on n x n matrices (best of `repeats`), with every repeat's seconds."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.copy()
    a @ b
    seconds = [timed(lambda: a @ b) for _ in range(repeats)]
    return {"gflops": 2 * n**3 / min(seconds) / 1e9, "n": n, "seconds": seconds}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def build_checkpoint(name: str, out: Path) -> Path:
    directory = out / "models" / f"gpt2-{name}"
    if (directory / "model.safetensors").is_file() or (directory / "model.safetensors.index.json").is_file():
        return directory
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_head, n_embd = SIZES[name]
    log(f"building a random-init GPT-2 {name} ({n_layer} layers, {n_head} heads, {n_embd} wide) in {directory}")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd)).eval()
    model.save_pretrained(directory, max_shard_size="2GB")
    for f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        if (SAMPLE / f).is_file():
            (directory / f).write_bytes((SAMPLE / f).read_bytes())
    return directory


def text_of_tokens(n: int) -> str:
    """A text that the bundled tokenizer (also used by the benchmark checkpoints) turns into exactly n tokens."""
    from mhacli.tokenizer import load_tokenizer

    tok = load_tokenizer(SAMPLE)
    text = PASSAGE * (n // 40 + 2)
    ids = tok.encode(text)
    cut = len(text)
    while len(ids) > n:  # trim characters until the token count is right
        cut -= max(1, (len(ids) - n) // 2)
        ids = tok.encode(text[:cut])
    while len(ids) < n:
        cut += 1
        ids = tok.encode(text[:cut])
    if len(ids) != n:
        raise SystemExit(f"could not build a text of exactly {n} tokens")
    return text[:cut]


def forward_rate(model_dir: Path, n_tokens: int, repeats: int = 3) -> dict:
    """In-process: seconds and GFLOP/s of one full forward (every layer's attention), weights already read."""
    from mhacli.model import forward
    from mhacli.weights import load_model

    ckpt = load_model(str(model_dir), cache=True)
    c = ckpt.config
    ids = np.arange(n_tokens) % c.vocab_size
    list(forward(ckpt, ids))  # reads the weights once, warms up
    runs = [timed(lambda: list(forward(ckpt, ids))) for _ in range(repeats)]
    seconds = min(runs)
    flops = c.n_layer * layer_flops(n_tokens, c.n_embd, c.n_inner)
    return {"seconds": seconds, "seconds_runs": runs, "gflop": flops / 1e9, "gflops": flops / seconds / 1e9}


def layer_flops(t: int, e: int, inner: int) -> int:
    """Multiply-adds x 2 of one GPT-2 block on t tokens, as the kernel does them: the projections (c_attn, c_proj)
    and the MLP; q k^T over every [t, t] entry (a full matmul, the masked half then overwritten); A v over the keys
    each row block of mhacli.attention.BLOCK rows can see (keys 0..b-1 for rows a..b-1), not over all t keys."""
    from mhacli.attention import BLOCK

    visible = sum((min(a + BLOCK, t) - a) * min(a + BLOCK, t) for a in range(0, t, BLOCK))  # (row, key) pairs
    return 2 * t * e * 3 * e + 2 * t * e * e + 2 * 2 * t * e * inner + 2 * t * t * e + 2 * visible * e


def in_child(what: str, *args: str) -> dict:
    """Run an in-process measurement in a fresh process, so this process stays small: a child's peak RSS on Linux
    starts from its parent's size at fork, and would inflate every later measurement."""
    out = subprocess.run([sys.executable, __file__, "--child", what, *args], stdout=subprocess.PIPE, check=True).stdout
    return json.loads(out)


def child(what: str, args: list[str]) -> None:
    if what == "gemm":
        print(json.dumps(gemm_peak()))
    elif what == "forward":
        print(json.dumps(forward_rate(Path(args[0]), int(args[1]))))
    elif what == "build":
        print(json.dumps({"path": str(build_checkpoint(args[0], Path(args[1])))}))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs", type=int, default=None, help="processes per measurement, median reported (default 5; 3 with --quick)"
    )
    parser.add_argument("--xl", action="store_true", help="also GPT-2 XL size (needs ~6 GB of disk, ~12 GB RAM for HF)")
    parser.add_argument("--quick", action="store_true", help="bundled model and GPT-2 small only, 3 runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench_out", help="where the checkpoints are built")
    parser.add_argument("--results", type=Path, default=HERE / "results" / "latest.json", help="the results JSON file")
    args = parser.parse_args()
    runs = args.runs if args.runs is not None else (3 if args.quick else 5)
    args.out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    mha = [py, "-m", "mhacli"]
    hf = [py, str(HERE / "hf_stats.py")]

    machine = machine_and_versions()
    log(f"machine: {machine}")
    gemm = in_child("gemm")
    peak = gemm["gflops"]
    log(f"numpy float32 GEMM: {peak:.1f} GFLOP/s")
    results: dict = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "runs_per_measurement": runs,
        "machine": machine,
        "gemm_gflops": peak,
        "gemm": gemm,
        "rows": [],
    }

    def compare(label: str, mha_cmd: list[str], hf_cmd: list[str] | None, note: str = "") -> None:
        log(f"measuring: {label}")
        m = measure(mha_cmd, runs)
        h = measure(hf_cmd, runs) if hf_cmd else None
        row = {"case": label, "note": note, "mha": m, "hf": h}
        if h:
            row["wall_ratio"] = m["wall_s"] / h["wall_s"]
            row["rss_ratio"] = m["peak_rss_bytes"] / h["peak_rss_bytes"]
        results["rows"].append(row)

    short = "ROMEO: I love thee. JULIET: I love thee."
    compare("cold `mha stats --format json`, bundled model", [*mha, "stats", short, "-f", "json"], [*hf, str(SAMPLE), short])
    compare("cold `mha inspect --format json`, bundled model", [*mha, "inspect", short, "-f", "json"], [*hf, str(SAMPLE), short])
    cases = [("small", 128), ("small", 1024)] if args.quick else [("small", 128), ("small", 1024), ("medium", 1024)]
    if args.xl:
        cases.append(("xl", 1024))
    rates = {}
    for size, n in cases:
        model = Path(in_child("build", size, str(args.out))["path"])
        text = text_of_tokens(n)
        compare(
            f"GPT-2 {size}, T = {n}, every head's map + stats",
            [*mha, "stats", text, "-m", str(model), "-f", "csv"],
            [*hf, str(model), text],
        )
        if (size, n) == ("small", 128):  # every head ablated, the loss of each: `mha ablate` vs HF with a pre-hook
            compare(
                f"GPT-2 {size}, T = {n}, `mha ablate`: all {12 * 12} heads, zero",
                [*mha, "ablate", text, "-m", str(model), "-f", "csv"],
                [py, str(HERE / "hf_ablate.py"), str(model), text],
            )
        if (size, n) not in rates and size != "xl":
            rates[(size, n)] = in_child("forward", str(model), str(n))
            log(f"  forward {size} T={n}: {rates[(size, n)]}")
    results["forward"] = [
        {"model": s, "tokens": n, **r, "fraction_of_gemm_peak": r["gflops"] / peak} for (s, n), r in rates.items()
    ]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    log(f"results written to {args.results}")
    print(markdown(results))


def machine_and_versions() -> dict:
    """The CPU model and core count, and the versions of Python and of the libraries measured (read from the
    installed packages' metadata: importing torch here would inflate every child's peak RSS)."""
    from importlib.metadata import PackageNotFoundError, version

    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        machine["cpu"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    for package in ("torch", "transformers", "mhacli"):
        try:
            machine[package] = version(package)
        except PackageNotFoundError:
            machine[package] = None
    return machine


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, NumPy {m['numpy']}, torch {m['torch']}, "
        f"transformers {m['transformers']}; numpy float32 GEMM peak measured in the same run: "
        f"{results['gemm_gflops']:.1f} GFLOP/s. Wall times: median of {results['runs_per_measurement']} runs.",
        "",
        "| case | mha wall (median) | HF wall (median) | wall ratio | mha peak RSS | HF peak RSS | RSS ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["rows"]:
        mh, hf = r["mha"], r["hf"]
        lines.append(
            f"| {r['case']} | {mh['wall_s']:.2f} s | {hf['wall_s']:.2f} s | {r['wall_ratio']:.2f}x | "
            f"{mib(mh['peak_rss_bytes'])} | {mib(hf['peak_rss_bytes'])} | {r['rss_ratio']:.2f}x |"
        )
    lines += ["", "| forward (in-process, all maps) | seconds | GFLOP | GFLOP/s | of GEMM peak |", "| --- | --- | --- | --- | --- |"]
    for f in results["forward"]:
        lines.append(
            f"| GPT-2 {f['model']}, T = {f['tokens']} | {f['seconds']:.2f} | {f['gflop']:.0f} | {f['gflops']:.1f} | "
            f"{100 * f['fraction_of_gemm_peak']:.0f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
