"""Sparse autoencoders: ReLU + L1 (Anthropic, April 2024) and TopK + AuxK (Gao et al. 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sae_kit import losses
from sae_kit.autoencoders.base import Autoencoder
from sae_kit.autoencoders.config import AutoencoderConfig, ForwardOutput
from sae_kit.autoencoders.fused import sae_l1_loss
from sae_kit.errors import SaeKitError


class SparseAutoencoder(Autoencoder):
    """arch 'sae':  z = ReLU((x − b_dec) W_enc + b_enc),
                    L = (1/B) Σ_b ‖x_b − x̂_b‖² + λ (1/B) Σ_b Σ_i z_bi ‖W_dec,i‖    (April 2024)
    arch 'topk': z = TopK_k(ReLU(pre))  (the k largest pre-activations, the rest 0),
                 L = (1/B) Σ_b ‖x_b − x̂_b‖² + α · AuxK                          (Gao et al. 2024)

    With cfg.decoder_norm == 'unit' the trainer keeps decoder columns at norm 1
    (`normalize_decoder_` after each step, `remove_parallel_decoder_grad_` before it); the
    weighted L1 then equals the plain L1.

    `fused` (default True) computes the 'sae' training loss with the hand-written backward of
    `sae_kit.autoencoders.fused` when gradients are on and x is [batch, d_in]; set it to False
    for the plain autograd version (identical maths, tested against each other).
    """

    fused: bool = True

    def __init__(self, cfg: AutoencoderConfig):
        if cfg.arch not in ("sae", "topk"):
            raise SaeKitError(f"SparseAutoencoder takes arch 'sae' or 'topk', not {cfg.arch!r}")
        super().__init__(cfg)

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """ReLU, or for topk ReLU of the k largest pre-activations scattered into zeros. [..., d_sae]."""
        if self.cfg.arch == "sae":
            return F.relu(pre)
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, F.relu(values))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z [..., d_sae] for raw activations x [..., d_in]."""
        return self.activation(self.pre_activation(x))

    def forward(
        self,
        x: torch.Tensor,
        *,
        l1_coefficient: float | None = None,
        dead_mask: torch.Tensor | None = None,
    ) -> ForwardOutput:
        """x [batch, d_in] -> ForwardOutput with losses {'reconstruction', 'l1'} (sae) or
        {'reconstruction', 'auxk'} (topk, when dead_mask marks dead latents and α > 0)."""
        lam = self.cfg.l1_coefficient if l1_coefficient is None else l1_coefficient
        if self.cfg.arch == "sae" and self.fused and torch.is_grad_enabled() and x.dim() == 2:
            reconstruction, l1, x_hat, z = sae_l1_loss(x, self.W_enc, self.b_enc, self.W_dec, self.b_dec, lam)
            terms = {"reconstruction": reconstruction, "l1": l1}
            return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=reconstruction + l1)
        pre = self.pre_activation(x)
        z = self.activation(pre)
        x_hat = self.decode(z)
        terms = {"reconstruction": losses.reconstruction_loss(x, x_hat)}
        if self.cfg.arch == "sae":
            terms["l1"] = lam * losses.weighted_l1(z, self.W_dec)
        elif dead_mask is not None and self.cfg.auxk_coefficient > 0 and bool(dead_mask.any()):
            aux = losses.auxk_loss(x - x_hat, pre, self.W_dec, dead_mask, self.cfg.k_aux)
            terms["auxk"] = self.cfg.auxk_coefficient * aux
        return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=sum(terms.values()))
