"""The cost of one task on a Dask cluster, against local worker processes: what a census pack must outweigh.

    python benchmarks/dask_overhead.py               # 2,000 empty tasks on each executor, 2 workers, best of 3
    python benchmarks/dask_overhead.py --tasks 5000  # more tasks

Both executors are the ones `mha census` uses (mhacli.analyses.parallel: `dask_executor("local", n)`, a LocalCluster
of single-threaded worker processes, and the local process pool), driven the same way: tasks submitted through the
`concurrent.futures` interface, at most 4 per worker in flight, each returning a few hundred bytes. The per-task
figure is the wall time of the whole batch over the task count, cluster start excluded (measured apart). Written to
benchmarks/results/dask_overhead.json with the machine's `uptime` load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def empty_task(i: int) -> bytes:
    """A task with no work: its result is the size of a small census outcome."""
    return bytes(256) + i.to_bytes(8, "little")


def drive(executor: Executor, n_tasks: int, in_flight: int) -> float:
    """Seconds to run n_tasks empty tasks, at most in_flight submitted and not yet collected."""
    start = time.perf_counter()
    pending: deque = deque()
    for i in range(n_tasks):
        pending.append(executor.submit(empty_task, i))
        if len(pending) >= in_flight:
            pending.popleft().result()
    while pending:
        pending.popleft().result()
    return time.perf_counter() - start


def measure(make, n_tasks: int, workers: int, repeats: int) -> dict:
    started = time.perf_counter()
    with make() as executor:
        start_s = time.perf_counter() - started
        drive(executor, 4 * workers, 4 * workers)  # warm: every worker has imported and run a task
        runs = [drive(executor, n_tasks, 4 * workers) for _ in range(repeats)]
    best = min(runs)
    return {
        "start_s": round(start_s, 3),
        "runs_s": [round(r, 4) for r in runs],
        "per_task_ms_best": round(1000 * best / n_tasks, 4),
        "per_task_ms_median": round(1000 * statistics.median(runs) / n_tasks, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=HERE / "results" / "dask_overhead.json")
    args = parser.parse_args()
    from mhacli.analyses.parallel import dask_executor

    load_before = os.getloadavg()[0]
    rows = {
        "dask LocalCluster": measure(
            lambda: dask_executor("local", args.workers), args.tasks, args.workers, args.repeats
        ),
        "local processes": measure(
            lambda: ProcessPoolExecutor(max_workers=args.workers), args.tasks, args.workers, args.repeats
        ),
    }
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "tasks": args.tasks,
        "workers": args.workers,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "rows": rows,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.tasks} empty tasks, {args.workers} workers, load {load_before:.2f} before")
    print("| executor | start | per task (best) | per task (median) |")
    print("| --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['start_s']:.2f} s | {r['per_task_ms_best']:.3f} ms | {r['per_task_ms_median']:.3f} ms |")


if __name__ == "__main__":
    main()
