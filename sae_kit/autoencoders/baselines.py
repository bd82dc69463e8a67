"""Baselines from the same core: dense and denoising autoencoders, a VAE, and PCA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sae_kit import losses
from sae_kit.autoencoders.base import Autoencoder, affine
from sae_kit.autoencoders.config import AutoencoderConfig, ForwardOutput
from sae_kit.errors import SaeKitError


class DenseAutoencoder(Autoencoder):
    """arch 'ae':  z = ReLU((x − b_dec) W_enc + b_enc), L = (1/B) Σ_b ‖x_b − x̂_b‖²  (no sparsity).
    arch 'dae': the same, trained on a corrupted input x̃ while reconstructing the clean x
    (Vincent et al. 2008): x̃ = x + σ ε, ε ~ N(0, I) ('gaussian'), or x̃ = dropout_p(x)
    ('dropout', kept coordinates scaled by 1/(1 − p)). Corruption is applied only in training
    mode; `encode` never corrupts.
    """

    def __init__(self, cfg: AutoencoderConfig):
        if cfg.arch not in ("ae", "dae"):
            raise SaeKitError(f"DenseAutoencoder takes arch 'ae' or 'dae', not {cfg.arch!r}")
        super().__init__(cfg)

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """x̃ [..., d_in]: the denoising corruption of x (draws from torch's global RNG)."""
        if self.cfg.corruption == "gaussian":
            return x + self.cfg.corruption_level * torch.randn_like(x)
        return F.dropout(x, p=self.cfg.corruption_level, training=True)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z [..., d_sae] for raw activations x [..., d_in] (never corrupted)."""
        return F.relu(self.pre_activation(x))

    def forward(self, x: torch.Tensor, *, l1_coefficient=None, dead_mask=None) -> ForwardOutput:
        """x [batch, d_in] (clean) -> ForwardOutput with losses {'reconstruction'}."""
        noisy = self.corrupt(x) if self.cfg.arch == "dae" and self.training else x
        z = self.encode(noisy)
        x_hat = self.decode(z)
        terms = {"reconstruction": losses.reconstruction_loss(x, x_hat)}
        return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=terms["reconstruction"])


class VariationalAutoencoder(Autoencoder):
    """arch 'vae' (Kingma & Welling 2014), Gaussian encoder and a fixed-variance Gaussian decoder:

        μ = (x − b_dec) W_enc + b_enc,   log σ² = (x − b_dec) W_logvar + b_logvar,
        z = μ + σ ⊙ ε, ε ~ N(0, I)  (reparameterisation; z = μ outside training mode),
        L = (1/B) Σ_b ‖x_b − x̂_b‖² + β · (1/B) Σ_b Σ_i ½ (μ² + σ² − log σ² − 1).

    `encode` returns μ (deterministic); `sample(n)` decodes draws from the prior N(0, I).
    Extra parameters: W_logvar [d_in, d_sae], b_logvar [d_sae] (init 0, so σ = 1 at start).
    """

    def __init__(self, cfg: AutoencoderConfig):
        if cfg.arch != "vae":
            raise SaeKitError(f"VariationalAutoencoder takes arch 'vae', not {cfg.arch!r}")
        super().__init__(cfg)
        self.W_logvar = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae))
        self.b_logvar = nn.Parameter(torch.zeros(cfg.d_sae))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """μ [..., d_sae]: the posterior mean for raw activations x [..., d_in]."""
        return self.pre_activation(x)

    def log_variance(self, x: torch.Tensor) -> torch.Tensor:
        """log σ² [..., d_sae] of the posterior for x [..., d_in]."""
        return affine(x - self.b_dec, self.W_logvar, self.b_logvar)

    def forward(self, x: torch.Tensor, *, l1_coefficient=None, dead_mask=None) -> ForwardOutput:
        """x [batch, d_in] -> ForwardOutput with losses {'reconstruction', 'kl'} (kl weighted by β)."""
        mu = self.encode(x)
        logvar = self.log_variance(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        x_hat = self.decode(z)
        terms = {
            "reconstruction": losses.reconstruction_loss(x, x_hat),
            "kl": self.cfg.beta * losses.kl_standard_normal(mu, logvar),
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


class PCA(Autoencoder):
    """arch 'pca': the top-d_sae principal components, fitted in closed form.

        b_dec = x̄,  W_enc = V [d_in, d_sae] (eigenvectors of the covariance, largest first),
        z = (x − x̄) V,  x̂ = z Vᵀ + x̄  (W_dec = Vᵀ, b_enc = 0).

    Parameters are buffers (nothing to train). `fit_moments` takes the running sums of a
    streaming pass; `fit` streams over batches itself. `explained_variance_ratio` [d_sae] says
    how much of the total variance each component captures.
    """

    def __init__(self, cfg: AutoencoderConfig):
        if cfg.arch != "pca":
            raise SaeKitError(f"PCA takes arch 'pca', not {cfg.arch!r}")
        nn.Module.__init__(self)
        self.cfg = cfg
        self.d_in, self.d_sae = cfg.d_in, cfg.d_sae
        self.register_buffer("W_enc", torch.zeros(cfg.d_in, cfg.d_sae))
        self.register_buffer("b_enc", torch.zeros(cfg.d_sae))
        self.register_buffer("W_dec", torch.zeros(cfg.d_sae, cfg.d_in))
        self.register_buffer("b_dec", torch.zeros(cfg.d_in))
        self.register_buffer("explained_variance_ratio", torch.zeros(cfg.d_sae))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Component scores z = (x − x̄) V: [..., d_in] -> [..., d_sae]."""
        return self.pre_activation(x)

    def forward(self, x: torch.Tensor, *, l1_coefficient=None, dead_mask=None) -> ForwardOutput:
        """x [batch, d_in] -> ForwardOutput with losses {'reconstruction'} (no gradient: PCA is fitted)."""
        z = self.encode(x)
        x_hat = self.decode(z)
        terms = {"reconstruction": losses.reconstruction_loss(x, x_hat)}
        return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=terms["reconstruction"])

    @torch.no_grad()
    def fit_moments(self, n: int, sum_x: torch.Tensor, sum_outer: torch.Tensor) -> "PCA":
        """Fit from n, Σx [d_in] and Σ x xᵀ [d_in, d_in] (float64 sums):
        C = Σ x xᵀ / n − x̄ x̄ᵀ, then the top eigenvectors of C (sign fixed so each
        component's largest-magnitude coordinate is positive, for reproducibility)."""
        if n < 2:
            raise SaeKitError("PCA needs at least two tokens to fit")
        mean = sum_x.double() / n
        cov = sum_outer.double() / n - torch.outer(mean, mean)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        order = torch.argsort(eigenvalues, descending=True)[: self.d_sae]
        V = eigenvectors[:, order]
        signs = torch.sign(V.gather(0, V.abs().argmax(0, keepdim=True)))
        V = V * torch.where(signs == 0, torch.ones_like(signs), signs)
        total = eigenvalues.clamp_min(0).sum().clamp_min(1e-30)
        self.W_enc.copy_(V.float())
        self.W_dec.copy_(V.T.float())
        self.b_dec.copy_(mean.float())
        self.b_enc.zero_()
        self.explained_variance_ratio.copy_((eigenvalues[order].clamp_min(0) / total).float())
        return self

    @torch.no_grad()
    def fit(self, batches) -> "PCA":
        """Stream over an iterable of [batch, d_in] tensors and fit (see `CovarianceAccumulator`)."""
        acc = CovarianceAccumulator(self.d_in)
        for x in batches:
            acc.update(x)
        return self.fit_moments(acc.n, acc.sum_x, acc.sum_outer)


class CovarianceAccumulator:
    """Running n, Σx [d_in] and Σ x xᵀ [d_in, d_in] in float64: one pass, memory O(d_in²)."""

    def __init__(self, d_in: int):
        self.n = 0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_outer = torch.zeros(d_in, d_in, dtype=torch.float64)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add a batch x [batch, d_in]."""
        x = x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float64)
        self.n += x.shape[0]
        self.sum_x += x.sum(0)
        self.sum_outer += x.T @ x

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"n": torch.tensor([self.n], dtype=torch.int64), "sum_x": self.sum_x, "sum_outer": self.sum_outer}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        self.n = int(state["n"][0])
        self.sum_x = state["sum_x"].clone()
        self.sum_outer = state["sum_outer"].clone()
