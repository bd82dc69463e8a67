"""The training recipe: `TrainConfig` (its defaults are the recipe), the settings derived from
the size of a run (`resolve`), schedules, model specs and input statistics. Pure configuration
and arithmetic; the loop is in `sae_kit.training.loop`.

Defaults follow Anthropic's April 2024 update ("Training SAEs"), as used by SAELens and
dictionary_learning: inputs scaled so E‖x‖ = √d_in; Adam (β 0.9, 0.999), lr 5e-5; λ = 5
warmed up linearly over the first 5 % of steps; lr decayed linearly to 0 over the last 20 %;
gradient-norm clipping at 1; batches of 4096 tokens. Those assume ~10⁸–10⁹ training tokens;
for the 10⁵–10⁷ of a first run they leave an SAE worse than the mean (FVU > 1), so the
training tokens, batch size and lr that the user leaves open are derived from the run's size
(`resolve`, rules in its docstring), and runs of 10⁸+ tokens get the recipe unchanged.
A transcoder (`--target`) is trained on pairs (x, y) from two hooks of the same store, each scaled to
E‖·‖ = √d by its own constant.
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
    nonempty = ('store', 'out')

    store: str | None
    """Activation store directory (from `sae-kit harvest`); None to train on the fly (--model, --dataset)."""
    out: str
    """Run directory to write (one sub-directory per model when several are trained)."""
    hook: str | tuple[str, ...] | None = None
    """Hook to train on (module name or alias; optional if the store has one); on the fly, repeat
    --hook to train one model per hook from one forward pass (a tuple then, a string for one)."""
    archs: tuple[str, ...] = ("sae",)
    """Models to train on the same batches, by registry name: sae | topk | batchtopk | jumprelu | gated |
    matryoshka | ae | dae | vae | pca | transcoder | skip-transcoder (the last two need --target)."""
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
    """Training tokens; None: one pass over the store's train split, and at least 1M tokens (a
    small store is passed over several times)."""
    batch_size: int | None = None
    """Tokens per step; None: derived from the tokens (4096 for 10⁸+ tokens, as in the recipe)."""
    lr: float | None = None
    """Adam learning rate (peak); None: derived from the number of steps (5e-5 for 10⁸+ tokens)."""
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
    b_dec_init: Literal["zeros", "mean", "geometric_median"] | None = None
    """Initial decoder bias: zeros, the data mean, or the geometric median; None: the geometric median."""
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
    kernels: Literal["auto", "sparse", "dense"] = "auto"
    """Training-loss kernels of the sparse architectures: sparse (decoder, ∂W_dec, ∂W_enc through the
    active pairs), dense (the plain matrix products), or auto: sparse once the code is sparse enough
    (sae_kit.autoencoders.sparse.SWITCH_DENSITY)."""
    seed: int = 0
    """Seed for init, batch order and noise."""
    log_every: int = 50
    """Steps between metrics.jsonl lines (metrics cost a few passes over the latents)."""
    checkpoint_every_tokens: int | None = 20_000_000
    """Tokens between checkpoints (weights, optimizer, step, RNG, reader position); None: off."""
    l0_coefficients: tuple[float, ...] = (1.0,)
    """λ of the L0 penalty for arch jumprelu; several values train one JumpReLU SAE each."""
    jumprelu_sparsity: Literal["step", "tanh"] = "step"
    """jumprelu penalty: 'step' (Gemma Scope's L0) or 'tanh' (Anthropic's 2025 update)."""
    jumprelu_bandwidth: float = 0.001
    """Bandwidth ε of jumprelu's straight-through estimators (Gemma Scope: 0.001)."""
    jumprelu_init_threshold: float = 0.001
    """Initial threshold θ of every jumprelu latent (Gemma Scope: 0.001)."""
    tanh_scale: float = 4.0
    """c in jumprelu's tanh penalty λ Σ tanh(c·z‖W_dec‖)."""
    pre_act_loss_coefficient: float = 0.0
    """Weight of Anthropic's 2025 penalty on dead jumprelu latents' pre-activations (3e-6 in their setup; 0: off)."""
    jumprelu_threshold_lr_scale: float = 1.0
    """The lr of jumprelu's log θ is --lr times this (1: Gemma Scope; larger helps short runs)."""
    topk_threshold_lr: float = 0.01
    """Rate of the running inference threshold of batchtopk and matryoshka (SAELens' default)."""
    matryoshka_prefixes: tuple[int, ...] | None = None
    """Nested prefix sizes of matryoshka, e.g. 128,512,2048 (d_sae appended); None: d_sae/16 … d_sae."""
    target: str | None = None
    """Transcoders: the hook of the same store to predict from --hook (e.g. --hook mlp_in.3 --target mlp.3).
    None: the models reconstruct their input (SAEs and baselines refuse a target; transcoders need one)."""
    transcoder_activation: Literal["relu", "topk"] = "relu"
    """Transcoders' sparsity: relu (ReLU + L1, swept by --l1) or topk (TopK + AuxK, swept by --k)."""

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
        super().__post_init__()
        self._check_source()
        for arch in self.archs:
            if arch not in ARCHITECTURES:
                raise SaeKitError(f"unknown --arch {arch!r}; choose from {', '.join(ARCHS)}")
        if not self.archs:
            raise SaeKitError("give at least one --arch")
        if len(set(self.archs)) != len(self.archs):
            raise SaeKitError(f"--arch lists a model twice: {','.join(self.archs)}")
        positive = ("expansion", "log_every", "norm_estimation_tokens", "dead_window_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise SaeKitError(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        for name in ("tokens", "batch_size", "d_sae", "baseline_d_sae", "pca_components", "resample_every_tokens",
                     "checkpoint_every_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SaeKitError(f"--{name.replace('_', '-')} must be positive (got {value})")
        if not self.l1_coefficients or any(v < 0 for v in self.l1_coefficients):
            raise SaeKitError("--l1 takes one or more non-negative values, e.g. --l1 1,2,5,10")
        if not self.ks or any(k < 1 for k in self.ks):
            raise SaeKitError("--k takes one or more positive integers, e.g. --k 32,64")
        if not self.l0_coefficients or any(v < 0 for v in self.l0_coefficients):
            raise SaeKitError("--l0-coefficient takes one or more non-negative values, e.g. --l0-coefficient 0.5,1,2")
        if self.lr is not None and self.lr <= 0:
            raise SaeKitError(f"--lr must be positive (got {self.lr})")
        for name in ("lr_warmup_fraction", "lr_decay_fraction", "l1_warmup_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise SaeKitError(f"{name} must be in [0, 1] (got {getattr(self, name)})")
        if self.lr_warmup_fraction + self.lr_decay_fraction > 1:
            raise SaeKitError("lr warmup and decay fractions add up to more than 1")
        if self.kernels not in ("auto", "sparse", "dense"):
            raise SaeKitError(f"--kernels must be auto, sparse or dense (got {self.kernels!r})")
        if self.dtype not in ("float32", "bfloat16"):
            raise SaeKitError(f"--dtype must be float32 or bfloat16 (got {self.dtype!r})")
        if self.b_dec_init not in (None, "zeros", "mean", "geometric_median"):
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
        if self.on_the_fly and self.target is not None:
            raise SaeKitError("transcoders train from a store: harvest both hooks (sae-kit harvest --hook mlp_in.3 "
                              "--hook mlp.3 …), then train with --store")
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

    @property
    def resolved(self) -> bool:
        """Whether the settings the loop needs have values (`fit` refuses otherwise; see `resolve`)."""
        return None not in (self.batch_size, self.lr, self.b_dec_init)


# ----------------------------------------------------------------------------- settings derived from the run's size

RECIPE_TOKENS = 100_000_000
"""From 10⁸ training tokens on, the April 2024 recipe applies unchanged (batch 4096, lr 5e-5)."""
RECIPE_BATCH = 4096
RECIPE_LR = 5e-5
RECIPE_STEPS = RECIPE_TOKENS // RECIPE_BATCH
"""24,414 steps: the shortest run the recipe's lr is used for."""
SHORT_RUN = (977, 5e-4)
"""(steps, lr) of the measured short-run anchor: 1M tokens of the default store at batch 1024 and
lr 5e-4 reach held-out FVU 0.154 at L0 68 with 0.1 % dead latents (the committed demo report)."""
LR_EXPONENT = math.log(RECIPE_LR / SHORT_RUN[1]) / math.log(SHORT_RUN[0] / RECIPE_STEPS)
"""≈ 0.716: lr ∝ steps^−0.716, the power law through the recipe's point and the short-run anchor."""
MIN_DEFAULT_TOKENS = 1_000_000
"""Default training tokens for a small store (passed over several times): the short-run anchor."""
STEPS_PER_BATCH_RULE = 1000
"""The derived batch is the power of two nearest to tokens / 1000, in [256, 4096]: about a
thousand steps for short runs (fewer, larger steps left most latents dead in our measurements:
400k tokens at batch 4096 gave 37 % dead latents, at batch 1024 under 6 %)."""
SHORT_RUN_WARNING_STEPS = 300
"""Fewer steps than this train poorly whatever the lr: the run warns."""


@dataclass(frozen=True)
class Derived:
    """One setting `resolve` derived because the user left it open."""

    field: str
    """The TrainConfig field."""
    value: object
    """The value it got."""
    rule: str
    """Why (the rule and its source or measurement), printed at start and saved in config.json."""


def derived_batch_size(tokens: int) -> int:
    """Batch size for a run of `tokens` tokens: 2^round(log2(tokens / 1000)) clamped to [256, 4096]."""
    exponent = round(math.log2(max(tokens / STEPS_PER_BATCH_RULE, 1)))
    return int(min(RECIPE_BATCH, max(256, 2**exponent)))


def derived_lr(steps: int) -> float:
    """lr for a run of `steps` steps: 5e-5 · (24,414 / steps)^0.716, clamped to [5e-5, 2e-3] (the
    recipe's lr from 24,414 steps on; 5e-4 at 977 steps, the measured short-run anchor)."""
    lr = RECIPE_LR * (RECIPE_STEPS / max(steps, 1)) ** LR_EXPONENT
    return float(f"{min(2e-3, max(RECIPE_LR, lr)):.3g}")


def resolve(cfg: TrainConfig, train_tokens: int) -> tuple[TrainConfig, tuple[Derived, ...]]:
    """The settings the user left open (None), derived from the run's size; explicit values win.

    - tokens: one pass over the train split, at least MIN_DEFAULT_TOKENS (1M; a smaller store is
      passed over several times);
    - batch_size: the power of two nearest to tokens / 1000, in [256, 4096] (4096 from 4.1M
      tokens on, the recipe's);
    - lr: 5e-5 · (24,414 / steps)^0.716 in [5e-5, 2e-3]: the recipe's 5e-5 for 10⁸+ tokens, 5e-4
      at 977 steps (the measured anchor `SHORT_RUN`), a power law between;
    - b_dec_init: the geometric median of the data (SAELens' b_dec_init_method, Gao et al. 2024's
      TopK trainer; in our short runs it reached the same FVU at a lower L0 than zeros).
    Returns the resolved config (no None left among these fields) and what was derived.
    """
    derived: list[Derived] = []
    tokens = cfg.tokens
    if tokens is None:
        tokens = max(train_tokens, MIN_DEFAULT_TOKENS)
        passes = tokens / max(train_tokens, 1)
        rule = ("one pass over the store's train split" if tokens == train_tokens else
                f"{passes:.1f} passes over the store's {train_tokens:,}-token train split (at least "
                f"{MIN_DEFAULT_TOKENS:,} tokens; the measured short-run anchor)")
        derived.append(Derived("tokens", tokens, rule))
    batch = cfg.batch_size
    if batch is None:
        batch = derived_batch_size(tokens)
        derived.append(Derived("batch_size", batch, "the power of two nearest to tokens / 1000, in [256, 4096] "
                               "(4096, the recipe's, from 4.1M tokens on)"))
    lr = cfg.lr
    if lr is None:
        lr = derived_lr(tokens // batch)
        derived.append(Derived("lr", lr, f"5e-5 · (24,414 / {tokens // batch:,} steps)^{LR_EXPONENT:.3f}, in "
                               "[5e-5, 2e-3]: the recipe's lr from 10⁸ tokens on, 5e-4 at 977 steps (measured)"))
    b_dec_init = cfg.b_dec_init
    if b_dec_init is None:
        b_dec_init = "geometric_median"
        derived.append(Derived("b_dec_init", b_dec_init, "the data's geometric median (SAELens, Gao et al. 2024; "
                               "measured: the same FVU at a lower L0 than zeros in short runs)"))
    return cfg.replace(tokens=tokens, batch_size=batch, lr=lr, b_dec_init=b_dec_init), tuple(derived)


def short_run_warning(cfg: TrainConfig) -> str | None:
    """One line when a resolved run has too few steps to train well, saying what to change."""
    steps = cfg.tokens // cfg.batch_size
    if steps >= SHORT_RUN_WARNING_STEPS:
        return None
    return (f"warning: {steps} steps of {cfg.batch_size:,} tokens is too short to train well (the defaults aim at "
            f"≥ 1,000): raise --tokens (a small store is then passed over several times) or lower --batch-size")


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


SWEEP_VALUES = {"l1_coefficient": "l1_coefficients", "k": "ks", "l0_coefficient": "l0_coefficients"}
"""AutoencoderConfig field an architecture sweeps (its `sweep_field`) -> the TrainConfig field listing the values."""

ARCH_OPTIONS = ("jumprelu_sparsity", "jumprelu_bandwidth", "jumprelu_init_threshold", "tanh_scale",
                "pre_act_loss_coefficient", "jumprelu_threshold_lr_scale", "topk_threshold_lr", "matryoshka_prefixes")
"""TrainConfig fields passed unchanged to the AutoencoderConfig of every model (each arch reads its own)."""


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
    common.update({name: getattr(cfg, name) for name in ARCH_OPTIONS})
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


def training_bytes(specs: list[ModelSpec], batch_size: int) -> int:
    """Memory a run needs, roughly: every model's parameters with their gradient and Adam's two
    moments (4 float32 copies), plus the step's [batch, d_sae] activations and gradients (4 more)."""
    total = 0
    for spec in specs:
        c = spec.cfg
        d_out = getattr(c, "d_out", None) or c.d_in
        total += 4 * 4 * (c.d_sae * (c.d_in + d_out) + c.d_sae + d_out)
        total += 4 * 4 * batch_size * c.d_sae
    return total


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device`: the GPU's free memory, or the host's MemAvailable (None if unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(specs: list[ModelSpec], batch_size: int, device: torch.device) -> None:
    """Refuse, before allocating anything, a run that cannot fit in memory, saying what to lower."""
    need, free = training_bytes(specs, batch_size), available_bytes(device)
    if free is not None and need > 0.9 * free:
        widest = max(spec.cfg.d_sae for spec in specs)
        raise SaeKitError(f"the {len(specs)} model(s) need about {need / 2**30:.1f} GiB ({widest:,} latents, batches of "
                          f"{batch_size:,}) and {free / 2**30:.1f} GiB is available on {device}; lower --d-sae / "
                          "--expansion or --batch-size, or train fewer models at once")


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
