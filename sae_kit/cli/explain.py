"""`sae-kit explain --analysis A (--features 0-99 | --top 50) [--explainer-url URL --explainer-model NAME]`."""

from __future__ import annotations

import argparse
import statistics

from sae_kit.analysis.autointerp import ExplainConfig, explain_features
from sae_kit.config import add_config_flags, config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("explain", help="explain features with a chat model and score the explanations "
                                              "(detection, fuzzing)")
    add_config_flags(p, ExplainConfig, required=("analysis",))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(ExplainConfig, args)
    payload = explain_features(cfg)
    entries = payload["features"]
    print(f"{len(entries)} features explained in {cfg.analysis}/explanations.json "
          f"(prompts and answers: {cfg.analysis}/autointerp/feature-<id>.json)")
    for kind in cfg.scorers:
        scores = [e[kind]["balanced_accuracy"] for e in entries.values()
                  if e.get(kind, {}).get("balanced_accuracy") is not None]
        unparsed = sum(e.get(kind, {}).get("n_unparsed", 0) for e in entries.values())
        if scores:
            print(f"  {kind}: mean balanced accuracy {statistics.mean(scores):.3f} over {len(scores)} features "
                  f"({unparsed} unreadable answers left out)")
    if payload.get("unexplained"):
        print(f"  {len(payload['unexplained'])} features got no readable explanation (see their audit files)")
    return 0
