"""Fast path: the ReLU + L1 SAE training loss with a hand-written backward pass.

Same maths as `SparseAutoencoder.forward` for arch 'sae' (the plain autograd version, which
tests compare this against), but every pass over the [batch, d_sae] latents is accounted for:

    forward:  pre = (x − b_dec) W_enc + b_enc   (one addmm, bias fused)
              z = ReLU(pre)                     (in place)
              x̂ = z W_dec + b_dec               (one addmm)
              Σ_b z_b                           (one reduction; gives the L1 term and its W_dec grad)
    backward: ∂L/∂z = (∂L/∂x̂) W_decᵀ + λ/B · ‖W_dec,i‖   (mm, then a broadcast add in place)
              ∂L/∂pre = ∂L/∂z ⊙ [z > 0]          (one fused threshold_backward)
              ∂W_enc = (x − b_dec)ᵀ ∂L/∂pre,  ∂b_enc = Σ_b ∂L/∂pre,
              ∂W_dec = zᵀ ∂L/∂x̂ + λ/B · (Σ_b z_b) W_dec,i / ‖W_dec,i‖,
              ∂b_dec = Σ_b ∂L/∂x̂ − W_enc ∂b_enc  (b_dec enters the encoder input too)

Autograd would add several extra [batch, d_sae] passes (the expanded L1 gradient, a separate
mask, copies). Matrix products run in `compute_dtype` (bfloat16 under autocast), the loss and
parameter gradients in float32.
"""

from __future__ import annotations

import torch


class SaeL1Loss(torch.autograd.Function):
    """(reconstruction, l1 term, x̂, z) of the April 2024 SAE; gradients for W_enc, b_enc, W_dec, b_dec."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, l1_coefficient: float, compute_dtype: torch.dtype):
        batch = x.shape[0]
        x_centred = (x - b_dec).to(compute_dtype)  # [B, d_in]
        W_enc_c, W_dec_c = W_enc.to(compute_dtype), W_dec.to(compute_dtype)
        z = torch.addmm(b_enc.to(compute_dtype), x_centred, W_enc_c).clamp_min_(0)  # [B, d_sae]
        x_hat = torch.addmm(b_dec.to(compute_dtype), z, W_dec_c)  # [B, d_in]
        error = x_hat.float() - x  # [B, d_in]
        reconstruction = error.pow(2).sum() / batch
        norms = W_dec.detach().norm(dim=-1)  # [d_sae]
        z_sum = z.sum(0).float()  # [d_sae]; summed in z's dtype (a dtype= argument would copy z first)
        l1 = l1_coefficient * (z_sum @ norms) / batch
        ctx.save_for_backward(x_centred, z, error, z_sum, norms, W_enc, W_dec, W_dec_c)
        ctx.l1_coefficient, ctx.batch = l1_coefficient, batch
        ctx.mark_non_differentiable(x_hat, z)
        ctx.set_materialize_grads(False)  # else autograd allocates a zero [B, d_sae] grad for z
        return reconstruction, l1, x_hat, z

    @staticmethod
    def backward(ctx, g_reconstruction, g_l1, _g_x_hat, _g_z):
        x_centred, z, error, z_sum, norms, W_enc, W_dec, W_dec_c = ctx.saved_tensors
        batch, lam = ctx.batch, ctx.l1_coefficient
        g_reconstruction = 0.0 if g_reconstruction is None else g_reconstruction
        g_l1 = 0.0 if g_l1 is None else g_l1
        d_x_hat = (2.0 / batch) * g_reconstruction * error  # [B, d_in] float32
        d_x_hat_c = d_x_hat.to(z.dtype)
        d_z = d_x_hat_c @ W_dec_c.T  # [B, d_sae]
        l1_row = (g_l1 * lam / batch) * norms  # ∂(λ/B Σ z‖W_dec‖)/∂z, the same for every token
        d_z.add_(l1_row.to(d_z.dtype))
        # ∂L/∂pre: zero where z == 0 (ReLU), written in place over ∂L/∂z (no new [B, d_sae] buffer)
        d_pre = torch.ops.aten.threshold_backward.grad_input(d_z, z, 0, grad_input=d_z)
        d_W_enc = (x_centred.T @ d_pre).to(W_enc.dtype)
        d_b_enc = d_pre.sum(0).float()
        d_W_dec = (z.T @ d_x_hat_c).to(W_dec.dtype)
        d_W_dec += ((g_l1 * lam / batch) * z_sum / norms.clamp_min(1e-12))[:, None] * W_dec.detach()
        d_b_dec = d_x_hat.sum(0) - W_enc.detach() @ d_b_enc
        return None, d_W_enc, d_b_enc.to(W_enc.dtype), d_W_dec, d_b_dec, None, None


def sae_l1_loss(x, W_enc, b_enc, W_dec, b_dec, l1_coefficient: float):
    """Call `SaeL1Loss` with the compute dtype autocast asks for (bfloat16 under autocast, else
    x's dtype). x [batch, d_in] -> (reconstruction, l1, x_hat [batch, d_in], z [batch, d_sae])."""
    device_type = x.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
    with torch.autocast(device_type, enabled=False):
        return SaeL1Loss.apply(x.float(), W_enc, b_enc, W_dec, b_dec, float(l1_coefficient), dtype)
