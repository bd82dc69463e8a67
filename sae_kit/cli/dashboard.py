"""`sae-kit dashboard --analysis A --out SITE [--all | --features 0-99 | --top 200]`: the static offline site."""

from __future__ import annotations

import argparse

from sae_kit.analysis import load_analysis, parse_feature_list
from sae_kit.config import add_config_flags, given_values, parse_count
from sae_kit.dashboard import SiteOptions, build_site


def register(subparsers) -> None:
    p = subparsers.add_parser("dashboard",
                              help="write a static HTML site of every feature (works offline, from file://)")
    p.add_argument("--analysis", required=True, help="analysis directory (from sae-kit analyze)")
    p.add_argument("--out", required=True, help="site directory to write")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true",
                       help="every feature that fired (the default, for SAEs of any width)")
    which.add_argument("--features", help="feature ids and ranges, e.g. 0-99,120,300-310")
    which.add_argument("--top", type=parse_count, metavar="N",
                       help="the N features first by --sort-by (within the density range)")
    add_config_flags(p, SiteOptions, names={"prompts": "prompt"}, metavars={"prompts": "TEXT"}, verbatim=("prompts",))
    p.add_argument("--overwrite", action="store_true", help="replace an existing site in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    features = parse_feature_list(args.features, load_analysis(args.analysis).n_features) if args.features else None
    out = build_site(args.analysis, args.out, features=features, top=args.top, overwrite=args.overwrite,
                     **given_values(args, SiteOptions))
    print(f"wrote {out / 'index.html'} (open it in a browser; it works offline)")
    return 0
