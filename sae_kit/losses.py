"""Losses and metrics: pure functions, each defined once, each with its formula.

Shapes: x, x_hat [batch, d_in]; z [batch, d_sae]; W_dec [d_sae, d_in]. A "batch" is any set
of tokens (leading dimensions are flattened where it matters). Training losses return
scalar tensors that carry gradients; metrics that summarise an eval set work on running
sums (see `sae_kit.evaluate.ReconstructionStats`) and are defined here from those sums.

Sources: the L1 recipe and decoder-norm-weighted penalty are from Anthropic's April 2024
update ("Training SAEs", transformer-circuits.pub/2024/april-update); TopK and AuxK from
Gao et al. 2024 ("Scaling and evaluating sparse autoencoders", arXiv:2406.04093); the VAE
KL term from Kingma & Welling 2014 ("Auto-Encoding Variational Bayes", appendix B).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- training losses


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


# ----------------------------------------------------------------------------- per-batch metrics


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean squared error per element: (1/(N·d)) Σ_n Σ_j (x_nj − x̂_nj)².

    The usual "MSE" of SAE papers and SAELens' eval; `reconstruction_loss` = d_in · mse.
    """
    return (x_hat - x).pow(2).mean()


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: Σ_n ‖x_n − x̂_n‖² / Σ_n ‖x_n − x̄‖², x̄ the mean of x over n.

    0 is perfect; 1 is no better than predicting the mean. x, x_hat: [n, d_in].
    """
    dtype = torch.promote_types(torch.promote_types(x.dtype, x_hat.dtype), torch.float32)  # ≥ float32
    x = x.reshape(-1, x.shape[-1]).to(dtype)
    x_hat = x_hat.reshape(-1, x_hat.shape[-1]).to(dtype)
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """1 − FVU."""
    return 1.0 - fvu(x, x_hat)


def l0(z: torch.Tensor) -> torch.Tensor:
    """Mean number of non-zero latents per token: (1/N) Σ_n #{i : z_ni ≠ 0}. z: [..., d_sae]."""
    return (z != 0).float().sum(-1).mean()


def l1(z: torch.Tensor) -> torch.Tensor:
    """Mean L1 norm of the latents per token: (1/N) Σ_n Σ_i |z_ni| (unweighted)."""
    return z.abs().sum(-1).mean()


def fvu_from_sums(sse: float, sum_sq: float, sum_x: torch.Tensor, n: int) -> float:
    """FVU from running sums over n tokens (what an eval pass accumulates):

        Σ‖x − x̄‖² = Σ‖x‖² − n ‖x̄‖²,  x̄ = Σx / n,   FVU = SSE / Σ‖x − x̄‖².

    sse = Σ_n ‖x_n − x̂_n‖², sum_sq = Σ_n ‖x_n‖², sum_x = Σ_n x_n [d_in]; use float64 sums.
    """
    mean = sum_x.double() / n
    total = sum_sq - n * float(mean.pow(2).sum())
    return sse / total if total > 0 else float("nan")


def dead_fraction(fire_counts: torch.Tensor) -> float:
    """Fraction of latents that never fired: #{i : count_i = 0} / d_sae. fire_counts: [d_sae]."""
    return float((fire_counts == 0).float().mean())


def dense_fraction(fire_counts: torch.Tensor, n_tokens: int, threshold: float = 0.1) -> float:
    """Fraction of latents firing on more than `threshold` (10 %) of tokens: #{i : count_i / N > t} / d_sae."""
    return float((fire_counts.double() / max(n_tokens, 1) > threshold).double().mean())


# ----------------------------------------------------------------------------- spliced-model metrics


def next_token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-position next-token cross-entropy: CE_t = −log softmax(logits_t)[tokens_{t+1}].

    logits [batch, seq, vocab], tokens [batch, seq] -> [batch, seq − 1] (nats).
    """
    logprobs = logits[:, :-1].float().log_softmax(-1)
    return -logprobs.gather(-1, tokens[:, 1:, None]).squeeze(-1)


def kl_from_logits(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Per-position KL(p ‖ q) = Σ_v p_v (log p_v − log q_v), p = softmax(logits_p). [..., vocab] -> [...]."""
    logp = logits_p.float().log_softmax(-1)
    logq = logits_q.float().log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def ce_loss_recovered(ce_clean: float, ce_spliced: float, ce_ablated: float) -> float:
    """(CE_ablated − CE_spliced) / (CE_ablated − CE_clean): 1 = as good as the clean model,
    0 = as bad as ablating the site. Usually CE_ablated is the zero-ablation CE."""
    denominator = ce_ablated - ce_clean
    return (ce_ablated - ce_spliced) / denominator if denominator != 0 else float("nan")
