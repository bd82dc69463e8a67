"""`sae-kit export FORMAT …`: write a trained run in another tool's format, one subcommand per
format (`saelens`; flags map one-to-one onto the format's config dataclass)."""

from __future__ import annotations

import argparse

from sae_kit.autoencoders.saelens import SaelensExportConfig, export_saelens_run
from sae_kit.config import add_config_flags, config_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write a trained run in another tool's format (SAELens)",
        description="Write a trained run in another tool's on-disk format.")
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    saelens = formats.add_parser(
        "saelens", help="a SAELens SAE directory (cfg.json + sae_weights.safetensors)",
        description="Write RUN as a SAELens SAE directory that SAE.load_from_disk opens. BatchTopK and Matryoshka "
                    "SAEs are written as JumpReLU SAEs with their estimated threshold, as SAELens saves them.")
    add_config_flags(saelens, SaelensExportConfig, required=("run", "out"))
    saelens.set_defaults(func=run_saelens)


def run_saelens(args: argparse.Namespace) -> int:
    print(export_saelens_run(config_from_args(SaelensExportConfig, args)))
    return 0
