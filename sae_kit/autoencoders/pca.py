"""arch 'pca': principal component analysis as an autoencoder, fitted in closed form (the linear baseline)."""

from __future__ import annotations

import torch
from torch import nn

from sae_kit.autoencoders.base import Autoencoder, ForwardOutput, TrainingState, check_arch
from sae_kit.autoencoders.losses import reconstruction_loss
from sae_kit.errors import SaeKitError


class PCA(Autoencoder):
    """arch 'pca': the top-d_sae principal components, fitted in closed form.

        b_dec = x̄,  W_enc = V [d_in, d_sae] (eigenvectors of the covariance, largest first),
        z = (x − x̄) V,  x̂ = z Vᵀ + x̄  (W_dec = Vᵀ, b_enc = 0).

    Parameters are buffers (nothing to train). `fit_moments` takes the running sums of a
    streaming pass; `fit` streams over batches itself. `explained_variance_ratio` [d_sae] says
    how much of the total variance each component captures.
    """

    arch = "pca"
    description = "PCA in closed form from the data covariance"
    display_name = "PCA"
    width = "components"
    latents_fire = False
    fitted_in_closed_form = True
    separable = True

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.d_sae > cfg.d_in:
            raise SaeKitError(f"PCA has at most d_in={cfg.d_in} components (asked for {cfg.d_sae})")

    def __init__(self, cfg):
        nn.Module.__init__(self)
        check_arch(type(self), cfg)
        self.cfg = cfg
        self.d_in, self.d_sae, self.d_out = cfg.d_in, cfg.d_sae, cfg.d_out
        self.register_buffer("W_enc", torch.zeros(cfg.d_in, cfg.d_sae))
        self.register_buffer("b_enc", torch.zeros(cfg.d_sae))
        self.register_buffer("W_dec", torch.zeros(cfg.d_sae, cfg.d_in))
        self.register_buffer("b_dec", torch.zeros(cfg.d_in))
        self.register_buffer("explained_variance_ratio", torch.zeros(cfg.d_sae))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Component scores z = (x − x̄) V: [..., d_in] -> [..., d_sae]."""
        return self.pre_activation(x)

    def subset_activation(self, u: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Scores of components `features`: u + b_enc[features]."""
        return u + self.b_enc[features]

    def fitter(self) -> "CovarianceAccumulator":
        """The running moments a pass over the data accumulates; `fit_from(fitter)` fits from them."""
        return CovarianceAccumulator(self.d_in)

    @torch.no_grad()
    def fit_from(self, acc: "CovarianceAccumulator") -> "PCA":
        """Fit from an accumulator filled by a pass over the data (the trainer's closed-form path)."""
        return self.fit_moments(acc.n, acc.sum_x, acc.sum_outer)

    def training_loss(self, x: torch.Tensor, state: TrainingState, target: torch.Tensor | None = None) -> ForwardOutput:
        """x [batch, d_in] -> ForwardOutput with losses {'reconstruction'} (no gradient: PCA is fitted)."""
        z = self.encode(x)
        x_hat = self.decode(z)
        terms = {"reconstruction": reconstruction_loss(x, x_hat)}
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
        acc = self.fitter()
        for x in batches:
            acc.update(x)
        return self.fit_from(acc)


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
