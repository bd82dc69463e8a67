"""arch 'vae': the variational autoencoder baseline (Kingma & Welling 2014, "Auto-Encoding Variational Bayes")."""

from __future__ import annotations

import torch
from torch import nn

from sae_kit.autoencoders.base import Autoencoder, ForwardOutput, TrainingState, affine
from sae_kit.autoencoders.losses import kl_standard_normal, reconstruction_loss


class VariationalAutoencoder(Autoencoder):
    """arch 'vae' (Kingma & Welling 2014), Gaussian encoder and a fixed-variance Gaussian decoder:

        μ = (x − b_dec) W_enc + b_enc,   log σ² = (x − b_dec) W_logvar + b_logvar,
        z = μ + σ ⊙ ε, ε ~ N(0, I)  (reparameterisation; z = μ outside training mode),
        L = (1/B) Σ_b ‖x_b − x̂_b‖² + β · (1/B) Σ_b Σ_i ½ (μ² + σ² − log σ² − 1).

    `encode` returns μ (deterministic); `sample(n)` decodes draws from the prior N(0, I).
    Extra parameters: W_logvar [d_in, d_sae], b_logvar [d_sae] (init 0, so σ = 1 at start).
    """

    arch = "vae"
    description = "variational autoencoder (Gaussian encoder, KL to N(0, I); Kingma & Welling 2014)"
    display_name = "VAE"
    width = "baseline"
    latents_fire = False
    separable = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.W_logvar = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae))
        self.b_logvar = nn.Parameter(torch.zeros(cfg.d_sae))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """μ [..., d_sae]: the posterior mean for raw activations x [..., d_in]."""
        return self.pre_activation(x)

    def log_variance(self, x: torch.Tensor) -> torch.Tensor:
        """log σ² [..., d_sae] of the posterior for x [..., d_in]."""
        return affine(x - self.b_dec, self.W_logvar, self.b_logvar)

    def subset_activation(self, u: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """μ of latents `features`: u + b_enc[features]."""
        return u + self.b_enc[features]

    def training_loss(self, x: torch.Tensor, state: TrainingState, target: torch.Tensor | None = None) -> ForwardOutput:
        """x [batch, d_in] -> ForwardOutput with losses {'reconstruction', 'kl'} (kl weighted by β)."""
        mu = self.encode(x)
        logvar = self.log_variance(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        x_hat = self.decode(z)
        terms = {
            "reconstruction": reconstruction_loss(x, x_hat),
            "kl": self.cfg.beta * kl_standard_normal(mu, logvar),
        }
        return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=terms["reconstruction"] + terms["kl"])

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws x = decode(z), z ~ N(0, I): [n, d_in] in the units the model takes."""
        z = torch.randn(n, self.d_sae, generator=generator).to(self.W_dec)
        return self.decode(z)

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """As the base class, and the log-variance head sees the same input: W_logvar ← s W_logvar."""
        super().fold_input_scale_(scale)
        self.W_logvar.mul_(scale)
