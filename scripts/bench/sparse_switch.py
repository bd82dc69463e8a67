"""Where the sparse path starts to win: one training step (forward + backward) on the dense path
and on the sparse path, at a range of code densities, interleaved in one process, for the L1 SAE
(whose dense path is the fused hand-written backward) and the TopK SAE (a plain autograd dense
path, as every other sparse architecture has).

The L1 SAE's density is set by shifting b_enc to the matching quantile of pre on the batch, the
TopK SAE's by k = density · d_sae; the step is `training_loss` + `loss.backward()` (what the
trainer times, without Adam). Prints ms per step and the crossover (the largest density at which
sparse is faster) for float32 and bfloat16 autocast; `sae_kit.autoencoders.sparse.SWITCH_DENSITY`
records the measured values.

    PYTHONPATH=$PWD python scripts/bench/sparse_switch.py                 # d 576 × 4,608, batch 4,096
    PYTHONPATH=$PWD python scripts/bench/sparse_switch.py --quick         # small, seconds

Measured (2 CPU cores, AMD EPYC Zen 4, under load from other jobs; the first command):

    d_in 576, d_sae 4608, batch 4096, 2 threads; ms per step (loss + backward), best of 2

    arch sae (dense: fused backward)
     density  f32 dense  f32 sparse  bf16 dense  bf16 sparse
      0.0025       1373         713         623         813 
      0.0050       1310         655         555         715 
      0.0100       1173         721         626         792 
      0.0200       1576         943         578         830 
      0.0400       1389        1212         595         762 
      0.0600       1375        1476         360         733 
      0.0800        860        1219         326         810 
      0.1200       1270        2086         537        1495 
      0.2000        827        2337         458        2164 
    sae: sparse faster up to density: float32 0.04, bfloat16 0.0

    arch topk (dense: autograd)
     density  f32 dense  f32 sparse  bf16 dense  bf16 sparse
      0.0025       1370         418         320         107 
      0.0050       1074         227         266         106 
      0.0100        711         257         270         151 
      0.0200        741         357         368         254 
      0.0400        770         479         339         367 
      0.0600        816         658         362         441 
      0.0800        754         807         367         572 
      0.1200        752        1161         378         773 
      0.2000       1273        3145         906        2540 
    topk: sparse faster up to density: float32 0.06, bfloat16 0.02
"""

from __future__ import annotations

import argparse
import time

import torch

from sae_kit.autoencoders import AutoencoderConfig, TrainingState, build_autoencoder

DENSITIES = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.2)


def step_seconds(model, x, kernels: str, autocast: bool, repeats: int) -> float:
    """Best-of-`repeats` seconds of one training step (loss + backward)."""
    model.kernels = kernels
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model.training_loss(x, TrainingState())
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="d 64 × 512, batch 512, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.d_in, args.d_sae, args.batch_size, args.repeats = 64, 512, 512, 1
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, args.d_in)
    print(f"d_in {args.d_in}, d_sae {args.d_sae}, batch {args.batch_size}, {torch.get_num_threads()} threads; "
          "ms per step (loss + backward), best of", args.repeats)
    for arch in ("sae", "topk"):
        sweep(arch, x, args)


def sweep(arch: str, x: torch.Tensor, args) -> None:
    """Print one architecture's table and crossover."""
    sae = build_autoencoder(AutoencoderConfig(arch="sae", d_in=args.d_in, d_sae=args.d_sae)).train()
    with torch.no_grad():
        pre = sae.pre_activation(x).flatten()
        sample = pre[torch.randperm(pre.numel())[: 1 << 20]]
    print(f"\narch {arch} ({'dense: fused backward' if arch == 'sae' else 'dense: autograd'})")
    print(f"{'density':>8} {'f32 dense':>10} {'f32 sparse':>11} {'bf16 dense':>11} {'bf16 sparse':>12}")
    crossover = {False: 0.0, True: 0.0}
    for density in DENSITIES:
        if arch == "sae":
            model = sae
            with torch.no_grad():
                model.b_enc.fill_(-float(torch.quantile(sample, 1 - density)))
        else:
            k = max(1, round(density * args.d_sae))
            model = build_autoencoder(AutoencoderConfig(arch="topk", d_in=args.d_in, d_sae=args.d_sae, k=k)).train()
        row = []
        for autocast in (False, True):
            dense = step_seconds(model, x, "dense", autocast, args.repeats)
            sparse = step_seconds(model, x, "sparse", autocast, args.repeats)
            row += [dense, sparse]
            if sparse < dense:
                crossover[autocast] = density
        print(f"{density:>8.4f} " + " ".join(f"{1e3 * s:>10.0f} " for s in row))
    print(f"{arch}: sparse faster up to density: float32 {crossover[False]}, bfloat16 {crossover[True]}")


if __name__ == "__main__":
    main()
