"""Benchmark: `sae-kit train` on 1 and 2 processes (torchrun), side by side: tokens/s and scaling efficiency.

Each configuration is one real `torchrun --nproc-per-node N -m sae_kit.cli train …` on the same
store and settings, data parallel and with --shard-latents; tokens/s is the median of the
trainer's own logged intervals after the first (start-up excluded), and the scaling efficiency
is tokens/s(N) / (N × tokens/s(1)). The cores are split between the processes
(OMP_NUM_THREADS = cores / N): on a 2-core CPU, 2 processes share the same two cores, so the
figure measures correctness-and-overhead (the all-reduces, the slicing), not speed-up; on a
machine with N GPUs pass --device cuda for the real scaling.

    python scripts/bench/distributed.py                                # a synthetic store of random activations
    python scripts/bench/distributed.py --store runs/store --hook resid.8 --d-sae 4608 --steps 24
    python scripts/bench/distributed.py --store STORE --device cuda --nproc 1,2,4,8 --d-sae 65536 --batch-size 8192
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(args, n: int, shard: bool) -> float:
    """tokens/s of one torchrun launch with n processes (median logged interval after the first)."""
    out = args.work / f"run-{n}{'-shard' if shard else ''}"
    shutil.rmtree(out, ignore_errors=True)
    threads = max(1, (os.cpu_count() or 1) // n)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), "-m", "sae_kit.cli",
           "train", "--store", str(args.store), "--out", str(out), "--d-sae", str(args.d_sae), "--batch-size",
           str(args.batch_size), "--tokens", str(args.steps * args.batch_size), "--log-every", str(args.log_every),
           "--norm-estimation-tokens", str(args.batch_size), "--checkpoint-every-tokens", str(10**12), "--no-progress",
           *(["--hook", args.hook] if args.hook else []), *(["--device", args.device] if args.device else []),
           *(["--shard-latents"] if shard else [])]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    rates = [json.loads(line)["tokens_per_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(rates[1:] or rates)


def synthetic_store(path: Path, d: int, tokens: int) -> Path:
    """A store of random activations [tokens, d] (the trainer's speed does not depend on what they mean)."""
    import torch

    from sae_kit.harvest import StoreWriter

    if (path / "manifest.json").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    manifest = {"hooks": [{"name": "x", "requested": "x", "d": d, "dtype": "float32"}], "context_len": 128,
                "prepend_bos": False, "model": {"spec": "synthetic", "name": "random", "config_sha256": "-"}}
    writer = StoreWriter.create(path, manifest)
    generator = torch.Generator().manual_seed(0)
    for first in range(0, tokens // 128, 64):
        n = min(64, tokens // 128 - first)
        writer.write_shard({"x": torch.randn(n * 128, d, generator=generator),
                            "tokens": torch.zeros(n * 128, dtype=torch.int32),
                            "context": torch.arange(first, first + n, dtype=torch.int32).repeat_interleave(128),
                            "position": torch.arange(128, dtype=torch.int32).repeat(n)})
    writer.finish()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, help="activation store (default: random activations, d --d-in)")
    parser.add_argument("--d-in", type=int, default=576, help="width of the synthetic store's activations")
    parser.add_argument("--hook")
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--log-every", type=int, default=4)
    parser.add_argument("--nproc", default="1,2", help="process counts to compare")
    parser.add_argument("--device", help="cpu (default where no CUDA) or cuda (one GPU per rank)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-dist"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.store is None:
        args.store = synthetic_store(args.work / f"store-{args.d_in}", args.d_in, (args.steps + 2) * args.batch_size * 21 // 20)
    counts = [int(n) for n in args.nproc.split(",")]
    rows = [f"store {args.store}, d_sae {args.d_sae}, global batch {args.batch_size}, {args.steps} steps, "
            f"{os.cpu_count()} cores, device {args.device or 'cpu'}", "",
            "| mode | processes | threads each | tokens/s | scaling efficiency | × one process |",
            "|---|---:|---:|---:|---:|---:|"]
    single = run(args, 1, False)  # the one-process reference of both modes
    for shard in (False, True):
        for n in counts:
            if n == 1 and shard:
                continue
            rate = single if n == 1 else run(args, n, shard)
            mode = "latents sharded" if shard else "data parallel"
            rows.append(f"| {mode} | {n} | {max(1, (os.cpu_count() or 1) // n)} | {rate:,.0f} | {rate / (n * single):.2f} "
                        f"| {rate / single:.2f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
