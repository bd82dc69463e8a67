"""The core metric set of SAELens' `run_evals` and SAEBench's core eval, with the same names.

Shapes: x, x_hat [n, d_in]; z [n, d_sae]; W_enc [d_in, d_sae]; W_dec [d_sae, d_in]. Per-token
metrics are averaged over the eval tokens (BOS excluded), accumulated batch by batch in the one
pass of `sae_kit.evaluation.evaluator.ReconstructionStats` (`CoreSums` here holds the sums):

- cossim = (1/N) Σ_n cos(x_n, x̂_n)  (SAELens / SAEBench "cossim");
- l2_norm_in = (1/N) Σ ‖x_n‖, l2_norm_out = (1/N) Σ ‖x̂_n‖, l2_ratio = (1/N) Σ ‖x̂_n‖ / ‖x_n‖
  (shrinkage; ‖x_n‖ < 1e-4 divides by 1, as SAELens does);
- relative_reconstruction_bias γ = Σ ‖x̂_n‖² / Σ x̂_n·x_n, the minimiser of E‖x̂/γ − x‖²
  (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated SAEs", arXiv 2404.16014,
  eq. 10; the shrinkage Wright & Sharkey 2024 study): γ < 1 means x̂ is shrunk towards 0. SAELens
  and SAEBench take the ratio per eval batch and average the batches; here the sums run over the
  whole eval set (the same number when batches are alike, and not batch-size dependent);
- explained_variance = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the eval-set mean: the variance about the
  mean, numerator and denominator summed separately (what SAELens #443 meant and #665 fixed: its
  denominator had become the variance about zero, E‖x‖², which inflates the number);
  explained_variance_legacy = (1/N) Σ_n [1 − ‖x_n − x̂_n‖² / ‖x_n − x̄_B‖²], x̄_B the mean of the
  token's eval batch: the per-token ratio SAEBench's paper reported (depends on the batch size);
- feature density ρ_i = #{n : z_ni ≠ 0} / N, its log10 histogram, frac_alive = #{ρ_i > 0}/d_sae,
  freq_over_1/10_percent = #{ρ_i > 0.01 / 0.1}/d_sae, normalized_freq_over_1/10_percent =
  Σ_{ρ_i > t} ρ_i / Σ ρ_i (SAEBench's `calculate_misc_metrics`);
- encoder_decoder_cosine_sim_i = cos(W_enc[:, i], W_dec[i]) (SAELens'
  `get_featurewise_weight_based_metrics`); max_decoder_cosine_sim_i = max_{j≠i} cos(W_dec[i],
  W_dec[j]) and the same for encoder columns, averaged into average_max_{decoder,encoder}_cosine_sim
  (SAEBench's `calculate_max_cosine_sim`: redundancy between latents), computed in row blocks so
  no d_sae × d_sae matrix is ever held.

Differences from SAELens / SAEBench: a latent is active when z ≠ 0 (SAEBench's L0; SAELens'
density uses z > 0 — the same for every model with non-negative latents, which is all but the
VAE's μ); SAEBench's consistent_activation_heuristic needs per-prompt counts and is not computed.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from sae_kit.artifacts import atomic_save_tensors

LATENTS_FILE = "eval_latents.safetensors"
"""Per-latent vectors beside eval.json: feature_density, encoder_decoder_cosine_sim,
max_decoder_cosine_sim, max_encoder_cosine_sim (each [d_sae], float32)."""
DENSITY_BIN_WIDTH = 0.25
"""Width of the log10-density histogram's bins (decades / 4)."""
NORM_FLOOR = 1e-4
"""‖x‖ below this divides the L2 ratio by 1 instead (SAELens' guard against zero inputs)."""
MAX_BLOCK_ELEMENTS = 1 << 24
"""Largest block of the cosine matrix held at once (16M floats = 64 MiB)."""


# ----------------------------------------------------------------------------- per-token metrics


def cosine_similarity(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """cos(x_n, x̂_n) = x_n·x̂_n / (‖x_n‖ ‖x̂_n‖) per token: [n, d] -> [n] (0 where a norm is 0)."""
    denominator = (x.norm(dim=-1) * x_hat.norm(dim=-1)).clamp_min(1e-30)
    return (x * x_hat).sum(-1) / denominator


def l2_ratio(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """‖x̂_n‖ / ‖x_n‖ per token (dividing by 1 where ‖x_n‖ < 1e-4, as SAELens): [n, d] -> [n]."""
    norm_in = x.norm(dim=-1)
    return x_hat.norm(dim=-1) / torch.where(norm_in < NORM_FLOOR, torch.ones_like(norm_in), norm_in)


def relative_reconstruction_bias(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """γ = Σ_n ‖x̂_n‖² / Σ_n x̂_n·x_n = argmin_γ Σ_n ‖x̂_n/γ − x_n‖² (Rajamanoharan et al. 2024, eq. 10).

    1 is unbiased; γ < 1 is shrinkage (x̂ too short on average). x, x_hat: [n, d] -> scalar.
    """
    return x_hat.pow(2).sum() / (x_hat * x).sum()


def explained_variance_legacy(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per token 1 − ‖x_n − x̂_n‖² / ‖x_n − x̄‖², x̄ the mean of this batch: [n, d] -> [n].

    SAEBench's `explained_variance_legacy` (the number in its paper): averaging these ratios is
    not the explained variance of the set, and depends on how tokens are batched.
    """
    residual = (x - x_hat).pow(2).sum(-1)
    spread = (x - x.mean(0)).pow(2).sum(-1)
    return 1 - residual / spread.clamp_min(1e-30)


class CoreSums:
    """Running float64 sums of the per-token core metrics over eval batches."""

    NAMES = ("cossim", "l2_norm_in", "l2_norm_out", "l2_ratio", "explained_variance_legacy")

    def __init__(self):
        self.n = 0
        self.sums = dict.fromkeys(self.NAMES, 0.0)
        self.xhat_sq = 0.0  # Σ ‖x̂‖²
        self.dot = 0.0  # Σ x̂·x

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        """Add a batch: x, x_hat [n, d_in] (float64 on the CPU)."""
        per_token = {"cossim": cosine_similarity(x, x_hat), "l2_norm_in": x.norm(dim=-1),
                     "l2_norm_out": x_hat.norm(dim=-1), "l2_ratio": l2_ratio(x, x_hat),
                     "explained_variance_legacy": explained_variance_legacy(x, x_hat)}
        for name, values in per_token.items():
            self.sums[name] += float(values.sum())
        self.xhat_sq += float(x_hat.pow(2).sum())
        self.dot += float((x_hat * x).sum())
        self.n += x.shape[0]

    def result(self) -> dict[str, float]:
        out = {name: total / max(self.n, 1) for name, total in self.sums.items()}
        out["relative_reconstruction_bias"] = self.xhat_sq / self.dot if self.dot != 0 else float("nan")
        return out


# ----------------------------------------------------------------------------- densities


def feature_density(fire_counts: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """ρ_i = (tokens on which latent i fired) / N: [d_sae] -> [d_sae] float64."""
    return fire_counts.double() / max(n_tokens, 1)


def density_summary(density: torch.Tensor) -> dict[str, float]:
    """SAEBench's misc metrics of the densities ρ [d_sae]: frac_alive, freq_over_{1,10}_percent
    = #{ρ_i > t} / d_sae, normalized_freq_over_{1,10}_percent = Σ_{ρ_i > t} ρ_i / Σ ρ_i."""
    total = float(density.sum())
    out = {"frac_alive": float((density > 0).double().mean())}
    for label, threshold in (("1", 0.01), ("10", 0.1)):
        above = density > threshold
        out[f"freq_over_{label}_percent"] = float(above.double().mean())
        out[f"normalized_freq_over_{label}_percent"] = float(density[above].sum()) / total if total > 0 else 0.0
    return out


def density_histogram(density: torch.Tensor, n_tokens: int, bin_width: float = DENSITY_BIN_WIDTH) -> dict:
    """Histogram of log10 ρ_i over the latents that fired (ρ > 0), and the count of dead ones.

    Bins of `bin_width` decades from ⌊log10(1/N)⌋ (one firing in N tokens) to 0 (every token):
    {"log10_bin_edges": [B + 1], "counts": [B], "dead": int} — SAELens' "log10 feature density".
    """
    low = math.floor(math.log10(1 / max(n_tokens, 1)) / bin_width) * bin_width
    n_bins = max(1, round(-low / bin_width))
    edges = [low + i * bin_width for i in range(n_bins + 1)]
    alive = density[density > 0]
    values = alive.log10().clamp(low, 0.0)
    index = ((values - low) / bin_width).floor().long().clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins)
    return {"log10_bin_edges": [round(e, 6) for e in edges], "counts": counts.tolist(),
            "dead": int((density == 0).sum())}


# ----------------------------------------------------------------------------- weight geometry


def encoder_decoder_cosine(W_enc: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """cos(W_enc[:, i], W_dec[i]) per latent: W_enc [d_in, d_sae], W_dec [d_sae, d_in] -> [d_sae]."""
    return torch.nn.functional.cosine_similarity(W_enc.T, W_dec, dim=-1, eps=1e-12)


def max_cosine_similarity(directions: torch.Tensor, block_rows: int | None = None) -> torch.Tensor:
    """max_{j ≠ i} cos(v_i, v_j) for each row v_i of `directions` [F, d] -> [F].

    Computed a block of rows at a time ([block, F] similarities, at most `MAX_BLOCK_ELEMENTS`
    entries), never the F × F matrix (SAEBench's `calculate_max_cosine_sim`). F = 1 gives −1.
    """
    unit = torch.nn.functional.normalize(directions.float(), dim=-1)
    n = unit.shape[0]
    block = block_rows or max(1, MAX_BLOCK_ELEMENTS // max(n, 1))
    out = torch.empty(n, dtype=unit.dtype, device=unit.device)
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = unit[start:stop] @ unit.T  # [block, F]
        rows = torch.arange(stop - start, device=unit.device)
        sims[rows, rows + start] = -float("inf")  # not itself
        out[start:stop] = sims.max(dim=1).values if n > 1 else -1.0
    return out


def summary(values: torch.Tensor) -> dict[str, float]:
    """mean, std, min, 10 %, median, 90 %, max of a vector (NaNs left out)."""
    v = values.double().flatten()
    v = v[~v.isnan()]
    if v.numel() == 0:
        return {}
    q = torch.quantile(v, torch.tensor([0.1, 0.5, 0.9], dtype=v.dtype))
    return {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0, "min": float(v.min()),
            "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2]), "max": float(v.max())}


@torch.no_grad()
def core_metrics(model, sums: CoreSums, fire_counts: torch.Tensor, n_tokens: int, explained_variance: float,
                 run_dir: str | Path | None = None) -> dict:
    """The core set for one model from its eval-pass sums; writes the per-latent vectors to
    RUN/eval_latents.safetensors when `run_dir` is given. model: any `Autoencoder`."""
    density = feature_density(fire_counts, n_tokens)
    W_enc, W_dec = model.W_enc.detach().float(), model.W_dec.detach().float()
    per_latent = {"feature_density": density.float(),
                  "encoder_decoder_cosine_sim": encoder_decoder_cosine(W_enc, W_dec),
                  "max_decoder_cosine_sim": max_cosine_similarity(W_dec),
                  "max_encoder_cosine_sim": max_cosine_similarity(W_enc.T)}
    per_latent = {name: t.cpu().float() for name, t in per_latent.items()}
    result = {"n_tokens": n_tokens, **sums.result(), "explained_variance": explained_variance,
              **density_summary(density),
              "average_max_encoder_cosine_sim": float(per_latent["max_encoder_cosine_sim"].mean()),
              "average_max_decoder_cosine_sim": float(per_latent["max_decoder_cosine_sim"].mean()),
              "encoder_decoder_cosine_sim": summary(per_latent["encoder_decoder_cosine_sim"]),
              "feature_density_histogram": density_histogram(density, n_tokens)}
    if run_dir is not None:
        atomic_save_tensors(Path(run_dir) / LATENTS_FILE, per_latent, metadata={"format": "sae-kit-eval-latents"})
        result["latent_metrics_file"] = LATENTS_FILE
    return result
