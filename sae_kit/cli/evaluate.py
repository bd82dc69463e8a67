"""`sae-kit evaluate --run RUN [--store DIR] [--model M] …`: flags map one-to-one onto `EvalConfig`."""

from __future__ import annotations

import argparse

from sae_kit.config import add_config_flags, config_from_args
from sae_kit.evaluation import EvalConfig, evaluate


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="reconstruction and spliced-model metrics of a run or sweep on held-out data",
        description="Evaluate a trained run (or every run of a sweep) on the store's held-out split; "
                    "writes eval.json per run and eval.md (a table) in --run.")
    add_config_flags(parser, EvalConfig, required=("run",))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    evaluate(config_from_args(EvalConfig, args))
    return 0
