"""arch 'topk': the TopK sparse autoencoder with the AuxK loss (Gao et al. 2024, arXiv:2406.04093).

    z = TopK_k(ReLU(pre))   (the k largest pre-activations per token, the rest 0),
    L = (1/B) Σ_b ‖x_b − x̂_b‖² + α · AuxK

AuxK makes the dead latents (not fired within the trainer's window) model the residual the live
ones leave (`sae_kit.autoencoders.losses.auxk_loss`). Decoder columns are kept at unit norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sae_kit.autoencoders.base import Autoencoder, ForwardOutput, TrainingState, affine
from sae_kit.autoencoders.losses import auxk_term, normalized_mse, reconstruction_loss
from sae_kit.autoencoders.sparse import sparse_topk, wants_sparse
from sae_kit.errors import SaeKitError


def topk_activation(pre: torch.Tensor, k: int) -> torch.Tensor:
    """ReLU of the k largest pre-activations scattered into zeros: [..., d_sae] -> [..., d_sae]
    (Gao et al. 2024; shared by arch topk and TopK transcoders)."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, F.relu(values))


def check_k(cfg, what: str) -> None:
    """A TopK model's k: given, and between 1 and d_sae (`what` names the model in the error)."""
    if cfg.k is None:
        raise SaeKitError(f"{what} needs k (active latents per token), e.g. --k 32")
    if not 1 <= cfg.k <= cfg.d_sae:
        raise SaeKitError(f"k must be between 1 and d_sae={cfg.d_sae} (got {cfg.k})")


class TopKSparseAutoencoder(Autoencoder):
    """The TopK SAE (module docstring); cfg.k latents are active on every token."""

    arch = "topk"
    description = "sparse autoencoder, TopK activation + AuxK loss (Gao et al. 2024)"
    display_name = "TopK sparse AE"
    sweep_field = "k"
    sweep_label = "k"
    default_decoder_norm = "unit"
    decoder_norm_choice = True
    dead_latent_remedy = "auxk"
    saelens_architecture = "topk"
    supports_latent_sharding = True

    @classmethod
    def check_config(cls, cfg) -> None:
        check_k(cfg, f"arch {cls.arch!r}")

    def saelens_fields(self) -> dict:
        return {"activation_fn": "topk", "activation_fn_kwargs": {"k": self.cfg.k}, "k": self.cfg.k}

    @classmethod
    def from_saelens_config(cls, raw: dict) -> dict | None:
        """SAELens' 'topk' SAE (or a 'standard' one with a topk activation): ReLU of the top k, as here."""
        activation = raw.get("activation_fn", raw.get("activation_fn_str", "relu"))
        if raw.get("architecture") != "topk" and activation != "topk":
            return None
        k = raw.get("k") or (raw.get("activation_fn_kwargs") or {}).get("k")
        if not k:
            raise SaeKitError("the SAELens cfg.json of a TopK SAE names no k")
        return {"k": int(k)}

    @classmethod
    def from_sparsify_config(cls, raw: dict) -> dict | None:
        """EleutherAI sparsify's TopK SAE (activation 'topk', no transcoding, no skip): the same function."""
        if raw.get("activation", "topk") != "topk" or raw.get("transcode") or raw.get("skip_connection") \
                or raw.get("signed"):
            return None
        return {"k": int(raw["k"])}

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """ReLU of the k largest pre-activations scattered into zeros: [..., d_sae] -> [..., d_sae]."""
        return topk_activation(pre, self.cfg.k)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z [..., d_sae] for raw activations x [..., d_in]."""
        return self.activation(self.pre_activation(x))

    def training_loss(self, x: torch.Tensor, state: TrainingState, target: torch.Tensor | None = None) -> ForwardOutput:
        """x [batch, d_in] -> ForwardOutput with losses {'reconstruction'} and, when the state marks
        dead latents and α > 0, 'auxk'. (`target`: unused, an SAE reconstructs x.) The sparse path
        (`sae_kit.autoencoders.sparse`) when `kernels` asks for it ('auto': k / d_sae is low enough)."""
        if wants_sparse(self, x, self.cfg.k / self.d_sae):
            return sparse_topk(self, x, x, state)
        pre = self.pre_activation(x)
        z = self.activation(pre)
        x_hat = self.decode(z)
        terms = {"reconstruction": reconstruction_loss(x, x_hat)}
        aux = auxk_term(x - x_hat, pre, self.W_dec, state.dead_mask, self.cfg.k_aux, self.cfg.auxk_coefficient)
        if aux is not None:
            terms["auxk"] = aux
        return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=sum(terms.values()))

    def sharded_training_loss(self, x: torch.Tensor, state: TrainingState, shard) -> ForwardOutput:
        """The same loss with this rank's slice of the latents (`sae_kit.training.sharding`): the top k
        (and AuxK's top k_aux dead latents) are chosen across all ranks' candidates, x̂ and AuxK's ê
        are summed over ranks."""
        pre = affine(shard.copy_in(x - self.b_dec), self.W_enc, self.b_enc)
        values, indices = shard.topk(pre, self.cfg.k)
        z = torch.zeros_like(pre).scatter_(-1, indices, F.relu(values))
        x_hat = shard.sum_out(z @ self.W_dec) + self.b_dec
        terms = {"reconstruction": reconstruction_loss(x, x_hat)}
        dead = state.dead_mask
        n_dead = shard.count(dead) if dead is not None and self.cfg.auxk_coefficient > 0 else 0
        if n_dead:
            values, indices = shard.topk(pre.masked_fill(~dead, float("-inf")), min(self.cfg.k_aux, n_dead))
            weights = F.relu(values).to(self.W_dec.dtype)
            e_hat = shard.sum_out(F.embedding_bag(indices, self.W_dec, per_sample_weights=weights, mode="sum"))
            terms["auxk"] = self.cfg.auxk_coefficient * normalized_mse((x - x_hat).detach(), e_hat)
        return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=sum(terms.values()))
