"""Benchmark: trainer tokens/s against the bare matrix products of the same step, and SAELens.

Measured side by side in one process, interleaved (so machine load hits all alike):
  - matmul only: the five dense products of one SAE training step (encoder forward, decoder
    forward, ∂z, ∂W_dec, ∂W_enc) and nothing else: the floor for any dense trainer;
  - sae-kit fused: `sae_kit.training.fit` on the L1 SAE (Adam, clipping, λ/lr schedules, dead-latent
    tracking, metrics every --log-every steps) with the hand-written backward;
  - sae-kit autograd: the same loop with the plain autograd loss (SparseAutoencoder.fused = False);
  - SAELens: its own `SAETrainer.fit` on a `StandardTrainingSAE`, when `sae_lens` is importable
    (install it in a separate environment: pip install sae-lens);
each in float32 and bfloat16 autocast. Default setting is DESIGN.md's anchor: d_in 576, 4608
latents, batch 4096 (SAELens 6.54: ~3,750 tok/s float32 on 2 CPU cores).

With --store and --quality-tokens N, both trainers also train on the same store batches for N
tokens with the April 2024 recipe, and the table reports the FVU and L0 each reaches on the
store's held-out split.

    .venv/bin/python scripts/bench/train.py                          # random activations
    python scripts/bench/train.py --store runs/store --hook resid.8 --quality-tokens 1M --md reports/bench-train.md
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import sys
import time
from pathlib import Path

import torch

from sae_kit.evaluation import metrics
from sae_kit.training import fit, make_slot
from sae_kit.training.recipe import InputStats, TrainConfig, model_specs


def matmul_step(x, W_enc, W_dec, z, dx_hat):
    """The five GEMMs of one SAE step: 2 forward, 3 backward (the input needs no gradient)."""
    x @ W_enc  # pre [B, F]
    z @ W_dec  # x̂ [B, d]
    dx_hat @ W_dec.T  # ∂z [B, F]
    z.T @ dx_hat  # ∂W_dec [F, d]
    x.T @ z  # ∂W_enc [d, F]


def time_matmuls(args, d_in, dtype: str, steps: int) -> float:
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    g = torch.Generator().manual_seed(0)
    shapes = ((args.batch_size, d_in), (args.batch_size, d_in), (d_in, args.d_sae), (args.d_sae, d_in),
              (args.batch_size, args.d_sae))
    x, dx, W_enc, W_dec, z = (torch.randn(*s, generator=g).to(torch_dtype) for s in shapes)
    matmul_step(x, W_enc, W_dec, z, dx)
    start = time.perf_counter()
    for _ in range(steps):
        matmul_step(x, W_enc, W_dec, z, dx)
    return (time.perf_counter() - start) / steps


def random_source(args, d_in):
    g = torch.Generator().manual_seed(0)
    pool = [torch.randn(args.batch_size, d_in, generator=g) for _ in range(4)]
    return lambda skip: itertools.cycle(pool)


def store_source(args, seed=0):
    from sae_kit.harvest import ActivationStore

    store = ActivationStore(args.store)
    hook = store.resolve_hook_name(args.hook)
    return lambda skip: store.batches(hook, args.batch_size, seed=seed, epochs=None, skip_batches=skip)


def our_trainer(args, d_in, dtype: str, fused: bool, n_steps: int, source, scale: float = 1.0):
    cfg = TrainConfig(store=args.store or "-", out="-", d_sae=args.d_sae, batch_size=args.batch_size, dtype=dtype,
                      lr=args.lr, log_every=args.log_every, checkpoint_every_tokens=None, b_dec_init="zeros")
    stats = InputStats(scale=scale, mean=[0.0] * d_in, geometric_median=None, n_tokens=0)
    slot = make_slot(model_specs(cfg, d_in)[0], cfg, torch.device("cpu"), math.ceil(1e6 / args.batch_size), stats)
    slot.model.fused = fused
    return cfg, slot, lambda: fit(cfg, [slot], source, n_steps, stats, device=torch.device("cpu"), progress=False)


def time_ours(args, d_in, dtype: str, fused: bool, steps: int) -> float:
    source = store_source(args) if args.store else random_source(args, d_in)
    our_trainer(args, d_in, dtype, fused, args.warmup, source)[2]()
    run = our_trainer(args, d_in, dtype, fused, steps, source)[2]
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) / steps


def saelens_trainer(args, d_in, dtype: str, n_steps: int, batches, normalize: bool):
    """SAELens' SAETrainer on a StandardTrainingSAE with the April 2024 recipe, or None."""
    try:
        from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer
    except ImportError:
        return None
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(
        d_in=d_in, d_sae=args.d_sae, l1_coefficient=5.0, l1_warm_up_steps=int(0.05 * n_steps),
        normalize_activations="expected_average_only_in" if normalize else "none"))
    cfg = SAETrainerConfig(total_training_samples=n_steps * args.batch_size, train_batch_size_samples=args.batch_size,
                           lr=args.lr, lr_end=args.lr, lr_decay_steps=int(0.2 * n_steps), adam_beta1=0.9, adam_beta2=0.999,
                           autocast=dtype == "bfloat16", n_batches_for_norm_estimate=32)
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches)
    return trainer


@contextlib.contextmanager
def quiet():
    """Silence SAELens' progress bar (it writes to stderr)."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        yield


def time_saelens(args, d_in, dtype: str, steps: int) -> float | None:
    pool = [torch.randn(args.batch_size, d_in) for _ in range(4)]
    warm = saelens_trainer(args, d_in, dtype, args.warmup, itertools.cycle(pool), normalize=False)
    if warm is None:
        return None
    with quiet():
        warm.fit()
        trainer = saelens_trainer(args, d_in, dtype, steps, itertools.cycle(pool), normalize=False)
        start = time.perf_counter()
        trainer.fit()
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def held_out_quality(args, sae) -> tuple[float, float]:
    """FVU and L0 of `sae` (anything with encode/decode) on up to 16k held-out tokens."""
    from sae_kit.harvest import ActivationStore

    store = ActivationStore(args.store)
    hook = store.resolve_hook_name(args.hook)
    x = torch.cat(list(itertools.islice(store.batches(hook, 4096, shuffle=False, split="eval", drop_last=False), 4)))
    z = sae.encode(x)
    return float(metrics.fvu(x, sae.decode(z))), float(metrics.l0(z))


def quality(args, d_in) -> list[tuple[str, float, float, float]]:
    """(name, FVU, L0, tokens/s) after --quality-tokens on the same store batches."""
    from sae_kit.training.recipe import estimate_input_stats

    n_steps = args.quality_tokens // args.batch_size
    rows = []
    stats = estimate_input_stats(store_source(args, seed=1)(0), 32 * args.batch_size, True, False)
    for dtype in ("float32", "bfloat16"):
        _, slot, run = our_trainer(args, d_in, dtype, True, n_steps, store_source(args), stats.scale)
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        model = slot.model.eval()
        model.fold_input_scale_(stats.scale)
        fvu, l0 = held_out_quality(args, model)
        rows.append((f"sae-kit {dtype}", fvu, l0, n_steps * args.batch_size / seconds))
    for dtype in ("float32", "bfloat16"):
        trainer = saelens_trainer(args, d_in, dtype, n_steps, store_source(args)(0), normalize=True)
        if trainer is None:
            break
        start = time.perf_counter()
        with quiet():
            sae = trainer.fit()  # folds its scaling factor into the weights at the end
        seconds = time.perf_counter() - start
        fvu, l0 = held_out_quality(args, sae)
        rows.append((f"SAELens {dtype}", fvu, l0, n_steps * args.batch_size / seconds))
    return rows


def main() -> None:
    from sae_kit.config import parse_count

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", help="activation store to read batches from (default: random activations)")
    parser.add_argument("--hook", help="hook in the store")
    parser.add_argument("--d-in", type=int, default=576, help="input width without --store")
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best counts (0: no timing)")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--quality-tokens", type=parse_count, help="with --store: train both trainers this long")
    parser.add_argument("--lr", type=float, default=5e-5, help="learning rate of both trainers (recipe: 5e-5)")
    parser.add_argument("--md", help="also write the tables as markdown to this file")
    args = parser.parse_args()
    d_in = args.d_in
    if args.store:
        from sae_kit.harvest import ActivationStore

        store = ActivationStore(args.store)
        d_in = store.d_in(store.resolve_hook_name(args.hook))
    flops = 5 * 2 * args.batch_size * d_in * args.d_sae  # five GEMMs per step
    measures = (("matmul only", lambda dt: time_matmuls(args, d_in, dt, args.steps)),
                ("sae-kit fused", lambda dt: time_ours(args, d_in, dt, True, args.steps)),
                ("sae-kit autograd", lambda dt: time_ours(args, d_in, dt, False, args.steps)),
                ("SAELens", lambda dt: time_saelens(args, d_in, dt, args.steps)))
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.repeats):
        for dtype in ("float32", "bfloat16"):
            for name, measure in measures:
                seconds = measure(dtype)
                if seconds is not None:
                    best[(dtype, name)] = min(best.get((dtype, name), math.inf), seconds)
    lines: list[str] = []
    if best:
        lines += [f"d_in {d_in}, d_sae {args.d_sae}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
                  f"data: {'store ' + args.store if args.store else 'random'}; best of {args.repeats} interleaved "
                  f"rounds of {args.steps} steps", "",
                  "| dtype | trainer | ms/step | tokens/s | GFLOP/s (5 GEMMs) | × matmul-only time | "
                  "× SAELens float32 speed |", "|---|---|---:|---:|---:|---:|---:|"]
    reference = best.get(("float32", "SAELens"))
    for (dtype, name), seconds in best.items():
        versus = f"{reference / seconds:.2f}" if reference else "-"
        lines.append(f"| {dtype} | {name} | {seconds * 1e3:.0f} | {args.batch_size / seconds:,.0f} | "
                     f"{flops / seconds / 1e9:.0f} | {seconds / best[(dtype, 'matmul only')]:.2f} | {versus} |")
    if best and reference is None:
        lines += ["", "SAELens not importable: its rows are missing (pip install sae-lens in another environment)."]
    if args.store and args.quality_tokens:
        lines += ["", f"After {args.quality_tokens:,} training tokens (recipe, lr {args.lr:g}, same store batches), "
                      "held-out split; runs are sequential, so their tokens/s are exposed to load changes:", "",
                  "| trainer | FVU | L0 | tokens/s (whole run) |", "|---|---:|---:|---:|"]
        lines += [f"| {n} | {f:.4f} | {l:.1f} | {t:,.0f} |" for n, f, l, t in quality(args, d_in)]
    text = "\n".join(lines)
    print(text)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        command = "python scripts/bench/train.py " + " ".join(sys.argv[1:])
        Path(args.md).write_text(f"# Trainer benchmark\n\n`{command}`\n\n{text}\n")


if __name__ == "__main__":
    main()
