"""Statistics of the raw activations estimated before training: the input scale s with
E‖s·x‖ = √d_in (Anthropic, April 2024), the mean and the geometric median (b_dec's origin),
for a transcoder's target too."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sae_kit.errors import SaeKitError


@dataclass(frozen=True)
class InputStats:
    """Statistics of raw activations estimated before training (of the input x and, for a
    transcoder, of its target y: each gets its own scale)."""

    scale: float
    """The constant s with E‖s·x‖ = √d_in (1.0 when normalisation is off)."""
    mean: list[float]
    """Mean of the raw activations [d_in]."""
    geometric_median: list[float] | None
    """Geometric median of the raw activations [d_in], when asked for."""
    n_tokens: int
    """Tokens the estimate is based on."""
    target_scale: float | None = None
    """Transcoders: the constant s_y with E‖s_y·y‖ = √d_out for the target (None: no target)."""
    target_mean: list[float] | None = None
    """Transcoders: mean of the raw targets [d_out]."""
    target_geometric_median: list[float] | None = None
    """Transcoders: geometric median of the raw targets [d_out], when asked for."""

    @property
    def output_scale(self) -> float:
        """The scale of what the models output: the target's, else the input's."""
        return self.scale if self.target_scale is None else self.target_scale

    def decoder_origin(self, kind: str) -> list[float] | None:
        """The initial b_dec for b_dec_init `kind` ('mean' | 'geometric_median'), in raw units of
        the output space (the target's for a transcoder)."""
        if self.target_scale is not None:
            return self.target_mean if kind == "mean" else self.target_geometric_median
        return self.mean if kind == "mean" else self.geometric_median


def _moments(x: torch.Tensor, normalize: bool, want_median: bool) -> tuple[float, list[float], list[float] | None]:
    """(s, mean, geometric median or None) of activations x [n, d]: s = √d / mean_n ‖x_n‖."""
    mean_norm = float(x.norm(dim=-1).mean())
    if not math.isfinite(mean_norm) or mean_norm == 0:
        raise SaeKitError(f"the activations have mean norm {mean_norm}; the store holds zeros or non-finite values")
    scale = math.sqrt(x.shape[-1]) / mean_norm if normalize else 1.0
    return scale, x.mean(0).tolist(), geometric_median(x).tolist() if want_median else None


@torch.no_grad()
def estimate_input_stats(batches, n_tokens: int, normalize: bool, want_median: bool) -> InputStats:
    """Read batches [b, d_in] (or pairs (x [b, d_in], y [b, d_out]) for a transcoder) until
    n_tokens; s = √d / mean_n ‖x_n‖ for x and, separately, for y (Anthropic, April 2024)."""
    seen, parts = 0, []
    for batch in batches:
        pair = batch if isinstance(batch, tuple) else (batch,)
        parts.append(tuple(t.detach().to("cpu", torch.float32) for t in pair))
        seen += pair[0].shape[0]
        if seen >= n_tokens:
            break
    if not parts:
        raise SaeKitError("no activations to estimate the input scale from; is the store's train split empty?")
    x = torch.cat([p[0] for p in parts])
    scale, mean, median = _moments(x, normalize, want_median)
    target = {}
    if len(parts[0]) > 1:
        target_scale, target_mean, target_median = _moments(torch.cat([p[1] for p in parts]), normalize, want_median)
        target = dict(target_scale=target_scale, target_mean=target_mean, target_geometric_median=target_median)
    return InputStats(scale=scale, mean=mean, geometric_median=median, n_tokens=x.shape[0], **target)


def geometric_median(x: torch.Tensor, iterations: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """argmin_m Σ_n ‖x_n − m‖ by Weiszfeld's algorithm. x [n, d] -> [d]."""
    median = x.mean(0)
    for _ in range(iterations):
        weights = 1.0 / (x - median).norm(dim=-1).clamp_min(1e-8)
        new = (weights[:, None] * x).sum(0) / weights.sum()
        if (new - median).norm() <= tol * median.norm().clamp_min(1e-8):
            return new
        median = new
    return median
