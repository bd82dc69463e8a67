"""`sae-kit evaluate --run RUN [--suite probing,absorption] [--store DIR] [--model M] …`: flags map
one-to-one onto `EvalConfig` (`--suite` is its `suites`, `--probe-dataset` its `probe_datasets`)."""

from __future__ import annotations

import argparse

from sae_kit.config import add_config_flags, config_from_args
from sae_kit.evaluation import EvalConfig, evaluate


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="reconstruction, spliced-model, sparse-probing and absorption metrics of a run or sweep",
        description="Evaluate a trained run (or every run of a sweep) on the store's held-out split; "
                    "writes eval.json (and eval_latents.safetensors) per run and eval.md (tables) in --run. "
                    "--suite probing,absorption adds sparse probing and first-letter feature absorption "
                    "(SAEBench), which run texts through the language model.")
    add_config_flags(parser, EvalConfig, required=("run",),
                     names={"suites": "suite", "probe_datasets": "probe_dataset"},
                     metavars={"probe_k": "K[,…]", "probe_datasets": "NAME[,…]"})
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    evaluate(config_from_args(EvalConfig, args))
    return 0
