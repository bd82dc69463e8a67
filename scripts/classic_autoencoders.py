"""The classic autoencoders on images: sae-kit's autoencoder core trained on 8×8 digits.

A small companion report to the language-model runs. The same models (`sae_kit.autoencoders`)
and the same training loop (`sae_kit.training.fit`, with the library's recipe: inputs scaled so
E‖x‖ = √d_in, λ warm-up, lr decay, gradient clipping) are trained on the 1,797 handwritten
digits that scikit-learn ships (`load_digits`, no download), where every input and every
decoder direction is a picture:

    dense AE      16 ReLU latents                    reconstructions
    denoising AE  16 ReLU latents, Gaussian noise    clean / noisy / denoised side by side
    VAE           2 latents (the map is the latent space itself, no projection)
    L1 sparse AE  128 latents (2× the pixels)        decoder directions as images, top digits
    PCA           closed form, with 2, 16 and (the sparse AE's L0) components: matched baselines

Pixels are scaled to [0, 1]; MSE is per pixel, on a stratified held-out fifth of the digits.

    python scripts/classic_autoencoders.py --out reports/classic-autoencoders   # under a minute on 1 CPU core
    python scripts/classic_autoencoders.py --out /tmp/digits --quick            # a few seconds (tests)

Writes README.md (the report), metrics.json, and each figure as PNG (plotly + kaleido, which
drives a Chromium; skipped with a note when that fails) and as HTML sharing one local
plotly.min.js.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.metadata
import inspect
import json
import os
import platform
import shlex
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sae_kit import __version__
from sae_kit.autoencoders import Autoencoder, AutoencoderConfig, build_autoencoder
from sae_kit.evaluation import metrics as metric_fns
from sae_kit.training import fit, make_slot
from sae_kit.training.input_stats import estimate_input_stats
from sae_kit.training.recipe import TrainConfig
from sae_kit.training.specs import ModelSpec


@dataclass(frozen=True)
class DigitsConfig:
    """One run of the digits report; the command line maps one-to-one onto these fields."""

    out: str = "reports/classic-autoencoders"
    """Directory to write the report into (created; files in it are replaced)."""
    seed: int = 0
    """Seed of the train/test split, the init, the batch order and the noise."""
    quick: bool = False
    """A test-sized run: the same files from a few hundred steps."""
    steps: int | None = None
    """Adam steps, every model on the same batches; None: 4000 (300 with --quick)."""
    batch_size: int = 128
    """Digits per step."""
    lr: float = 1e-3
    """Peak learning rate (the LM recipe's 5e-5 is for 4096-token batches and millions of steps)."""
    test_fraction: float = 0.2
    """Held-out share of the digits (stratified by class)."""
    d_dense: int = 16
    """Latents of the dense and denoising AEs (and of the PCA matched to them)."""
    d_sae: int = 128
    """Latents of the L1 sparse AE (2× the 64 pixels)."""
    l1_coefficient: float = 1.0
    """λ of the sparse AE at the normalised input scale (E‖x‖ = 8): L0 ≈ 7; λ = 0.5 gives ≈ 14, 3 gives ≈ 3."""
    noise_std: float = 0.3
    """Std of the denoising AE's Gaussian noise, in pixel units (pixels are in [0, 1])."""

    @property
    def n_steps(self) -> int:
        return self.steps if self.steps is not None else (300 if self.quick else 4000)


D_VAE = 2  # latents of the VAE: two, so that its latent map needs no projection


# ----------------------------------------------------------------------------- data and training


def load_digits_split(cfg: DigitsConfig) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """x_train [n, 64], x_test [m, 64] (pixel / 16, so in [0, 1]) and their labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=cfg.test_fraction, stratify=digits.target, random_state=cfg.seed)
    return torch.from_numpy(x_train), torch.from_numpy(x_test), y_train, y_test


def batch_source(x: torch.Tensor, batch_size: int, seed: int):
    """`fit`'s batch source: skip -> an endless, deterministic stream of random batches [b, 64]."""

    def batches_from(skip: int) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        for step in range(2**62):
            indices = torch.randint(len(x), (batch_size,), generator=generator)
            if step >= skip:
                yield x[indices]

    return batches_from


def train_models(cfg: DigitsConfig, x_train: torch.Tensor) -> tuple[dict[str, Autoencoder], dict, float]:
    """Train the dense AE, denoising AE, VAE and L1 SAE with `sae_kit.training.fit` on the same
    batches. Returns the models (input scale folded in, so they take raw pixels; eval mode),
    their metrics on the last logged batch, and the input scale."""
    train_cfg = TrainConfig(store="sklearn.datasets.load_digits", out=cfg.out, batch_size=cfg.batch_size, lr=cfg.lr,
                            seed=cfg.seed, log_every=max(1, cfg.n_steps // 10), checkpoint_every_tokens=None,
                            b_dec_init="zeros")
    stats = estimate_input_stats(iter([x_train]), len(x_train), normalize=True, want_median=False)
    common = dict(d_in=x_train.shape[1], metadata={"data": "sklearn load_digits, pixel / 16"})
    specs = [
        ModelSpec("ae", AutoencoderConfig(arch="ae", d_sae=cfg.d_dense, **common)),
        # the core's noise level is in normalised units: the trainer feeds stats.scale · x
        ModelSpec("dae", AutoencoderConfig(arch="dae", d_sae=cfg.d_dense, corruption="gaussian",
                                           corruption_level=cfg.noise_std * stats.scale, **common)),
        ModelSpec("vae", AutoencoderConfig(arch="vae", d_sae=D_VAE, **common)),
        ModelSpec("sae", AutoencoderConfig(arch="sae", d_sae=cfg.d_sae, l1_coefficient=cfg.l1_coefficient, **common)),
    ]
    device = torch.device("cpu")
    slots = [make_slot(spec, train_cfg, device, window_steps=cfg.n_steps, stats=stats) for spec in specs]
    torch.manual_seed(cfg.seed)  # the training stream: DAE noise, VAE samples
    fit(train_cfg, slots, batch_source(x_train, cfg.batch_size, cfg.seed), cfg.n_steps, stats,
        device=device, progress=False)
    for slot in slots:
        slot.model.eval()
        slot.model.fold_input_scale_(stats.scale)
    return {s.name: s.model for s in slots}, {s.name: s.last_metrics for s in slots}, stats.scale


def fit_pca(x_train: torch.Tensor, components: int) -> Autoencoder:
    return build_autoencoder(AutoencoderConfig(arch="pca", d_in=x_train.shape[1], d_sae=components)).fit([x_train])


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def reconstruct(model: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """x̂ = decode(encode(x)) [n, 64]: deterministic (the VAE decodes μ, the DAE adds no noise)."""
    return model.decode(model.encode(x))


def add_noise(cfg: DigitsConfig, x: torch.Tensor) -> torch.Tensor:
    """x + σ ε with a fixed generator: the noisy held-out digits of the denoising check [n, 64]."""
    return x + cfg.noise_std * torch.randn(x.shape, generator=torch.Generator().manual_seed(cfg.seed + 1))


@torch.no_grad()
def evaluate(cfg: DigitsConfig, models: dict[str, Autoencoder], x_train, x_test, y_train, y_test) -> dict:
    """Held-out MSE / FVU (and L0, dead latents) of every model and of the mean image; the
    denoising check; how well the digit can be read off each 2-D code (5-nearest neighbours)."""
    from sklearn.neighbors import KNeighborsClassifier

    mean_image = x_train.mean(0).expand_as(x_test)
    held_out = {"mean image": {"latents": 0, "mse": float(metric_fns.mse(x_test, mean_image)),
                               "fvu": float(metric_fns.fvu(x_test, mean_image))}}
    for name, model in models.items():
        z = model.encode(x_test)
        x_hat = model.decode(z)
        row = {"latents": model.d_sae, "mse": float(metric_fns.mse(x_test, x_hat)), "fvu": float(metric_fns.fvu(x_test, x_hat))}
        if model.cfg.arch in ("sae", "ae", "dae"):  # ReLU codes: L0 and never-firing latents mean something
            row["l0"] = float(metric_fns.l0(z))
            fired = (model.encode(torch.cat([x_train, x_test])) > 0).any(0)
            row["dead_fraction"] = float((~fired).float().mean())
        held_out[name] = row
    noisy = add_noise(cfg, x_test)
    denoising = {"noise_std": cfg.noise_std, "noisy_input": float(metric_fns.mse(x_test, noisy))}
    for name in ("dae", "ae", f"pca-{cfg.d_dense}"):
        denoising[name] = float(metric_fns.mse(x_test, reconstruct(models[name], noisy)))
    knn = {}
    for name in ("vae", f"pca-{D_VAE}"):
        classifier = KNeighborsClassifier(n_neighbors=5).fit(models[name].encode(x_train).numpy(), y_train)
        predicted = classifier.predict(models[name].encode(x_test).numpy())
        knn[name] = {"accuracy": float((predicted == y_test).mean()),
                     "recall_per_digit": [round(float((predicted[y_test == d] == d).mean()), 3) for d in range(10)]}
    # how digit-specific the sparse AE's features are: the share of each live feature's activation
    # mass (Σ z over training digits) that falls on its most common digit
    z = models["sae"].encode(x_train)
    mass = torch.zeros(10, z.shape[1]).index_add_(0, torch.from_numpy(y_train).long(), z)
    live = mass.sum(0) > 0
    purity = (mass.amax(0) / mass.sum(0).clamp_min(1e-12))[live]
    features = {"live": int(live.sum()), "median_purity": float(purity.median()),
                "share_purity_above_0.9": float((purity > 0.9).float().mean()),
                "max_firing_frequency": float((z > 0).float().mean(0).max())}
    return {"held_out": held_out, "denoising": denoising, "latent_knn": knn, "sae_features": features}


# ----------------------------------------------------------------------------- figures

CELL = 40  # screen pixels per 8×8 image in the PNGs


def tile(rows: list[torch.Tensor], gap: int = 1) -> np.ndarray:
    """Rows of 8×8 images (each row [n, 64]) laid out as one 2-D array, NaN gaps (drawn blank)."""
    side = 8 + gap
    canvas = np.full((len(rows) * side - gap, max(map(len, rows)) * side - gap), np.nan, dtype=np.float32)
    for i, images in enumerate(rows):
        for j, image in enumerate(images):
            canvas[i * side:i * side + 8, j * side:j * side + 8] = image.reshape(8, 8).numpy()
    return canvas


def grid_trace(rows, colorscale="Greys", zmin=0.0, zmax=1.0, colorbar_title: str | None = "pixel"):
    import plotly.graph_objects as go

    return go.Heatmap(z=tile(rows), colorscale=colorscale, zmin=zmin, zmax=zmax, hoverongaps=False,
                      showscale=colorbar_title is not None, colorbar=dict(title=colorbar_title, thickness=12))


def style_grid(fig, labels: list[str], width_units: int, height_units: int, title: str, left=170, right=100):
    """Images upright with square pixels, a label per row of images, and a figure size with no
    blank space (width/height in tile units: 9 per image)."""
    fig.update_yaxes(autorange="reversed", showgrid=False, zeroline=False, showline=False, ticks="",
                     tickmode="array", tickvals=[i * 9 + 3.5 for i in range(len(labels))], ticktext=labels)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, showline=False, ticks="")
    fig.update_layout(title=dict(text=title, x=0.01, font_size=14), template="simple_white",
                      margin=dict(l=left, r=right, t=46, b=8),
                      width=round(width_units / 9 * CELL) + left + right, height=round(height_units / 9 * CELL) + 54)
    return fig


def image_grid(rows: list[torch.Tensor], labels: list[str], title: str, **trace):
    """A figure of rows of 8×8 images with a label per row (values outside [zmin, zmax] clip)."""
    import plotly.graph_objects as go

    fig = go.Figure(grid_trace(rows, **trace))
    fig.update_yaxes(scaleanchor="x", constrain="domain")
    height, width = tile(rows).shape
    return style_grid(fig, labels, width + 1, height + 1, title, left=170 if any(labels) else 20)


def examples_per_class(y: np.ndarray, per_class: int = 1) -> list[int]:
    """Indices of the first `per_class` examples of each digit 0..9, in digit order."""
    return [int(i) for d in range(10) for i in np.flatnonzero(y == d)[:per_class]]


@torch.no_grad()
def make_figures(cfg: DigitsConfig, models: dict, x_train, x_test, y_test, metrics: dict) -> dict:
    """name -> plotly figure, for every figure of the report."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    held, k = metrics["held_out"], metrics["pca_matched_to_sae_l0"]
    figures = {}
    x = x_test[examples_per_class(y_test)]
    shown = [("ae", f"dense AE ({cfg.d_dense})"), (f"pca-{cfg.d_dense}", f"PCA ({cfg.d_dense})"),
             ("sae", f"L1 sparse AE (L0 {held['sae']['l0']:.1f})"), (f"pca-{k}", f"PCA ({k})"),
             ("vae", "VAE (2 latents, μ)"), (f"pca-{D_VAE}", f"PCA ({D_VAE})")]
    figures["reconstructions"] = image_grid(
        [x] + [reconstruct(models[name], x) for name, _ in shown], ["held-out digit"] + [label for _, label in shown],
        "Held-out digits and their reconstructions")

    x = x_test[examples_per_class(y_test, per_class=2)]
    noisy = add_noise(cfg, x_test)[examples_per_class(y_test, per_class=2)]
    figures["denoising"] = image_grid(
        [x, noisy, reconstruct(models["dae"], noisy), reconstruct(models["ae"], noisy)],
        ["clean", f"noisy (σ = {cfg.noise_std})", "denoising AE output", "dense AE output"],
        "Denoising AE: clean held-out digits, noisy inputs, outputs (dense AE for contrast)")

    samples = models["vae"].sample(40, generator=torch.Generator().manual_seed(cfg.seed + 2))
    figures["vae_samples"] = image_grid([samples[i:i + 10] for i in range(0, 40, 10)], [""] * 4,
                                        "VAE: digits decoded from prior samples z ~ N(0, I)")

    mu = models["vae"].encode(x_test).numpy()
    fig = go.Figure()
    for digit in range(10):
        points = mu[y_test == digit]
        fig.add_trace(go.Scatter(x=points[:, 0], y=points[:, 1], mode="markers+text", name=str(digit),
                                 text=[str(digit)] * len(points), textfont=dict(size=9),
                                 marker=dict(size=12, opacity=0.35)))
    fig.update_layout(title=dict(text="VAE: latent means μ of the held-out digits", x=0.01, font_size=14),
                      template="simple_white", xaxis_title="z₁", yaxis_title="z₂", width=680, height=560,
                      legend_title="digit", margin=dict(l=60, r=20, t=46, b=50))
    figures["vae_latent_map"] = fig

    sae = models["sae"]
    z_train = sae.encode(x_train)
    order = torch.argsort((z_train > 0).float().mean(0), descending=True)
    unit = sae.W_dec / sae.W_dec.abs().amax(-1, keepdim=True).clamp_min(1e-12)  # each at its own contrast
    directions = unit[order]
    figures["sae_features"] = image_grid(
        [directions[i:i + 16] for i in range(0, len(directions), 16)],
        [f"{i}–{min(i + 16, len(directions)) - 1}" for i in range(0, len(directions), 16)],
        f"L1 sparse AE: its {len(directions)} decoder directions W_dec,i, most often firing first",
        colorscale="RdBu_r", zmin=-1.0, zmax=1.0, colorbar_title="w / max|w|")

    # 16 features spread over the frequency ranking: each direction beside the digits that excite it most
    live = order[(z_train[:, order] > 0).any(0)]
    picked = live[torch.linspace(0, len(live) - 1, 16).round().long()]
    top = z_train[:, picked].topk(8, dim=0).indices.T  # [16, 8] training digits
    frequency = (z_train[:, picked] > 0).float().mean(0)
    fig = make_subplots(rows=1, cols=2, column_widths=[8, 8 * 9 - 1], horizontal_spacing=0.04)
    fig.add_trace(grid_trace([unit[i][None] for i in picked], colorscale="RdBu_r", zmin=-1.0, zmax=1.0,
                             colorbar_title=None), 1, 1)
    fig.add_trace(grid_trace([x_train[i] for i in top], colorbar_title=None), 1, 2)
    style_grid(fig, [f"feature {int(i)}, fires on {100 * float(f):.0f} %" for i, f in zip(picked, frequency)],
               9 * 9 + 4, 16 * 9, "Sparse AE features and their top 8 digits", right=20)
    fig.update_yaxes(scaleanchor="x", constrain="domain", col=1)
    fig.update_yaxes(scaleanchor="x2", constrain="domain", showticklabels=False, col=2)
    figures["sae_feature_examples"] = fig
    return figures


def write_figures(figures: dict, out: Path) -> str | None:
    """Each figure as HTML (sharing one local plotly.min.js) and PNG; returns why the PNGs were
    skipped, or None when they were written."""
    import plotly.io as pio

    for name, fig in figures.items():
        fig.write_html(out / f"{name}.html", include_plotlyjs="directory", full_html=True)
    try:  # kaleido drives a headless Chromium: all figures in one browser session
        pio.write_images(list(figures.values()), [out / f"{name}.png" for name in figures],
                         width=[f.layout.width for f in figures.values()],
                         height=[f.layout.height for f in figures.values()])
        # on a busy machine kaleido has been seen to return without writing one of them: once more
        for name in [n for n in figures if not _written(out / f"{n}.png")]:
            fig = figures[name]
            pio.write_image(fig, out / f"{name}.png", width=fig.layout.width, height=fig.layout.height)
        missing = [n for n in figures if not _written(out / f"{n}.png")]
        if missing:
            raise RuntimeError(f"kaleido wrote no PNG for {', '.join(missing)}")
    except Exception as err:  # no kaleido or no Chromium: the report stands on its HTML figures
        for name in figures:
            (out / f"{name}.png").unlink(missing_ok=True)
        return f"{type(err).__name__}: {err}".splitlines()[0][:300]
    return None


def _written(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


# ----------------------------------------------------------------------------- report


def versions() -> dict:
    found = {"python": platform.python_version(), "sae-kit": __version__}
    for package in ("torch", "numpy", "scikit-learn", "plotly", "kaleido"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def model_label(name: str) -> str:
    labels = {"mean image": "mean training digit", "ae": "dense AE", "dae": "denoising AE",
              "vae": "VAE", "sae": "L1 sparse AE"}
    return labels.get(name) or f"PCA ({name.split('-')[1]} components)"


def results_table(held_out: dict) -> str:
    lines = ["| model | latents | held-out MSE | FVU | L0 | dead latents |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in held_out.items():
        l0 = f"{row['l0']:.1f}" if "l0" in row else "–"
        dead = f"{100 * row['dead_fraction']:.0f} %" if "dead_fraction" in row else "–"
        numbers = f"{row['latents']} | {row['mse']:.4f} | {row['fvu']:.3f} | {l0} | {dead}"
        lines.append(f"| {model_label(name)} | {numbers} |")
    return "\n".join(lines)


def figure(name: str, caption: str, png_skipped: str | None) -> str:
    if png_skipped:
        return f"[{caption} (interactive; PNG not written)]({name}.html)\n"
    return f"![{caption}]({name}.png)\n\n[{caption}: interactive version]({name}.html)\n"


def write_report(cfg: DigitsConfig, metrics: dict, png_skipped: str | None, out: Path) -> None:
    """README.md: what was trained, the table, the figures, what they show, how to reproduce.
    Every comparison in the text is computed from `metrics`; none is written in advance."""
    held, noise, knn, feat = metrics["held_out"], metrics["denoising"], metrics["latent_knn"], metrics["sae_features"]
    ae, dae, sae, vae = held["ae"], held["dae"], held["sae"], held["vae"]
    k, d = metrics["pca_matched_to_sae_l0"], cfg.d_dense
    pca_d, pca_k, pca_2 = held[f"pca-{d}"], held[f"pca-{k}"], held[f"pca-{D_VAE}"]
    recall = knn["vae"]["recall_per_digit"]
    apart = [str(i) for i in range(10) if recall[i] >= 0.8]
    mixed = [str(i) for i in range(10) if recall[i] < 0.5]

    def digits(names: list[str]) -> str:
        return f"digit {names[0]} is" if len(names) == 1 else f"digits {', '.join(names[:-1])} and {names[-1]} are"

    separable = ""
    if apart:
        separable += f" Held-out {digits(apart)} recognised at least 80 % of the time."
    if mixed:
        separable += f" {digits(mixed).capitalize()} recognised less than half the time: they overlap with others."

    def compare(a: float, b: float) -> str:
        return "lower than" if a < b * 0.98 else "higher than" if a > b * 1.02 else "about the same as"

    notes = ""
    if cfg.quick:
        notes += "\n> **Quick run** (`--quick`): the report's files from a few hundred steps, not its results.\n"
    if png_skipped:
        notes += (f"\n> PNG export was skipped ({png_skipped}); the interactive HTML figures are complete. "
                  "PNGs need kaleido and a Chromium (`bash scripts/install_chromium.sh`).\n")
    text = f"""# The classic autoencoders, on 8×8 digits

sae-kit's autoencoder core, the same model classes (`sae_kit.autoencoders`) and training loop
(`sae_kit.training.fit`) that the language-model reports use, trained on the handwritten digits that
scikit-learn ships (`load_digits`: 8×8 pixels, scaled to [0, 1]; {metrics['n_train']} for training,
{metrics['n_test']} held out, stratified by digit). Here every input and every decoder direction
is a picture. Each model has one affine encoder and one affine decoder (`x̂ = z W_dec + b_dec`) and
was trained for {cfg.n_steps} Adam steps of {cfg.batch_size} digits, all on the same batches (lr {cfg.lr:g},
the library's schedule, input scale and clipping). PCA is fitted in closed form with as many
components as the dense AE ({d}), as the sparse AE's L0 ({k}) and as the VAE ({D_VAE}).
{notes}
## Held-out reconstruction error

Per-pixel MSE on the {metrics['n_test']} held-out digits; FVU divides it by the variance of the
held-out pixels (1 = no better than predicting the mean digit). L0: latents active per digit.

{results_table(held)}

- The dense AE's error is {compare(ae['mse'], pca_d['mse'])} PCA's with {d} components ({ae['mse']:.4f}
  vs {pca_d['mse']:.4f}). It cannot do better on the training digits: with an affine decoder of rank
  {d}, PCA is the best reconstruction there is (Eckart–Young).
- The L1 sparse AE keeps {sae['l0']:.1f} of its {sae['latents']} latents active per digit and its error is
  {compare(sae['mse'], pca_k['mse'])} PCA's with {k} components ({sae['mse']:.4f} vs {pca_k['mse']:.4f}): its
  active latents change from digit to digit, PCA's {k} are always the same. With {d} always-on
  latents the dense AE reconstructs {'better' if ae['mse'] < sae['mse'] else 'no better'} ({ae['mse']:.4f}).
- The VAE, with 2 latents, has an error {compare(vae['mse'], pca_2['mse'])} PCA's with 2 components
  ({vae['mse']:.4f} vs {pca_2['mse']:.4f}): with an affine decoder, a Gaussian VAE's optimum is
  probabilistic PCA (Lucas et al. 2019, "Don't Blame the ELBO!").

{figure('reconstructions', 'Held-out digits and reconstructions', png_skipped)}
## Denoising

Gaussian noise of std {noise['noise_std']} (pixel units; the denoising AE was trained with the same
level) is added to the held-out digits. MSE to the clean digit: the noisy input {noise['noisy_input']:.4f},
the denoising AE's output {noise['dae']:.4f}, the dense AE's {noise['ae']:.4f}, PCA ({d})'s
{noise[f'pca-{d}']:.4f}. Much of the noise goes just by projecting onto {d} directions, which the dense AE
and PCA do too. On noisy digits the denoising AE's error is {compare(noise['dae'], noise['ae'])} the dense AE's;
on clean digits it is {compare(dae['mse'], ae['mse'])} the dense AE's ({dae['mse']:.4f} vs {ae['mse']:.4f}): it
learned to undo this noise, not to copy its input.

{figure('denoising', 'Clean, noisy and denoised digits', png_skipped)}
## VAE: samples from the prior and the latent map

With an affine decoder and 2 latents, every sample is the mean digit plus a combination of two
images: the samples are blurred, digit-like shapes, not crisp digits. The map plots the latent mean μ
of each held-out digit (the latent space itself, no projection). Five nearest neighbours in it
name the held-out digit correctly {100 * knn['vae']['accuracy']:.0f} % of the time (PCA with 2 components:
{100 * knn[f'pca-{D_VAE}']['accuracy']:.0f} %; chance: 10 %).{separable}

{figure('vae_samples', 'VAE samples from the prior', png_skipped)}
{figure('vae_latent_map', 'VAE latent map coloured by digit', png_skipped)}
## The L1 sparse AE's features

Each decoder direction W_dec,i as an 8×8 image, each at its own contrast: red adds ink, blue removes
it. b_dec learns (close to) the mean digit, so a direction is a change to the mean digit: blue where
the feature takes away the mean's ink, red where it adds its own. With 64 pixels and {sae['l0']:.1f} active
latents per digit, most features are templates of one way of writing one digit, more than pen
strokes (which are 1–2 pixels wide at 8×8): for the median live feature, {100 * feat['median_purity']:.0f} % of its
activation over the training digits is on a single digit class, and {100 * feat['share_purity_above_0.9']:.0f} % of the
{feat['live']} live features put more than 90 % there; none fires on more than
{100 * feat['max_firing_frequency']:.0f} % of the digits. The second figure shows 16 features, spread over the
firing-frequency ranking, beside the training digits that excite them most. The isolated specks
in the outer columns sit on pixels that are 0 on nearly every digit: the data hardly constrain
the weights there, and drawing each direction at its own contrast makes them visible.

{figure('sae_features', 'Sparse AE decoder directions', png_skipped)}
{figure('sae_feature_examples', 'Sparse AE features with the digits that excite them most', png_skipped)}
## Reproduce

```bash
{metrics['command']}
```

{metrics['wall_time_s']:.0f} s from the start of `main()` to the last figure (Python's start-up and imports add a
few seconds) on {metrics['machine']}. Seed {cfg.seed}. All numbers
are in [`metrics.json`](metrics.json). Versions: {', '.join(f'{p} {v}' for p, v in metrics['versions'].items())}.
"""
    (out / "README.md").write_text(text)


# ----------------------------------------------------------------------------- main


def field_docs(cls) -> dict[str, str]:
    """The docstring under each field of a dataclass (the --help text: one source of truth)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {node.target.id: after.value.value for node, after in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)}


def parse_args(argv: list[str]) -> DigitsConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    docs = field_docs(DigitsConfig)
    for f in dataclasses.fields(DigitsConfig):
        flag, help_text = "--" + f.name.replace("_", "-"), docs.get(f.name)
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            kind = {"int": int, "int | None": int, "float": float, "str": str}[f.type]
            parser.add_argument(flag, type=kind, default=f.default, help=f"{help_text} (default: {f.default})")
    return DigitsConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> dict:
    """Run the report; returns what metrics.json holds."""
    start = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_args(argv)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 64-pixel inputs: one thread is as fast, and leaves the other cores free
    try:
        x_train, x_test, y_train, y_test = load_digits_split(cfg)
        models, train_metrics, scale = train_models(cfg, x_train)
        k = min(x_train.shape[1], max(1, round(float(metric_fns.l0(models["sae"].encode(x_test))))))
        for components in (cfg.d_dense, k, D_VAE):
            models[f"pca-{components}"] = fit_pca(x_train, components)
        metrics = {"config": dataclasses.asdict(cfg) | {"steps": cfg.n_steps}, "n_train": len(x_train),
                   "n_test": len(x_test), "input_scale": scale, "pca_matched_to_sae_l0": k,
                   **evaluate(cfg, models, x_train, x_test, y_train, y_test),
                   "final_train_batch_metrics": train_metrics}
        figures = make_figures(cfg, models, x_train, x_test, y_test, metrics)
        png_skipped = write_figures(figures, out)
    finally:
        torch.set_num_threads(threads)
    metrics |= {
        "figures": {name: {"html": f"{name}.html", "png": None if png_skipped else f"{name}.png"} for name in figures},
        "png_skipped": png_skipped,
        "command": "python scripts/classic_autoencoders.py " + shlex.join(argv),
        "versions": versions(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, 1 torch thread",
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    write_report(cfg, metrics, png_skipped, out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {out}/README.md in {metrics['wall_time_s']:.0f} s"
          + (f"; PNGs skipped ({png_skipped})" if png_skipped else ""), file=sys.stderr)
    return metrics


if __name__ == "__main__":
    main()
