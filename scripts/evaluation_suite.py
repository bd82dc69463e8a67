"""Evaluation suite: core metrics, sparse probing and feature absorption (SAEBench's set) for every
model of a sweep, in one pass, as one table and plotly figures with the raw-activation ceiling beside
the SAE numbers. Autointerp (`sae-kit explain`) is added when asked and available.

Uses the library (`sae_kit.evaluation.evaluate` with suites core, probing, absorption): the store's
held-out split for the core set, one language-model pass over the probing texts and the first-letter
prompts shared by all models. Writes into --out (default RUN/evaluation-suite): evaluation_suite.md,
evaluation_suite.json and figures/*.html (plotly.js beside them, never a CDN) and *.png (kaleido).

    .venv/bin/python scripts/evaluation_suite.py --run runs/all
    .venv/bin/python scripts/evaluation_suite.py --run runs/all --quick          # pipeline check
    .venv/bin/python scripts/evaluation_suite.py --run runs/all --autointerp --analysis sae-l1_5=runs/analysis
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import time
from pathlib import Path

from sae_kit.artifacts import PLOTLY_FILE, atomic_write_json, atomic_write_text, write_plotly_js
from sae_kit.autoencoders import run_dirs
from sae_kit.config import command_line
from sae_kit.errors import SaeKitError
from sae_kit.evaluation import EvalConfig, evaluate
from sae_kit.evaluation.evaluator import EVAL_FILE

QUICK = dict(ce_contexts=4, ce_batch_size=4, eval_tokens=4096, probe_train_size=40, probe_test_size=20,
             probe_context_len=32, probe_k=(1, 2, 5), absorption_words=300, absorption_icl_examples=3)
"""--quick: a few contexts, texts and words — checks the pipeline in seconds on a tiny model."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a run directory or a sweep root (sae-kit train)")
    parser.add_argument("--out", help="output directory (default: RUN/evaluation-suite)")
    parser.add_argument("--store", help="activation store (default: the runs' own)")
    parser.add_argument("--model", help="language model (default: the store's)")
    parser.add_argument("--device", help="device (default: CUDA when present)")
    parser.add_argument("--ce-contexts", type=int, help="held-out contexts for CE recovered (default 64)")
    parser.add_argument("--probe-dataset", action="append", help="probing dataset (repeatable; default python-docs)")
    parser.add_argument("--probe-train-size", type=int, help="train texts per probing task (default 400)")
    parser.add_argument("--absorption-words", type=int, help="vocabulary words for the first-letter task (default 2000)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a pipeline check in seconds")
    parser.add_argument("--from-eval", action="store_true",
                        help="tabulate the eval.json files an earlier `sae-kit evaluate --suite …` wrote, evaluating nothing")
    parser.add_argument("--no-html", action="store_true",
                        help="PNG figures only (no HTML and no plotly.min.js copy: for committed reports)")
    parser.add_argument("--autointerp", action="store_true", help="also run `sae-kit explain` (if this sae-kit has it)")
    parser.add_argument("--analysis", action="append", default=[], metavar="NAME=DIR",
                        help="for --autointerp: a model's analysis directory (sae-kit analyze), repeatable")
    parser.add_argument("--explain-args", default="", help="for --autointerp: extra flags for sae-kit explain")
    return parser.parse_args(argv)


def eval_config(args) -> EvalConfig:
    settings = dict(run=args.run, store=args.store, model=args.model, device=args.device,
                    suites=("core", "probing", "absorption"))
    if args.quick:
        settings.update(QUICK)
    for name in ("ce_contexts", "probe_train_size", "absorption_words"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.probe_dataset:
        settings["probe_datasets"] = tuple(args.probe_dataset)
    return EvalConfig(**settings)


def load_results(run: str) -> dict[str, dict]:
    """The eval.json of every run under `run` (what `sae-kit evaluate` wrote)."""
    results = {}
    for name, path in run_dirs(run).items():
        if not (path / EVAL_FILE).is_file():
            raise SaeKitError(f"{path} has no {EVAL_FILE}; run sae-kit evaluate --suite probing,absorption first")
        results[name] = json.loads((path / EVAL_FILE).read_text())
    return results


# ----------------------------------------------------------------------------- autointerp


def autointerp(args) -> tuple[dict[str, dict], str | None]:
    """{model name: mean detection / fuzzing balanced accuracy} from `sae-kit explain`, or why not."""
    if not args.autointerp:
        return {}, None
    if importlib.util.find_spec("sae_kit.cli.explain") is None:
        return {}, "not available: this sae-kit has no `sae-kit explain` command"
    if not args.analysis:
        return {}, "no --analysis NAME=DIR given (sae-kit explain scores the features of an analysis)"
    from sae_kit.cli import main as cli_main

    scores = {}
    for item in args.analysis:
        name, _, directory = item.partition("=")
        if cli_main(["explain", "--analysis", directory, *shlex.split(args.explain_args)]) != 0:
            return scores, f"sae-kit explain failed on {directory}"
        features = json.loads((Path(directory) / "explanations.json").read_text())["features"].values()
        scores[name] = {kind: _mean([f[kind]["balanced_accuracy"] for f in features if f.get(kind)])
                        for kind in ("detection", "fuzzing")}
    return scores, None


def _mean(values):
    return sum(values) / len(values) if values else None


# ----------------------------------------------------------------------------- table


def rows_of(results: dict[str, dict], interp: dict[str, dict]) -> list[dict]:
    """One flat row per model, plus the raw-activation ceiling (probing columns only)."""
    rows = []
    for name, r in results.items():
        core, probing, absorption = r["core"], r.get("probing") or {}, r.get("absorption") or {}
        row = {"model": name, "arch": r["arch"], "d_sae": r["d_sae"], "l0": r["reconstruction"]["l0"],
               "explained_variance": core["explained_variance"], "cossim": core["cossim"], "l2_ratio": core["l2_ratio"],
               "relative_reconstruction_bias": core["relative_reconstruction_bias"],
               "ce_loss_recovered": (r.get("spliced") or {}).get("ce_loss_recovered"),
               "mean_absorption_fraction_score": absorption.get("mean_absorption_fraction_score"),
               "mean_full_absorption_score": absorption.get("mean_full_absorption_score"),
               **{f"probe_top_{k}": probing.get("mean", {}).get(f"sae_top_{k}_test_accuracy") for k in probing.get("k", [])},
               **{f"autointerp_{kind}": interp.get(name, {}).get(kind) for kind in ("detection", "fuzzing")}}
        rows.append(row)
    first = next((r["probing"] for r in results.values() if r.get("probing")), None)
    if first:
        rows.append({"model": "raw activations (ceiling)", "arch": "-", "d_sae": "-",
                     **{f"probe_top_{k}": first["mean"][f"llm_top_{k}_test_accuracy"] for k in first["k"]},
                     "probe_all": first["mean"]["llm_test_accuracy"]})
    return rows


COLUMNS = [("model", "model", None), ("arch", "arch", None), ("d_sae", "latents", None), ("l0", "L0", 1),
           ("explained_variance", "expl. var.", 3), ("cossim", "cos(x, x̂)", 3), ("l2_ratio", "‖x̂‖/‖x‖", 3),
           ("relative_reconstruction_bias", "γ", 3), ("ce_loss_recovered", "CE rec.", 3)]


def table(rows: list[dict], ks: list[int], with_interp: bool) -> str:
    columns = COLUMNS + [(f"probe_top_{k}", f"probe top-{k}", 3) for k in ks] + [("probe_all", "probe all dims", 3),
               ("mean_absorption_fraction_score", "absorption frac.", 3), ("mean_full_absorption_score", "full abs.", 3)]
    if with_interp:
        columns += [("autointerp_detection", "detection", 3), ("autointerp_fuzzing", "fuzzing", 3)]
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |",
             "|" + "|".join("---" if digits is None else "---:" for _, _, digits in columns) + "|"]
    for row in rows:
        cells = []
        for key, _, digits in columns:
            value = row.get(key)
            cells.append("-" if value is None else (f"{value:.{digits}f}" if digits is not None and isinstance(value, float)
                                                    else str(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dataset_table(results: dict[str, dict]) -> str | None:
    """Probing accuracy per dataset: every model's top-k, then the raw activations' top-k and all dims."""
    probed = {name: r["probing"] for name, r in results.items() if r.get("probing")}
    if not probed:
        return None
    ks = next(iter(probed.values()))["k"]
    lines = ["| dataset | model | " + " | ".join(f"top-{k}" for k in ks) + " | all dims |",
             "|---|---|" + "---:|" * (len(ks) + 1)]
    for dataset in next(iter(probed.values()))["datasets"]:
        for name, p in probed.items():
            d = p["datasets"][dataset]
            lines.append(f"| {dataset} | {name} | " + " | ".join(f"{d[f'sae_top_{k}_test_accuracy']:.3f}" for k in ks) + " | - |")
        d = next(iter(probed.values()))["datasets"][dataset]
        lines.append(f"| {dataset} | raw activations | " + " | ".join(f"{d[f'llm_top_{k}_test_accuracy']:.3f}" for k in ks)
                     + f" | {d['llm_test_accuracy']:.3f} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


def probing_figure(results: dict[str, dict]):
    """Mean test accuracy against k for every model, the raw top-k dimensions and the full raw probe."""
    import plotly.graph_objects as go

    fig = go.Figure()
    first = None
    for name, r in results.items():
        p = r.get("probing")
        if not p:
            continue
        first = first or p
        fig.add_trace(go.Scatter(x=p["k"], y=[p["mean"][f"sae_top_{k}_test_accuracy"] for k in p["k"]],
                                 mode="lines+markers", name=name))
    if first:
        fig.add_trace(go.Scatter(x=first["k"], y=[first["mean"][f"llm_top_{k}_test_accuracy"] for k in first["k"]],
                                 mode="lines+markers", name="raw activations, top-k dims", line=dict(dash="dash", color="black")))
        fig.add_hline(y=first["mean"]["llm_test_accuracy"], line=dict(dash="dot", color="grey"),
                      annotation_text="raw activations, all dims (ceiling)")
    fig.update_layout(title="Sparse probing: mean test accuracy over tasks", xaxis_title="k (latents or dimensions)",
                      yaxis_title="test accuracy", xaxis_type="log", template="plotly_white", width=760, height=460)
    if first:
        fig.update_xaxes(tickvals=first["k"])
    return fig


def absorption_figure(results: dict[str, dict]):
    import plotly.graph_objects as go

    scored = {n: r["absorption"] for n, r in results.items() if r.get("absorption")}
    fig = go.Figure([go.Bar(name=label, x=list(scored), y=[a[key] for a in scored.values()])
                     for key, label in (("mean_absorption_fraction_score", "mean absorption fraction"),
                                        ("mean_full_absorption_score", "full absorption rate"))])
    fig.update_layout(title="Feature absorption, first-letter task (lower is better)", barmode="group",
                      yaxis_title="score", template="plotly_white", width=760, height=420)
    return fig


def core_figure(results: dict[str, dict]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(results)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("explained variance against L0", "shrinkage"))
    for name in names:
        r = results[name]
        fig.add_trace(go.Scatter(x=[r["reconstruction"]["l0"]], y=[r["core"]["explained_variance"]], mode="markers+text",
                                 text=[name], textposition="top center", showlegend=False), row=1, col=1)
    for key, label in (("l2_ratio", "‖x̂‖/‖x‖"), ("relative_reconstruction_bias", "γ (rel. rec. bias)")):
        fig.add_trace(go.Bar(name=label, x=names, y=[results[n]["core"][key] for n in names]), row=1, col=2)
    fig.add_hline(y=1.0, line=dict(dash="dot", color="grey"), row=1, col=2)
    fig.update_xaxes(type="log", title_text="L0", row=1, col=1)
    fig.update_layout(template="plotly_white", width=1000, height=420, barmode="group")
    return fig


def save_figures(figures: dict, folder: Path, html: bool = True) -> list[str]:
    """NAME.html for each figure (plotly.js from the folder above) and, when kaleido and Chromium
    work, NAME.png (all in one Chromium session). Returns the paths written, relative to the report."""
    import plotly.io as pio

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items() if html else ():
        atomic_write_text(folder / f"{name}.html", fig.to_html(include_plotlyjs=f"../{PLOTLY_FILE}", full_html=True))
        written.append(f"figures/{name}.html")
    try:
        pio.write_images(list(figures.values()), [folder / f"{name}.png" for name in figures], scale=1)
        written += [f"figures/{name}.png" for name in figures]
    except Exception as err:  # kaleido or a Chromium missing: the HTML is still there
        print(f"evaluation_suite: PNGs skipped ({type(err).__name__}: {str(err).splitlines()[0][:120]})", file=sys.stderr)
    return written


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = eval_config(args)
    out = Path(args.out or Path(args.run) / "evaluation-suite")
    started = time.perf_counter()
    results = load_results(args.run) if args.from_eval else evaluate(cfg)
    interp, interp_note = autointerp(args)
    seconds = time.perf_counter() - started
    rows = rows_of(results, interp)
    ks = next((r["probing"]["k"] for r in results.values() if r.get("probing")), [])
    if not args.no_html:
        write_plotly_js(out)
    makers = {"probing": probing_figure, "absorption": absorption_figure, "core": core_figure}
    figures = save_figures({name: make(results) for name, make in makers.items()
                            if name == "core" or any(r.get(name) for r in results.values())}, out / "figures",
                           html=not args.no_html)
    first = next(iter(results.values()))
    notes = [f"- {suite}: skipped ({first[f'{suite}_skipped']})" for suite in ("spliced", "probing", "absorption")
             if first.get(f"{suite}_skipped")]
    notes += [f"- absorption: {first['absorption']['warning']}"] if (first.get("absorption") or {}).get("warning") else []
    notes += [f"- autointerp: {interp_note}"] if interp_note else []
    timing = (f"tabulated from the runs' eval.json (probing {(first.get('probing') or {}).get('seconds', '-')} s, "
              f"absorption {(first.get('absorption') or {}).get('seconds', '-')} s)" if args.from_eval else f"{seconds:.0f} s")
    evaluated = EvalConfig.from_dict(first["eval_config"]) if args.from_eval else cfg
    evaluate_command = command_line("sae-kit evaluate", [evaluated], names={"suites": "suite", "probe_datasets": "probe_dataset"})
    per_dataset = dataset_table(results)
    text = "\n".join([f"# Evaluation suite: {args.run}", "",
                      f"Store {first['store']} at {first['hook']}; {timing}. Command: "
                      f"`{shlex.join(['scripts/evaluation_suite.py', *(argv if argv is not None else sys.argv[1:])])}`"
                      f"; the evaluation: `{evaluate_command}`.", "",
                      table(rows, ks, bool(interp)), "", *notes, "",
                      *(["## Sparse probing per dataset", "", per_dataset, ""] if per_dataset else []),
                      *[f"![{f}]({f})" for f in figures if f.endswith(".png")],
                      *[f"- [{f}]({f})" for f in figures if f.endswith(".html")], ""])
    atomic_write_text(out / "evaluation_suite.md", text)
    config = first.get("eval_config") if args.from_eval else cfg.to_dict()
    summary = {"run": args.run, "seconds": seconds, "eval_config": config, "rows": rows, "autointerp": interp_note
               or ("ran" if interp else "not asked"), "figures": figures}
    atomic_write_json(out / "evaluation_suite.json", summary)
    print(table(rows, ks, bool(interp)))
    print(f"wrote {out / 'evaluation_suite.md'}")
    return summary


if __name__ == "__main__":
    main()
