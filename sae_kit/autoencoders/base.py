"""The shared core: an affine encoder and decoder around a latent code, in SAELens shapes.

    pre = (x − b_dec) W_enc + b_enc        x [..., d_in], W_enc [d_in, d_sae], b_enc [d_sae]
    x̂   = z W_dec + b_dec                  z [..., d_sae], W_dec [d_sae, d_in], b_dec [d_in]

Subclasses choose z = activation(pre) and the loss terms. Everything that is the same for all
models lives here: parameters, init, decoding, folding the input scale into the weights, the
unit-norm decoder constraint, encoding a chosen subset of latents, and saving.

What differs between architectures is declared on each class (the class attributes below), so
the trainer, evaluation, analysis, steering and interop ask the model instead of testing its
name. `sae_kit.autoencoders.registry` lists the classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import nn

from sae_kit.artifacts import atomic_save_tensors, atomic_write_json
from sae_kit.errors import SaeKitError

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "sae-kit-autoencoder"
FORMAT_VERSION = 1


class ForwardOutput(NamedTuple):
    """What every autoencoder's forward pass returns."""

    x_hat: torch.Tensor
    """[..., d_in] the reconstruction of the (clean) input."""
    z: torch.Tensor
    """[..., d_sae] the latents used to reconstruct (VAE in training: the sample μ + σ ⊙ ε)."""
    losses: dict[str, torch.Tensor]
    """Named scalar loss terms, already weighted: `loss` is their sum (e.g. reconstruction, l1)."""
    loss: torch.Tensor
    """The scalar training loss, Σ losses.values()."""


@dataclass(frozen=True)
class TrainingState:
    """What the trainer knows at a step that a model's training loss may need."""

    sparsity_scale: float = 1.0
    """Fraction of the sparsity coefficient reached by its warm-up: the loss uses λ · sparsity_scale
    (Anthropic, April 2024: λ rises linearly over the first 5 % of steps)."""
    dead_mask: torch.Tensor | None = None
    """[d_sae] bool: latents that have not fired within the trainer's dead window (AuxK's input)."""
    step: int = 0
    """The training step (0-based)."""


def affine(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x W + b for x [..., n], W [n, m], b [m] -> [..., m], as one fused addmm (no second
    pass over the [batch, m] output to add the bias)."""
    if x.dim() == 2:
        return torch.addmm(b, x, W)
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), W).reshape(*x.shape[:-1], W.shape[-1])


def check_arch(cls: type, cfg) -> None:
    """A model class takes only configs of its own architecture."""
    if cfg.arch != cls.arch:
        raise SaeKitError(f"{cls.__name__} is arch {cls.arch!r}, but the config says {cfg.arch!r}")


class Autoencoder(nn.Module):
    """Base class: parameters W_enc, b_enc, W_dec, b_dec and the operations shared by all models.

    `cfg` is the model's `sae_kit.autoencoders.config.AutoencoderConfig`.
    """

    # -- what differs between architectures (the registry's contract) ---------------------------
    arch: ClassVar[str]
    """The name `--arch` and config.json use."""
    description: ClassVar[str]
    """One line for `sae-kit train --help` and the README: what it is and where it comes from."""
    display_name: ClassVar[str]
    """Short human name for reports ("L1 sparse AE")."""
    width: ClassVar[Literal["dictionary", "baseline", "components"]] = "dictionary"
    """Which latent count a training run gives it: the dictionary size (d_sae or expansion × d_in),
    the dense baselines' budget (baseline_d_sae), or PCA components."""
    sweep_field: ClassVar[str | None] = None
    """The AutoencoderConfig field a sparsity sweep varies (l1_coefficient, k), if any."""
    sweep_label: ClassVar[str] = ""
    """Its short name in sub-run names: sae-l1_5, topk-k_32."""
    default_decoder_norm: ClassVar[Literal["free", "unit"]] = "free"
    """Decoder constraint when the config leaves it open."""
    decoder_norm_choice: ClassVar[bool] = False
    """Whether a training run's --decoder-norm applies to this architecture."""
    latents_fire: ClassVar[bool] = True
    """z_i > 0 means latent i fires on a token: dead latents can be tracked (False: VAE, PCA)."""
    dead_latent_remedy: ClassVar[Literal["resample", "auxk"] | None] = None
    """How training revives dead latents: Anthropic 2023 resampling, AuxK (the loss needs
    TrainingState.dead_mask), or nothing."""
    fitted_in_closed_form: ClassVar[bool] = False
    """Fitted from data moments at the end of a pass (PCA), not by gradient steps."""
    separable: ClassVar[bool] = False
    """z_i depends on x only through (x − b_dec)·W_enc[:, i], so a chosen subset of latents can be
    computed from those columns alone (`subset_activation`); TopK-style models are not."""
    saelens_architecture: ClassVar[str | None] = None
    """SAELens' `architecture` name for export (None: not exportable)."""
    supports_latent_sharding: ClassVar[bool] = False
    """Implements `sharded_training_loss`, so `--shard-latents` can split its latents over ranks."""

    cfg: object

    def __init__(self, cfg):
        super().__init__()
        check_arch(type(self), cfg)
        self.cfg = cfg
        self.d_in = cfg.d_in
        self.d_sae = cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.reset_parameters()

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise SaeKitError if `cfg` lacks what this architecture needs (called by the config)."""

    def saelens_fields(self) -> dict:
        """The activation fields of SAELens' cfg.json for this model (export)."""
        return {"activation_fn": "relu", "activation_fn_kwargs": {}}

    @classmethod
    def from_saelens_config(cls, raw: dict) -> dict | None:
        """AutoencoderConfig fields (beyond arch, d_in, d_sae) for a SAELens cfg.json that this
        class reads, or None if it does not read it (import tries the registry in order)."""
        return None

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """April 2024 init: decoder columns in random directions with norm `init_decoder_norm`
        (1 for a unit-norm decoder), W_enc = W_decᵀ, biases 0."""
        direction = torch.randn(self.d_sae, self.d_in)
        norm = 1.0 if self.cfg.decoder_norm == "unit" else self.cfg.init_decoder_norm
        self.W_dec.copy_(direction / direction.norm(dim=-1, keepdim=True) * norm)
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    # -- the interface every model implements ------------------------------------------------

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """(x − b_dec) W_enc + b_enc: [..., d_in] -> [..., d_sae]."""
        return affine(x - self.b_dec, self.W_enc, self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic latent code z [..., d_sae] of raw activations x [..., d_in]."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x̂ = z W_dec + b_dec: [..., d_sae] -> [..., d_in]."""
        return affine(z, self.W_dec, self.b_dec)

    def training_loss(self, x: torch.Tensor, state: TrainingState) -> ForwardOutput:
        """Reconstruction, latents and the named, weighted loss terms for a training batch x
        [batch, d_in], given what the trainer knows at this step (`TrainingState`)."""
        raise NotImplementedError

    def sharded_training_loss(self, x: torch.Tensor, state: TrainingState, shard) -> ForwardOutput:
        """`training_loss` when this model holds only one rank's slice of the latents (`shard`, a
        `sae_kit.training.sharding.LatentShard`: z and the latent-summed loss terms are local,
        x̂ and the returned loss values are the whole model's)."""
        raise NotImplementedError(f"{type(self).__name__} does not support latent sharding")

    def forward(self, x: torch.Tensor) -> ForwardOutput:
        """Reconstruction, latents and loss terms at the config's coefficients: x [batch, d_in]."""
        return self.training_loss(x, TrainingState())

    def schedule_metrics(self, state: TrainingState) -> dict[str, float]:
        """Scheduled coefficients worth logging at this step (e.g. the warmed-up λ)."""
        return {}

    # -- encoding a chosen subset of latents (steering, example windows) ------------------------

    def subset_activation(self, u: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Separable models: z of latents `features` from u = (x − b_dec)·W_enc[:, features]
        (bias not added), u [..., S] with features [S] (or u [n] with features [n], one latent
        per entry). Only defined where `separable` is True."""
        raise NotImplementedError(f"{type(self).__name__} is not separable")

    def subset_encoder(self, features: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function x [..., d_in] -> z[..., features] [..., S], for repeated calls (steering).

        Separable models precompute W_enc[:, F] and −b_dec·W_enc[:, F], so each call costs one
        [.., d_in] × [d_in, S] product; the others encode every latent and pick (TopK needs all
        pre-activations to know which latents win)."""
        features = torch.as_tensor(features, dtype=torch.long, device=self.W_enc.device)
        if not self.separable:
            def encode_and_pick(x: torch.Tensor) -> torch.Tensor:
                return self.encode(x)[..., features]
            return encode_and_pick
        with torch.no_grad():
            W_F = self.W_enc[:, features].detach().contiguous()  # [d_in, S]
            offset = -(self.b_dec.detach() @ W_F)  # [S]: (x − b_dec)·W_F = x·W_F − b_dec·W_F

        def subset(x: torch.Tensor) -> torch.Tensor:
            u = torch.addmm(offset, x.reshape(-1, x.shape[-1]), W_F).reshape(*x.shape[:-1], -1)
            return self.subset_activation(u, features)
        return subset

    # -- geometry: small in-place operations ---------------------------------------------------

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Fold a constant input scale into the weights: afterwards model(x) on raw x equals
        the old model on scale·x, with x̂ divided back by scale (z unchanged).

        The trainer feeds scale·x so that E‖scale·x‖ = √d_in (Anthropic, April 2024); folding
        lets the saved model take raw activations:
            W_enc ← s W_enc, b_dec ← b_dec / s, W_dec ← W_dec / s  (so (x − b_dec/s)·sW_enc = (sx − b_dec)·W_enc).
        """
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Set every decoder column W_dec,i to unit norm (the unit-norm constraint)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Remove from ∂L/∂W_dec,i its component along W_dec,i, so that a step moves unit-norm
        columns along the sphere (Bricken et al. 2023; openai/sparse_autoencoder)."""
        if self.W_dec.grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        parallel = (self.W_dec.grad * unit).sum(-1, keepdim=True)
        self.W_dec.grad.sub_(parallel * unit)

    # -- persistence --------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers by name, contiguous float32 on CPU (what weights.safetensors holds)."""
        return {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in self.state_dict().items()}

    def save(self, run_dir: str | Path, extra: dict | None = None) -> Path:
        """Write `weights.safetensors` and `config.json` into run_dir (created; files replaced
        atomically, weights first). `extra` adds top-level keys to config.json (training config,
        provenance). Returns run_dir."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(run_dir / WEIGHTS_FILE, self.state_tensors(), metadata={"format": FORMAT, "arch": self.arch})
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "autoencoder": self.cfg.to_dict()}
        payload.update(extra or {})
        atomic_write_json(run_dir / CONFIG_FILE, payload)
        return run_dir

    def extra_repr(self) -> str:
        return f"arch={self.arch}, d_in={self.d_in}, d_sae={self.d_sae}"
