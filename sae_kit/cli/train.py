"""`sae-kit train`: flags map one-to-one onto `TrainConfig` fields (names, help and defaults are
taken from the dataclass, so there is one source of truth)."""

from __future__ import annotations

import argparse

from sae_kit.autoencoders import ARCH_DESCRIPTIONS
from sae_kit.config import add_config_flags, config_from_args
from sae_kit.errors import SaeKitError
from sae_kit.training import TrainConfig, train
from sae_kit.training.checkpoint import find_checkpoint, load_checkpoint
from sae_kit.training.distributed import session

NAMES = {"archs": "arch", "l1_coefficients": "l1", "ks": "k", "dtype": "compute_dtype", "l0_coefficients": "l0_coefficient",
         "dataset_split": "split"}
"""TrainConfig fields whose flag differs from the field name (--arch, --l1, --k, --compute-dtype, --l0-coefficient, --split)."""

EXAMPLES = """examples:
  sae-kit train --store runs/store --hook resid.8 --out runs/sae
  sae-kit train --store runs/store --out runs/sweep --l1 1,2,5,10 --tokens 2M
  sae-kit train --store runs/store --out runs/all --arch sae,topk,ae,dae,vae,pca --k 32
  sae-kit train --store runs/store --out runs/archs --arch batchtopk,jumprelu,gated,matryoshka --k 32 \
      --l0-coefficient 1 --l1 2 --matryoshka-prefixes 128,512,2048
  sae-kit train --store runs/store-mlp --hook mlp_in.8 --target mlp.8 --arch skip-transcoder --out runs/tc
  sae-kit train --out runs/sae --resume
  sae-kit train --model default --hook resid.4 --hook resid.8 --tokens 2M --out runs/fly     # on the fly, no store
  torchrun --nproc-per-node 8 -m sae_kit.cli train --model google/gemma-2-2b --dataset monology/pile-uncopyrighted \\
      --streaming --hook resid.6 --hook resid.12 --hook resid.18 --hook resid.24 --arch topk --k 64 \\
      --expansion 16 --tokens 500M --out runs/gemma          # data parallel; --shard-latents splits the latents

architectures:
""" + "\n".join(f"  {name:<16} {text}" for name, text in ARCH_DESCRIPTIONS.items()) + "\n"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train SAEs and baselines on an activation store",
        description="Train one or several autoencoders on the same shuffled batches of an activation store. "
                    "Defaults are Anthropic's April 2024 recipe.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(parser, TrainConfig, names=NAMES, required=("out",), enforce_required=False,
                     deprecated={"--dtype": "--compute-dtype"}, skip=("hook",))
    parser.add_argument("--hook", dest="hook", action="append", default=None, metavar="HOOK",
                        help="Hook to train on (module name or alias; optional if the store has one); on the fly, "
                             "repeat it to train one model per hook from one forward pass (default: None)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint (other flags may be left out)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def config_from(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from the flags given; with --resume, unspecified fields come from the checkpoint."""
    base: dict = {}
    if args.resume:
        if args.out is None:
            raise SaeKitError("--resume needs --out RUN (the run to continue)")
        checkpoint = find_checkpoint(args.out)
        if checkpoint is None:
            raise SaeKitError(f"--resume: {args.out} holds no checkpoint to continue from")
        base = load_checkpoint(checkpoint)[0]["training"]
    if args.out is None and "out" not in base:
        raise SaeKitError("sae-kit train needs --out")
    if args.store is None and "store" not in base:
        base["store"] = None  # on the fly: --model / --dataset say where the activations come from
    return config_from_args(TrainConfig, args, base=base)


def run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    with session("train", device=cfg.device) as ranks:
        runs = train(cfg, resume=args.resume, progress=not args.no_progress, ranks=ranks)
    for path in runs if ranks.is_main else ():
        print(path)
    return 0
