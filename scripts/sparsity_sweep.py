"""Sparsity sweep: one L1 SAE per λ, all trained in one pass over the store, then evaluated.

The way researchers choose λ: plot the sparsity–fidelity frontier (L0 against FVU and
against CE loss recovered) and pick a point on it. Uses the library API (`sae_kit.training.train`,
`sae_kit.evaluation.evaluate`), not the CLI. Writes into --out: the sweep (one run per λ),
sparsity_sweep.json, sparsity_sweep.md and sparsity_sweep.html (plotly).

    .venv/bin/python scripts/sparsity_sweep.py --store runs/store --hook resid.8 --out runs/sweep
    .venv/bin/python scripts/sparsity_sweep.py --store runs/store --out runs/sweep-quick --quick
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sae_kit.evaluation import EvalConfig, evaluate
from sae_kit.training import TrainConfig, train

QUICK = dict(l1_coefficients=(1.0, 5.0), tokens=256 * 8, batch_size=256, expansion=2, lr=3e-3,
             norm_estimation_tokens=1024, checkpoint_every_tokens=None, log_every=4)
"""--quick: two λ, a few thousand tokens, tiny SAEs: checks the pipeline in seconds."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True, help="activation store (sae-kit harvest)")
    parser.add_argument("--hook", help="hook in the store (optional if it holds one)")
    parser.add_argument("--out", default="runs/sparsity-sweep", help="sweep directory to write")
    parser.add_argument("--l1", default="0.5,1,2,5,10,20", help="comma-separated λ values")
    parser.add_argument("--tokens", type=int, help="training tokens (default: one pass over the train split)")
    parser.add_argument("--expansion", type=int, default=8, help="latents per input dimension")
    parser.add_argument("--ce-contexts", type=int, default=64, help="held-out contexts for CE recovered (0: skip)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a pipeline check in seconds")
    return parser.parse_args(argv)


def frontier_table(rows: list[dict]) -> str:
    lines = ["| λ | L0 | FVU | explained var. | dead % | CE recovered | Δ CE (nats) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ce = f"{r['ce_loss_recovered']:.3f} | {r['delta_ce']:.4f}" if r["ce_loss_recovered"] is not None else "- | -"
        lines.append(f"| {r['l1_coefficient']:g} | {r['l0']:.1f} | {r['fvu']:.4f} | {1 - r['fvu']:.4f} | "
                     f"{100 * r['dead_fraction']:.1f} | {ce} |")
    return "\n".join(lines)


def frontier_figure(rows: list[dict], path: Path) -> None:
    """L0 (log axis) against FVU, labelled by λ: the sparsity–fidelity frontier."""
    import plotly.graph_objects as go

    figure = go.Figure(go.Scatter(x=[r["l0"] for r in rows], y=[r["fvu"] for r in rows], mode="lines+markers+text",
                                  text=[f"λ={r['l1_coefficient']:g}" for r in rows], textposition="top center"))
    figure.update_layout(title="Sparsity–fidelity frontier", xaxis_title="L0 (active latents per token)",
                         yaxis_title="FVU (fraction of variance unexplained)", xaxis_type="log", template="plotly_white")
    figure.write_html(str(path), include_plotlyjs=True)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    settings = dict(store=args.store, out=args.out, hook=args.hook, expansion=args.expansion,
                    l1_coefficients=tuple(float(v) for v in args.l1.split(",")), tokens=args.tokens)
    ce_contexts = args.ce_contexts
    if args.quick:
        settings.update(QUICK)
        ce_contexts = min(ce_contexts, 4)
    runs = train(TrainConfig(**settings), progress=not args.quick)
    results = evaluate(EvalConfig(run=args.out, ce_contexts=ce_contexts, ce_batch_size=4))
    rows = []
    for run in runs:
        config = json.loads((run / "config.json").read_text())
        r = results[run.name] if run.name in results else next(iter(results.values()))
        spliced = r["spliced"] or {}
        rows.append({"run": str(run), "l1_coefficient": config["autoencoder"]["l1_coefficient"],
                     **{k: r["reconstruction"][k] for k in ("l0", "fvu", "dead_fraction", "dense_fraction")},
                     "ce_loss_recovered": spliced.get("ce_loss_recovered"), "delta_ce": spliced.get("delta_ce")})
    rows.sort(key=lambda r: r["l1_coefficient"])
    out = Path(args.out)
    (out / "sparsity_sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = frontier_table(rows)
    (out / "sparsity_sweep.md").write_text(f"# Sparsity sweep\n\nStore {args.store}, held-out split.\n\n{table}\n")
    frontier_figure(rows, out / "sparsity_sweep.html")
    print(table)
    return rows


if __name__ == "__main__":
    main()
