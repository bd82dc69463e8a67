"""Training losses: pure functions, each defined once, each with its formula.

Shapes: x, x_hat [batch, d_in]; z [batch, d_sae]; W_dec [d_sae, d_in] (for a transcoder the
target y, its prediction ŷ and W_dec are d_out wide). Losses return scalar
tensors that carry gradients. The metrics that summarise an evaluation are in
`sae_kit.evaluation.metrics`.

Sources: the L1 recipe and decoder-norm-weighted penalty are from Anthropic's April 2024
update ("Training SAEs", transformer-circuits.pub/2024/april-update); TopK and AuxK from
Gao et al. 2024 ("Scaling and evaluating sparse autoencoders", arXiv:2406.04093); the VAE
KL term from Kingma & Welling 2014 ("Auto-Encoding Variational Bayes", appendix B).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Squared error summed over d_in, averaged over tokens: (1/B) Σ_b ‖x_b − x̂_b‖².

    The training loss of the April 2024 recipe (with λ = 5 at E‖x‖ = √d). x, x_hat: [..., d_in].
    """
    return (x_hat - x).pow(2).sum(-1).mean()


def weighted_l1(z: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Decoder-norm-weighted L1: (1/B) Σ_b Σ_i z_bi ‖W_dec,i‖₂ (Anthropic, April 2024).

    Weighting by the decoder norm stops the model from shrinking z and growing W_dec to dodge
    the penalty, so the decoder needs no norm constraint. z: [..., d_sae], non-negative (ReLU
    latents, so |z| = z and no extra pass over z is spent on abs), W_dec: [d_sae, d_in].
    """
    return (z @ W_dec.norm(dim=-1)).mean()


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) summed over latents, averaged over tokens (Kingma & Welling 2014):

        (1/B) Σ_b Σ_i ½ (μ_bi² + σ_bi² − log σ_bi² − 1),   σ² = exp(logvar).

    mu, logvar: [..., d_sae].
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(-1).mean()


def normalized_mse(target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """‖target − prediction‖² / ‖target − mean(target)‖², summed over the batch (Gao et al. 2024).

    The scale-free reconstruction error used by the AuxK loss; the batch mean is over tokens.
    target, prediction: [batch, d_in].
    """
    centred = target - target.mean(0, keepdim=True)
    return (prediction - target).pow(2).sum() / centred.pow(2).sum().clamp_min(1e-12)


def auxk_loss(
    residual: torch.Tensor,
    pre_activations: torch.Tensor,
    W_dec: torch.Tensor,
    dead_mask: torch.Tensor,
    k_aux: int,
) -> torch.Tensor:
    """AuxK (Gao et al. 2024, §A.2): make dead latents model the residual the live ones leave.

        e = x − x̂ (the residual, treated as a constant target),
        ê = Σ_{i ∈ TopK_aux(dead)} ReLU(pre_i) W_dec,i,
        L_aux = ‖e − ê‖² / ‖e − ē‖²     (`normalized_mse`).

    Only dead latents (`dead_mask` [d_sae] bool) compete for the k_aux slots. Returns 0 (with a
    gradient path) when no latent is dead. residual [batch, d_in], pre_activations [batch, d_sae].
    The decoder bias is not added: it is already inside x̂, so e is what the dead latents must
    explain.
    """
    n_dead = int(dead_mask.sum())
    if n_dead == 0:
        return pre_activations.sum() * 0.0
    k = min(k_aux, n_dead)
    masked = pre_activations.masked_fill(~dead_mask, float("-inf"))
    values, indices = masked.topk(k, dim=-1, sorted=False)
    # ê_b = Σ_j relu(v_bj) W_dec[idx_bj]: a weighted bag of k decoder rows per token, so the
    # cost is B·k·d, not the B·d_sae·d of a dense decode.
    e_hat = F.embedding_bag(indices, W_dec, per_sample_weights=F.relu(values).to(W_dec.dtype), mode="sum")
    return normalized_mse(residual.detach(), e_hat)


def auxk_term(residual: torch.Tensor, pre_activations: torch.Tensor, W_dec: torch.Tensor,
              dead_mask: torch.Tensor | None, k_aux: int, coefficient: float) -> torch.Tensor | None:
    """α · `auxk_loss` when the trainer marks dead latents and α > 0, else None (no term).

    The one place the TopK models (arch topk, TopK transcoders) decide whether AuxK applies.
    residual [batch, d_out] = target − prediction; pre_activations [batch, d_sae]."""
    if dead_mask is None or coefficient <= 0 or not bool(dead_mask.any()):
        return None
    return coefficient * auxk_loss(residual, pre_activations, W_dec, dead_mask, k_aux)
