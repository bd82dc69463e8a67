"""`sae-kit export FORMAT …`: write a trained run or an analysis in another tool's format.

One subcommand per format; adding a format is one `add_<format>(formats)` function that adds
its subparser and sets its handler, listed in FORMATS.
"""

from __future__ import annotations

import argparse

from sae_kit.analysis.neuronpedia import NeuronpediaOptions, export_neuronpedia
from sae_kit.autoencoders.saelens import SaelensExportConfig, export_saelens_run
from sae_kit.config import add_config_flags, config_from_args, given_values, parse_count


def add_saelens(formats) -> None:
    p = formats.add_parser(
        "saelens", help="a SAELens SAE directory (cfg.json + sae_weights.safetensors)",
        description="Write RUN as a SAELens SAE directory that SAE.load_from_disk opens. BatchTopK and Matryoshka "
                    "SAEs are written as JumpReLU SAEs with their estimated threshold, as SAELens saves them.")
    add_config_flags(p, SaelensExportConfig, required=("run", "out"))  # flags map one-to-one onto the config
    p.set_defaults(func=run_saelens)


def run_saelens(args: argparse.Namespace) -> int:
    print(export_saelens_run(config_from_args(SaelensExportConfig, args)))
    return 0


def add_neuronpedia(formats) -> None:
    p = formats.add_parser("neuronpedia", help="the feature and activation JSON Neuronpedia ingests "
                                               "(SAEDashboard batch files and the bulk-import layout)")
    p.add_argument("--analysis", required=True, help="analysis directory (from sae-kit analyze)")
    p.add_argument("--out", required=True, help="export directory to write")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--features", help="feature ids and ranges, e.g. 0-99,120 (default: every feature that fired)")
    which.add_argument("--top", type=parse_count, metavar="N", help="the N features first by --sort-by")
    add_config_flags(p, NeuronpediaOptions)
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    p.set_defaults(func=run_neuronpedia)


def run_neuronpedia(args: argparse.Namespace) -> int:
    out = export_neuronpedia(args.analysis, args.out, features=args.features, top=args.top, overwrite=args.overwrite,
                             **given_values(args, NeuronpediaOptions))
    print(f"wrote {out / 'dashboard'} (SAEDashboard batch files) and {out / 'export'} (Neuronpedia bulk-import layout)")
    return 0


FORMATS = (add_saelens, add_neuronpedia)
"""One function per format, each adding its subcommand."""


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a trained run (SAELens) or an analysis (Neuronpedia) in "
                                             "another tool's format",
                              description="Write a trained run or an analysis in another tool's on-disk format.")
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    for add in FORMATS:
        add(formats)
