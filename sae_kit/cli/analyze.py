"""`sae-kit analyze` (the streaming pass over a store) and `sae-kit features` (the prompt view)."""

from __future__ import annotations

import argparse

from sae_kit.analysis import AnalysisConfig, analyze, load_analysis, select_features
from sae_kit.analysis.prompt_view import PromptViewConfig, format_prompt_features, prompt_features_for_run
from sae_kit.config import add_config_flags, config_from_args

NAMES = {"top_k": "examples", "n_quantiles": "quantiles"}
"""AnalysisConfig fields whose flag differs: --examples (top examples and band samples per feature),
--quantiles. `--top` always counts features (dashboard, features); `--examples` counts examples."""


def register(subparsers) -> None:
    p = subparsers.add_parser("analyze",
                              help="one pass over a store: top examples, bands, density, histograms, logit effects")
    add_config_flags(p, AnalysisConfig, names=NAMES, required=("run", "out"),
                     deprecated={"--top-k": "--examples", "--no-logits": ("--no-logit-effects", False),
                                 "--keep-bos": ("--no-skip-bos", False)})
    p.add_argument("--overwrite", action="store_true", help="replace an existing analysis in --out")
    p.set_defaults(func=run_analyze)

    f = subparsers.add_parser("features", help="the features that fire most on a text, token by token")
    add_config_flags(f, PromptViewConfig, required=("run", "text"),
                     deprecated={"--no-bos": ("--no-prepend-bos", False)})
    f.set_defaults(func=run_features)


def run_analyze(args: argparse.Namespace) -> int:
    analysis = analyze(config_from_args(AnalysisConfig, args), overwrite=args.overwrite)
    info = analysis.info
    alive = int((analysis.fire_count > 0).sum())
    print(f"{analysis.path}: {analysis.n_features} features, {alive} fired on {info['n_tokens']:,} tokens "
          f"({info['tokens_per_second']:,.0f} tokens/s); interesting (1e-4 ≤ density ≤ 1e-2): "
          f"{len(select_features(analysis))}")
    return 0


def run_features(args: argparse.Namespace) -> int:
    cfg = config_from_args(PromptViewConfig, args)
    analysis = load_analysis(cfg.analysis) if cfg.analysis else None
    options = {k: v for k, v in cfg.to_dict().items() if k not in ("run", "text", "analysis")}
    print(format_prompt_features(prompt_features_for_run(cfg.run, cfg.text, **options), analysis))
    return 0
