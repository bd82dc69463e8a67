"""Benchmark: harvesting vs a bare forward pass to the same layer, side by side in one run.

DESIGN.md target: harvesting runs at >= 90 % of a bare forward pass to the hooked layer.

    python scripts/bench/harvest.py [--model default] [--hook resid.8] [--tokens 32768]

Three timings over the same contexts, same batch size:
- full forward: all layers (what a harvest without early stopping would cost);
- bare forward to the hook: the forward pass stopped after the hooked block, nothing kept;
- harvest: `sae_kit.harvest.harvest` end to end (packing, forward, copies, shard writes, hashing).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import islice

import torch

from sae_kit.harvest import HarvestConfig, harvest
from sae_kit.lm.corpus import CorpusSpec, iter_documents, pack_contexts
from sae_kit.lm.hooks import resolve_hooks, run_to_hooks
from sae_kit.lm.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--hook", default="resid.8")
    parser.add_argument("--tokens", type=int, default=16_384)
    parser.add_argument("--context-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    loaded = load_model(args.model)
    names = resolve_hooks(loaded.model, [args.hook])
    n_contexts = args.tokens // args.context_len
    contexts = list(islice(pack_contexts(iter_documents(CorpusSpec()), loaded.tokenizer, args.context_len), n_contexts))
    batches = [torch.tensor(contexts[i : i + args.batch_size], device=loaded.device)
               for i in range(0, len(contexts), args.batch_size)]
    tokens = sum(b.numel() for b in batches)
    run_to_hooks(loaded.model, batches[0], names)  # warm-up

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def full_forward():
        with torch.no_grad():
            for batch in batches:
                loaded.model(input_ids=batch, use_cache=False)

    def bare_to_hook():
        for batch in batches:
            run_to_hooks(loaded.model, batch, names)

    def run_harvest():
        with tempfile.TemporaryDirectory() as tmp:
            cfg = HarvestConfig(out=f"{tmp}/store", model=args.model, hooks=(args.hook,), tokens=tokens,
                                context_len=args.context_len, batch_size=args.batch_size)
            harvest(cfg, loaded=loaded, progress=False)

    # Interleave the two timings round by round: the machine is shared and noisy, so a ratio
    # is taken within each round and the median round is reported.
    rounds = []
    for _ in range(args.rounds):
        rounds.append({"bare": timed(bare_to_hook), "harvest": timed(run_harvest)})
    full = timed(full_forward)
    ratios = sorted(r["bare"] / r["harvest"] for r in rounds)
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    bare, harv = median([r["bare"] for r in rounds]), median([r["harvest"] for r in rounds])
    print(f"\n{tokens} tokens, model {loaded.name}, {torch.get_num_threads()} threads, device {loaded.device}, "
          f"{args.rounds} interleaved rounds (median)")
    print(f"{'what':<32} {'seconds':>8} {'tokens/s':>10}")
    for what, seconds in (("full forward (all layers)", full), (f"bare forward to {args.hook}", bare),
                          ("harvest (end to end)", harv)):
        print(f"{what:<32} {seconds:8.2f} {tokens / seconds:10.0f}")
    print(f"harvest throughput / bare forward: median {median(ratios):.2f} "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}); target >= 0.90")


if __name__ == "__main__":
    main()
