"""The training recipe: `TrainConfig` (its defaults are the recipe), schedules, model specs and
input statistics. Pure configuration and arithmetic; the loop is in `sae_kit.train`.

Defaults follow Anthropic's April 2024 update ("Training SAEs"), as used by SAELens and
dictionary_learning: inputs scaled so E‖x‖ = √d_in; Adam (β 0.9, 0.999), lr 5e-5; λ = 5
warmed up linearly over the first 5 % of steps; lr decayed linearly to 0 over the last 20 %;
gradient-norm clipping at 1; batches of 4096 tokens.
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

    store: str | None
    """Activation store directory (from `sae-kit harvest`); None to train on the fly (--model, --dataset)."""
    out: str
    """Run directory to write (one sub-directory per model when several are trained)."""
    hook: str | tuple[str, ...] | None = None
    """Hook to train on (module name or alias; optional if the store has one); on the fly, repeat
    --hook to train one model per hook from one forward pass (a tuple then, a string for one)."""
    archs: tuple[str, ...] = ("sae",)
    """Models to train on the same batches, by registry name: sae | topk | ae | dae | vae | pca."""
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
    # -- on the fly and several processes (sae_kit.training.stream, sae_kit.training.distributed) --
    model: str | None = None
    """Train on the fly from this language model, no store: 'default', a directory, a .gguf file or a hub id."""
    dataset: str | None = None
    """Corpus on the fly: 'python-docs' (default), local .txt/.jsonl/.parquet files or a folder, a hub dataset."""
    dataset_config: str | None = None
    """Hub dataset configuration name, on the fly."""
    dataset_split: str = "train"
    """Dataset split to read, on the fly."""
    text_column: str = "text"
    """Column holding the document text, on the fly."""
    streaming: bool = False
    """Stream a hub dataset instead of downloading it whole, on the fly."""
    context_len: int = 128
    """Tokens per context (BOS included), on the fly."""
    lm_batch_size: int = 16
    """Contexts per language-model forward pass, on the fly."""
    model_device: str | None = None
    """Device of the language model on the fly (default: --device); the activations go to --device."""
    model_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Dtype of the language model's weights on the fly (default float32)."""
    buffer_batches: int = 16
    """On the fly: the shuffle buffer holds this many batches; it serves half, then refills (SAELens' mixing)."""
    eval_contexts: int = 256
    """On the fly: held-out contexts harvested once at start into RUN/eval-store for `sae-kit evaluate`."""
    shard_latents: bool = False
    """Under torchrun: split every model's latents over the ranks instead of the batch (dictionaries too large for one device)."""

    def __post_init__(self) -> None:
        self._check_source()
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


    def _check_source(self) -> None:
        """--store, or --model/--dataset (on the fly), not both; one hook per store run."""
        if isinstance(self.hook, (list, tuple)):  # one hook stays a string: old config.json files read as before
            hooks = tuple(self.hook)
            object.__setattr__(self, "hook", hooks[0] if len(hooks) == 1 else (hooks or None))
        if self.store is not None and (self.model is not None or self.dataset is not None):
            raise SaeKitError("give either --store (train from an activation store) or --model/--dataset (train on "
                              "the fly), not both")
        if self.store is None and self.model is None and self.dataset is None:
            raise SaeKitError("give --store STORE, or --model M (and --dataset D) to train on the fly")
        if self.store is not None and isinstance(self.hook, tuple):
            raise SaeKitError("several --hook values train on the fly only (--model); from a store, train one hook per run")
        if self.on_the_fly and self.tokens is None:
            raise SaeKitError("on the fly, say how long to train: --tokens N (there is no store to count)")
        for name, low in (("context_len", 2), ("lm_batch_size", 1), ("buffer_batches", 2), ("eval_contexts", 0)):
            if getattr(self, name) < low:
                raise SaeKitError(f"--{name.replace('_', '-')} must be at least {low} (got {getattr(self, name)})")

    @property
    def on_the_fly(self) -> bool:
        """Activations come straight from the language model (no store)."""
        return self.store is None

    @property
    def hooks(self) -> tuple[str, ...]:
        """The hooks to train on, as a tuple (empty: the store's only hook)."""
        return self.hook if isinstance(self.hook, tuple) else ((self.hook,) if self.hook else ())


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


def model_specs(cfg: TrainConfig, d_in: int, hook: str | None = None, metadata: dict | None = None) -> list[ModelSpec]:
    """The models `cfg` asks for, in a stable order: one per arch, times one per value of the
    field the architecture sweeps (λ for sae, k for topk …). Widths follow each architecture's
    `width`: the dictionary (d_sae or expansion × d_in), the baselines' budget, or PCA components."""
    widths = {"dictionary": cfg.d_sae or cfg.expansion * d_in,
              "baseline": cfg.baseline_d_sae or cfg.d_sae or cfg.expansion * d_in,
              "components": cfg.pca_components or cfg.ks[0]}
    common = dict(d_in=d_in, hook=hook, metadata=dict(metadata or {}), auxk_coefficient=cfg.auxk_coefficient,
                  corruption=cfg.corruption, corruption_level=cfg.corruption_level, beta=cfg.beta)
    specs: list[ModelSpec] = []
    for arch in cfg.archs:
        cls = architecture(arch)
        fields = dict(common, arch=arch, d_sae=widths[cls.width])
        if cls.decoder_norm_choice:
            fields["decoder_norm"] = cfg.decoder_norm
        if cls.width == "components" and fields["d_sae"] > d_in:
            raise SaeKitError(f"PCA has at most d_in={d_in} components; lower --pca-components (got {fields['d_sae']})")
        if cls.sweep_field is None:
            specs.append(ModelSpec(arch, AutoencoderConfig(**fields)))
            continue
        for value in getattr(cfg, SWEEP_VALUES[cls.sweep_field]):
            name = f"{arch}-{cls.sweep_label}_{_fmt(value)}"
            specs.append(ModelSpec(name, AutoencoderConfig(**{**fields, cls.sweep_field: value})))
    return specs


# ----------------------------------------------------------------------------- input statistics


@dataclass(frozen=True)
class InputStats:
    """Statistics of raw activations estimated before training."""

    scale: float
    """The constant s with E‖s·x‖ = √d_in (1.0 when normalisation is off)."""
    mean: list[float]
    """Mean of the raw activations [d_in]."""
    geometric_median: list[float] | None
    """Geometric median of the raw activations [d_in], when asked for."""
    n_tokens: int
    """Tokens the estimate is based on."""


@torch.no_grad()
def estimate_input_stats(batches, n_tokens: int, normalize: bool, want_median: bool) -> InputStats:
    """Read batches [b, d_in] until n_tokens; s = √d_in / mean_n ‖x_n‖ (Anthropic, April 2024)."""
    seen, parts = 0, []
    for x in batches:
        parts.append(x.detach().to("cpu", torch.float32))
        seen += x.shape[0]
        if seen >= n_tokens:
            break
    if not parts:
        raise SaeKitError("no activations to estimate the input scale from; is the store's train split empty?")
    x = torch.cat(parts)
    mean_norm = float(x.norm(dim=-1).mean())
    if not math.isfinite(mean_norm) or mean_norm == 0:
        raise SaeKitError(f"the activations have mean norm {mean_norm}; the store holds zeros or non-finite values")
    scale = math.sqrt(x.shape[-1]) / mean_norm if normalize else 1.0
    median = geometric_median(x).tolist() if want_median else None
    return InputStats(scale=scale, mean=x.mean(0).tolist(), geometric_median=median, n_tokens=x.shape[0])


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
