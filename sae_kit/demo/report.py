"""The demo's report: REPORT/README.md with the comparison table, training curves, a feature
gallery, steering side-by-sides, and how it was made; figures as PNG (for plain markdown
viewers) and interactive HTML; the dashboard pages of the gallery features.

Every number comes from the run's own files (eval.json, metrics.jsonl, the analysis, the
steering results); the sentences comparing models are generated from those numbers.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from pathlib import Path

import plotly.graph_objects as go
import torch
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from sae_kit.analysis import load_analysis, strongest_features
from sae_kit.analysis.examples import example_windows
from sae_kit.artifacts import PLOTLY_FILE, atomic_write_json, atomic_write_text, write_plotly_js
from sae_kit.autoencoders import ARCHITECTURES
from sae_kit.dashboard.browser import check_site
from sae_kit.dashboard.site import build_site
from sae_kit.lm.tokens import display_tokens
from sae_kit.steering.sweep import load_result


def write_demo_report(ctx, stages) -> Path:
    """Write the report for the demo run `ctx` into ctx.cfg.report; returns its path."""

    report = Path(ctx.cfg.report)
    if report.exists():
        shutil.rmtree(report)
    (report / "figures").mkdir(parents=True)
    write_plotly_js(report)

    evals = _load_evals(ctx)
    curves = _load_curves(ctx)
    figures = {
        "training_curves": training_curves_figure(curves),
        "fvu_vs_l0": fvu_vs_l0_figure(evals),
    }
    pngs = {name: _save_figure(fig, report / "figures", name) for name, fig in figures.items()}

    analysis = load_analysis(ctx.analysis)
    gallery = strongest_features(analysis, ctx.cfg.gallery_features, 1e-4, 1e-2)
    site = _gallery_site(ctx, report, gallery)
    screenshots = _screenshots(site, report, gallery)
    steering = _copy_steering(ctx, report)

    lines = _header(ctx, stages)
    lines += _comparison_section(evals, pngs, ctx.sae_arch)
    lines += _gallery_section(ctx, analysis, gallery, screenshots)
    lines += _steering_section(steering)
    lines += _provenance_section(ctx, stages)
    atomic_write_text(report / "README.md", "\n".join(lines) + "\n")
    atomic_write_json(report / "summary.json", {
        "models": {name: _headline(r) for name, r in evals.items()},
        "gallery": gallery, "steered": [s["feature"] for s in steering], "stage_seconds": stages.seconds(),
    })
    return report


# ----------------------------------------------------------------------------- data


def _load_evals(ctx) -> dict[str, dict]:
    out = {}
    for name, path in ctx.run_dirs().items():
        file = Path(path) / "eval.json"
        if file.is_file():
            out[name] = json.loads(file.read_text())
    order = list(ARCHITECTURES)  # the registry's order: the SAE first, then the baselines
    return dict(sorted(out.items(), key=lambda item: order.index(item[1]["arch"]) if item[1]["arch"] in order
                       else len(order)))


def _load_curves(ctx) -> dict[str, list[dict]]:
    curves = {}
    for name, path in ctx.run_dirs().items():
        file = Path(path) / "metrics.jsonl"
        if file.is_file():
            curves[name] = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return curves


def _headline(r: dict) -> dict:
    rec, sp = r["reconstruction"], r.get("spliced") or {}
    return {"arch": r["arch"], "d_sae": r["d_sae"], "fvu": rec.get("fvu"), "l0": rec.get("l0"),
            "dead_fraction": rec.get("dead_fraction"), "dense_fraction": rec.get("dense_fraction"),
            "ce_loss_recovered": sp.get("ce_loss_recovered"), "delta_ce": sp.get("delta_ce"),
            "kl": sp.get("kl_clean_spliced"), "ce_clean": sp.get("ce_clean")}


def arch_name(arch: str) -> str:
    """The architecture's display name (its registry entry), or the name itself when unknown."""
    cls = ARCHITECTURES.get(arch)
    return cls.display_name if cls is not None else arch


def comparison_table(evals: dict[str, dict]) -> list[str]:
    """Markdown rows: one per model, the headline metrics of DESIGN.md's "Metrics"."""
    rows = ["| model | latents | FVU | explained var. | L0 | dead % | dense % | CE recovered | Δ CE (nats) | KL |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in evals.items():
        h = _headline(r)
        fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
        rows.append(f"| {arch_name(h['arch'])} (`{name}`) | {h['d_sae']} | {fmt(h['fvu'], '.3f')} | "
                    f"{fmt(None if h['fvu'] is None else 1 - h['fvu'], '.1%')} | {fmt(h['l0'], '.1f')} | "
                    f"{fmt(None if h['dead_fraction'] is None else 100 * h['dead_fraction'], '.1f')} | "
                    f"{fmt(None if h['dense_fraction'] is None else 100 * h['dense_fraction'], '.1f')} | "
                    f"{fmt(h['ce_loss_recovered'], '.3f')} | {fmt(h['delta_ce'], '.3f')} | {fmt(h['kl'], '.3f')} |")
    return rows


def comparison_findings(evals: dict[str, dict], sae_arch: str) -> list[str]:
    """Plain sentences comparing the SAE (the run of architecture `sae_arch`) with each baseline,
    generated from the numbers."""
    heads = {name: _headline(r) for name, r in evals.items()}
    sae = next(((n, h) for n, h in heads.items() if h["arch"] == sae_arch), None)
    if sae is None:
        return []
    sae_name, s = sae
    out = []
    for name, h in heads.items():
        if name == sae_name or h["fvu"] is None:
            continue
        label = arch_name(h["arch"])
        verb = "beats" if s["fvu"] < h["fvu"] else "does not beat"
        line = (f"- FVU: the SAE ({s['fvu']:.3f} at L0 {s['l0']:.0f} of {s['d_sae']} latents) {verb} the {label} "
                f"({h['fvu']:.3f} with {h['d_sae']} dense latents)")
        if s["ce_loss_recovered"] is not None and h["ce_loss_recovered"] is not None:
            better = "higher" if s["ce_loss_recovered"] > h["ce_loss_recovered"] else "lower"
            line += (f"; its CE loss recovered is {better} ({s['ce_loss_recovered']:.3f} vs "
                     f"{h['ce_loss_recovered']:.3f})")
        out.append(line + ".")
    return out


# ----------------------------------------------------------------------------- figures


def training_curves_figure(curves: dict[str, list[dict]]):
    fig = make_subplots(rows=1, cols=2, subplot_titles=("FVU (training batches)", "L0 (active latents per token)"))
    for i, (name, rows) in enumerate(curves.items()):
        rows = [r for r in rows if "fvu" in r]
        if not rows:
            continue
        tokens = [r["tokens"] for r in rows]
        line = dict(color=qualitative.Plotly[i % len(qualitative.Plotly)])  # same colour in both panels
        fig.add_trace(go.Scatter(x=tokens, y=[r["fvu"] for r in rows], name=name, mode="lines", line=line,
                                 legendgroup=name), row=1, col=1)
        if any(r.get("l0") is not None for r in rows):
            fig.add_trace(go.Scatter(x=tokens, y=[r.get("l0") for r in rows], name=name, mode="lines", line=line,
                                     legendgroup=name, showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="training tokens")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(width=1000, height=420, template="plotly_white", margin=dict(t=40, l=50, r=20, b=50))
    return fig


def fvu_vs_l0_figure(evals: dict[str, dict]):
    fig = go.Figure()
    for name, r in evals.items():
        h = _headline(r)
        if h["fvu"] is None or h["l0"] is None:
            continue
        fig.add_trace(go.Scatter(x=[h["l0"]], y=[h["fvu"]], mode="markers+text", text=[name],
                                 textposition="top center", marker=dict(size=12), name=name))
    fig.update_layout(title="Held-out FVU against L0 (lower left is better)", xaxis_title="L0 (log)",
                      yaxis_title="FVU", xaxis_type="log", width=700, height=450, template="plotly_white",
                      showlegend=False)
    return fig


def _save_figure(fig, folder: Path, name: str) -> str | None:
    """Write NAME.html (plotly.js from the report root) and, when possible, NAME.png."""
    fig.write_html(folder / f"{name}.html", include_plotlyjs=f"../{PLOTLY_FILE}", full_html=True)
    try:
        fig.write_image(folder / f"{name}.png", scale=1)
        return f"figures/{name}.png"
    except Exception as err:  # kaleido or a Chromium missing: the HTML is still there
        print(f"sae-kit demo: PNG of {name} skipped ({type(err).__name__}: {str(err).splitlines()[0][:120]})",
              file=sys.stderr)
        return None


# ----------------------------------------------------------------------------- gallery and site


def _gallery_site(ctx, report: Path, gallery: list[int]) -> Path:

    site = report / "dashboard"
    build_site(ctx.analysis, site, features=gallery, prompts=ctx.cfg.steer_prompts, autoencoder=ctx.sae,
               lm=ctx.lm, overwrite=True, progress=False)
    return site


def _screenshots(site: Path, report: Path, gallery: list[int]) -> dict[str, str]:
    try:

        check_site(site, feature=gallery[0] if gallery else None, screenshots=report / "screenshots")
    except Exception as err:  # no Chromium here: the report links the pages instead
        print(f"sae-kit demo: dashboard screenshots skipped ({str(err).splitlines()[0][:160]})", file=sys.stderr)
        return {}
    return {p.stem: f"screenshots/{p.name}" for p in sorted((report / "screenshots").glob("*.png"))}


def _feature_page(site_root: str, feature: int) -> str:
    return f"{site_root}/feature.html#{feature}"


def _examples(ctx, analysis, features: list[int], n: int = 4) -> dict[int, list[str]]:
    """Each feature's top examples as text: the window with the max token in «», and its value.

    One `example_windows` call for all features: the store's contexts are read and re-encoded once.
    """

    if not features:
        return {}
    windows = example_windows(analysis, features, autoencoder=ctx.sae, before=10, after=4)
    ids = sorted({int(t) for t in windows.tokens[:, :n].flatten().tolist() if t >= 0})
    names = display_tokens(ctx.lm.tokenizer, ids)
    out = {}
    for row, feature in enumerate(features):
        lines = []
        for slot in range(min(n, windows.centers.shape[1])):
            if windows.centers[row, slot] < 0:
                break
            pieces = []
            for col, token in enumerate(windows.tokens[row, slot].tolist()):
                if token < 0:
                    continue
                text = names.get(token, "?").replace("`", "'")
                pieces.append(f"«{text}»" if col == windows.before else text)
            lines.append(f"`{''.join(pieces)}` ({windows.center_values[row, slot]:.2f})")
        out[feature] = lines
    return out


# ----------------------------------------------------------------------------- sections


def _header(ctx, stages) -> list[str]:
    cfg = ctx.cfg
    total = sum(stages.seconds().values())
    return [
        f"# sae-kit demo: {ctx.lm.name}, `{cfg.hook}`, {cfg.dataset}",
        "",
        f"What `sae-kit demo{' --quick' if cfg.quick else ''}` produced on "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}: {cfg.tokens:,} tokens of {cfg.dataset} harvested at "
        f"`{cfg.hook}` of {ctx.lm.name}, an L1 SAE with {cfg.expansion}× expansion trained on "
        f"{cfg.train_tokens:,} tokens beside four baselines at a budget of {cfg.baseline_latents} latents, "
        f"evaluated on held-out contexts, analysed, browsed and steered. Stage time so far: {total / 60:.1f} min "
        f"(table at the end).",
        "",
        f"- [Dashboard of the gallery features](dashboard/index.html) (open from disk, works offline); the full "
        f"site with {cfg.dashboard_features} features is in `{ctx.site}` after running the demo.",
        "- Interactive figures: [training curves](figures/training_curves.html), "
        "[FVU vs L0](figures/fvu_vs_l0.html); steering reports below.",
        "",
    ]


def _comparison_section(evals: dict[str, dict], pngs: dict[str, str | None], sae_arch: str) -> list[str]:
    lines = ["## The SAE against the baselines", "",
             "Held-out split of the store (every 20th context). FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖²; L0 = active "
             "latents per token; CE recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean) with the "
             "reconstruction spliced in at the hook; KL(clean ‖ spliced) per token, nats.", ""]
    lines += comparison_table(evals) + [""]
    lines += comparison_findings(evals, sae_arch) + [""]
    for name, caption in (("training_curves", "Training curves"), ("fvu_vs_l0", "Held-out FVU against L0")):
        if pngs.get(name):
            lines += [f"![{caption}]({pngs[name]})", ""]
        lines += [f"[{caption}, interactive](figures/{name}.html)", ""]
    return lines


def _gallery_section(ctx, analysis, gallery: list[int], screenshots: dict[str, str]) -> list[str]:

    lines = ["## Feature gallery", "",
             f"The {len(gallery)} strongest features (by max activation) among those firing on 0.01–1 % of tokens. "
             "Examples show 10 tokens before and 4 after the top-activating token, which is in «»; "
             "the number is its activation. Each id links to the feature's dashboard page.", ""]
    if screenshots:
        lines += [f"![{name}]({path})" for name, path in screenshots.items()] + [""]
    promoted = analysis.promoted_ids
    examples = _examples(ctx, analysis, gallery)
    for feature in gallery:
        tokens = ""
        if promoted is not None:
            names = display_tokens(ctx.lm.tokenizer, promoted[feature, :8].tolist())
            tokens = " ".join(f"`{names[int(t)]}`" for t in promoted[feature, :8].tolist())
        lines += [f"### [Feature {feature}]({_feature_page('dashboard', feature)})", "",
                  f"density {analysis.density[feature]:.2e} · max activation {analysis.max_activation[feature]:.2f}"
                  + (f" · promotes {tokens}" if tokens else ""), ""]
        lines += [f"- {line}" for line in examples[feature]] + [""]
    return lines


def _copy_steering(ctx, report: Path) -> list[dict]:

    out = []
    features_file = ctx.steer / "features.json"
    if not features_file.is_file():
        return out
    for feature in json.loads(features_file.read_text()):
        src = ctx.steer / f"feature-{feature}"
        dst = report / "steering" / f"feature-{feature}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(PLOTLY_FILE))
        html = dst / "report.html"
        if html.is_file():  # share the report's one copy of plotly.js
            html.write_text(html.read_text().replace(f'src="{PLOTLY_FILE}"', f'src="../../{PLOTLY_FILE}"'))
        out.append({"feature": feature, "result": load_result(src), "dir": f"steering/feature-{feature}"})
    return out


def _steering_section(steering: list[dict]) -> list[str]:
    if not steering:
        return []
    lines = ["## Steering", "",
             "Each feature clamped to multiples of its maximum activation over the store, keeping the SAE's "
             "error term (x' = x + (c − z_i)·W_dec,i; Templeton et al. 2024), at every position, greedy decoding. "
             "KL is of the next-token distribution after the prompt from the baseline's; Δ log p is the mean "
             "change of the log-probability of the feature's top promoted tokens.", ""]
    for item in steering:
        result = item["result"]
        lines += [f"### Feature {item['feature']} ([report]({item['dir']}/report.md), "
                  f"[interactive]({item['dir']}/report.html))", ""]
        for prompt in result.prompts:
            lines += [f"Prompt: `{_clip(prompt.prompt)}`", "",
                      "| clamp | continuation | KL | Δ log p promoted |", "|---|---|---:|---:|",
                      f"| baseline | {_clip(prompt.baseline)} | 0 | 0 |"]
            for condition, outcome in zip(result.conditions, prompt.outcomes):
                dose = f"{condition.dose:g}× max" if condition.dose is not None else condition.label
                lines.append(f"| {dose} | {_clip(outcome.text)} | {outcome.kl_next:.3f} | "
                             f"{outcome.promoted_shift_next:+.2f} |")
            lines.append("")
    return lines


def _clip(text: str, n: int = 110) -> str:
    text = text.replace("\n", "⏎").replace("|", "¦").replace("`", "'")
    return text if len(text) <= n else text[: n - 1] + "…"


def _provenance_section(ctx, stages) -> list[str]:
    import importlib.metadata as md

    versions = []
    for package in ("sae-kit", "torch", "transformers", "datasets", "safetensors", "einops", "plotly"):
        try:
            versions.append(f"{package} {md.version(package)}")
        except md.PackageNotFoundError:
            pass
    cfg = ctx.cfg
    lines = ["## How this was made", "",
             "```bash", "make demo" if not cfg.quick else "sae-kit demo --quick",
             "# which runs: sae-kit demo" + (" --quick" if cfg.quick else ""), "```", "",
             f"- Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"device {ctx.lm.device}, Python {platform.python_version()}",
             f"- Versions: {', '.join(versions)}",
             f"- Settings: `{json.dumps(cfg.to_dict())}`", "",
             "| stage | seconds |", "|---|---:|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in stages.seconds().items()]
    lines.append(f"| total | {sum(stages.seconds().values()):.0f} |")
    return lines
