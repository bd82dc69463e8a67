"""Benchmark: generation with one clamped SAE feature versus plain `generate`, side by side.

Target: steering costs at most 10 % of generation throughput. Runs are interleaved, in an order
rotated every round, so that load from other processes hits every variant alike; each generates exactly
--tokens new tokens (EOS ignored) from the same prompt, greedy, with the KV cache. The SAE is the
run given with --run, or a randomly initialised L1 SAE (8× expansion) at resid.8 — speed does not
depend on the weights. Also reported: the TopK full-encode fallback and generated-only steering.

    python scripts/bench/steer.py                  # default model (SmolLM2-135M), 48 tokens × 5 rounds
    python scripts/bench/steer.py --run runs/sae --feature 123 --value 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sae_kit.autoencoders import AutoencoderConfig, build_autoencoder, load_autoencoder
from sae_kit.lm.models import load_model
from sae_kit.steering import Intervention, SteeringHook, attach, hook_module
from sae_kit.steering.generate import GenerateOptions, encode_prompt, generate


def timed_generate(model, ids, options, hook=None) -> float:
    """Seconds for one generation of exactly options.max_new_tokens tokens."""
    start = time.perf_counter()
    out = generate(model, ids, options, hook, min_new_tokens=options.max_new_tokens)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + options.max_new_tokens
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--run", help="a trained SAE run (default: random SAE at --hook)")
    parser.add_argument("--hook", default="resid.8")
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--feature", type=int, default=0)
    parser.add_argument("--value", type=float, default=10.0, help="absolute clamp value")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt", default="The history of the city begins")
    parser.add_argument("--device")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    loaded = load_model(args.model, device=args.device)
    print(f"loaded {loaded.name} in {time.perf_counter() - t0:.1f} s on {loaded.device}, "
          f"{torch.get_num_threads()} torch threads")
    model, d = loaded.model, loaded.model.config.hidden_size
    if args.run:
        sae = load_autoencoder(args.run, device=loaded.device)
    else:
        torch.manual_seed(0)
        sae = build_autoencoder(AutoencoderConfig(arch="sae", d_in=d, d_sae=args.expansion * d, hook=args.hook))
    sae = sae.to(loaded.device).eval().requires_grad_(False)
    topk = build_autoencoder(AutoencoderConfig(arch="topk", d_in=d, d_sae=sae.cfg.d_sae, k=32, hook=args.hook))
    topk = topk.to(loaded.device).eval().requires_grad_(False)
    module = hook_module(model, sae, None if args.run else args.hook)
    ids = encode_prompt(loaded.tokenizer, args.prompt)
    options = GenerateOptions(max_new_tokens=args.tokens)
    clamp = [Intervention(args.feature, "clamp", args.value)]
    variants = {
        "plain generate": None,
        "clamp 1 feature (sliced encoder)": SteeringHook.build(sae, clamp),
        "clamp 1 feature, generated only": SteeringHook.build(sae, clamp, positions="generated"),
        "clamp 1 feature (TopK: full encode)": SteeringHook.build(topk, clamp),
    }

    def run(hook):
        if hook is None:
            return timed_generate(model, ids, options)
        with attach(model, module, hook):
            return timed_generate(model, ids, options, hook)

    for hook in variants.values():  # warm-up (first calls allocate, and the KV cache grows)
        run(hook)
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):  # rotate the order each round so no variant always runs first
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(run(variants[name]))

    steered = variants["clamp 1 feature (sliced encoder)"].steered_positions
    assert len(steered) == ids.shape[1] - 1 + args.tokens - 1, "the clamp must touch every position but BOS"
    base = times["plain generate"]
    print(f"\n{args.tokens} new tokens from a {ids.shape[1]}-token prompt, greedy, KV cache, hook {module}, "
          f"SAE d_sae={sae.cfg.d_sae}; {args.rounds} interleaved rounds, {torch.get_num_threads()} threads")
    print("best = fastest round (least disturbed by other processes); paired = median over rounds of "
          "(variant time / plain time in the same round) − 1")
    print(f"{'variant':<38} {'best tok/s':>10} {'median tok/s':>12} {'overhead best':>13} {'paired':>8}")
    for name, values in times.items():
        best, med = min(values), statistics.median(values)
        line = f"{name:<38} {args.tokens / best:10.2f} {args.tokens / med:12.2f}"
        if name != "plain generate":
            paired = statistics.median(v / b - 1 for v, b in zip(values, base))
            line += f" {100 * (best / min(base) - 1):+12.1f}% {100 * paired:+7.1f}%"
        print(line)
    plain = min(base)

    # The hook alone, on one decoding step's activation [1, 1, d]: what steering adds per token.
    x = torch.randn(1, 1, d, device=loaded.device)
    for name in ("clamp 1 feature (sliced encoder)", "clamp 1 feature (TopK: full encode)"):
        hook = variants[name]
        hook.reset(prompt_len=0)
        for _ in range(50):
            hook(x)
        start = time.perf_counter()
        for _ in range(1000):
            hook(x)
        per_call = (time.perf_counter() - start) / 1000
        print(f"hook alone, {name}: {per_call * 1e6:.1f} µs per token "
              f"({100 * per_call * args.tokens / plain:.2f}% of a plain generation)")


if __name__ == "__main__":
    main()
