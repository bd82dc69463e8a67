"""The core metric set (SAELens / SAEBench names) against hand computations on explicit tensors."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from sae_kit.autoencoders import AutoencoderConfig, build_autoencoder
from sae_kit.evaluation import core
from sae_kit.evaluation.evaluator import ReconstructionStats

# two tokens: x1 = (3, 4), x̂1 = (0, 4); x2 = (1, 0), x̂2 = (2, 0)
X = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
X_HAT = torch.tensor([[0.0, 4.0], [2.0, 0.0]], dtype=torch.float64)


def test_cosine_l2_ratio_and_relative_reconstruction_bias_by_hand():
    # cos1 = 16 / (5 · 4) = 0.8, cos2 = 2 / (1 · 2) = 1
    assert core.cosine_similarity(X, X_HAT).tolist() == pytest.approx([0.8, 1.0])
    # ‖x̂‖/‖x‖: 4/5 and 2/1
    assert core.l2_ratio(X, X_HAT).tolist() == pytest.approx([0.8, 2.0])
    # γ = Σ‖x̂‖² / Σ x̂·x = (16 + 4) / (16 + 2)
    assert core.relative_reconstruction_bias(X, X_HAT).item() == pytest.approx(20 / 18)
    # γ is the minimiser of Σ‖x̂/γ − x‖²: check against a grid
    grid = torch.linspace(0.5, 2.0, 15001, dtype=torch.float64)
    loss = torch.stack([((X_HAT / g - X) ** 2).sum() for g in grid])
    assert grid[loss.argmin()].item() == pytest.approx(20 / 18, abs=1e-3)


def test_l2_ratio_guards_zero_inputs_like_saelens():
    x = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    x_hat = torch.tensor([[0.3, 0.4], [0.0, 1.0]])
    assert core.l2_ratio(x, x_hat).tolist() == pytest.approx([0.5, 0.5])  # ‖x‖ < 1e-4 divides by 1


def test_explained_variance_legacy_is_the_mean_of_per_token_ratios():
    # batch mean (2, 2): ‖x1 − x̄‖² = 5, ‖x2 − x̄‖² = 5; residuals 9 and 1 -> (1 − 9/5 + 1 − 1/5) / 2 = 0
    assert core.explained_variance_legacy(X, X_HAT).tolist() == pytest.approx([-0.8, 0.8])


def test_reconstruction_stats_accumulate_the_core_sums_over_batches():
    one, two = ReconstructionStats(2, 3), ReconstructionStats(2, 3)
    z = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    one.update(X, X_HAT, z)
    two.update(X[:1], X_HAT[:1], z[:1])
    two.update(X[1:], X_HAT[1:], z[1:])
    for stats in (one, two):
        r = stats.core.result()
        assert r["cossim"] == pytest.approx(0.9)
        assert r["l2_ratio"] == pytest.approx(1.4)
        assert r["l2_norm_in"] == pytest.approx(3.0) and r["l2_norm_out"] == pytest.approx(3.0)
        assert r["relative_reconstruction_bias"] == pytest.approx(20 / 18)
    assert one.core.result()["explained_variance_legacy"] == pytest.approx(0.0)
    # explained variance of the set: Σ residual = 10, Σ‖x − x̄‖² = 10 -> 0 (against the mean, not zero:
    # against zero it would be 1 − 10 / 26)
    assert one.result()["explained_variance"] == pytest.approx(0.0)


def test_density_summary_and_log10_histogram_by_hand():
    counts, n = torch.tensor([0, 1, 10, 100]), 100  # densities 0, 0.01, 0.1, 1
    density = core.feature_density(counts, n)
    s = core.density_summary(density)
    assert s["frac_alive"] == pytest.approx(0.75)
    assert s["freq_over_1_percent"] == pytest.approx(0.5)  # 0.1 and 1 (0.01 is not above 1 %)
    assert s["normalized_freq_over_1_percent"] == pytest.approx(1.1 / 1.11)
    assert s["freq_over_10_percent"] == pytest.approx(0.25)
    assert s["normalized_freq_over_10_percent"] == pytest.approx(1 / 1.11)
    h = core.density_histogram(density, n)  # log10: -2, -1, 0 in bins of 0.25 from -2 to 0
    assert h["log10_bin_edges"] == pytest.approx([-2 + 0.25 * i for i in range(9)])
    assert h["counts"] == [1, 0, 0, 0, 1, 0, 0, 1] and h["dead"] == 1


def test_encoder_decoder_cosine_and_max_cosine_by_hand():
    W_enc = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # columns e1, e2
    W_dec = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    assert core.encoder_decoder_cosine(W_enc, W_dec).tolist() == pytest.approx([1 / math.sqrt(2), -1.0])
    directions = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert core.max_cosine_similarity(directions).tolist() == pytest.approx([1 / math.sqrt(2)] * 3)


@pytest.mark.parametrize("block_rows", [1, 7, 64, None])
def test_blocked_max_cosine_matches_the_full_matrix(block_rows):
    torch.manual_seed(0)
    W = torch.randn(50, 8)
    unit = torch.nn.functional.normalize(W, dim=-1)
    full = unit @ unit.T
    full.fill_diagonal_(-float("inf"))
    assert torch.allclose(core.max_cosine_similarity(W, block_rows), full.max(1).values, atol=1e-6)


def test_core_metrics_write_the_per_latent_vectors(tmp_path):
    torch.manual_seed(0)
    sae = build_autoencoder(AutoencoderConfig(arch="sae", d_in=8, d_sae=16)).eval()
    stats = ReconstructionStats(8, 16)
    x = torch.randn(64, 8)
    z = sae.encode(x)
    stats.update(x, sae.decode(z), z)
    r = core.core_metrics(sae, stats.core, stats.fire_counts, stats.n, stats.result()["explained_variance"], tmp_path)
    saved = load_file(tmp_path / core.LATENTS_FILE)
    assert set(saved) == {"feature_density", "encoder_decoder_cosine_sim", "max_decoder_cosine_sim",
                          "max_encoder_cosine_sim"}
    assert torch.allclose(saved["feature_density"], (z != 0).float().mean(0))
    assert torch.allclose(saved["encoder_decoder_cosine_sim"],
                          torch.nn.functional.cosine_similarity(sae.W_enc.T, sae.W_dec, dim=-1).detach())
    assert r["average_max_decoder_cosine_sim"] == pytest.approx(float(saved["max_decoder_cosine_sim"].mean()))
    assert r["encoder_decoder_cosine_sim"]["median"] == pytest.approx(
        float(saved["encoder_decoder_cosine_sim"].median()), abs=0.05)
    assert sum(r["feature_density_histogram"]["counts"]) + r["feature_density_histogram"]["dead"] == 16
    assert r["latent_metrics_file"] == core.LATENTS_FILE


def test_explained_variance_is_against_the_mean_not_zero():
    """SAELens #665: predicting the mean must explain nothing, however far the data sit from 0
    (against zero the same prediction would score 1 − Var / E‖x‖² ≈ 1 here)."""
    g = torch.Generator().manual_seed(0)
    x = 100.0 + torch.randn(500, 4, generator=g, dtype=torch.float64)
    stats = ReconstructionStats(4, 1)
    for batch in x.split(128):
        stats.update(batch, x.mean(0).expand_as(batch), torch.zeros(len(batch), 1))
    assert stats.result()["explained_variance"] == pytest.approx(0.0, abs=1e-9)
    stats = ReconstructionStats(4, 1)
    stats.update(x, x, torch.zeros(len(x), 1))
    assert stats.result()["explained_variance"] == pytest.approx(1.0)
