"""Every metric against a hand computation on tiny explicit tensors."""

from __future__ import annotations

import math

import pytest
import torch

from sae_kit.evaluation import metrics

X = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
X_HAT = torch.tensor([[1.0, 1.0], [2.0, 4.0]])
# errors: [0, 1], [1, 0] -> squared 0 + 1 + 1 + 0 = 2; mean x = [2, 3];
# Σ‖x − x̄‖² = (1 + 1) + (1 + 1) = 4



def test_mse_is_per_element():
    assert metrics.mse(X, X_HAT).item() == pytest.approx(2 / 4)


def test_fvu_and_explained_variance():
    assert metrics.fvu(X, X_HAT).item() == pytest.approx(2 / 4)
    assert metrics.explained_variance(X, X_HAT).item() == pytest.approx(0.5)
    assert metrics.fvu(X, X).item() == 0.0
    assert metrics.fvu(X, X.mean(0).expand_as(X)).item() == pytest.approx(1.0)


def test_fvu_from_sums_matches_direct_fvu():
    sse = 2.0
    sum_sq = 1 + 4 + 9 + 16
    assert metrics.fvu_from_sums(sse, sum_sq, X.sum(0), 2) == pytest.approx(0.5)
    x = torch.randn(100, 5, dtype=torch.float64) + 3
    x_hat = x + 0.3 * torch.randn_like(x)
    direct = metrics.fvu(x, x_hat).item()
    streamed = metrics.fvu_from_sums(float((x - x_hat).pow(2).sum()), float(x.pow(2).sum()), x.sum(0), 100)
    assert streamed == pytest.approx(direct, rel=1e-9)


def test_l0_and_l1():
    z = torch.tensor([[0.0, 2.0, -1.0], [0.0, 0.0, 3.0]])
    assert metrics.l0(z).item() == pytest.approx((2 + 1) / 2)
    assert metrics.l1(z).item() == pytest.approx((3 + 3) / 2)


def test_dead_and_dense_fraction():
    counts = torch.tensor([0, 5, 50, 0])
    assert metrics.dead_fraction(counts) == pytest.approx(0.5)
    assert metrics.dense_fraction(counts, n_tokens=100) == pytest.approx(0.25)  # only 50/100 > 10 %


def test_next_token_ce_and_kl():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    tokens = torch.tensor([[0, 1, 2]])
    ce = metrics.next_token_ce(logits, tokens)  # predicts 1 from pos 0, 2 from pos 1
    assert ce.tolist()[0] == pytest.approx([-math.log(0.25), -math.log(0.1)])
    p = torch.log(torch.tensor([0.5, 0.5]))
    q = torch.log(torch.tensor([0.25, 0.75]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert metrics.kl_from_logits(p, q).item() == pytest.approx(expected)
    assert metrics.kl_from_logits(p, p).item() == pytest.approx(0.0, abs=1e-7)


def test_ce_loss_recovered():
    assert metrics.ce_loss_recovered(ce_clean=2.0, ce_spliced=2.5, ce_ablated=4.0) == pytest.approx(0.75)
    assert metrics.ce_loss_recovered(2.0, 2.0, 4.0) == 1.0
    assert metrics.ce_loss_recovered(2.0, 4.0, 4.0) == 0.0
    assert math.isnan(metrics.ce_loss_recovered(2.0, 3.0, 2.0))
