"""Benchmark: the dashboard site of every feature of a wide SAE — build time and bytes, extrapolated to 1M.

    python scripts/bench/dashboard.py                            # harvests ~51k tokens of SmolLM2 resid.8 first
    python scripts/bench/dashboard.py --store STORE --work W     # reuse a store
    python scripts/bench/dashboard.py --run RUN                  # a trained SAE instead of the calibrated one
    python scripts/bench/dashboard.py --browser                  # also time the pages in headless Chromium

Without --run the autoencoder is a calibrated SAE (as in `scripts/bench/analyze.py`: random unit
decoder directions, W_enc = W_decᵀ, b_enc set so that densities are log-uniform over [1e-4, 1e-1]
on the store, L0 ≈ d_sae/70), by default of width 18,432 (32 × d_in of SmolLM2-135M). The analysis keeps
20 top examples and 10 bands of 20 per feature (the defaults); the site is built for every
feature that fired (`--all`), with 10 neighbours per feature and the feature map.

Reported: the build's phases (site.json timings), bytes per feature record (mean, median, 95th
percentile, max, and the mean over the features that fill ≥ 90 % of their example slots), the
index's bytes per row, and the extrapolation to 1M latents: every phase linear in F except the
decoder cosines (F² · d_in: scaled quadratically from the measured time).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import statistics
import time
from pathlib import Path

import torch

from sae_kit.analysis import AnalysisConfig, analyze, load_analysis, token_batches
from sae_kit.autoencoders import AutoencoderConfig, build_autoencoder, load_autoencoder
from sae_kit.dashboard import build_site
from sae_kit.harvest import ActivationStore, HarvestConfig, harvest

RECORD = re.compile(r'\{"id":(\d+),')
TARGET = 1_000_000


def calibrated_sae(store: ActivationStore, hook: str, d_sae: int, seed: int = 0, block: int = 2048):
    """`scripts/bench/analyze.py`'s calibrated SAE (densities log-uniform over [1e-4, 1e-1]), with
    the per-feature quantiles taken a block of features at a time (memory: 16k × block floats)."""
    torch.manual_seed(seed)
    d_in = store.d_in(hook)
    x = next(token_batches(store, hook, batch_size=16_384))[0]
    sae = build_autoencoder(AutoencoderConfig(arch="sae", d_in=d_in, d_sae=d_sae, hook=hook, metadata={
        "store": str(store.path.resolve()), "hook_module": hook, "model": store.manifest["model"]}))
    with torch.no_grad():
        W = torch.randn(d_sae, d_in)
        W /= W.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T)
        sae.b_dec.copy_(x.mean(0))
        density = torch.exp(torch.empty(d_sae).uniform_(math.log(1e-4), math.log(1e-1)))
        rank = ((1 - density) * (x.shape[0] - 1)).round().long()  # per-feature quantile of the pre-activation
        for start in range(0, d_sae, block):
            pre = (x - sae.b_dec) @ sae.W_enc[:, start : start + block]
            cols = torch.arange(pre.shape[1])
            sae.b_enc[start : start + block] = -pre.sort(0).values[rank[start : start + block], cols]
    return sae.eval()


def record_sizes(site: Path) -> dict[int, int]:
    """Bytes of each feature's record in SITE/data/features-*.js (the JSON between two record starts)."""
    sizes = {}
    for file in sorted((site / "data").glob("features-*.js")):
        text = file.read_text(encoding="utf-8")
        starts = [(m.start(), int(m.group(1))) for m in RECORD.finditer(text)]
        for (at, f), (nxt, _) in zip(starts, starts[1:] + [(len(text) - 3, None)]):
            sizes[f] = len(text[at:nxt].encode("utf-8"))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/bench-dashboard", help="working directory (store, run, analysis, site)")
    parser.add_argument("--store", help="existing store (default: harvest WORK/store)")
    parser.add_argument("--model", default="default", help="model to harvest from (default SmolLM2-135M)")
    parser.add_argument("--hook", default="resid.8")
    parser.add_argument("--tokens", type=int, default=51_200, help="tokens to harvest")
    parser.add_argument("--run", help="a trained run instead of the calibrated SAE")
    parser.add_argument("--d-sae", type=int, default=18_432)
    parser.add_argument("--browser", action="store_true", help="load the pages in headless Chromium and time them")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    work = Path(args.work)

    store_path = Path(args.store) if args.store else work / "store"
    if not args.store and not (store_path / "manifest.json").is_file():
        harvest(HarvestConfig(out=str(store_path), model=args.model, hooks=(args.hook,), tokens=args.tokens))
    store = ActivationStore(store_path)
    hook = store.resolve_hook_name(None if len(store.hook_names) == 1 else args.hook)
    run = Path(args.run) if args.run else work / f"calibrated-{args.d_sae}"
    if not args.run and not (run / "config.json").is_file():
        calibrated_sae(store, hook, args.d_sae).save(run)
    sae = load_autoencoder(run, device=args.device)

    analysis_dir = work / f"analysis-{sae.d_sae}"
    started = time.perf_counter()
    if (analysis_dir / "analysis.json").is_file():
        analysis = load_analysis(analysis_dir)
        analyze_seconds = None
    else:
        analysis = analyze(AnalysisConfig(run=str(run), out=str(analysis_dir), store=str(store.path), hook=hook,
                                          device=args.device), overwrite=True, progress=False)
        analyze_seconds = time.perf_counter() - started
    print(f"store {store.path}: {store.n_tokens:,} tokens, hook {hook}; SAE d_sae {sae.d_sae}; "
          f"{int((analysis.fire_count > 0).sum()):,} features fired; top_k {analysis.top_k}, {analysis.n_quantiles} bands; "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if analyze_seconds is not None:
        print(f"analysis pass (+ logit effects, model load): {analyze_seconds:.1f} s")

    site = work / f"site-{sae.d_sae}"
    started, cpu = time.perf_counter(), time.process_time()
    build_site(analysis_dir, site, autoencoder=sae, overwrite=True, progress=False, device=args.device)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    load = os.getloadavg()[0]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    manifest = json.loads((site / "site.json").read_text())
    built = len(manifest["features"])
    sizes = record_sizes(site)
    values = sorted(sizes.values())
    slots = analysis.top_k * (1 + analysis.n_quantiles)
    examples = (analysis.top_indices >= 0).sum(1) + (analysis.band_indices >= 0).flatten(1).sum(1)
    full = [sizes[f] for f in sizes if int(examples[f]) >= 0.9 * slots]  # nearly every example slot shown
    files = sum(1 for p in site.rglob("*") if p.is_file())
    data_bytes = sum(p.stat().st_size for p in (site / "data").iterdir())
    print(f"site of {built:,} features: {seconds:.1f} s ({1000 * seconds / built:.2f} ms per feature), {cpu:.0f} CPU s "
          f"(load average {load:.1f} at the end), peak memory {peak_mib:,.0f} MiB; phases {manifest['timings']}")
    print(f"bytes per feature record: mean {statistics.mean(values):,.0f}, median {statistics.median(values):,.0f}, "
          f"95th percentile {values[int(0.95 * (len(values) - 1))]:,}, max {values[-1]:,}; "
          f"{len(full):,} features showing ≥ 90 % of the {slots} example slots: mean {statistics.mean(full) if full else 0:,.0f}, "
          f"max {max(full) if full else 0:,} (target ≤ 15,000)")
    index_per_row = manifest["bytes"]["index"] / built
    print(f"index {manifest['bytes']['index'] / 2**20:.1f} MiB ({index_per_row:.0f} B per row); data/ {data_bytes / 2**20:.0f} MiB, "
          f"whole site {manifest['bytes']['total'] / 2**20:.0f} MiB in {files:,} files")

    scale = TARGET / built
    quadratic = manifest["timings"].get("neighbours", 0.0)
    linear = seconds - quadratic
    print(f"extrapolated to {TARGET:,} features (this CPU): {linear * scale / 60:.0f} min for the linear phases + "
          f"{quadratic * scale**2 / 3600:.1f} h for the decoder cosines (F² d_in; a GPU does this part in minutes); "
          f"{(statistics.mean(values) + index_per_row) * TARGET / 2**30:.1f} GiB")
    result = {"d_sae": sae.d_sae, "tokens": store.n_tokens, "built": built, "seconds": round(seconds, 1),
              "cpu_seconds": round(cpu, 1), "load_average": round(load, 1), "peak_mib": round(peak_mib),
              "timings": manifest["timings"], "record_bytes_mean": round(statistics.mean(values)),
              "record_bytes_median": round(statistics.median(values)), "record_bytes_max": values[-1],
              "record_bytes_full_mean": round(statistics.mean(full)) if full else None, "full_features": len(full),
              "index_bytes_per_row": round(index_per_row, 1), "site_mib": round(manifest["bytes"]["total"] / 2**20, 1),
              "files": files, "extrapolated_1m_linear_min": round(linear * scale / 60, 1),
              "extrapolated_1m_neighbours_h": round(quadratic * scale**2 / 3600, 2),
              "extrapolated_1m_gib": round((statistics.mean(values) + index_per_row) * TARGET / 2**30, 1)}
    if args.browser:
        from sae_kit.dashboard.browser import check_site

        report = check_site(site, screenshots=work / "screenshots")
        for page in report.pages:
            print(f"  {page.url.rsplit('/', 1)[-1]}: rendered in {page.seconds:.2f} s, {len(page.console_errors)} console errors")
        result["browser_seconds"] = {page.url.rsplit("/", 1)[-1]: page.seconds for page in report.pages}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
