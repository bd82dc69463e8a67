"""Training speed on a GPU: tokens/s and model FLOPs utilisation (MFU) against the chip's bf16 peak.

For each d_in × d_sae shape: the dense floor (the five matrix products of one SAE step alone) and
`sae_kit.training.fit` for each architecture on random activations already on the device, with
kernels 'dense' and 'auto', synchronised timing. MFU counts the five dense products of a step,
5 · 2 · B · d_in · d_sae FLOPs (a sparse path does fewer, so its "MFU" is an effective figure:
the dense work it stands in for, per second, over the peak).

    PYTHONPATH=$PWD python scripts/bench/gpu_train.py --shapes 768x24576,2304x65536      # what gpu.sh runs
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sae_kit.training import fit, make_slot  # noqa: E402
from sae_kit.training.input_stats import InputStats  # noqa: E402
from sae_kit.training.recipe import TrainConfig  # noqa: E402
from sae_kit.training.specs import model_specs  # noqa: E402

BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}
"""Dense bf16 tensor-core peak in FLOP/s by device-name fragment (vendor data sheets, no sparsity)."""


def peak_flops() -> float | None:
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def timed(fn, steps: int) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def floor_step(B: int, d: int, F: int):
    dev, dt = "cuda", torch.bfloat16
    x, dx = torch.randn(B, d, device=dev, dtype=dt), torch.randn(B, d, device=dev, dtype=dt)
    W_enc, W_dec, z = (torch.randn(d, F, device=dev, dtype=dt), torch.randn(F, d, device=dev, dtype=dt),
                       torch.randn(B, F, device=dev, dtype=dt))
    return lambda: (x @ W_enc, z @ W_dec, dx @ W_dec.T, z.T @ dx, x.T @ z)


def train_seconds(arch: str, kernels: str, B: int, d: int, F: int, steps: int) -> float:
    cfg = TrainConfig(store="-", out="-", archs=(arch,), d_sae=F, batch_size=B, dtype="bfloat16", lr=5e-5, ks=(64,),
                      log_every=10**6, checkpoint_every_tokens=None, b_dec_init="zeros", kernels=kernels)
    device = torch.device("cuda")
    stats = InputStats(scale=1.0, mean=[0.0] * d, geometric_median=None, n_tokens=0)
    pool = [torch.randn(B, d, device=device, dtype=torch.bfloat16) for _ in range(2)]
    source = lambda skip: (pool[i % 2] for i in range(skip, 10**9))  # noqa: E731
    slot = make_slot(model_specs(cfg, d)[0], cfg, device, math.ceil(1e6 / B), stats)
    fit(cfg, [slot], source, 2, stats, device=device, progress=False)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    fit(cfg, [slot], source, steps, stats, device=device, progress=False)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="768x24576,2304x65536")
    parser.add_argument("--archs", default="sae,topk,batchtopk,jumprelu,gated,matryoshka")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_train.py needs CUDA")
    peak = peak_flops()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16 peak "
          f"{peak / 1e12:.0f} TFLOP/s" if peak else f"{torch.cuda.get_device_name()}: bf16 peak unknown (no MFU)")
    print("| d_in × d_sae | trainer | kernels | ms/step | tokens/s | MFU (5 dense products) |\n|---|---|---|---:|---:|---:|")
    B = args.batch_size
    for shape in args.shapes.split(","):
        d, F = (int(v) for v in shape.split("x"))
        flops = 5 * 2 * B * d * F

        def row(name, kernels, seconds):
            mfu = f"{100 * flops / seconds / peak:.1f} %" if peak else "-"
            print(f"| {d} × {F} | {name} | {kernels} | {1e3 * seconds:.2f} | {B / seconds:,.0f} | {mfu} |", flush=True)

        row("dense floor", "-", timed(floor_step(B, d, F), args.steps))
        for arch in args.archs.split(","):
            for kernels in ("dense", "auto"):
                row(arch, kernels, train_seconds(arch, kernels, B, d, F, args.steps))
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
