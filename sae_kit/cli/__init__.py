"""The `sae-kit` command line: one module per command, each a thin layer over the library.

Each command module has `register(subparsers)`, which adds its subcommand(s) with flags made
from the stage's config dataclass (`sae_kit.config.add_config_flags`) and sets `run(args)` as the
handler. Errors meant for the user are `SaeKitError`s and are printed as one line on stderr with
exit status 1 (argparse's usage errors exit with 2); `--debug` or SAE_KIT_DEBUG=1 shows the
traceback instead. No stage module imports this package.

    python -m sae_kit.cli COMMAND …   (what torchrun launches)   ≡   sae-kit COMMAND …
"""

from __future__ import annotations

import argparse
import os
import sys

from sae_kit.cli import analyze, dashboard, demo, evaluate, explain, export, harvest, steer, train
from sae_kit.errors import SaeKitError

COMMANDS = (harvest, train, evaluate, analyze, dashboard, explain, export, steer, demo)
"""Command modules, in the order `sae-kit --help` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-kit",
        description="Sparse-autoencoder interpretability: harvest, train, evaluate, analyze, steer.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: SAE_KIT_DEBUG=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("SAE_KIT_DEBUG", "") not in ("", "0")
    try:
        result = args.func(args)
    except SaeKitError as err:
        if debug:
            raise
        print(f"sae-kit {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sae-kit {args.command}: interrupted; work already written is kept.", file=sys.stderr)
        return 130
    return int(result or 0)
