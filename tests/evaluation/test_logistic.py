"""The batched logistic regression: optimality by hand, scikit-learn parity, padding invariance."""

from __future__ import annotations

import pytest
import torch

from sae_kit.evaluation.logistic import accuracy, balanced_weights, f1_score, fit_logistic, fit_padded


def data(n=200, p=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=g, dtype=torch.float64)
    w = torch.randn(p, generator=g, dtype=torch.float64)
    y = ((X @ w + 0.7 * torch.randn(n, generator=g, dtype=torch.float64)) > 0.4).double()
    return X, y


def test_the_solution_zeroes_the_gradient_of_the_objective():
    """∂/∂w [½‖w‖² + C Σ log(1 + e^{−ỹη})] = w + C Xᵀ(σ(η) − y) = 0 and Σ (σ(η) − y) = 0 at the optimum."""
    X, y = data()
    for C in (0.1, 1.0, 10.0):
        fit = fit_logistic(X[None], y[None], C=C)
        eta = X @ fit.coef[0] + fit.intercept[0]
        residual = torch.sigmoid(eta) - y
        assert torch.allclose(fit.coef[0] + C * X.T @ residual, torch.zeros(6, dtype=torch.float64), atol=1e-7)
        assert abs(float(residual.sum())) < 1e-7


def test_one_dimensional_symmetric_problem_by_hand():
    """Four points at x = +1 (labels 1, 1, 1, 0) and four at x = −1 (0, 0, 0, 1): by symmetry b = 0, and
    the objective ½w² + 6 log(1 + e^{−w}) + 2 log(1 + e^{w}) is stationary at w = 6σ(−w) − 2σ(w)."""
    X = torch.tensor([[1.0], [1.0], [1.0], [-1.0], [-1.0], [-1.0], [1.0], [-1.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    fit = fit_logistic(X[None], y[None])
    w = float(fit.coef[0, 0])
    assert abs(float(fit.intercept[0])) < 1e-9
    sigmoid = lambda t: 1 / (1 + torch.exp(torch.tensor(-t, dtype=torch.float64)))  # noqa: E731
    assert w == pytest.approx(float(2 * (3 * sigmoid(-w) - sigmoid(w))), abs=1e-9)


@pytest.mark.parametrize("balanced", [False, True])
def test_matches_scikit_learn(balanced):
    sklearn = pytest.importorskip("sklearn.linear_model")
    X, y = data(n=300, p=8, seed=1)
    y[:150] = 1.0  # an imbalanced problem, so 'balanced' matters
    weight = balanced_weights(y[None]) if balanced else None
    fit = fit_logistic(X[None], y[None], weight)
    ref = sklearn.LogisticRegression(C=1.0, tol=1e-12, max_iter=100000,
                                     class_weight="balanced" if balanced else None).fit(X.numpy(), y.numpy())
    assert torch.allclose(fit.coef[0], torch.tensor(ref.coef_[0]), atol=1e-5)
    assert float(fit.intercept[0]) == pytest.approx(float(ref.intercept_[0]), abs=1e-5)


def test_separable_high_dimensional_problem_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(2)
    X = torch.randn(40, 100, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).double()
    fit = fit_logistic(X[None], y[None])
    ref = sklearn.LogisticRegression(C=1.0, tol=1e-12, max_iter=100000).fit(X.numpy(), y.numpy())
    assert torch.allclose(fit.coef[0], torch.tensor(ref.coef_[0]), atol=1e-5)


def test_shared_inputs_and_padding_change_no_solution():
    X, y = data(n=120, p=5, seed=3)
    X2, y2 = data(n=80, p=3, seed=4)
    alone = [fit_logistic(X[None], y[None]), fit_logistic(X2[None], y2[None])]
    padded = fit_padded([(X, y), (X2, y2)])
    assert torch.allclose(padded[0][0], alone[0].coef[0], atol=1e-7)
    assert torch.allclose(padded[1][0], alone[1].coef[0], atol=1e-7)
    assert padded[1][1] == pytest.approx(float(alone[1].intercept[0]), abs=1e-7)
    # one X shared by several label vectors == each fitted on its own
    ys = torch.stack([y, 1 - y, (X[:, 0] > 0).double()])
    shared = fit_logistic(X[None], ys)
    for t in range(3):
        assert torch.allclose(shared.coef[t], fit_logistic(X[None], ys[t : t + 1]).coef[0], atol=1e-7)


def test_balanced_weights_accuracy_and_f1_by_hand():
    y = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert balanced_weights(y)[0].tolist() == pytest.approx([2.0, 2 / 3, 2 / 3, 2 / 3])  # n / (2 n_class)
    scores = torch.tensor([1.0, -1.0, 2.0, -3.0])
    truth = torch.tensor([1, 0, 0, 1])
    assert accuracy(scores, truth) == pytest.approx(0.5)
    assert f1_score(scores, truth) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))  # TP 1, FP 1, FN 1
    assert f1_score(torch.tensor([-1.0, -1.0]), torch.tensor([1, 0])) == 0.0
