"""`sae-kit demo`: the whole pipeline on the embedded defaults; flags map onto `DemoConfig`."""

from __future__ import annotations

import argparse
import dataclasses

from sae_kit.config import add_config_flags, given_values
from sae_kit.demo import DemoConfig, quick_config, run_demo


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the whole pipeline on the embedded defaults, ending in a report",
                              description="Harvest, train the L1 SAE and its baselines, evaluate, analyse, build "
                              "the dashboard, steer and write the report; resumable. --quick is a reduced run in "
                              "under 3 minutes (what the tests run); other flags override single settings.")
    quick = quick_config()
    differs = {f.name: getattr(quick, f.name) for f in dataclasses.fields(DemoConfig)
               if getattr(quick, f.name) != getattr(DemoConfig(), f.name) and f.name != "quick"}
    add_config_flags(p, DemoConfig, verbatim=("steer_prompts",), metavars={"steer_prompts": "TEXT"})
    p.add_argument("--fresh", action="store_true", help="discard the working directory and start over")
    p.epilog = "with --quick, the defaults are: " + ", ".join(f"{k}={v!r}" for k, v in differs.items())
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides = given_values(args, DemoConfig)
    quick = overrides.pop("quick", False)
    cfg = quick_config(**overrides) if quick else DemoConfig(**overrides)
    run_demo(cfg, fresh=args.fresh)
    return 0
