"""The feature map: every feature's decoder direction projected to 2-D.

The projection is PCA of the unit decoder directions (the two directions of largest variance
among the W_dec rows shown): exact, deterministic, linear in the number of features (F · d_in²
for the covariance, in blocks; 65k × 576 takes well under a second, 1M × 2304 about a minute on
a CPU) and needs nothing beyond torch. Nonlinear embeddings (UMAP, t-SNE) separate clusters
better but need extra packages and minutes to hours at these sizes; they are not used here.
"""

from __future__ import annotations

import torch

from sae_kit.analysis.neighbours import unit_rows

GRID = 10_000
"""Coordinates are written as integers in [0, GRID) along each axis (compact, 1e-4 of the range)."""


@torch.no_grad()
def pca_2d(W: torch.Tensor, block: int = 65_536) -> torch.Tensor:
    """PCA coordinates of the unit rows of W [n, d] -> [n, 2] float64 (PC1, PC2).

    Covariance C = (1/n) Σ (u − ū)(u − ū)ᵀ accumulated in float64 blocks, its top two eigenvectors
    (torch.linalg.eigh), each signed so that its largest-magnitude entry is positive (the same
    map on every build)."""
    n, d = W.shape
    if n == 0:
        return torch.zeros(0, 2, dtype=torch.float64)
    total = torch.zeros(d, dtype=torch.float64)
    gram = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, block):
        u = unit_rows(W[start : start + block]).double()
        total += u.sum(0)
        gram += u.T @ u
    mean = total / n
    cov = gram / n - torch.outer(mean, mean)
    _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    axes = vectors[:, -2:].flip(1) if d >= 2 else torch.cat([vectors, torch.zeros(d, 1, dtype=torch.float64)], 1)
    largest = axes.gather(0, axes.abs().argmax(0, keepdim=True))  # [1, 2]
    axes = axes * torch.where(largest < 0, -1.0, 1.0).double()
    out = torch.empty(n, 2, dtype=torch.float64)
    for start in range(0, n, block):
        out[start : start + block] = (unit_rows(W[start : start + block]).double() - mean) @ axes
    return out


def map_columns(coords: torch.Tensor) -> dict:
    """coords [n, 2] -> {"x", "y": integers in [0, GRID), "x0", "dx", "y0", "dy"}: value = v0 + q · dv."""
    out = {}
    for axis, name in enumerate("xy"):
        values = coords[:, axis]
        lo = float(values.min()) if len(values) else 0.0
        hi = float(values.max()) if len(values) else 1.0
        step = (hi - lo) / (GRID - 1) if hi > lo else 1.0
        out[name] = torch.round((values - lo) / step).long().tolist()
        out[name + "0"], out["d" + name] = lo, step
    return out
