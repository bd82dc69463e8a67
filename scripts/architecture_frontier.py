"""The sparsity–fidelity frontier of every SAE architecture, measured side by side.

Trains the L1 SAE, TopK, BatchTopK, JumpReLU, Gated and Matryoshka SAEs, each at several sparsity
levels, on the same shuffled batches of one activation store in one pass (the trainer's
multi-model sweep), evaluates them on the held-out split with the language model spliced, and
writes a report directory:

    REPORT/README.md             settings, figures, the table at L0 ≈ 32 and ≈ 64, every model, timing
    REPORT/results.json          every number
    REPORT/figures/*.html|png    FVU and CE loss recovered against L0, one line per architecture

    .venv/bin/python scripts/architecture_frontier.py                      # harvests the default store first
    .venv/bin/python scripts/architecture_frontier.py --store runs/demo/store --hook resid.8
    .venv/bin/python scripts/architecture_frontier.py --store STORE --quick --work /tmp/f --report /tmp/f/report

Without --store it harvests the demo's store (SmolLM2-135M-Instruct, resid.8, 250k tokens of
stdlib docstrings) into WORK/store. A killed run resumes from its checkpoint when started again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch

from sae_kit.artifacts import PLOTLY_FILE, atomic_write_json, atomic_write_text, write_plotly_js
from sae_kit.autoencoders import ARCHITECTURES, TrainingState
from sae_kit.evaluation import EvalConfig, evaluate
from sae_kit.harvest import ActivationStore, HarvestConfig, harvest
from sae_kit.training import TrainConfig, make_slot, train
from sae_kit.training.checkpoint import find_checkpoint
from sae_kit.training.derive import resolve
from sae_kit.training.input_stats import InputStats
from sae_kit.training.loop import train_step
from sae_kit.training.specs import model_specs

ARCHS = ("sae", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")
FULL = dict(ks=(16, 32, 64, 128), l1_coefficients=(1.0, 2.0, 5.0, 10.0, 20.0),
            l0_coefficients=(0.25, 0.5, 1.0, 2.0, 4.0), expansion=8, tokens=1_000_000, batch_size=1024, lr=5e-4,
            jumprelu_threshold_lr_scale=50.0, jumprelu_bandwidth=0.01, ce_contexts=64, timing_steps=5)
"""The full run: 4–5 levels per architecture, the demo's short-run recipe (batch 1024, lr 5e-4, 1M
tokens); jumprelu's log θ at 50× lr and ε = 0.01 so that ~1,000 steps can move its thresholds from
0.001 to the ~0.5–2 they need. Calibrated on the demo store with 1,152 latents: after 400 steps,
JumpReLU λ 0.25 / 0.5 / 1 / 2 gave L0 109 / 59 / 36 / 24 and Gated λ 2 / 5 / 10 gave L0 90 / 20 / 8
(training batches)."""
QUICK = dict(ks=(2, 4, 8), l1_coefficients=(0.5, 2.0, 8.0), l0_coefficients=(0.1, 0.5, 2.0), expansion=2,
             tokens=256 * 8, batch_size=256, lr=3e-3, jumprelu_threshold_lr_scale=20.0, jumprelu_bandwidth=0.05,
             ce_contexts=2, timing_steps=1)
"""--quick: three levels each, a few thousand tokens, tiny SAEs: a pipeline check in seconds."""
MEDIUM = dict(FULL, ks=(16, 32, 64), l1_coefficients=(2.0, 5.0, 10.0), l0_coefficients=(0.5, 1.0, 2.0), expansion=4,
              tokens=250_000, batch_size=512, lr=8e-4)
"""--medium: three levels each (18 models), 2,304 latents, 250k tokens in 488 steps of 512 (about one
pass over the demo store; lr 8e-4 as `sae-kit train` derives it for 488 steps): what a shared 2-core
CPU trains in well under an hour; the committed report is this form."""
TARGETS = (32, 64)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", help="activation store (default: harvest the demo's store into WORK/store)")
    parser.add_argument("--hook", default="resid.8", help="hook point (default resid.8)")
    parser.add_argument("--work", default="runs/architecture-frontier", help="working directory (store, runs)")
    parser.add_argument("--report", default="reports/architectures", help="report directory to write")
    parser.add_argument("--tokens", type=int, help="training tokens (default 1M; quick: 2048)")
    parser.add_argument("--expansion", type=int, help="latents per input dimension (default 8; quick: 2)")
    parser.add_argument("--device", help="cpu, cuda, … (default: CUDA when present)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny settings: a pipeline check in seconds")
    size.add_argument("--medium", action="store_true", help="three levels per architecture, 4 × d_in latents, 500k tokens")
    return parser.parse_args(argv)


def settings_of(args) -> dict:
    settings = dict(QUICK if args.quick else MEDIUM if args.medium else FULL)
    for name in ("tokens", "expansion"):
        if getattr(args, name):
            settings[name] = getattr(args, name)
    return settings


def ensure_store(args) -> Path:
    if args.store:
        return Path(args.store)
    store = Path(args.work) / "store"
    harvest(HarvestConfig(out=str(store), model="default", hooks=(args.hook,), tokens=250_000, device=args.device),
            resume=store.exists(), progress=True)
    return store


def train_config(args, store: Path, s: dict) -> TrainConfig:
    return TrainConfig(store=str(store), out=str(Path(args.work) / "runs"), hook=args.hook, archs=ARCHS, ks=s["ks"],
                       l1_coefficients=s["l1_coefficients"], l0_coefficients=s["l0_coefficients"],
                       expansion=s["expansion"], tokens=s["tokens"], batch_size=s["batch_size"], lr=s["lr"],
                       jumprelu_threshold_lr_scale=s["jumprelu_threshold_lr_scale"],
                       jumprelu_bandwidth=s["jumprelu_bandwidth"], device=args.device,
                       checkpoint_every_tokens=max(s["tokens"] // 4, s["batch_size"]),
                       log_every=max(1, s["tokens"] // s["batch_size"] // 20),
                       norm_estimation_tokens=min(131_072, 4 * s["tokens"]))


# ----------------------------------------------------------------------------- numbers


def collect_rows(results: dict) -> list[dict]:
    rows = []
    for name, r in results.items():
        cls = ARCHITECTURES[r["arch"]]
        config = json.loads((Path(r["run"]) / "config.json").read_text())["autoencoder"]
        spliced, rec = r.get("spliced") or {}, r["reconstruction"]
        rows.append({"name": name, "arch": r["arch"], "display": cls.display_name, "d_sae": r["d_sae"],
                     "sweep": f"{cls.sweep_label}={config[cls.sweep_field]:g}", "l0": rec["l0"], "fvu": rec["fvu"],
                     "dead_fraction": rec["dead_fraction"], "dense_fraction": rec["dense_fraction"],
                     "ce_loss_recovered": spliced.get("ce_loss_recovered"), "delta_ce": spliced.get("delta_ce")})
    return sorted(rows, key=lambda r: (ARCHS.index(r["arch"]), r["l0"]))


def at_l0(rows: list[dict], target: float, key: str) -> tuple[float | None, str]:
    """`key` at L0 = target: linear in log L0 between the two points around it, else the nearest
    point; returns (value, how) with how "interpolated" or "nearest, L0 …"."""
    points = sorted((r["l0"], r[key]) for r in rows if r[key] is not None and r["l0"] > 0)
    if not points:
        return None, "-"
    for (l0_a, a), (l0_b, b) in zip(points, points[1:]):
        if l0_a <= target <= l0_b:
            t = 0.0 if l0_b == l0_a else (math.log(target) - math.log(l0_a)) / (math.log(l0_b) - math.log(l0_a))
            return a + t * (b - a), "interpolated"
    l0, value = min(points, key=lambda p: abs(math.log(p[0] / target)))
    return value, f"nearest, L0 {l0:.0f}"


@torch.no_grad()
def _batch(store: Path, hook: str, batch_size: int, device) -> torch.Tensor:
    with contextlib.closing(ActivationStore(store).batches(hook, batch_size, seed=123, split="train",
                                                            device=device)) as reader:
        return next(reader)


def time_architectures(cfg: TrainConfig, store: Path, steps: int) -> dict[str, float]:
    """ms per training step of one model of each architecture (its middle sparsity level) on one
    batch, with `train_step` as the trainer runs it, rounds interleaved; the median round."""
    s = ActivationStore(store)
    hook = s.resolve_hook_name(cfg.hook)
    cfg, _ = resolve(cfg.replace(b_dec_init="zeros"), s.count("train"))  # the batch and lr `train` derives
    device = torch.device(cfg.device) if cfg.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = _batch(store, hook, cfg.batch_size, device).float()
    x = x * (s.d_in(hook) ** 0.5 / float(x.norm(dim=-1).mean()))
    stats = InputStats(scale=1.0, mean=[0.0] * s.d_in(hook), geometric_median=None, n_tokens=0)
    specs = model_specs(cfg, s.d_in(hook))
    chosen = {}
    for arch in ARCHS:
        mine = [spec for spec in specs if spec.cfg.arch == arch]
        chosen[arch] = mine[len(mine) // 2]
    slots = {arch: make_slot(spec, cfg, device, 10**9, stats) for arch, spec in chosen.items()}
    times: dict[str, list[float]] = {arch: [] for arch in ARCHS}
    for step in range(steps + 1):  # the first round warms up
        for arch, slot in slots.items():
            start = time.perf_counter()
            train_step(slot, x, TrainingState(step=step), cfg.lr, cfg.max_grad_norm, contextlib.nullcontext())
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step:
                times[arch].append(1000 * (time.perf_counter() - start))
    return {arch: sorted(t)[len(t) // 2] for arch, t in times.items()}


# ----------------------------------------------------------------------------- figures and report


def frontier_figure(rows: list[dict], key: str, title: str, y_title: str):
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    fig = go.Figure()
    for i, arch in enumerate(ARCHS):
        mine = [r for r in rows if r["arch"] == arch and r[key] is not None]
        if not mine:
            continue
        fig.add_trace(go.Scatter(x=[r["l0"] for r in mine], y=[r[key] for r in mine], mode="lines+markers",
                                 name=f"{mine[0]['display']} ({arch})", text=[r["sweep"] for r in mine],
                                 hovertemplate="%{text}<br>L0 %{x:.1f}<br>%{y:.4f}<extra></extra>",
                                 line=dict(color=qualitative.D3[i % 10]), marker=dict(size=8)))
    for target in TARGETS:
        fig.add_vline(x=target, line=dict(color="#bbb", dash="dot"))
    fig.update_layout(title=title, xaxis_title="L0 (active latents per token, log scale)", yaxis_title=y_title,
                      xaxis_type="log", template="plotly_white", width=820, height=500,
                      legend=dict(orientation="h", y=-0.2))
    return fig


def write_figures(report: Path, rows: list[dict]) -> dict[str, str | None]:
    """figures/fvu_vs_l0 and figures/ce_recovered_vs_l0 as HTML (plotly.js beside the report) and PNG."""
    folder = report / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    write_plotly_js(report)
    figures = {"fvu_vs_l0": frontier_figure(rows, "fvu", "Held-out FVU against L0 (lower is better)", "FVU"),
               "ce_recovered_vs_l0": frontier_figure(rows, "ce_loss_recovered",
                                                     "CE loss recovered against L0 (higher is better)",
                                                     "CE loss recovered")}
    import plotly.io as pio

    for name, fig in figures.items():
        fig.write_html(folder / f"{name}.html", include_plotlyjs=f"../{PLOTLY_FILE}", full_html=True)
    try:  # one browser session for all PNGs (kaleido starts Chromium once)
        pio.write_images(list(figures.values()), [folder / f"{name}.png" for name in figures], scale=1)
        return {name: f"figures/{name}.png" for name in figures}
    except Exception as err:  # kaleido or Chromium missing: the HTML is still there
        print(f"architecture_frontier: PNGs skipped ({type(err).__name__})", file=sys.stderr)
        return dict.fromkeys(figures)


def _fmt(value, spec=".3f") -> str:
    return "-" if value is None else format(value, spec)


def table_at_targets(rows: list[dict]) -> tuple[list[str], dict]:
    header = "| architecture | " + " | ".join(f"FVU @ L0≈{t} | CE rec. @ L0≈{t}" for t in TARGETS) + " |"
    lines = [header, "|---|" + "---:|" * (2 * len(TARGETS))]
    values: dict = {}
    for arch in ARCHS:
        mine = [r for r in rows if r["arch"] == arch]
        if not mine:
            continue
        cells = []
        for target in TARGETS:
            for key in ("fvu", "ce_loss_recovered"):
                value, how = at_l0(mine, target, key)
                values.setdefault(arch, {})[f"{key}@{target}"] = {"value": value, "how": how}
                cells.append(_fmt(value, ".4f") + ("" if how in ("interpolated", "-") else f" ({how})"))
        lines.append(f"| {mine[0]['display']} (`{arch}`) | " + " | ".join(cells) + " |")
    return lines, values


def findings(values: dict) -> list[str]:
    """Whether BatchTopK, JumpReLU and Matryoshka are ahead of the L1 SAE (SAEBench's finding)."""
    out = []
    for target in TARGETS:
        sae = values.get("sae", {})
        base, base_ce = (sae.get(f"{key}@{target}", {}).get("value") for key in ("fvu", "ce_loss_recovered"))
        if base is None:
            continue
        parts = []
        for arch in ("batchtopk", "jumprelu", "matryoshka", "topk", "gated"):
            mine = values.get(arch, {})
            fvu, ce = (mine.get(f"{key}@{target}", {}).get("value") for key in ("fvu", "ce_loss_recovered"))
            if fvu is None:
                continue
            verdict = "ahead of" if fvu < base and (ce is None or base_ce is None or ce >= base_ce) else \
                "behind" if fvu > base and (ce is None or base_ce is None or ce <= base_ce) else "mixed against"
            exact = all(d.get(f"fvu@{target}", {}).get("how") == "interpolated" for d in (sae, mine))
            parts.append(f"{arch} {verdict} L1 (FVU {fvu:.4f} vs {base:.4f}"
                         + (f", CE rec. {ce:.4f} vs {base_ce:.4f}" if ce is not None and base_ce is not None else "")
                         + ("" if exact else "; not both bracketed: nearest models compared") + ")")
        out.append(f"- At L0 ≈ {target}: " + "; ".join(parts) + ".")
    return out


def write_report(report: Path, args, cfg: TrainConfig, rows, values, pngs, timing, train_seconds, command) -> None:
    lines = ["# The sparsity–fidelity frontier of six SAE architectures", "",
             f"Produced by `{command}` in {train_seconds:.0f} s of training (all models in one pass).", "",
             f"Store `{cfg.store}` at `{cfg.hook}`; {cfg.tokens:,} training tokens in batches of {cfg.batch_size}, "
             f"lr {cfg.lr:g}, {cfg.expansion} × d_in latents; every model saw the same batches. Sweeps: k "
             f"{list(cfg.ks)}, L1 λ {list(cfg.l1_coefficients)} (sae and gated), JumpReLU λ {list(cfg.l0_coefficients)} "
             f"(log θ at {cfg.jumprelu_threshold_lr_scale:g}× lr, ε = {cfg.jumprelu_bandwidth:g}). Held-out split; "
             "CE loss recovered with the reconstruction spliced into the language model.", ""]
    for name, title in (("fvu_vs_l0", "FVU against L0"), ("ce_recovered_vs_l0", "CE loss recovered against L0")):
        lines += [f"## {title}", "", f"![{title}]({pngs[name]})" if pngs.get(name) else "(PNG not written)", "",
                  f"Interactive: [figures/{name}.html](figures/{name}.html)", ""]
    table, _ = table_at_targets(rows)
    lines += ["## At L0 ≈ 32 and ≈ 64", "", "Linear interpolation in log L0 between the two models around the "
              "target; where an architecture's sweep does not bracket it, the nearest model, marked with its L0.", "",
              *table, "", "Compared with SAEBench's finding (BatchTopK, JumpReLU and Matryoshka ahead of ReLU-L1):", "",
              *findings(values), "", "## Every model", "",
              "| model | sweep | d_sae | L0 | FVU | CE recovered | Δ CE (nats) | dead % | dense % |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['sweep']} | {r['d_sae']} | {r['l0']:.1f} | {r['fvu']:.4f} | "
                     f"{_fmt(r['ce_loss_recovered'], '.4f')} | {_fmt(r['delta_ce'], '.4f')} | "
                     f"{100 * r['dead_fraction']:.1f} | {100 * r['dense_fraction']:.1f} |")
    lines += ["", "## Training time", "", f"The one pass over {cfg.tokens:,} tokens for all {len(rows)} models took "
              f"{train_seconds:.0f} s. Per architecture, one model (its middle sparsity level), one training step "
              f"(`train_step`: loss, backward, constraint, Adam) on a batch of {cfg.batch_size}, median of interleaved "
              "rounds:", "", "| architecture | ms / step | tokens / s |", "|---|---:|---:|"]
    for arch, ms in timing.items():
        lines.append(f"| {ARCHITECTURES[arch].display_name} (`{arch}`) | {ms:.1f} | {cfg.batch_size / ms * 1000:,.0f} |")
    lines += ["", f"Machine: {torch.get_num_threads()} torch threads on "
              f"{'CUDA' if cfg.device and cfg.device.startswith('cuda') else 'the default device'}; the timings are "
              "as loaded as the machine was.", ""]
    atomic_write_text(report / "README.md", "\n".join(lines))


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = settings_of(args)
    store = ensure_store(args)
    cfg = train_config(args, store, settings)
    start = time.perf_counter()
    train(cfg, resume=find_checkpoint(cfg.out) is not None, progress=not args.quick)
    train_seconds = time.perf_counter() - start
    results = evaluate(EvalConfig(run=cfg.out, ce_contexts=settings["ce_contexts"], ce_batch_size=4, device=args.device))
    rows = collect_rows(results)
    timing = time_architectures(cfg, store, settings["timing_steps"])
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    pngs = write_figures(report, rows)
    _, values = table_at_targets(rows)
    command = "python scripts/architecture_frontier.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(report, args, cfg, rows, values, pngs, timing, train_seconds, command.strip())
    payload = {"settings": settings, "training": cfg.to_dict(), "train_seconds": train_seconds, "rows": rows,
               "at_targets": values, "ms_per_step": timing}
    atomic_write_json(report / "results.json", payload)
    print(f"architecture_frontier: report in {report / 'README.md'}", file=sys.stderr)
    return payload


if __name__ == "__main__":
    main()
