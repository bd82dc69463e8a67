"""The training recipe: `TrainConfig` (its defaults are the recipe) and its schedules. Pure
configuration and arithmetic. Beside it: the settings derived from a run's size
(`sae_kit.training.derive`), the models of a run and their memory (`sae_kit.training.specs`),
the input statistics (`sae_kit.training.input_stats`); the loop is in `sae_kit.training.loop`.

Defaults follow Anthropic's April 2024 update ("Training SAEs"), as used by SAELens and
dictionary_learning: inputs scaled so E‖x‖ = √d_in; Adam (β 0.9, 0.999), lr 5e-5; λ = 5
warmed up linearly over the first 5 % of steps; lr decayed linearly to 0 over the last 20 %;
gradient-norm clipping at 1; batches of 4096 tokens. Those assume ~10⁸–10⁹ training tokens;
for the 10⁵–10⁷ of a first run they leave an SAE worse than the mean (FVU > 1), so the
training tokens, batch size and lr that the user leaves open are derived from the run's size
(`derive.resolve`, rules in its docstring), and runs of 10⁸+ tokens get the recipe unchanged.
A transcoder (`--target`) is trained on pairs (x, y) from two hooks of the same store, each scaled to
E‖·‖ = √d by its own constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sae_kit.autoencoders import ARCHITECTURES, ARCHS, architecture
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


