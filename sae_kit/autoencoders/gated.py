"""arch 'gated': the Gated sparse autoencoder (Rajamanoharan et al. 2024, "Improving Dictionary
Learning with Gated Sparse Autoencoders", arXiv:2404.16014).

Which latents fire and how strongly are decided by two paths that share their weights:

    u       = (x − b_dec) W_enc                            [..., d_sae]
    π_gate  = u + b_gate                                   (W_gate = W_enc)
    π_mag   = u ⊙ exp(r_mag) + b_mag                       (W_mag = W_gate ⊙ exp(r_mag), per latent)
    z       = 1[π_gate > 0] ⊙ ReLU(π_mag),     x̂ = z W_dec + b_dec,
    L = (1/B) Σ_b ‖x_b − x̂_b‖²  +  λ (1/B) Σ_b Σ_i ReLU(π_gate,bi) ‖W_dec,i‖
        + (1/B) Σ_b ‖x_b − (ReLU(π_gate,b) sg(W_dec) + sg(b_dec))‖²

(sg: stop-gradient, the frozen decoder of the paper's auxiliary loss). The L1 penalty acts on
the gate only, so the magnitudes are not shrunk; the auxiliary term gives the gate path a
reconstruction gradient of its own, which the Heaviside 1[π_gate > 0] cannot pass. Decoder
columns are kept at unit norm by default, as in the paper; the L1 is weighted by decoder norms as
in SAELens, so `--decoder-norm free` is also sound (on the synthetic benchmark it stays far denser
at the same λ: L0 24 against 3.4, MMCS 0.82 against 0.99).

Both paths follow from u, so the model is separable. Parameters: W_enc, W_dec, b_dec, and
b_gate, b_mag, r_mag [d_sae] (SAELens' names; there is no b_enc: `b_enc` reads b_gate, so the
shared code — π_gate = pre_activation(x), resampling — works on the gate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sae_kit.autoencoders.base import Autoencoder, ForwardOutput, TrainingState, need
from sae_kit.autoencoders.losses import reconstruction_loss, weighted_l1
from sae_kit.autoencoders.sparse import (Pairs, centred_input, compute_dtype, decode_pairs, dense_pre, encode_at_pairs,
                                         sparse_output, wants_sparse)


class GatedSparseAutoencoder(Autoencoder):
    """The Gated SAE (module docstring)."""

    arch = "gated"
    description = "sparse autoencoder, gated: gate + magnitude paths, L1 on the gate, frozen-decoder aux loss (Rajamanoharan et al. 2024)"
    display_name = "Gated sparse AE"
    sweep_field = "l1_coefficient"
    sweep_label = "l1"
    default_decoder_norm = "unit"  # the paper's unit-norm decoder columns; the weighted L1 is then the plain L1
    decoder_norm_choice = True
    dead_latent_remedy = "resample"
    separable = True
    saelens_architecture = "gated"

    def __init__(self, cfg):
        super().__init__(cfg)
        del self.b_enc  # the gate's bias is b_gate
        self.b_gate = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))

    def __getattr__(self, name: str):
        # `b_enc` is the gate's bias (pre_activation = π_gate); nn.Module keeps parameters outside __dict__
        if name == "b_enc" and "b_gate" in self.__dict__.get("_parameters", {}):
            return self._parameters["b_gate"]
        return super().__getattr__(name)

    def paths(self, u: torch.Tensor, features: torch.Tensor | slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """(π_gate, π_mag) of latents `features` from u = (x − b_dec)·W_enc[:, features]."""
        pi_gate = u + self.b_gate[features]
        pi_mag = u * self.r_mag[features].exp() + self.b_mag[features]
        return pi_gate, pi_mag

    @staticmethod
    def combine(pi_gate: torch.Tensor, pi_mag: torch.Tensor) -> torch.Tensor:
        """z = 1[π_gate > 0] ⊙ ReLU(π_mag)."""
        return F.relu(pi_mag) * (pi_gate > 0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z [..., d_sae] for raw activations x [..., d_in]."""
        return self.combine(*self.paths(self.centred_projection(x)))

    def centred_projection(self, x: torch.Tensor) -> torch.Tensor:
        """u = (x − b_dec) W_enc: [..., d_in] -> [..., d_sae] (no bias)."""
        return torch.matmul(x - self.b_dec, self.W_enc)

    def subset_activation(self, u: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """z of latents `features` from u = (x − b_dec)·W_enc[:, features]."""
        return self.combine(*self.paths(u, features))

    def l1_coefficient(self, state: TrainingState) -> float:
        """λ at this step: the config's λ times the warm-up fraction."""
        return self.cfg.l1_coefficient * state.sparsity_scale

    def schedule_metrics(self, state: TrainingState) -> dict[str, float]:
        return {"l1_coefficient": self.l1_coefficient(state)}

    def training_loss(self, x: torch.Tensor, state: TrainingState) -> ForwardOutput:
        """x [batch, d_in] -> ForwardOutput with losses {'reconstruction', 'l1', 'auxiliary'}; on the
        sparse path when `kernels` asks for it ('auto': when the gate is sparse enough)."""
        if wants_sparse(self, x, lambda pre: pre > 0):
            return self.sparse_training_loss(x, state)
        pi_gate, pi_mag = self.paths(self.centred_projection(x))
        z = self.combine(pi_gate, pi_mag)
        x_hat = self.decode(z)
        gate = F.relu(pi_gate)
        frozen = torch.addmm(self.b_dec.detach().to(gate.dtype), gate, self.W_dec.detach().to(gate.dtype))
        terms = {"reconstruction": reconstruction_loss(x, x_hat),
                 "l1": self.l1_coefficient(state) * weighted_l1(gate, self.W_dec),
                 "auxiliary": reconstruction_loss(x, frozen)}
        return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=sum(terms.values()))

    def sparse_training_loss(self, x: torch.Tensor, state: TrainingState) -> ForwardOutput:
        """`training_loss` through the pairs where the gate is open (π_gate > 0: z, ReLU(π_gate) and
        the frozen decoder's input all vanish elsewhere; `sae_kit.autoencoders.sparse`)."""
        dtype = compute_dtype(x)
        x_centred = centred_input(self, x, dtype)
        u = dense_pre(self, x_centred, bias=False)  # b_enc is b_gate: π_gate = u + b_gate
        pairs = Pairs.from_mask(u > -self.b_gate.detach())
        gate = encode_at_pairs(self, x_centred, u, pairs, bias_added=False)  # π_gate > 0 = ReLU(π_gate) here
        z = F.relu((gate - pairs.at(self.b_gate)) * pairs.at(self.r_mag).exp() + pairs.at(self.b_mag))
        x_hat = decode_pairs(z, self.W_dec, self.b_dec, pairs, dtype)
        frozen = decode_pairs(gate, self.W_dec.detach(), self.b_dec.detach(), pairs, dtype)
        norms = pairs.at(self.W_dec.norm(dim=-1))
        terms = {"reconstruction": reconstruction_loss(x, x_hat),
                 "l1": self.l1_coefficient(state) * (gate * norms).sum() / x.shape[0],
                 "auxiliary": reconstruction_loss(x, frozen)}
        return sparse_output(pairs, x_hat, z, terms)

    @torch.no_grad()
    def absorb_input_offset_(self, offset: torch.Tensor) -> None:
        """encode(x) ← old encode(x + offset): both paths' biases shift by their share of offset·W_enc."""
        shift = offset @ self.W_enc
        self.b_gate.add_(shift)
        self.b_mag.add_(shift * self.r_mag.exp())

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        for name in ("b_gate", "b_mag", "r_mag"):
            if name in self._parameters:
                self._parameters[name].zero_()

    # -- SAELens ---------------------------------------------------------------------------------

    def saelens_fields(self) -> dict:
        return {"activation_fn": "relu", "activation_fn_kwargs": {}, "l1_coefficient": self.cfg.l1_coefficient}

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        """SAELens' gated tensors: W_enc, W_dec, b_dec, b_gate, b_mag, r_mag (no b_enc)."""
        return {name: getattr(self, name) for name in ("W_enc", "W_dec", "b_dec", "b_gate", "b_mag", "r_mag")}

    @classmethod
    def from_saelens_config(cls, raw: dict) -> dict | None:
        if raw.get("architecture") != "gated":
            return None
        return {"l1_coefficient": raw["l1_coefficient"]} if raw.get("l1_coefficient") is not None else {}

    @torch.no_grad()
    def load_saelens_tensors(self, state: dict[str, torch.Tensor], raw: dict) -> None:
        names = ("W_enc", "W_dec", "b_dec", "b_gate", "b_mag", "r_mag")
        need(state, names)
        for name in names:
            getattr(self, name).copy_(state[name])
