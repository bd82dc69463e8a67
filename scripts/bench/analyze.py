"""Benchmark: the analysis pass against encoding the same tokens alone, and the dashboard build.

    python scripts/bench/analyze.py                         # harvests ~51k tokens of SmolLM2 resid.8 first
    python scripts/bench/analyze.py --store STORE --work W  # reuse a store
    python scripts/bench/analyze.py --run RUN               # a trained SAE instead of the calibrated one

Both passes read the same store batches (same reader, same batch size) and encode them with the
same autoencoder; the analysis pass also keeps every statistic (top-k, bands, histograms,
density) and finalizes them. They alternate `--repeats` times; the best of each is compared
(the machine may be shared: best-of-N is the least disturbed measurement). Target: analysis
≥ 0.8 × encoder throughput. Then: the time to build the dashboard for `--pages` features.

Without --run the autoencoder is a *calibrated* SAE (d_in 576, d_sae 4608): random unit decoder
directions, W_enc = W_decᵀ, and b_enc set so that feature densities are log-uniform over
[1e-4, 1e-1] on the store, which gives L0 ≈ 65, the sparsity of trained SAEs (the cost of the
bookkeeping grows with L0, so an untrained SAE with L0 ≈ d_sae/2 would not be representative).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from sae_kit.analysis import AnalysisConfig, analyze, select_features, stream_feature_stats, token_batches
from sae_kit.autoencoders import load_autoencoder
from sae_kit.dashboard import build_site
from sae_kit.harvest import ActivationStore, HarvestConfig, harvest

from dashboard import calibrated_sae  # the same calibrated SAE, its quantiles a block of features at a time  # noqa: E402


def encode_only(store, hook, sae, batch_size, device) -> tuple[int, float]:
    started = time.perf_counter()
    n = 0
    with torch.no_grad():
        for x, _ in token_batches(store, hook, batch_size=batch_size):
            sae.encode(x.to(device))
            n += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n, time.perf_counter() - started


def analysis_pass(store, hook, sae, batch_size, device) -> tuple[int, float]:
    started = time.perf_counter()
    stats = stream_feature_stats(token_batches(store, hook, batch_size=batch_size), sae.encode, sae.d_sae,
                                 device=device, progress=False)
    stats.finalize()
    return stats.n_tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/bench-analyze", help="working directory (store, runs, site)")
    parser.add_argument("--store", help="existing store (default: harvest WORK/store)")
    parser.add_argument("--model", default="default", help="model to harvest from (default SmolLM2-135M)")
    parser.add_argument("--hook", default="resid.8")
    parser.add_argument("--tokens", type=int, default=51_200, help="tokens to harvest")
    parser.add_argument("--run", help="a trained run to benchmark instead of the calibrated SAE")
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pages", type=int, default=1000, help="features in the dashboard build (0: skip)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    work = Path(args.work)
    device = torch.device(args.device)

    store_path = Path(args.store) if args.store else work / "store"
    if not args.store and not (store_path / "manifest.json").is_file():
        harvest(HarvestConfig(out=str(store_path), model=args.model, hooks=(args.hook,), tokens=args.tokens))
    store = ActivationStore(store_path)
    hook = store.resolve_hook_name(None if len(store.hook_names) == 1 else args.hook)
    if args.run:
        run = Path(args.run)
        sae = load_autoencoder(run, device=device)
    else:
        run = work / "calibrated-run"
        sae = calibrated_sae(store, hook, args.d_sae)
        sae.save(run)
        sae = sae.to(device)
    with torch.no_grad():
        x = next(token_batches(store, hook, batch_size=4096))[0].to(device)
        l0 = float((sae.encode(x) > 0).sum(1).float().mean())

    print(f"store {store.path}: {store.n_tokens:,} tokens, hook {hook} (d_in {store.d_in(hook)}); "
          f"SAE d_sae {sae.d_sae}, L0 {l0:.1f}; device {device}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    encode_rates, analysis_rates = [], []
    for r in range(args.repeats):
        n, seconds = encode_only(store, hook, sae, args.batch_size, device)
        encode_rates.append(n / seconds)
        n, seconds = analysis_pass(store, hook, sae, args.batch_size, device)
        analysis_rates.append(n / seconds)
        print(f"  repeat {r + 1}: encode only {encode_rates[-1]:,.0f} tok/s   analysis {analysis_rates[-1]:,.0f} tok/s")
    best_ratio = max(analysis_rates) / max(encode_rates)
    median_ratio = statistics.median(analysis_rates) / statistics.median(encode_rates)
    print(f"encode only: {max(encode_rates):,.0f} tokens/s (best of {args.repeats})")
    print(f"analysis:    {max(analysis_rates):,.0f} tokens/s (best of {args.repeats})")
    print(f"ratio analysis / encode: {best_ratio:.2f} (best vs best), {median_ratio:.2f} (median vs median); target ≥ 0.8")

    result = {"tokens": store.n_tokens, "d_sae": sae.d_sae, "l0": round(l0, 1), "encode_tokens_per_s": round(max(encode_rates)),
              "analysis_tokens_per_s": round(max(analysis_rates)), "ratio_best": round(best_ratio, 3),
              "ratio_median": round(median_ratio, 3)}
    if args.pages:
        started = time.perf_counter()
        analysis = analyze(AnalysisConfig(run=str(run), out=str(work / "analysis"), store=str(store.path),
                                          hook=hook, device=args.device), overwrite=True, progress=False)
        analyze_seconds = time.perf_counter() - started
        features = select_features(analysis, min_density=0, max_density=1, limit=args.pages)
        started = time.perf_counter()
        site = build_site(analysis.path, work / "site", features=features, overwrite=True, progress=False)
        build_seconds = time.perf_counter() - started
        size = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
        print(f"analyze (pass + logit effects + model load): {analyze_seconds:.1f} s")
        print(f"dashboard for {len(features)} features: {build_seconds:.1f} s "
              f"({1000 * build_seconds / len(features):.0f} ms per page), {size / 2**20:.0f} MiB at {site}")
        result.update(pages=len(features), dashboard_seconds=round(build_seconds, 1), site_mib=round(size / 2**20))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
