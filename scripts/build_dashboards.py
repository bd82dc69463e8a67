"""Feature dashboards from scratch, through the library API: harvest -> train -> analyze -> site.

    python scripts/build_dashboards.py --work runs/dash                  # SmolLM2-135M, resid.8
    python scripts/build_dashboards.py --work runs/dash --store STORE    # reuse a harvested store
    python scripts/build_dashboards.py --work runs/dash --screenshots reports/screenshots
    python scripts/build_dashboards.py --quick --model tests/tiny-llama --hook resid.1 --work /tmp/q

Each stage reuses its output directory if it is already complete, so a second run only redoes
what is missing. --quick shrinks every size (a smoke test: seconds, not minutes).
Open WORK/site/index.html in a browser afterwards; it works offline.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sae_kit.analysis import AnalysisConfig, analyze, load_analysis, select_features
from sae_kit.dashboard import build_site
from sae_kit.harvest import HarvestConfig, harvest
from sae_kit.training import TrainConfig, train

FULL = dict(tokens=100_000, context_len=128, expansion=8, train_tokens=2_000_000, lr=4e-4, batch=4096, pages=300)
QUICK = dict(tokens=4_096, context_len=32, expansion=2, train_tokens=16_384, lr=1e-3, batch=512, pages=12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="directory for the store, run, analysis and site")
    parser.add_argument("--model", default="default", help="language model (default: embedded SmolLM2-135M)")
    parser.add_argument("--hook", default="resid.8", help="hook point (default resid.8)")
    parser.add_argument("--store", help="an existing store to use instead of harvesting one")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--prompt", action="append", default=[], help="a text for the prompt view (repeatable)")
    parser.add_argument("--screenshots", help="save index.png, feature.png, prompts.png here (needs chromium)")
    parser.add_argument("--screenshot-feature", type=int, help="the feature page to screenshot (default: the first built)")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    work = Path(args.work)

    # 1. Activations at the hook, over the default corpus (Python standard-library docstrings).
    store = Path(args.store) if args.store else work / "store"
    if not args.store and not _complete(store / "manifest.json"):
        harvest(HarvestConfig(out=str(store), model=args.model, hooks=(args.hook,), tokens=size["tokens"],
                              context_len=size["context_len"]), resume=store.exists())

    # 2. An L1 sparse autoencoder with the April 2024 recipe (a higher lr: few steps here).
    run = work / "run"
    if not (run / "weights.safetensors").is_file():
        train(TrainConfig(store=str(store), out=str(run), hook=args.hook, expansion=size["expansion"],
                          tokens=size["train_tokens"], batch_size=size["batch"], lr=size["lr"],
                          norm_estimation_tokens=min(size["tokens"], 131_072), checkpoint_every_tokens=None))

    # 3. One pass over the store: top examples, interval bands, histograms, logit effects.
    analysis_dir = work / "analysis"
    if (analysis_dir / "analysis.json").is_file():
        analysis = load_analysis(analysis_dir)
    else:
        analysis = analyze(AnalysisConfig(run=str(run), out=str(analysis_dir)))

    # 4. Pages for the features most worth reading: neither rare nor dense, strongest first.
    features = select_features(analysis, min_density=1e-4, max_density=1e-2, limit=size["pages"])
    if len(features) < size["pages"]:  # a small or young SAE: fill up with any live feature
        extra = select_features(analysis, min_density=0, max_density=1)
        features += [f for f in extra if f not in features][: size["pages"] - len(features)]
    site = build_site(analysis_dir, work / "site", features=features, prompts=args.prompt, overwrite=True)
    print(f"{len(features)} feature pages: {site / 'index.html'}")

    if args.screenshots:
        from sae_kit.dashboard.browser import check_site

        shown = args.screenshot_feature if args.screenshot_feature in features else features[0]
        report = check_site(site, feature=shown, screenshots=args.screenshots)
        for page in report.pages:
            print(f"{page.screenshot}: {page.tokens} tokens, {page.plots} plots, "
                  f"{len(page.console_errors)} console errors, {len(page.foreign_requests)} network requests")


def _complete(manifest: Path) -> bool:
    return manifest.is_file() and json.loads(manifest.read_text()).get("complete", False)


if __name__ == "__main__":
    main()
