"""Profile one architecture's training step inside `fit` with torch.profiler (CPU).

A fresh model at its recipe settings (k 32, λ 5, lr 5e-5, batch 4,096, d_in 576) on random
batches: 2 untimed steps, 3 timed ones (seconds per step), then 3 profiled ones, the ops sorted
by their own CPU time. This is how the TopK step at × 18,432 was split in README ("The benchmark").

    PYTHONPATH=$PWD python scripts/bench/profile_step.py --arch topk --d-sae 18432
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as scripts/bench/train.py, so the figures compare

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sae_kit.training import fit, make_slot  # noqa: E402
from sae_kit.training.input_stats import InputStats  # noqa: E402
from sae_kit.training.recipe import TrainConfig  # noqa: E402
from sae_kit.training.specs import model_specs  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="topk")
    parser.add_argument("--d-sae", type=int, default=18432)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--rows", type=int, default=25, help="ops shown")
    args = parser.parse_args(argv)
    cfg = TrainConfig(store="-", out="-", archs=(args.arch,), d_sae=args.d_sae, batch_size=args.batch_size, lr=5e-5,
                      ks=(32,), l1_coefficients=(5.0,), log_every=10**6, checkpoint_every_tokens=None,
                      b_dec_init="zeros")
    stats = InputStats(scale=1.0, mean=[0.0] * args.d_in, geometric_median=None, n_tokens=0)
    device = torch.device("cpu")
    slot = make_slot(model_specs(cfg, args.d_in)[0], cfg, device, math.ceil(1e6 / args.batch_size), stats)
    g = torch.Generator().manual_seed(0)
    pool = [torch.randn(args.batch_size, args.d_in, generator=g) for _ in range(3)]

    def source(skip):
        return (pool[i % len(pool)] for i in range(skip, 10**9))

    fit(cfg, [slot], source, 2, stats, device=device, progress=False)
    start = time.perf_counter()
    fit(cfg, [slot], source, 3, stats, device=device, progress=False)
    print(f"{args.arch} d_in {args.d_in} × d_sae {args.d_sae}, batch {args.batch_size}, {torch.get_num_threads()} threads: "
          f"{(time.perf_counter() - start) / 3:.3f} s per step (3 steps)")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fit(cfg, [slot], source, 3, stats, device=device, progress=False)
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                                             max_name_column_width=40, max_shapes_column_width=60))


if __name__ == "__main__":
    main()
