"""`sae-kit steer`: clamp, ablate or add SAE features while the model generates.

    sae-kit steer --run RUN --analysis A --feature 123=10x --prompt "The weather today" --out DIR
    sae-kit steer --run RUN --analysis A --feature 123=1x --sweep -10,-5,0,5,10 --prompt-file prompts.txt --out DIR

Flags map one-to-one onto `SteerConfig` (what to steer) and `GenerateOptions` (how to decode).
Prints baseline and steered generations side by side; with --out writes DIR/report.md,
DIR/report.html (plotly dose–response figure, works offline) and DIR/results.json.
"""

from __future__ import annotations

import argparse
import re

from sae_kit.config import add_config_flags, command_line, config_from_args
from sae_kit.steering.experiment import SteerConfig, run_experiment
from sae_kit.steering.generate import GenerateOptions

# Let `--sweep -10,-5,0` through: argparse otherwise takes "-10,-5,0" for an unknown option.
_NEGATIVE_LIST = re.compile(r"^-\.?\d[\d.,eE+\-x ]*$")

STEER_FLAGS = dict(metavars={"feature": "ID=VALUE", "ablate": "ID", "add": "ID=VALUE", "sweep": "V,V,..."},
                   verbatim=("feature", "ablate", "add", "prompt"))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "steer",
        help="clamp / ablate / add SAE features during generation; side-by-side report and dose–response sweep",
        description="Steer generation by changing SAE features at the SAE's hook point (clamping keeps the SAE "
        "error term, as in Templeton et al. 2024). VALUE is absolute (4.5) or a multiple of the feature's max "
        "activation over the store (10x, -5x; needs --analysis).",
    )
    p._negative_number_matcher = _NEGATIVE_LIST
    add_config_flags(p, SteerConfig, required=("run",), deprecated={"--dtype": "--model-dtype"}, **STEER_FLAGS)
    add_config_flags(p, GenerateOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(SteerConfig, args)
    options = config_from_args(GenerateOptions, args)
    run_experiment(cfg, options, command=command_line("sae-kit steer", [cfg, options]))
    return 0
