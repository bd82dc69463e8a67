"""Metrics: pure functions, each defined once, each with its formula (the definitions are part of the API).

Shapes: x, x_hat [n, d_in]; z [n, d_sae]. Metrics that summarise an eval set work on running
sums (see `sae_kit.evaluation.evaluator.ReconstructionStats`) and are defined here from those
sums; the spliced-model metrics work on logits. Training losses are in
`sae_kit.autoencoders.losses`.
"""

from __future__ import annotations

import torch


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
