"""L2-regularised logistic regression for probes: many independent problems solved at once.

The objective is scikit-learn's `LogisticRegression(penalty="l2", C=C)` (what SAEBench's sparse
probing fits), per problem t:

    min_{w, b}  ½‖w‖² + C Σ_i s_i log(1 + exp(−ỹ_i (x_i·w + b))),   ỹ_i = 2 y_i − 1 ∈ {−1, +1},

s_i the sample weights (1, or n / (2 n_class) for `balanced`; 0 marks padding rows), the intercept
unpenalised. It is strictly convex, so its minimiser is unique and any exact solver finds the same
one; here Newton's method with a backtracking line search, in float64, vectorised over problems
(X [T, n, p] with a Hessian [T, p+1, p+1] each). Why not scikit-learn: a probe suite fits
hundreds of small problems (tasks × k × models), which batched Newton does in a few steps on any
device, with no extra dependency; `tests/evaluation/test_logistic.py` checks the coefficients
against scikit-learn's where it is installed.

Zero-weight rows and all-zero columns change nothing (a zero column's weight is 0 at the optimum),
so problems of different sizes are padded into one batch by `fit_padded`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class LogisticFit(NamedTuple):
    """Fitted probes: score(x) = x·coef + intercept; positive predicts class 1."""

    coef: torch.Tensor
    """[T, p] weights."""
    intercept: torch.Tensor
    """[T] biases."""
    iterations: int
    """Newton steps taken."""


def _scores(Xa: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """η = Xa θ per problem: Xa [T, n, p+1] or [1, n, p+1] (shared), theta [T, p+1] -> [T, n]."""
    if Xa.shape[0] == 1:
        return theta @ Xa[0].T
    return torch.einsum("tnp,tp->tn", Xa, theta)


def _objective(theta: torch.Tensor, Xa: torch.Tensor, y_sign: torch.Tensor, cs: torch.Tensor) -> torch.Tensor:
    """½‖w‖² + Σ_i C s_i softplus(−ỹ_i η_i) per problem: theta [T, p+1] -> [T]."""
    return 0.5 * theta[:, :-1].pow(2).sum(-1) + (cs * F.softplus(-y_sign * _scores(Xa, theta))).sum(-1)


def fit_logistic(X: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None, C: float = 1.0,
                 max_iter: int = 100, tol: float = 1e-20) -> LogisticFit:
    """Fit T independent probes. X [T, n, p] or [1, n, p] (shared by all problems), y [T, n] in {0, 1},
    weight [T, n] sample weights (None: all 1). Stops when every Newton decrement gᵀH⁻¹g/2 < tol
    (or stops shrinking below 1e-12: float64's floor)."""
    X = X.double()
    y = y.double()
    T, n = y.shape
    p = X.shape[-1]
    s = torch.ones_like(y) if weight is None else weight.double()
    Xa = torch.cat([X, torch.ones(*X.shape[:-1], 1, dtype=X.dtype, device=X.device)], dim=-1)  # [T|1, n, p+1]
    shared = Xa.shape[0] == 1
    penalty = torch.ones(p + 1, dtype=X.dtype, device=X.device)
    penalty[-1] = 1e-12  # the intercept is not penalised (a tiny ridge keeps H invertible)
    cs, y_sign = C * s, 2 * y - 1
    theta = torch.zeros(T, p + 1, dtype=X.dtype, device=X.device)
    iterations, previous = 0, float("inf")
    for iterations in range(1, max_iter + 1):
        prob = torch.sigmoid(_scores(Xa, theta))
        residual = cs * (prob - y)  # ∂loss/∂η
        curvature = cs * prob * (1 - prob)
        if shared:
            grad = penalty * theta + torch.einsum("np,tn->tp", Xa[0], residual)
            hess = torch.einsum("np,tn,nq->tpq", Xa[0], curvature, Xa[0])
        else:
            grad = penalty * theta + torch.einsum("tnp,tn->tp", Xa, residual)
            hess = torch.einsum("tnp,tn,tnq->tpq", Xa, curvature, Xa)
        hess = hess + torch.diag_embed(penalty.expand(T, -1))
        step = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
        decrement = (grad * step).sum(-1)
        worst = float(decrement.max()) / 2
        # quadratic convergence takes the decrement far below tol in a step or two; where it stops
        # shrinking (the float64 floor) the solution is as good as it gets
        if worst < tol or (worst < 1e-12 and worst > previous / 10):
            break
        previous = worst
        theta = _line_search(theta, step, decrement, Xa, y_sign, cs)
    return LogisticFit(theta[:, :-1].contiguous(), theta[:, -1].contiguous(), iterations)


def _line_search(theta, step, decrement, Xa, y_sign, cs, shrink: float = 0.5, c1: float = 1e-4):
    """Backtracking (Armijo) per problem: the largest t ∈ {1, ½, ¼, …} with f(θ − tΔ) ≤ f(θ) − c1·t·gᵀΔ."""
    f0 = _objective(theta, Xa, y_sign, cs)
    t = torch.ones_like(f0)
    near = decrement < 1e-6  # in Newton's quadratic region the full step is right, and f's rounding would hide it
    for _ in range(50):
        candidate = theta - t[:, None] * step
        accept = near | (_objective(candidate, Xa, y_sign, cs) <= f0 - c1 * t * decrement)
        if bool(accept.all()):
            break
        t = torch.where(accept, t, t * shrink)
    return theta - t[:, None] * step


def balanced_weights(y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """scikit-learn's class_weight='balanced': s_i = n / (2 n_{y_i}) per problem. y [T, n];
    mask [T, n] (False rows get 0)."""
    y = y.double()
    m = torch.ones_like(y) if mask is None else mask.double()
    n = m.sum(-1, keepdim=True)
    n_pos = (y * m).sum(-1, keepdim=True).clamp_min(1)
    n_neg = ((1 - y) * m).sum(-1, keepdim=True).clamp_min(1)
    return m * torch.where(y > 0.5, n / (2 * n_pos), n / (2 * n_neg))


def fit_padded(problems: list[tuple[torch.Tensor, torch.Tensor]], C: float = 1.0, balanced: bool = False,
               max_iter: int = 100) -> list[tuple[torch.Tensor, float]]:
    """Fit problems of different sizes [(X [n_t, p_t], y [n_t])] in one batch: rows padded with
    weight 0 and columns with zeros, neither of which changes a solution. Returns [(coef [p_t], intercept)]."""
    if not problems:
        return []
    n = max(X.shape[0] for X, _ in problems)
    p = max(X.shape[1] for X, _ in problems)
    device = problems[0][0].device
    Xs = torch.zeros(len(problems), n, p, dtype=torch.float64, device=device)
    ys = torch.zeros(len(problems), n, dtype=torch.float64, device=device)
    mask = torch.zeros(len(problems), n, dtype=torch.bool, device=device)
    for t, (X, y) in enumerate(problems):
        Xs[t, : X.shape[0], : X.shape[1]] = X.double()
        ys[t, : len(y)] = y.double()
        mask[t, : len(y)] = True
    weight = balanced_weights(ys, mask) if balanced else mask.double()
    fit = fit_logistic(Xs, ys, weight, C=C, max_iter=max_iter)
    return [(fit.coef[t, : X.shape[1]], float(fit.intercept[t])) for t, (X, _) in enumerate(problems)]


def accuracy(scores: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows with (score > 0) == y. scores, y: [n]."""
    return float(((scores > 0).long() == y.long()).double().mean()) if len(y) else float("nan")


def f1_score(scores: torch.Tensor, y: torch.Tensor) -> float:
    """F1 of the positive class: 2 TP / (2 TP + FP + FN), predicting score > 0 (0 when undefined)."""
    pred, truth = scores > 0, y.bool()
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0
