"""The `sae-kit` command line: thin wrappers over the library.

Each stage module exposes `add_cli(subparsers)`, which adds its subcommand(s) and sets
`func(args) -> int | None` as the parser default. Errors meant for the user are raised as
`SaeKitError` and printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sae_kit.errors import SaeKitError

# Stage modules that contribute subcommands, in the order `sae-kit --help` lists them.
COMMAND_MODULES = (
    "sae_kit.harvest",
    "sae_kit.train",
    "sae_kit.evaluate",
    "sae_kit.analysis",
    "sae_kit.dashboard",
    "sae_kit.steering",
    "sae_kit.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-kit",
        description="Sparse-autoencoder interpretability: harvest, train, evaluate, analyze, steer.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except SaeKitError as err:
        print(f"sae-kit {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sae-kit {args.command}: interrupted; work already written is kept.", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
