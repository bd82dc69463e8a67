"""`sae-kit train`: flags map one-to-one onto `TrainConfig` fields (names, help and defaults are
taken from the dataclass, so there is one source of truth)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import textwrap
import typing

from sae_kit.checkpoint import find_checkpoint, load_checkpoint
from sae_kit.errors import SaeKitError
from sae_kit.recipe import TrainConfig

RENAMED = {"archs": "arch", "l1_coefficients": "l1", "ks": "k"}
"""Fields whose flag is shorter than the field name (--arch, --l1, --k)."""

EXAMPLES = """examples:
  sae-kit train --store runs/store --hook resid.8 --out runs/sae
  sae-kit train --store runs/store --out runs/sweep --l1 1,2,5,10 --tokens 2M
  sae-kit train --store runs/store --out runs/all --arch sae,topk,ae,dae,vae,pca --k 32
  sae-kit train --out runs/sae --resume
"""


def field_docs(cls) -> dict[str, str]:
    """The docstring under each dataclass field (read from the source with ast)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def parse_count(text: str) -> int:
    """'2000000', '2M', '500k', '1.5G' -> int."""
    text = text.strip().replace("_", "").replace(",", "")
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale != 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (use e.g. 2000000, 2M or 500k)") from None
    if value != int(value):
        raise argparse.ArgumentTypeError(f"not a whole count: {text!r}")
    return int(value)


def _list_of(kind):
    def parse(text: str):
        try:
            return tuple(kind(item) for item in text.split(",") if item.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
    return parse


def add_train_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train SAEs and baselines on an activation store",
        description="Train one or several autoencoders (sae, topk, ae, dae, vae, pca) on the same "
                    "shuffled batches of an activation store. Defaults are Anthropic's April 2024 recipe.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    docs = field_docs(TrainConfig)
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + RENAMED.get(f.name, f.name).replace("_", "-")
        default = "required" if f.default is dataclasses.MISSING else f"default: {f.default!r}"
        help_text = f"{docs.get(f.name, '')} ({default})".replace("%", "%%")
        hint = hints[f.name]
        args = typing.get_args(hint)
        if hint is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        kwargs: dict = {}
        base = next((a for a in args if a is not type(None)), hint) if typing.get_origin(hint) in (typing.Union, type(int | None)) else hint
        if typing.get_origin(base) is typing.Literal:
            kwargs["choices"] = typing.get_args(base)
        elif typing.get_origin(base) is tuple:
            kind = typing.get_args(base)[0]
            kwargs["type"] = _list_of(parse_count if kind is int else kind)
            kwargs["metavar"] = RENAMED.get(f.name, f.name).upper() + "[,…]"
        elif base is int:
            kwargs["type"] = parse_count
            kwargs["metavar"] = "N"
        elif base is float:
            kwargs["type"] = float
        parser.add_argument(flag, dest=f.name, default=None, help=help_text, **kwargs)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint (other flags may be left out)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_train)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from the flags given; with --resume, unspecified fields come from the checkpoint."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    base: dict = {}
    if args.resume:
        if "out" not in given:
            raise SaeKitError("--resume needs --out RUN (the run to continue)")
        checkpoint = find_checkpoint(given["out"])
        if checkpoint is None:
            raise SaeKitError(f"--resume: {given['out']} holds no checkpoint to continue from")
        base = load_checkpoint(checkpoint)[0]["training"]
    merged = {**base, **given}
    missing = [name for name in ("store", "out") if name not in merged]
    if missing:
        raise SaeKitError(f"sae-kit train needs {' and '.join('--' + m for m in missing)}")
    return TrainConfig.from_dict(merged)


def run_train(args: argparse.Namespace) -> int:
    from sae_kit.train import train

    cfg = config_from_args(args)
    runs = train(cfg, resume=args.resume, progress=not args.no_progress)
    for run in runs:
        print(run)
    return 0
