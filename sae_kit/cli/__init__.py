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

from sae_kit.cli import analyze, dashboard, demo, evaluate, explain, export, harvest, import_, steer, train
from sae_kit.errors import SaeKitError, describe_os_error, print_error_line

COMMANDS = (harvest, train, evaluate, analyze, dashboard, explain, steer, demo, export, import_)
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
    except KeyboardInterrupt:
        print(f"sae-kit {args.command}: interrupted; work already written is kept.", file=sys.stderr)
        return 130
    except Exception as err:  # every failure is one line on stderr; --debug shows the traceback
        if debug:
            raise
        print_error_line(f"sae-kit {args.command}: error: {one_line(err)}")
        return 1
    return int(result or 0)


def one_line(err: Exception) -> str:
    """The message a user sees for `err`: ours as written, the system's with what to do, and
    anything unexpected named as an internal error (a bug to report, with --debug's traceback)."""
    if isinstance(err, SaeKitError):
        return str(err)
    if isinstance(err, OSError):
        return describe_os_error(err)
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError) and (
            "can't allocate memory" in str(err) or "out of memory" in str(err).lower())):
        return "out of memory: lower --batch-size, --d-sae / --expansion or --tokens, or use a larger machine"
    text = " ".join(str(err).split())[:300] or "(no message)"
    return (f"internal error ({type(err).__name__}: {text}); run again with --debug for the traceback and "
            "report it")
