"""arch 'matryoshka': the Matryoshka BatchTopK SAE (Bussmann et al. 2025, "Learning Multi-Level
Features with Matryoshka Sparse Autoencoders", arXiv:2503.17547; Nabeshima 2024, "Matryoshka
Sparse Autoencoders").

Nested prefixes of the dictionary, of sizes m_1 < … < m_n = d_sae, must each reconstruct the
input on their own:

    z = BatchTopK_k(pre)  over the whole dictionary (training; θ at inference, as batchtopk),
    x̂_j = z[:, :m_j] W_dec[:m_j] + b_dec,
    L = Σ_j (1/B) Σ_b ‖x_b − x̂_j,b‖² + α · AuxK(x − x̂_n),

so the first latents are pushed to carry the general, frequent features and later ones
specialise, which reduces feature absorption. The prefix sums are built incrementally (one decode
of the whole dictionary in total). Everything else — the threshold θ, AuxK, the unit-norm
decoder, saving as SAELens JumpReLU — is BatchTopK's.
"""

from __future__ import annotations

import torch

from sae_kit.autoencoders.base import ForwardOutput, TrainingState
from sae_kit.autoencoders.batchtopk import BatchTopKSparseAutoencoder
from sae_kit.autoencoders.sparse import decode_pairs, sparse_auxk, sparse_output, wants_sparse
from sae_kit.autoencoders.losses import reconstruction_loss
from sae_kit.errors import SaeKitError

DEFAULT_LEVELS = 5
"""Default prefixes: d_sae/16, d_sae/8, d_sae/4, d_sae/2, d_sae (those ≥ 1, strictly increasing)."""


def matryoshka_prefixes(d_sae: int, prefixes: tuple[int, ...] | None) -> tuple[int, ...]:
    """The prefix sizes used for d_sae latents: `prefixes` with d_sae appended when the last is
    smaller, or the default halvings of d_sae."""
    if prefixes is None:
        sizes = sorted({d_sae >> i for i in range(DEFAULT_LEVELS)} - {0})
        return tuple(sizes)
    sizes = tuple(int(m) for m in prefixes)
    return sizes if sizes and sizes[-1] == d_sae else sizes + (d_sae,)


def prefix_losses(x: torch.Tensor, z: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor,
                  prefixes: tuple[int, ...]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """([L_1 … L_n], x̂_n): L_j = (1/B) Σ_b ‖x_b − (z_b[:m_j] W_dec[:m_j] + b_dec)‖² for x [B, d_in],
    z [B, d_sae], W_dec [d_sae, d_in]; x̂_n [B, d_in] is the full reconstruction."""
    losses, x_hat, start = [], b_dec.expand_as(x), 0
    for end in prefixes:
        x_hat = torch.addmm(x_hat, z[:, start:end], W_dec[start:end].to(z.dtype)) if end > start else x_hat
        losses.append(reconstruction_loss(x, x_hat))
        start = end
    return losses, x_hat


class MatryoshkaSparseAutoencoder(BatchTopKSparseAutoencoder):
    """The Matryoshka BatchTopK SAE (module docstring)."""

    arch = "matryoshka"
    description = "sparse autoencoder, Matryoshka BatchTopK: nested prefixes each reconstruct (Bussmann et al. 2025)"
    display_name = "Matryoshka BatchTopK AE"

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        given = cfg.matryoshka_prefixes
        if given is not None:
            sizes = list(given)
            if not sizes or sizes[0] < 1 or sizes[-1] > cfg.d_sae or any(a >= b for a, b in zip(sizes, sizes[1:])):
                raise SaeKitError(f"--matryoshka-prefixes must increase strictly from ≥ 1 to at most d_sae={cfg.d_sae} "
                                  f"(got {','.join(map(str, sizes))})")

    @property
    def prefixes(self) -> tuple[int, ...]:
        """m_1 < … < m_n = d_sae."""
        return matryoshka_prefixes(self.d_sae, self.cfg.matryoshka_prefixes)

    def training_loss(self, x: torch.Tensor, state: TrainingState) -> ForwardOutput:
        """x [batch, d_in] -> ForwardOutput with losses 'prefix_<m_j>' for the inner prefixes,
        'reconstruction' for the whole dictionary (+ 'auxk' when latents are dead); on the sparse
        path when `kernels` asks for it."""
        if self.training and wants_sparse(self, x, self.cfg.k / self.d_sae):
            return self.sparse_training_loss(x, state)
        pre = self.pre_activation(x)
        z = self.activation(pre)
        losses, x_hat = prefix_losses(x, z, self.W_dec, self.b_dec, self.prefixes)
        terms = {f"prefix_{m}": loss for m, loss in zip(self.prefixes[:-1], losses[:-1])}
        terms["reconstruction"] = losses[-1]
        self.add_auxk(terms, x, x_hat, pre, state)
        return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=sum(terms.values()))

    def sparse_training_loss(self, x: torch.Tensor, state: TrainingState) -> ForwardOutput:
        """`training_loss` through the active pairs: each prefix decodes the pairs of its own latents
        (m_{j-1} ≤ i < m_j), added up as in `prefix_losses`."""
        x_centred, pre, pairs, z = self.sparse_pairs(x)
        x_hat, start, losses = self.b_dec.float().expand_as(x), 0, []
        for end in self.prefixes:
            keep = (pairs.cols >= start) & (pairs.cols < end)
            part = pairs.select(keep)
            x_hat = x_hat + decode_pairs(z[keep], self.W_dec, None, part, x_centred.dtype)
            losses.append(reconstruction_loss(x, x_hat))
            start = end
        terms = {f"prefix_{m}": loss for m, loss in zip(self.prefixes[:-1], losses[:-1])}
        terms["reconstruction"] = losses[-1]
        aux = sparse_auxk(self, x_centred, pre, x - x_hat, state.dead_mask)
        if aux is not None:
            terms["auxk"] = aux
        return sparse_output(pairs, x_hat, z, terms)

    # -- SAELens ---------------------------------------------------------------------------------

    def saelens_fields(self) -> dict:
        return {**super().saelens_fields(), "matryoshka_widths": list(self.prefixes)}

    @classmethod
    def from_saelens_config(cls, raw: dict) -> dict | None:
        """SAELens' training-format 'matryoshka_batchtopk' (matryoshka_widths -> matryoshka_prefixes)."""
        if raw.get("architecture") != "matryoshka_batchtopk":
            return None
        widths = raw.get("matryoshka_widths") or None
        return {"k": max(1, round(float(raw.get("k") or 100))), "topk_threshold_lr": raw.get("topk_threshold_lr", 0.01),
                "matryoshka_prefixes": tuple(int(w) for w in widths) if widths else None}
