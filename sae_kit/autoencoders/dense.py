"""arch 'ae' and 'dae': the dense and the denoising autoencoder baselines (no sparsity penalty)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sae_kit.autoencoders.base import Autoencoder, ForwardOutput, TrainingState
from sae_kit.autoencoders.losses import reconstruction_loss


class DenseAutoencoder(Autoencoder):
    """arch 'ae':  z = ReLU((x − b_dec) W_enc + b_enc), L = (1/B) Σ_b ‖x_b − x̂_b‖²  (no sparsity)."""

    arch = "ae"
    description = "dense autoencoder (ReLU, no sparsity penalty)"
    display_name = "dense AE"
    width = "baseline"
    dead_latent_remedy = "resample"
    separable = True
    saelens_architecture = "standard"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z [..., d_sae] for raw activations x [..., d_in] (never corrupted)."""
        return F.relu(self.pre_activation(x))

    def subset_activation(self, u: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """ReLU(u + b_enc[features])."""
        return F.relu(u + self.b_enc[features])

    def training_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder sees in training: x itself (the denoising subclass corrupts it)."""
        return x

    def training_loss(self, x: torch.Tensor, state: TrainingState, target: torch.Tensor | None = None) -> ForwardOutput:
        """x [batch, d_in] (clean) -> ForwardOutput with losses {'reconstruction'} of the clean x."""
        z = self.encode(self.training_input(x) if self.training else x)
        x_hat = self.decode(z)
        terms = {"reconstruction": reconstruction_loss(x, x_hat)}
        return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=terms["reconstruction"])


class DenoisingAutoencoder(DenseAutoencoder):
    """arch 'dae': the dense AE trained on a corrupted input x̃ while reconstructing the clean x
    (Vincent et al. 2008): x̃ = x + σ ε, ε ~ N(0, I) ('gaussian'), or x̃ = dropout_p(x)
    ('dropout', kept coordinates scaled by 1/(1 − p)). Corruption is applied only in training
    mode; `encode` never corrupts.
    """

    arch = "dae"
    description = "denoising autoencoder (dense AE trained on corrupted inputs, clean targets)"
    display_name = "denoising AE"

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """x̃ [..., d_in]: the denoising corruption of x (draws from torch's global RNG)."""
        if self.cfg.corruption == "gaussian":
            return x + self.cfg.corruption_level * torch.randn_like(x)
        return F.dropout(x, p=self.cfg.corruption_level, training=True)

    def training_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.corrupt(x)
