"""The shared core: an affine encoder and decoder around a latent code, in SAELens shapes.

    pre = (x − b_dec) W_enc + b_enc        x [..., d_in], W_enc [d_in, d_sae], b_enc [d_sae]
    x̂   = z W_dec + b_dec                  z [..., d_sae], W_dec [d_sae, d_out], b_dec [d_out]

d_out = d_in for autoencoders; a transcoder (`has_target`) predicts a target at another hook
point, possibly of another width, and its encoder does not subtract b_dec
(`apply_b_dec_to_input` False, as in SAELens). Subclasses choose z = activation(pre) and the loss
terms. Everything that is the same for all models lives here: parameters, init, decoding,
folding the input scale into the weights, the unit-norm decoder constraint, encoding a chosen
subset of latents, and saving.

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
    """[..., d_out] the reconstruction of the (clean) input, or a transcoder's prediction of its target."""
    z: torch.Tensor
    """[..., d_sae] the latents used to reconstruct (VAE in training: the sample μ + σ ⊙ ε)."""
    losses: dict[str, torch.Tensor]
    """Named scalar loss terms, already weighted: `loss` is their sum (e.g. reconstruction, l1)."""
    loss: torch.Tensor
    """The scalar training loss, Σ losses.values()."""
    fired: torch.Tensor | None = None
    """[d_sae] bool: latents that fired on the batch, where a sparse path knows them from its pairs
    (then z is a sparse CSR tensor: `sae_kit.autoencoders.sparse.as_dense`); None: read z."""


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


def need(state: dict, names) -> None:
    """A one-line error naming the tensors a foreign weights file lacks."""
    missing = [name for name in names if name not in state]
    if missing:
        raise SaeKitError(f"the weights file lacks tensor(s) {', '.join(missing)}")


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
    has_target: ClassVar[bool] = False
    """The model predicts a target y at another hook point from its input x (transcoders: the MLP's
    output from its input). The trainer then requires `--target`; spliced evaluation and steering
    read x at the input hook and replace the activation at the target hook (`RunInfo.splice_hooks`).
    False: the model reconstructs its input, which the trainer refuses a target for."""
    apply_b_dec_to_input: ClassVar[bool] = True
    """The encoder sees x − b_dec (autoencoders, whose input and output share a space); False for
    transcoders, whose b_dec lives in the target's space (SAELens' field of the same name)."""
    supports_latent_sharding: ClassVar[bool] = False
    """Implements `sharded_training_loss`, so `--shard-latents` can split its latents over ranks."""
    kernels: str = "auto"
    """Training-loss kernels: 'auto' (sparse when the code is sparse enough), 'sparse' or 'dense'
    (`sae_kit.autoencoders.sparse`; the trainer sets it from TrainConfig.kernels). Models without a
    sparse path ignore it."""

    cfg: object

    def __init__(self, cfg):
        super().__init__()
        check_arch(type(self), cfg)
        self.cfg = cfg
        self.d_in = cfg.d_in
        self.d_sae = cfg.d_sae
        self.d_out = cfg.d_out
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_out))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))
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

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of SAELens' sae_weights.safetensors for this model (export), by SAELens name."""
        return {name: getattr(self, name) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}

    @torch.no_grad()
    def load_saelens_tensors(self, state: dict[str, torch.Tensor], raw: dict) -> None:
        """Copy SAELens tensors (by SAELens name, float32) into this freshly built model (import).

        SAELens' TopK-family option `rescale_acts_by_decoder_norm` (activations computed as
        pre·‖W_dec,i‖ and decoded with W_dec,i/‖W_dec,i‖) is folded exactly: W_enc[:, i] and b_enc,i
        times ‖W_dec,i‖, W_dec,i divided by it. Subclasses load their extra tensors after this."""
        need(state, ("W_enc", "b_enc", "W_dec", "b_dec"))
        W_enc, b_enc, W_dec = state["W_enc"], state["b_enc"], state["W_dec"]
        if raw.get("rescale_acts_by_decoder_norm"):
            norms = W_dec.norm(dim=-1)
            W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None].clamp_min(1e-12)
        for name, value in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", state["b_dec"])):
            getattr(self, name).copy_(value)

    @torch.no_grad()
    def absorb_input_offset_(self, offset: torch.Tensor) -> None:
        """Afterwards encode(x) equals the old encode(x + offset): b_enc ← b_enc + offset·W_enc.

        Imports SAELens' `apply_b_dec_to_input: false` (z = f(x W_enc + b_enc), with offset = b_dec).
        Models with several encoder biases shift each (gated)."""
        self.b_enc.add_(offset @ self.W_enc)

    @classmethod
    def from_sparsify_config(cls, raw: dict) -> dict | None:
        """AutoencoderConfig fields for an EleutherAI sparsify cfg.json this class reads, or None."""
        return None

    @torch.no_grad()
    def load_sparsify_tensors(self, state: dict[str, torch.Tensor], raw: dict) -> None:
        """Copy sparsify's tensors (encoder.weight [d_sae, d_in], encoder.bias, W_dec [d_sae, d_in],
        b_dec) into this freshly built model."""
        need(state, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"))
        self.W_enc.copy_(state["encoder.weight"].T)
        self.b_enc.copy_(state["encoder.bias"])
        self.W_dec.copy_(state["W_dec"])
        self.b_dec.copy_(state["b_dec"])

    @classmethod
    def sweep_for(cls, fields: dict) -> tuple[str | None, str]:
        """(`sweep_field`, `sweep_label`) of a model with these AutoencoderConfig fields: the class
        attributes, unless the sparsity is a config choice (a transcoder's activation)."""
        return cls.sweep_field, cls.sweep_label

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """April 2024 init: decoder columns in random directions with norm `init_decoder_norm`
        (1 for a unit-norm decoder), W_enc = W_decᵀ, biases 0. A transcoder whose target is
        wider or narrower than its input (d_out ≠ d_in) gets encoder columns of the same norm in
        their own random directions."""
        direction = torch.randn(self.d_sae, self.d_out)
        norm = 1.0 if self.cfg.decoder_norm == "unit" else self.cfg.init_decoder_norm
        self.W_dec.copy_(direction / direction.norm(dim=-1, keepdim=True) * norm)
        if self.d_out == self.d_in:
            self.W_enc.copy_(self.W_dec.T)
        else:
            encoder = torch.randn(self.d_sae, self.d_in)
            self.W_enc.copy_((encoder / encoder.norm(dim=-1, keepdim=True) * norm).T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    # -- the interface every model implements ------------------------------------------------

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """(x − b_dec) W_enc + b_enc: [..., d_in] -> [..., d_sae] (x W_enc + b_enc where
        `apply_b_dec_to_input` is False)."""
        return affine(x - self.b_dec if self.apply_b_dec_to_input else x, self.W_enc, self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic latent code z [..., d_sae] of raw activations x [..., d_in]."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x̂ = z W_dec + b_dec: [..., d_sae] -> [..., d_out]."""
        return affine(z, self.W_dec, self.b_dec)

    def predict(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The output x̂ [..., d_out] from latents z [..., d_sae] of the input x [..., d_in]:
        decode(z) (a skip transcoder adds its linear skip term x W_skip)."""
        return self.decode(z)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output for raw x [..., d_in]: x̂ = predict(encode(x), x) = decode(encode(x))
        [..., d_out] but for skip transcoders. What spliced evaluation puts into the model."""
        return self.predict(self.encode(x), x)

    def training_loss(self, x: torch.Tensor, state: TrainingState,
                      target: torch.Tensor | None = None) -> ForwardOutput:
        """Reconstruction, latents and the named, weighted loss terms for a training batch x
        [batch, d_in], given what the trainer knows at this step (`TrainingState`). `target`
        [batch, d_out] is what to predict (transcoders); None means x itself. Autoencoders
        (`has_target` False) reconstruct x and are never given one by the trainer."""
        raise NotImplementedError

    def sharded_training_loss(self, x: torch.Tensor, state: TrainingState, shard) -> ForwardOutput:
        """`training_loss` when this model holds only one rank's slice of the latents (`shard`, a
        `sae_kit.training.sharding.LatentShard`: z and the latent-summed loss terms are local,
        x̂ and the returned loss values are the whole model's)."""
        raise NotImplementedError(f"{type(self).__name__} does not support latent sharding")

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> ForwardOutput:
        """Reconstruction, latents and loss terms at the config's coefficients: x [batch, d_in]
        (target [batch, d_out] for a transcoder; None means x)."""
        if target is None:
            return self.training_loss(x, TrainingState())
        return self.training_loss(x, TrainingState(), target=target)

    def schedule_metrics(self, state: TrainingState) -> dict[str, float]:
        """Scheduled coefficients worth logging at this step (e.g. the warmed-up λ)."""
        return {}

    def optimizer_groups(self) -> list[dict]:
        """Parameter groups for the trainer's Adam; a group's "lr_scale" multiplies the scheduled lr."""
        return [{"params": list(self.parameters())}]

    def wants_dead_mask(self) -> bool:
        """Whether the training loss reads TrainingState.dead_mask (AuxK; JumpReLU's pre-activation
        penalty): the trainer then passes the dead-latent tracker's mask every step."""
        return self.dead_latent_remedy == "auxk"

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
            # [S]: (x − b_dec)·W_F = x·W_F − b_dec·W_F; nothing to subtract for a transcoder
            offset = -(self.b_dec.detach() @ W_F) if self.apply_b_dec_to_input else torch.zeros_like(W_F[0])

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
    def fold_scales_(self, input_scale: float, target_scale: float | None = None) -> None:
        """Fold the trainer's scales into the weights: x was fed as input_scale·x and the target
        as target_scale·y (E‖·‖ = √d for each). A model that reconstructs its input has one scale
        (`fold_input_scale_`); transcoders override this to fold the two separately."""
        if target_scale is not None and target_scale != input_scale:
            raise SaeKitError(f"arch {self.arch!r} reconstructs its input: its input and target scale are one "
                              f"(got {input_scale} and {target_scale})")
        self.fold_input_scale_(input_scale)

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
        out = f", d_out={self.d_out}" if self.d_out != self.d_in else ""
        return f"arch={self.arch}, d_in={self.d_in}, d_sae={self.d_sae}{out}"
