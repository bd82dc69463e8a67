"""Every training loss against a hand computation on tiny explicit tensors."""

from __future__ import annotations

import math

import pytest
import torch

from sae_kit.autoencoders import losses

X = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
X_HAT = torch.tensor([[1.0, 1.0], [2.0, 4.0]])
# errors: [0, 1], [1, 0] -> squared 0 + 1 + 1 + 0 = 2; mean x = [2, 3];
# Σ‖x − x̄‖² = (1 + 1) + (1 + 1) = 4


def test_reconstruction_loss_sums_over_d_and_averages_over_tokens():
    assert losses.reconstruction_loss(X, X_HAT).item() == pytest.approx(2 / 2)


def test_weighted_l1_uses_decoder_norms():
    z = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    W_dec = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.5]])  # norms 5 and 0.5
    # token 1: 1·5 + 2·0.5 = 6; token 2: 4·0.5 = 2; mean 4
    assert losses.weighted_l1(z, W_dec).item() == pytest.approx(4.0)


def test_kl_standard_normal_closed_form():
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)]])
    # ½(1 + 1 − 0 − 1) + ½(0 + 4 − log 4 − 1) = 0.5 + 0.5 (3 − log 4)
    expected = 0.5 + 0.5 * (3 - math.log(4.0))
    assert losses.kl_standard_normal(mu, logvar).item() == pytest.approx(expected)
    assert losses.kl_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0


def test_normalized_mse():
    target = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # mean [2, 0]; Σ‖t − t̄‖² = 2
    prediction = torch.tensor([[1.0, 1.0], [3.0, 0.0]])  # Σ error² = 1
    assert losses.normalized_mse(target, prediction).item() == pytest.approx(0.5)


def test_auxk_loss_hand_computed():
    # Two latents dead (0, 2), k_aux = 1: per token the larger dead pre-activation (after ReLU)
    # times its decoder row predicts the residual.
    pre = torch.tensor([[0.5, 9.0, 2.0], [-1.0, 9.0, -3.0]])
    W_dec = torch.tensor([[1.0, 0.0], [5.0, 5.0], [0.0, 1.0]])
    dead = torch.tensor([True, False, True])
    residual = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    # token 1 picks latent 2 (2.0) -> ê = [0, 2]; token 2 picks latent 0 (−1 -> ReLU 0) -> ê = [0, 0]
    # error² = 0 + 1 = 1; residual mean [0.5, 1], Σ‖e − ē‖² = (0.25 + 1) + (0.25 + 1) = 2.5
    value = losses.auxk_loss(residual, pre, W_dec, dead, k_aux=1)
    assert value.item() == pytest.approx(1 / 2.5)
    none_dead = losses.auxk_loss(residual, pre.requires_grad_(), W_dec, torch.zeros(3, dtype=torch.bool), 1)
    assert none_dead.item() == 0.0 and none_dead.requires_grad


def test_auxk_loss_gradient_reaches_dead_latents_only():
    pre = torch.randn(6, 5, requires_grad=True)
    W_dec = torch.randn(5, 3, requires_grad=True)
    dead = torch.tensor([True, False, True, False, False])
    losses.auxk_loss(torch.randn(6, 3), pre, W_dec, dead, k_aux=2).backward()
    assert pre.grad[:, ~dead].abs().sum() == 0
    assert W_dec.grad[~dead].abs().sum() == 0
    assert W_dec.grad[dead].abs().sum() > 0
