"""Harvest several layers of a model in one forward pass, through the library API.

The residual stream after every `--every`-th block (and, with --mlp, each of those blocks' MLP
output) goes into one store; the forward pass stops after the deepest hooked block. Prints the
store's summary and the mean activation norm per hook (the residual stream's norm grows with
depth, which is why SAEs normalise their inputs).

    .venv/bin/python scripts/harvest_layers.py --out runs/layers                 # default model, resid.0,4,8,…
    .venv/bin/python scripts/harvest_layers.py --model gpt2 --every 2 --mlp --out runs/gpt2-layers
    .venv/bin/python scripts/harvest_layers.py --quick --model DIR --out runs/layers-quick
"""

from __future__ import annotations

import argparse

from sae_kit.harvest import ActivationStore, HarvestConfig, harvest
from sae_kit.lm.hooks import aliases
from sae_kit.lm.models import load_model


def main(argv: list[str] | None = None) -> ActivationStore:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="'default', a local HF directory, a .gguf file or a hub id")
    parser.add_argument("--out", required=True, help="store directory")
    parser.add_argument("--every", type=int, default=4, help="hook every N-th block (default 4)")
    parser.add_argument("--max-layer", type=int, default=None, help="deepest block to hook (default: all)")
    parser.add_argument("--mlp", action="store_true", help="also capture the MLP output of those blocks")
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--dtype", default="bfloat16", help="storage dtype (default bfloat16: half the disk)")
    parser.add_argument("--quick", action="store_true", help="a few thousand tokens: a pipeline check")
    args = parser.parse_args(argv)

    loaded = load_model(args.model)
    n_layers = sum(1 for name in aliases(loaded.model) if name.startswith("resid."))
    deepest = n_layers - 1 if args.max_layer is None else min(args.max_layer, n_layers - 1)
    layers = range(0, deepest + 1, args.every)
    hooks = [f"resid.{layer}" for layer in layers] + ([f"mlp.{layer}" for layer in layers] if args.mlp else [])
    tokens, context_len = (2048, 64) if args.quick else (args.tokens, 128)
    cfg = HarvestConfig(out=args.out, model=args.model, hooks=tuple(hooks), tokens=tokens, context_len=context_len,
                        dtype=args.dtype)
    store = ActivationStore(harvest(cfg, loaded=loaded, overwrite=True))
    print(store)
    for hook in store.hook_names:  # norms over the first shard, BOS left out
        chunk = next(iter(store.iter_chunks(hook, skip_bos=True)))
        alias = store.hooks[hook]["requested"]
        print(f"{alias:>10}  {hook:<32} mean ‖x‖ = {chunk.acts.norm(dim=-1).mean():8.2f} over {len(chunk.acts)} tokens")
    return store


if __name__ == "__main__":
    main()
