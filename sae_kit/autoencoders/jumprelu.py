"""arch 'jumprelu': the JumpReLU sparse autoencoder (Rajamanoharan et al. 2024, "Jumping Ahead:
Improving Reconstruction Fidelity with JumpReLU Sparse Autoencoders", arXiv:2407.14435; the
recipe of Gemma Scope, Lieberum et al. 2024, arXiv:2408.05147).

    z_i = pre_i · H(pre_i − θ_i),  θ_i = exp(log_threshold_i) > 0 learned per latent,
    L = (1/B) Σ_b ‖x_b − x̂_b‖² + λ (1/B) Σ_b Σ_i H(pre_bi − θ_i)          ('step': an L0 penalty)

H (Heaviside) has zero gradient almost everywhere, so θ learns through straight-through
estimators with the rectangle kernel K(u) = 1[|u| < ½] and bandwidth ε (the paper's eq. 11–12):

    ∂z_i/∂θ_i := −(θ_i/ε) K((pre_i − θ_i)/ε),    ∂H/∂θ_i := −(1/ε) K((pre_i − θ_i)/ε),

while ∂z_i/∂pre_i = H(pre_i − θ_i) and H passes no gradient to pre (as the paper's pseudo-code).
Gemma Scope's defaults: θ init 0.001, ε 0.001, λ warmed up (here by TrainingState.sparsity_scale).

Option `jumprelu_sparsity='tanh'` (Anthropic, "Circuits Updates", February 2025; SAELens'
`jumprelu_sparsity_loss_mode='tanh'`): the L0 term becomes λ (1/B) Σ_b Σ_i tanh(c · z_bi ‖W_dec,i‖),
and `pre_act_loss_coefficient` > 0 adds Anthropic's penalty on dead latents (as SAELens, only
those the trainer marks dead): (1/B) Σ_b Σ_{i dead} ReLU(θ_i − pre_bi) ‖W_dec,i‖.

Folding the input scale leaves pre-activations unchanged (W_enc ← s W_enc for raw x = x'/s), so
θ stays as it is; SAELens files hold θ itself as `threshold`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sae_kit.autoencoders.base import Autoencoder, ForwardOutput, TrainingState
from sae_kit.autoencoders.losses import reconstruction_loss
from sae_kit.autoencoders.sparse import (Pairs, centred_input, compute_dtype, decode_pairs, encode_at_pairs,
                                         separable_pre, sparse_output, wants_sparse)
from sae_kit.errors import SaeKitError


def rectangle(u: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel K(u) = 1[−½ < u < ½], as u's dtype."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _threshold_grad(pre, threshold, grad_output, bandwidth: float, scale_by_threshold: bool):
    """Σ over every leading dimension of −(θ/ε or 1/ε)·K((pre − θ)/ε)·grad, in float32: [d_sae]."""
    kernel = rectangle((pre.float() - threshold.float()) / bandwidth)
    factor = (threshold.float() if scale_by_threshold else 1.0) / bandwidth
    return -(factor * kernel * grad_output.float()).reshape(-1, threshold.shape[-1]).sum(0)


class JumpReLUFunction(torch.autograd.Function):
    """z = pre · H(pre − θ) for pre [..., d_sae], θ [d_sae]; ∂z/∂pre = H(pre − θ),
    ∂z/∂θ := −(θ/ε) K((pre − θ)/ε) (summed over tokens)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return torch.where(pre > threshold, pre, 0.0)

    @staticmethod
    def backward(ctx, grad_output):
        pre, threshold = ctx.saved_tensors
        grad_pre = grad_output * (pre > threshold).to(grad_output.dtype) if ctx.needs_input_grad[0] else None
        grad_threshold = (_threshold_grad(pre, threshold, grad_output, ctx.bandwidth, True).to(threshold.dtype)
                          if ctx.needs_input_grad[1] else None)
        return grad_pre, grad_threshold, None


class StepFunction(torch.autograd.Function):
    """H(pre − θ) for pre [..., d_sae], θ [d_sae]; no gradient to pre, ∂H/∂θ := −(1/ε) K((pre − θ)/ε)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        pre, threshold = ctx.saved_tensors
        grad_threshold = (_threshold_grad(pre, threshold, grad_output, ctx.bandwidth, False).to(threshold.dtype)
                          if ctx.needs_input_grad[1] else None)
        return None, grad_threshold, None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """z = pre · H(pre − θ) with the straight-through gradient for θ (`JumpReLUFunction`)."""
    return JumpReLUFunction.apply(pre, threshold, bandwidth)


def step(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """H(pre − θ) with the straight-through gradient for θ (`StepFunction`)."""
    return StepFunction.apply(pre, threshold, bandwidth)


class JumpReLUSparseAutoencoder(Autoencoder):
    """The JumpReLU SAE (module docstring). Extra parameter: log_threshold [d_sae] (θ = exp)."""

    arch = "jumprelu"
    description = "sparse autoencoder, JumpReLU with learned thresholds + L0 penalty (Rajamanoharan et al. 2024; Gemma Scope)"
    display_name = "JumpReLU sparse AE"
    sweep_field = "l0_coefficient"
    sweep_label = "l0"
    default_decoder_norm = "unit"
    decoder_norm_choice = True
    separable = True
    saelens_architecture = "jumprelu"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold)))

    @classmethod
    def check_config(cls, cfg) -> None:
        if min(cfg.jumprelu_bandwidth, cfg.jumprelu_init_threshold, cfg.jumprelu_threshold_lr_scale) <= 0:
            raise SaeKitError("jumprelu_bandwidth, jumprelu_init_threshold and jumprelu_threshold_lr_scale must be "
                              f"positive (got {cfg.jumprelu_bandwidth}, {cfg.jumprelu_init_threshold}, "
                              f"{cfg.jumprelu_threshold_lr_scale})")
        if cfg.jumprelu_sparsity not in ("step", "tanh"):
            raise SaeKitError(f"jumprelu_sparsity must be 'step' or 'tanh' (got {cfg.jumprelu_sparsity!r})")

    @property
    def threshold(self) -> torch.Tensor:
        """θ [d_sae] = exp(log_threshold)."""
        return self.log_threshold.exp()

    def optimizer_groups(self) -> list[dict]:
        """log θ gets lr × jumprelu_threshold_lr_scale; everything else the trainer's lr."""
        rest = [p for name, p in self.named_parameters() if name != "log_threshold"]
        return [{"params": rest}, {"params": [self.log_threshold], "lr_scale": self.cfg.jumprelu_threshold_lr_scale}]

    def wants_dead_mask(self) -> bool:
        return self.cfg.pre_act_loss_coefficient > 0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z [..., d_sae] = pre · H(pre − θ) for raw activations x [..., d_in]."""
        pre = self.pre_activation(x)
        return torch.where(pre > self.threshold, pre, 0.0)

    def subset_activation(self, u: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """pre · H(pre − θ[features]) with pre = u + b_enc[features]."""
        pre = u + self.b_enc[features]
        return torch.where(pre > self.threshold[features], pre, 0.0)

    def l0_coefficient(self, state: TrainingState) -> float:
        """λ at this step: the config's λ times the warm-up fraction."""
        return self.cfg.l0_coefficient * state.sparsity_scale

    def schedule_metrics(self, state: TrainingState) -> dict[str, float]:
        return {"l0_coefficient": self.l0_coefficient(state), "threshold_mean": float(self.threshold.mean())}

    def training_loss(self, x: torch.Tensor, state: TrainingState) -> ForwardOutput:
        """x [batch, d_in] -> ForwardOutput with losses {'reconstruction', 'l0'} ('step') or
        {'reconstruction', 'tanh'} ('tanh'), and 'pre_act' when latents are dead and its weight > 0."""
        cfg, theta = self.cfg, self.threshold
        if cfg.pre_act_loss_coefficient <= 0 and wants_sparse(self, x, self.window):
            return self.sparse_training_loss(x, state)
        pre = self.pre_activation(x)
        z = jumprelu(pre, theta, cfg.jumprelu_bandwidth)
        x_hat = self.decode(z)
        terms = {"reconstruction": reconstruction_loss(x, x_hat)}
        lam = self.l0_coefficient(state)
        if cfg.jumprelu_sparsity == "step":
            terms["l0"] = lam * step(pre, theta, cfg.jumprelu_bandwidth).sum(-1).mean()
        else:
            norms = self.W_dec.norm(dim=-1)
            terms["tanh"] = lam * torch.tanh(cfg.tanh_scale * z * norms).sum(-1).mean()
        dead = state.dead_mask
        if cfg.pre_act_loss_coefficient > 0 and dead is not None and bool(dead.any()):
            weights = self.W_dec.norm(dim=-1) * dead
            terms["pre_act"] = cfg.pre_act_loss_coefficient * (F.relu(theta - pre) * weights).sum(-1).mean()
        return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=sum(terms.values()))

    def window(self, u: torch.Tensor, bias: torch.Tensor | float = 0.0) -> torch.Tensor:
        """The pairs the sparse path keeps, for pre = u + bias: pre > θ − ε, a superset of the active
        ones (pre > θ) and of the straight-through kernel's support |pre − θ| < ε/2, where z = 0 but
        ∂θ is not."""
        return u > self.threshold.detach() - self.cfg.jumprelu_bandwidth - bias

    def sparse_training_loss(self, x: torch.Tensor, state: TrainingState) -> ForwardOutput:
        """`training_loss` through the pairs of `window` (`sae_kit.autoencoders.sparse`); the
        pre-activation penalty on dead latents needs every pre, so it stays on the dense path."""
        cfg = self.cfg
        dtype = compute_dtype(x)
        x_centred = centred_input(self, x, dtype)
        p, offset = separable_pre(self, x_centred)  # pre = p + offset
        pairs = Pairs.from_mask(self.window(p, offset))
        pre_at = encode_at_pairs(self, x_centred, p, pairs, bias_added=not torch.is_tensor(offset))
        theta = pairs.at(self.threshold)
        z = jumprelu(pre_at, theta, cfg.jumprelu_bandwidth)
        x_hat = decode_pairs(z, self.W_dec, self.b_dec, pairs, dtype)
        terms = {"reconstruction": reconstruction_loss(x, x_hat)}
        lam, batch = self.l0_coefficient(state), x.shape[0]
        if cfg.jumprelu_sparsity == "step":
            terms["l0"] = lam * step(pre_at, theta, cfg.jumprelu_bandwidth).sum() / batch
        else:
            norms = pairs.at(self.W_dec.norm(dim=-1))
            terms["tanh"] = lam * torch.tanh(cfg.tanh_scale * z * norms).sum() / batch
        return sparse_output(pairs, x_hat, z, terms)

    # -- SAELens ---------------------------------------------------------------------------------

    def saelens_fields(self) -> dict:
        """SAELens' jumprelu, with its training-config names for the recipe (ignored by its loader)."""
        cfg = self.cfg
        return {"activation_fn": "relu", "activation_fn_kwargs": {}, "l0_coefficient": cfg.l0_coefficient,
                "jumprelu_bandwidth": cfg.jumprelu_bandwidth, "jumprelu_init_threshold": cfg.jumprelu_init_threshold,
                "jumprelu_sparsity_loss_mode": cfg.jumprelu_sparsity, "jumprelu_tanh_scale": cfg.tanh_scale,
                "pre_act_loss_coefficient": cfg.pre_act_loss_coefficient or None}

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        """SAELens files hold θ itself (`threshold`), not its log."""
        return {**super().saelens_tensors(), "threshold": self.threshold}

    @classmethod
    def from_saelens_config(cls, raw: dict) -> dict | None:
        """SAELens' 'jumprelu' (Gemma Scope through SAELens; trained BatchTopK / Matryoshka SAEs)."""
        if raw.get("architecture") != "jumprelu":
            return None
        fields = {"l0_coefficient": raw.get("l0_coefficient"), "jumprelu_bandwidth": raw.get("jumprelu_bandwidth"),
                  "jumprelu_init_threshold": raw.get("jumprelu_init_threshold"),
                  "jumprelu_sparsity": raw.get("jumprelu_sparsity_loss_mode"), "tanh_scale": raw.get("jumprelu_tanh_scale"),
                  "pre_act_loss_coefficient": raw.get("pre_act_loss_coefficient")}
        return {name: value for name, value in fields.items() if value is not None}

    @torch.no_grad()
    def load_saelens_tensors(self, state: dict[str, torch.Tensor], raw: dict) -> None:
        """The four tensors and θ (`threshold`, or `log_threshold` of a training checkpoint). SAELens
        applies ReLU before its mask, so a threshold ≤ 0 acts as 0 (log θ = −inf: a plain ReLU)."""
        super().load_saelens_tensors(state, raw)
        if "threshold" in state:
            self.log_threshold.copy_(state["threshold"].clamp_min(0).log())
        elif "log_threshold" in state:
            self.log_threshold.copy_(state["log_threshold"])
        else:
            raise SaeKitError("the weights file of a JumpReLU SAE lacks tensor 'threshold'")
