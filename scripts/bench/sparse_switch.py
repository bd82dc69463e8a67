"""Where the sparse path starts to win: one L1 SAE training step (forward + backward) on the dense
fused path and on the sparse path, at a range of code densities, interleaved in one process.

The density is set by shifting b_enc to the matching quantile of pre on the batch; the step is
`SparseAutoencoder.training_loss` + `loss.backward()` (what the trainer times, without Adam).
Prints ms per step and the crossover (the largest density at which sparse is faster) for float32
and bfloat16 autocast; `sae_kit.autoencoders.sparse.SWITCH_DENSITY` records the measured value.

    PYTHONPATH=$PWD python scripts/bench/sparse_switch.py                 # d 576 × 4,608, batch 4,096
    PYTHONPATH=$PWD python scripts/bench/sparse_switch.py --quick         # small, seconds
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
    model = build_autoencoder(AutoencoderConfig(arch="sae", d_in=args.d_in, d_sae=args.d_sae)).train()
    x = torch.randn(args.batch_size, args.d_in)
    with torch.no_grad():
        pre = model.pre_activation(x).flatten()
        sample = pre[torch.randperm(pre.numel())[: 1 << 20]]
    print(f"d_in {args.d_in}, d_sae {args.d_sae}, batch {args.batch_size}, {torch.get_num_threads()} threads; "
          "ms per step (loss + backward), best of", args.repeats)
    print(f"{'density':>8} {'f32 dense':>10} {'f32 sparse':>11} {'bf16 dense':>11} {'bf16 sparse':>12}")
    crossover = {False: 0.0, True: 0.0}
    for density in DENSITIES:
        with torch.no_grad():
            model.b_enc.fill_(-float(torch.quantile(sample, 1 - density)))
        row = []
        for autocast in (False, True):
            dense = step_seconds(model, x, "dense", autocast, args.repeats)
            sparse = step_seconds(model, x, "sparse", autocast, args.repeats)
            row += [dense, sparse]
            if sparse < dense:
                crossover[autocast] = density
        print(f"{density:>8.4f} " + " ".join(f"{1e3 * s:>10.0f} " for s in row))
    print(f"sparse faster up to density: float32 {crossover[False]}, bfloat16 {crossover[True]}")


if __name__ == "__main__":
    main()
