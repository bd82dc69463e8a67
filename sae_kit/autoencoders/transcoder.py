"""arch 'transcoder' and 'skip-transcoder': predict an MLP's output from its input through a sparse code.

A transcoder (Dunefsky, Chlenski & Nanda 2024, "Transcoders find interpretable LLM feature
circuits", arXiv:2406.11944) stands in for an MLP: its input x is the MLP's input (after the
pre-MLP norm, hook ``mlp_in.L``) and its target y the MLP's output (``mlp.L``):

    pre = x W_enc + b_enc                      x [..., d_in], W_enc [d_in, d_sae] (no b_dec: it is in y's space)
    z   = ReLU(pre)  or  TopK_k(ReLU(pre))     cfg.transcoder_activation 'relu' | 'topk'
    ŷ   = z W_dec + b_dec (+ x W_skip)         W_dec [d_sae, d_out], b_dec [d_out], W_skip [d_in, d_out]
    L   = (1/B) Σ_b ‖y_b − ŷ_b‖² + λ (1/B) Σ_b Σ_i z_bi ‖W_dec,i‖      'relu' (the L1 of arch sae)
    L   = (1/B) Σ_b ‖y_b − ŷ_b‖² + α · AuxK(y − ŷ)                     'topk' (the AuxK of arch topk)

The skip transcoder (Paulo, Shabalin & Belrose 2025, "Transcoders beat sparse autoencoders for
interpretability", arXiv:2501.18823) adds the learned linear map x W_skip, initialised to zero,
so the latents need only explain what a linear function of x cannot. The activation and loss
pieces are the ones arch sae and topk use (`weighted_l1`, `topk_activation`, `auxk_term`).
Decoder columns are kept at unit norm by default, as both papers train them (with a unit decoder
the weighted L1 is the plain L1).

Formats: SAELens `transcoder` / `skip_transcoder` (ReLU; `saelens_tensors` writes W_skip in
SAELens' [d_out, d_in] orientation) and sparsify's transcoders (TopK;
`sae_kit.autoencoders.sparsify_transcoder`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sae_kit.autoencoders.base import Autoencoder, ForwardOutput, TrainingState
from sae_kit.autoencoders.losses import auxk_term, reconstruction_loss, weighted_l1
from sae_kit.autoencoders.sparse import sparse_relu_l1, sparse_topk, wants_sparse
from sae_kit.autoencoders.topk import check_k, topk_activation
from sae_kit.errors import SaeKitError

TOPK_TRAITS = {"sweep_field": "k", "sweep_label": "k", "dead_latent_remedy": "auxk", "separable": False,
               "saelens_architecture": None}
"""What a TopK transcoder declares differently from the ReLU one (the class attributes): it sweeps
k, revives dead latents with AuxK, needs every pre-activation to pick its k latents, and has no
SAELens format (SAELens transcoders are ReLU)."""


class Transcoder(Autoencoder):
    """The transcoder (module docstring). The class attributes describe the ReLU variant; a model
    built with transcoder_activation='topk' takes `TOPK_TRAITS` instead (set per instance)."""

    arch = "transcoder"
    description = "transcoder: an MLP's output from its input, ReLU + L1 or TopK (Dunefsky et al. 2024)"
    display_name = "transcoder"
    has_target = True
    apply_b_dec_to_input = False
    default_decoder_norm = "unit"
    decoder_norm_choice = True
    sweep_field = "l1_coefficient"
    sweep_label = "l1"
    dead_latent_remedy = "resample"
    separable = True
    saelens_architecture = "transcoder"
    skip: ClassVar[bool] = False
    """Whether the model has the linear skip term x W_skip."""

    def __init__(self, cfg):
        super().__init__(cfg)
        if self.skip:
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_out))
        if cfg.transcoder_activation == "topk":
            for name, value in TOPK_TRAITS.items():
                setattr(self, name, value)

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.transcoder_activation == "topk":
            check_k(cfg, f"arch {cls.arch!r} with transcoder_activation 'topk'")

    @classmethod
    def sweep_for(cls, fields: dict) -> tuple[str | None, str]:
        """λ for the ReLU transcoder, k for the TopK one."""
        if fields.get("transcoder_activation") == "topk":
            return TOPK_TRAITS["sweep_field"], TOPK_TRAITS["sweep_label"]
        return cls.sweep_field, cls.sweep_label

    @property
    def topk(self) -> bool:
        """Whether this model is the TopK variant (cfg.transcoder_activation)."""
        return self.cfg.transcoder_activation == "topk"

    # -- the function -------------------------------------------------------------------------

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """z from pre [..., d_sae]: ReLU, or ReLU of the k largest."""
        return topk_activation(pre, self.cfg.k) if self.topk else F.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z [..., d_sae] for raw MLP inputs x [..., d_in]."""
        return self.activation(self.pre_activation(x))

    def subset_activation(self, u: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """ReLU(u + b_enc[features]), u = x·W_enc[:, features] (the ReLU variant is separable)."""
        return F.relu(u + self.b_enc[features])

    def skip_term(self, x: torch.Tensor) -> torch.Tensor | None:
        """x W_skip [..., d_out] for the skip transcoder; None without a skip."""
        return None

    def predict(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """ŷ = z W_dec + b_dec (+ x W_skip): z [..., d_sae], x [..., d_in] -> [..., d_out]."""
        y_hat = self.decode(z)
        skip = self.skip_term(x)
        return y_hat if skip is None else y_hat + skip

    def l1_coefficient(self, state: TrainingState) -> float:
        """λ at this step: the config's λ times the warm-up fraction (as arch sae)."""
        return self.cfg.l1_coefficient * state.sparsity_scale

    def schedule_metrics(self, state: TrainingState) -> dict[str, float]:
        return {} if self.topk else {"l1_coefficient": self.l1_coefficient(state)}

    def training_loss(self, x: torch.Tensor, state: TrainingState, target: torch.Tensor | None = None) -> ForwardOutput:
        """x [batch, d_in], target y [batch, d_out] (None: x) -> ForwardOutput with x_hat = ŷ and
        losses {'reconstruction', 'l1'} (relu) or {'reconstruction'} + 'auxk' when latents are dead (topk);
        on the sparse path of `sae_kit.autoencoders.sparse` when `kernels` asks for it."""
        y = x if target is None else target
        if self.topk and wants_sparse(self, x, self.cfg.k / self.d_sae):
            return sparse_topk(self, x, y, state, skip=self.skip_term(x))
        if not self.topk and wants_sparse(self, x, lambda pre: pre > 0):
            return sparse_relu_l1(self, x, y, self.l1_coefficient(state), skip=self.skip_term(x))
        pre = self.pre_activation(x)
        z = self.activation(pre)
        y_hat = self.predict(z, x)
        terms = {"reconstruction": reconstruction_loss(y, y_hat)}
        if not self.topk:
            terms["l1"] = self.l1_coefficient(state) * weighted_l1(z, self.W_dec)
        else:
            aux = auxk_term(y - y_hat, pre, self.W_dec, state.dead_mask, self.cfg.k_aux, self.cfg.auxk_coefficient)
            if aux is not None:
                terms["auxk"] = aux
        return ForwardOutput(x_hat=y_hat, z=z, losses=terms, loss=sum(terms.values()))

    # -- geometry -----------------------------------------------------------------------------

    @torch.no_grad()
    def fold_scales_(self, input_scale: float, target_scale: float | None = None) -> None:
        """Fold the input scale s_x and the target scale s_y (the trainer fed s_x·x and s_y·y):
        afterwards the model on raw x equals the old model on s_x·x divided by s_y (z unchanged):

            W_enc ← s_x W_enc,  W_dec ← W_dec / s_y,  b_dec ← b_dec / s_y,  W_skip ← (s_x / s_y) W_skip.
        """
        s_x = float(input_scale)
        s_y = s_x if target_scale is None else float(target_scale)
        self.W_enc.mul_(s_x)
        self.W_dec.div_(s_y)
        self.b_dec.div_(s_y)
        if self.skip:
            self.W_skip.mul_(s_x / s_y)

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """One scale for input and target (`fold_scales_(scale, scale)`)."""
        self.fold_scales_(scale, scale)

    # -- SAELens ------------------------------------------------------------------------------

    def saelens_fields(self) -> dict:
        return {"activation_fn": "relu", "activation_fn_kwargs": {}, "d_out": self.d_out}

    @classmethod
    def from_saelens_config(cls, raw: dict) -> dict | None:
        """SAELens' ReLU transcoder of this class' kind ('transcoder' or 'skip_transcoder')."""
        if raw.get("architecture") != cls.saelens_architecture:
            return None
        activation = raw.get("activation_fn", raw.get("activation_fn_str", "relu"))
        if activation != "relu":
            raise SaeKitError(f"SAELens {cls.saelens_architecture} with activation {activation!r}: only relu is read")
        return {"transcoder_activation": "relu"}


class SkipTranscoder(Transcoder):
    """The skip transcoder (module docstring): ŷ = z W_dec + b_dec + x W_skip, W_skip [d_in, d_out] from zero."""

    arch = "skip-transcoder"
    description = "skip transcoder: a transcoder plus a learned linear skip x W_skip (Paulo et al. 2025)"
    display_name = "skip transcoder"
    saelens_architecture = "skip_transcoder"
    skip = True

    def skip_term(self, x: torch.Tensor) -> torch.Tensor:
        """x W_skip: [..., d_in] -> [..., d_out]."""
        return (x.reshape(-1, x.shape[-1]) @ self.W_skip).reshape(*x.shape[:-1], self.d_out)

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        """As the base class, plus W_skip in SAELens' orientation [d_out, d_in] (ŷ += x W_skipᵀ there)."""
        return {**super().saelens_tensors(), "W_skip": self.W_skip.detach().to("cpu", torch.float32).T.contiguous()}

    @torch.no_grad()
    def load_saelens_tensors(self, state: dict[str, torch.Tensor], raw: dict) -> None:
        if "W_skip" not in state:
            raise SaeKitError("the SAELens skip_transcoder's weights lack W_skip")
        super().load_saelens_tensors(state, raw)
        self.W_skip.copy_(state["W_skip"].T)
