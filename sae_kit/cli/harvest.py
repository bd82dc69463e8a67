"""`sae-kit hooks`, `sae-kit harvest`, `sae-kit verify`: hook points, activation stores, their integrity."""

from __future__ import annotations

import argparse

from sae_kit.config import add_config_flags, config_from_args, given_values
from sae_kit.errors import SaeKitError
from sae_kit.harvest import ActivationStore, HarvestConfig, harvest
from sae_kit.lm.corpus import CorpusSpec
from sae_kit.lm.hooks import format_hook_points, list_hook_points
from sae_kit.lm.models import load_model
from sae_kit.training.distributed import session

HARVEST_NAMES = {"hooks": "hook", "dtype": "store_dtype"}
"""HarvestConfig fields whose flag differs from the field: --hook (repeatable), --store-dtype."""

EXAMPLES = """examples:
  sae-kit harvest --hook resid.8 --tokens 250000 --out runs/store
  sae-kit harvest --hook resid.6 --hook mlp.6 --store-dtype bfloat16 --out runs/store6
  sae-kit harvest --hook mlp_in.8 --hook mlp.8 --out runs/store-mlp   # a transcoder's input and target, one pass
  sae-kit harvest --model gpt2 --dataset NeelNanda/pile-10k --hook resid.8 --tokens 2M --out runs/gpt2-store
  sae-kit harvest --out runs/store --resume
  torchrun --nproc-per-node 4 -m sae_kit.cli harvest --model gpt2 --dataset NeelNanda/pile-10k --hook resid.8 \\
      --tokens 100M --out runs/gpt2-store       # every rank writes its share of the shards; same store
"""


def register(subparsers) -> None:
    hooks = subparsers.add_parser("hooks", help="list every hookable module of a model (and the MLP inputs) with its shape")
    add_config_flags(hooks, HarvestConfig, skip=tuple(f for f in HarvestConfig.__dataclass_fields__
                                                     if f not in ("model", "device", "model_dtype")))
    hooks.set_defaults(func=run_hooks)

    p = subparsers.add_parser("harvest", help="capture activations at hook points into a sharded safetensors store",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p, HarvestConfig, names=HARVEST_NAMES, required=("out",), metavars={"hooks": "HOOK"},
                     deprecated={"--dtype": "--store-dtype"})
    add_config_flags(p, CorpusSpec)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue an interrupted harvest in --out")
    group.add_argument("--overwrite", action="store_true", help="replace an existing store in --out")
    p.set_defaults(func=run_harvest)

    v = subparsers.add_parser("verify", help="re-hash every shard of a store against its manifest")
    v.add_argument("store", help="store directory")
    v.set_defaults(func=run_verify)


def run_hooks(args: argparse.Namespace) -> int:
    cfg = config_from_args(HarvestConfig, args, base={"out": "-"})  # only the model fields are flags here
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.model_dtype)
    print(format_hook_points(list_hook_points(loaded.model)))
    return 0


def run_harvest(args: argparse.Namespace) -> int:
    corpus = CorpusSpec(**given_values(args, CorpusSpec))
    cfg = config_from_args(HarvestConfig, args, base={"corpus": corpus})
    with session("harvest", device=cfg.device) as ranks:
        path = harvest(cfg, resume=args.resume, overwrite=args.overwrite, ranks=ranks if ranks.enabled else None,
                       progress=ranks.is_main)
    if ranks.is_main:
        print(ActivationStore(path))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    store = ActivationStore(args.store)
    problems = store.verify()
    for problem in problems:
        print(f"BAD {problem}")
    if problems:
        raise SaeKitError(f"{len(problems)} of {len(store.shards)} shards failed verification (listed above); re-harvest them")
    state = "complete" if store.complete else "incomplete (resume it with sae-kit harvest --resume)"
    print(f"OK: {len(store.shards)} shards, {store.n_tokens} tokens, all checksums match; harvest {state}")
    return 0
