"""The training recipe: `TrainConfig` (its defaults are the recipe), schedules, model specs and
input statistics. Pure configuration and arithmetic; the loop is in `sae_kit.train`.

Defaults follow Anthropic's April 2024 update ("Training SAEs"), as used by SAELens and
dictionary_learning: inputs scaled so E‖x‖ = √d_in; Adam (β 0.9, 0.999), lr 5e-5; λ = 5
warmed up linearly over the first 5 % of steps; lr decayed linearly to 0 over the last 20 %;
gradient-norm clipping at 1; batches of 4096 tokens. A transcoder (`--target`) is trained on
pairs (x, y) from two hooks of the same store, each scaled to E‖·‖ = √d by its own constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from sae_kit.autoencoders import ARCHITECTURES, ARCHS, AutoencoderConfig, architecture
from sae_kit.config import JsonConfig
from sae_kit.errors import SaeKitError


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """Everything that defines a training run; saved in every run's config.json."""

    config_name = "training config"

    store: str
    """Activation store directory (from `sae-kit harvest`)."""
    out: str
    """Run directory to write (one sub-directory per model when several are trained)."""
    hook: str | None = None
    """Hook to train on (module name or the alias it was harvested as); optional if the store has one."""
    archs: tuple[str, ...] = ("sae",)
    """Models to train on the same batches, by registry name: sae | topk | ae | dae | vae | pca |
    transcoder | skip-transcoder (the last two need --target)."""
    l1_coefficients: tuple[float, ...] = (5.0,)
    """λ for arch sae; several values train one SAE each (a sparsity sweep in one pass)."""
    ks: tuple[int, ...] = (32,)
    """k for arch topk; several values train one TopK SAE each."""
    d_sae: int | None = None
    """Latents of the sparse models (sae, topk); None means expansion × d_in."""
    baseline_d_sae: int | None = None
    """Latents of the dense baselines (ae, dae, vae); None means the same as the sparse models."""
    expansion: int = 8
    """Latents per input dimension when d_sae is not given (576 × 8 = 4608 for SmolLM2)."""
    pca_components: int | None = None
    """Components of the PCA baseline; None means the first k (matched to TopK's active latents)."""
    decoder_norm: Literal["free", "unit"] | None = None
    """Decoder constraint: 'free' (April 2024) or 'unit' (2023); None = per arch (unit for topk)."""
    auxk_coefficient: float = 1 / 32
    """Weight of the AuxK loss on dead latents for topk (Gao et al. 2024)."""
    corruption: Literal["gaussian", "dropout"] = "gaussian"
    """Input corruption of the denoising autoencoder (dae)."""
    corruption_level: float = 0.2
    """Noise std (normalised units) or dropout probability for dae."""
    beta: float = 1.0
    """Weight β of the VAE's KL term."""
    tokens: int | None = None
    """Training tokens; None means one pass over the store's train split (cycled if larger)."""
    batch_size: int = 4096
    """Tokens per step."""
    lr: float = 5e-5
    """Adam learning rate (peak)."""
    adam_beta1: float = 0.9
    """Adam β₁."""
    adam_beta2: float = 0.999
    """Adam β₂."""
    lr_warmup_fraction: float = 0.0
    """Fraction of steps over which lr rises linearly from 0 (the April 2024 recipe uses none)."""
    lr_decay_fraction: float = 0.2
    """Final fraction of steps over which lr decays linearly to 0."""
    l1_warmup_fraction: float = 0.05
    """Initial fraction of steps over which λ rises linearly from 0."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping threshold (0 turns clipping off)."""
    b_dec_init: Literal["zeros", "mean", "geometric_median"] = "zeros"
    """Initial decoder bias: zeros (recipe), the data mean, or the geometric median."""
    normalize_inputs: bool = True
    """Scale inputs by one constant so that E‖x‖ = √d_in (folded into the saved weights)."""
    norm_estimation_tokens: int = 131_072
    """Tokens read (before training) to estimate the input scale and mean."""
    dead_window_tokens: int = 1_000_000
    """A latent is dead when it has not fired in this many training tokens (drives AuxK and resampling)."""
    resample_every_tokens: int | None = None
    """Anthropic 2023 resampling of dead latents every this many tokens (None: off; sae/ae only)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype: bfloat16 runs forward passes under autocast (weights stay float32)."""
    device: str | None = None
    """cpu, cuda, cuda:1 …; None means CUDA when present, else CPU."""
    seed: int = 0
    """Seed for init, batch order and noise."""
    log_every: int = 50
    """Steps between metrics.jsonl lines (metrics cost a few passes over the latents)."""
    checkpoint_every_tokens: int | None = 20_000_000
    """Tokens between checkpoints (weights, optimizer, step, RNG, reader position); None: off."""
    target: str | None = None
    """Transcoders: the hook of the same store to predict from --hook (e.g. --hook mlp_in.3 --target mlp.3).
    None: the models reconstruct their input (SAEs and baselines refuse a target; transcoders need one)."""
    transcoder_activation: Literal["relu", "topk"] = "relu"
    """Transcoders' sparsity: relu (ReLU + L1, swept by --l1) or topk (TopK + AuxK, swept by --k)."""

    def __post_init__(self) -> None:
        for arch in self.archs:
            if arch not in ARCHITECTURES:
                raise SaeKitError(f"unknown --arch {arch!r}; choose from {', '.join(ARCHS)}")
        if not self.archs:
            raise SaeKitError("give at least one --arch")
        if len(set(self.archs)) != len(self.archs):
            raise SaeKitError(f"--arch lists a model twice: {','.join(self.archs)}")
        positive = ("batch_size", "expansion", "log_every", "norm_estimation_tokens", "dead_window_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise SaeKitError(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        for name in ("tokens", "d_sae", "baseline_d_sae", "pca_components", "resample_every_tokens",
                     "checkpoint_every_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SaeKitError(f"--{name.replace('_', '-')} must be positive (got {value})")
        if not self.l1_coefficients or any(v < 0 for v in self.l1_coefficients):
            raise SaeKitError("--l1 takes one or more non-negative values, e.g. --l1 1,2,5,10")
        if not self.ks or any(k < 1 for k in self.ks):
            raise SaeKitError("--k takes one or more positive integers, e.g. --k 32,64")
        if self.lr <= 0:
            raise SaeKitError(f"--lr must be positive (got {self.lr})")
        for name in ("lr_warmup_fraction", "lr_decay_fraction", "l1_warmup_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise SaeKitError(f"{name} must be in [0, 1] (got {getattr(self, name)})")
        if self.lr_warmup_fraction + self.lr_decay_fraction > 1:
            raise SaeKitError("lr warmup and decay fractions add up to more than 1")
        if self.dtype not in ("float32", "bfloat16"):
            raise SaeKitError(f"--dtype must be float32 or bfloat16 (got {self.dtype!r})")
        if self.b_dec_init not in ("zeros", "mean", "geometric_median"):
            raise SaeKitError(f"b_dec_init must be zeros, mean or geometric_median (got {self.b_dec_init!r})")
        if self.transcoder_activation not in ("relu", "topk"):
            raise SaeKitError(f"--transcoder-activation must be relu or topk (got {self.transcoder_activation!r})")
        targeted = [a for a in self.archs if architecture(a).has_target]
        untargeted = [a for a in self.archs if not architecture(a).has_target]
        if self.target is None and targeted:
            raise SaeKitError(f"--arch {','.join(targeted)} predicts a target from its input: give --target "
                              "(e.g. --hook mlp_in.3 --target mlp.3)")
        if self.target is not None and untargeted:
            raise SaeKitError(f"--target is for transcoders; --arch {','.join(untargeted)} reconstructs its input "
                              "(drop --target, or train transcoder / skip-transcoder)")
        if self.transcoder_activation != "relu" and not targeted:
            raise SaeKitError("--transcoder-activation applies to transcoders only (for a TopK SAE use --arch topk)")


# ----------------------------------------------------------------------------- schedules


def lr_at(step: int, n_steps: int, cfg: TrainConfig) -> float:
    """lr at `step` (0-based) of n_steps: linear warmup over the first lr_warmup_fraction, constant,
    then linear decay to 0 over the last lr_decay_fraction (Anthropic, April 2024)."""
    warmup = cfg.lr_warmup_fraction * n_steps
    decay = cfg.lr_decay_fraction * n_steps
    factor = 1.0
    if warmup > 0 and step < warmup:
        factor = (step + 1) / warmup
    decay_start = n_steps - decay
    if decay > 0 and step >= decay_start:
        factor = min(factor, (n_steps - step) / decay)
    return cfg.lr * factor


def l1_scale_at(step: int, n_steps: int, cfg: TrainConfig) -> float:
    """Fraction of the final λ at `step`: rises linearly from 0 over the first l1_warmup_fraction."""
    warmup = cfg.l1_warmup_fraction * n_steps
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


# ----------------------------------------------------------------------------- the models of a run


@dataclass(frozen=True)
class ModelSpec:
    """One model of a (possibly multi-model) run: its name (sub-directory) and config."""

    name: str
    """Sub-run name, e.g. 'sae-l1_5', 'topk-k_32', 'pca'."""
    cfg: AutoencoderConfig
    """The model's config."""


SWEEP_VALUES = {"l1_coefficient": "l1_coefficients", "k": "ks"}
"""AutoencoderConfig field an architecture sweeps (its `sweep_field`) -> the TrainConfig field listing the values."""


def _fmt(value: float) -> str:
    return f"{value:g}".replace("+", "")


def model_specs(cfg: TrainConfig, d_in: int, hook: str | None = None, metadata: dict | None = None, *,
                d_out: int | None = None, target_hook: str | None = None) -> list[ModelSpec]:
    """The models `cfg` asks for, in a stable order: one per arch, times one per value of the
    field the architecture sweeps (λ for sae, k for topk, either for a transcoder by its
    activation). Widths follow each architecture's `width`: the dictionary (d_sae or
    expansion × d_in), the baselines' budget, or PCA components. Transcoders get d_out and
    target_hook (the target's width and hook)."""
    widths = {"dictionary": cfg.d_sae or cfg.expansion * d_in,
              "baseline": cfg.baseline_d_sae or cfg.d_sae or cfg.expansion * d_in,
              "components": cfg.pca_components or cfg.ks[0]}
    common = dict(d_in=d_in, hook=hook, metadata=dict(metadata or {}), auxk_coefficient=cfg.auxk_coefficient,
                  corruption=cfg.corruption, corruption_level=cfg.corruption_level, beta=cfg.beta,
                  d_out=d_out, target_hook=target_hook, transcoder_activation=cfg.transcoder_activation)
    specs: list[ModelSpec] = []
    for arch in cfg.archs:
        cls = architecture(arch)
        fields = dict(common, arch=arch, d_sae=widths[cls.width])
        if cls.decoder_norm_choice:
            fields["decoder_norm"] = cfg.decoder_norm
        if cls.width == "components" and fields["d_sae"] > d_in:
            raise SaeKitError(f"PCA has at most d_in={d_in} components; lower --pca-components (got {fields['d_sae']})")
        sweep_field, sweep_label = cls.sweep_for(fields)
        if sweep_field is None:
            specs.append(ModelSpec(arch, AutoencoderConfig(**fields)))
            continue
        for value in getattr(cfg, SWEEP_VALUES[sweep_field]):
            name = f"{arch}-{sweep_label}_{_fmt(value)}"
            specs.append(ModelSpec(name, AutoencoderConfig(**{**fields, sweep_field: value})))
    return specs


# ----------------------------------------------------------------------------- input statistics


@dataclass(frozen=True)
class InputStats:
    """Statistics of raw activations estimated before training (of the input x and, for a
    transcoder, of its target y: each gets its own scale)."""

    scale: float
    """The constant s with E‖s·x‖ = √d_in (1.0 when normalisation is off)."""
    mean: list[float]
    """Mean of the raw activations [d_in]."""
    geometric_median: list[float] | None
    """Geometric median of the raw activations [d_in], when asked for."""
    n_tokens: int
    """Tokens the estimate is based on."""
    target_scale: float | None = None
    """Transcoders: the constant s_y with E‖s_y·y‖ = √d_out for the target (None: no target)."""
    target_mean: list[float] | None = None
    """Transcoders: mean of the raw targets [d_out]."""
    target_geometric_median: list[float] | None = None
    """Transcoders: geometric median of the raw targets [d_out], when asked for."""

    @property
    def output_scale(self) -> float:
        """The scale of what the models output: the target's, else the input's."""
        return self.scale if self.target_scale is None else self.target_scale

    def decoder_origin(self, kind: str) -> list[float] | None:
        """The initial b_dec for b_dec_init `kind` ('mean' | 'geometric_median'), in raw units of
        the output space (the target's for a transcoder)."""
        if self.target_scale is not None:
            return self.target_mean if kind == "mean" else self.target_geometric_median
        return self.mean if kind == "mean" else self.geometric_median


def _moments(x: torch.Tensor, normalize: bool, want_median: bool) -> tuple[float, list[float], list[float] | None]:
    """(s, mean, geometric median or None) of activations x [n, d]: s = √d / mean_n ‖x_n‖."""
    mean_norm = float(x.norm(dim=-1).mean())
    if not math.isfinite(mean_norm) or mean_norm == 0:
        raise SaeKitError(f"the activations have mean norm {mean_norm}; the store holds zeros or non-finite values")
    scale = math.sqrt(x.shape[-1]) / mean_norm if normalize else 1.0
    return scale, x.mean(0).tolist(), geometric_median(x).tolist() if want_median else None


@torch.no_grad()
def estimate_input_stats(batches, n_tokens: int, normalize: bool, want_median: bool) -> InputStats:
    """Read batches [b, d_in] (or pairs (x [b, d_in], y [b, d_out]) for a transcoder) until
    n_tokens; s = √d / mean_n ‖x_n‖ for x and, separately, for y (Anthropic, April 2024)."""
    seen, parts = 0, []
    for batch in batches:
        pair = batch if isinstance(batch, tuple) else (batch,)
        parts.append(tuple(t.detach().to("cpu", torch.float32) for t in pair))
        seen += pair[0].shape[0]
        if seen >= n_tokens:
            break
    if not parts:
        raise SaeKitError("no activations to estimate the input scale from; is the store's train split empty?")
    x = torch.cat([p[0] for p in parts])
    scale, mean, median = _moments(x, normalize, want_median)
    target = {}
    if len(parts[0]) > 1:
        target_scale, target_mean, target_median = _moments(torch.cat([p[1] for p in parts]), normalize, want_median)
        target = dict(target_scale=target_scale, target_mean=target_mean, target_geometric_median=target_median)
    return InputStats(scale=scale, mean=mean, geometric_median=median, n_tokens=x.shape[0], **target)


def geometric_median(x: torch.Tensor, iterations: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """argmin_m Σ_n ‖x_n − m‖ by Weiszfeld's algorithm. x [n, d] -> [d]."""
    median = x.mean(0)
    for _ in range(iterations):
        weights = 1.0 / (x - median).norm(dim=-1).clamp_min(1e-8)
        new = (weights[:, None] * x).sum(0) / weights.sum()
        if (new - median).norm() <= tol * median.norm().clamp_min(1e-8):
            return new
        median = new
    return median
