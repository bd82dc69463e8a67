"""arch 'sae': the L1 sparse autoencoder of Anthropic's April 2024 update.

    z = ReLU((x − b_dec) W_enc + b_enc),
    L = (1/B) Σ_b ‖x_b − x̂_b‖² + λ (1/B) Σ_b Σ_i z_bi ‖W_dec,i‖

The decoder-norm-weighted L1 stops the model from shrinking z and growing W_dec to dodge the
penalty, so the decoder needs no constraint ('free'); with decoder_norm='unit' the trainer keeps
columns at norm 1 (Anthropic 2023) and the weighted L1 equals the plain L1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sae_kit.autoencoders.base import Autoencoder, ForwardOutput, TrainingState, affine
from sae_kit.autoencoders.fused import sae_l1_loss
from sae_kit.autoencoders.losses import reconstruction_loss, weighted_l1
from sae_kit.autoencoders.sparse import sparse_relu_l1, wants_sparse


class SparseAutoencoder(Autoencoder):
    """The ReLU + L1 SAE (module docstring).

    With gradients on and x [batch, d_in], the training loss takes the sparse path of
    `sae_kit.autoencoders.sparse` when `kernels` asks for it ('auto': when ReLU's code is sparse
    enough); else `fused` (default True) computes it with the hand-written dense backward of
    `sae_kit.autoencoders.fused`; set it to False for the plain autograd version (identical maths,
    the three tested against each other).
    """

    arch = "sae"
    description = "sparse autoencoder, ReLU + decoder-norm-weighted L1 (Anthropic, April 2024)"
    display_name = "L1 sparse AE"
    sweep_field = "l1_coefficient"
    sweep_label = "l1"
    decoder_norm_choice = True
    dead_latent_remedy = "resample"
    separable = True
    saelens_architecture = "standard"
    supports_latent_sharding = True

    fused: bool = True

    @classmethod
    def from_saelens_config(cls, raw: dict) -> dict | None:
        """SAELens' ReLU 'standard' SAE computes the same function as this model."""
        activation = raw.get("activation_fn", raw.get("activation_fn_str", "relu"))
        return {} if raw.get("architecture", "standard") == "standard" and activation == "relu" else None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z [..., d_sae] for raw activations x [..., d_in]."""
        return F.relu(self.pre_activation(x))

    def subset_activation(self, u: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """ReLU(u + b_enc[features])."""
        return F.relu(u + self.b_enc[features])

    def l1_coefficient(self, state: TrainingState) -> float:
        """λ at this step: the config's λ times the warm-up fraction."""
        return self.cfg.l1_coefficient * state.sparsity_scale

    def schedule_metrics(self, state: TrainingState) -> dict[str, float]:
        return {"l1_coefficient": self.l1_coefficient(state)}

    def training_loss(self, x: torch.Tensor, state: TrainingState, target: torch.Tensor | None = None) -> ForwardOutput:
        """x [batch, d_in] -> ForwardOutput with losses {'reconstruction', 'l1'}."""
        lam = self.l1_coefficient(state)
        if wants_sparse(self, x, lambda pre: pre > 0):
            return sparse_relu_l1(self, x, x, lam)
        if self.fused and torch.is_grad_enabled() and x.dim() == 2:
            reconstruction, l1, x_hat, z = sae_l1_loss(x, self.W_enc, self.b_enc, self.W_dec, self.b_dec, lam)
            terms = {"reconstruction": reconstruction, "l1": l1}
            return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=reconstruction + l1)
        z = self.encode(x)
        x_hat = self.decode(z)
        terms = {"reconstruction": reconstruction_loss(x, x_hat), "l1": lam * weighted_l1(z, self.W_dec)}
        return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=sum(terms.values()))

    def sharded_training_loss(self, x: torch.Tensor, state: TrainingState, shard) -> ForwardOutput:
        """The same loss with this rank's slice of the latents (`sae_kit.training.sharding`): ReLU needs
        no selection, x̂ is summed over ranks, the L1 term added up over them."""
        pre = affine(shard.copy_in(x - self.b_dec), self.W_enc, self.b_enc)
        z = F.relu(pre)
        x_hat = shard.sum_out(z @ self.W_dec) + self.b_dec
        terms = {"reconstruction": reconstruction_loss(x, x_hat),
                 "l1": shard.total(self.l1_coefficient(state) * weighted_l1(z, self.W_dec))}
        return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=sum(terms.values()))
