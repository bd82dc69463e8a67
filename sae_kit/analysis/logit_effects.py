"""Logit effects: each feature's decoder direction pushed through the final norm and the unembedding.

Anthropic's feature browser calls these the feature's "logit weights": the change in each
output logit per unit of feature activation, ignoring everything between the hook and the
output (the direct path). With the final norm frozen at unit scale, a direction d ∈ R^d_in
gives logits

    W_U · (g ⊙ c(d))        W_U [vocab, d_in], g [d_in] the norm's gain,
                            c the mean-centring of a LayerNorm (identity for an RMSNorm),

the same folding TransformerLens does. The norm's gain and whether it centres are read off the
module itself by probing it (a zero vector, a zero-mean unit-RMS vector, the all-ones vector),
so LayerNorm (GPT-2, NeoX), RMSNorm (Llama) and Gemma's (1 + w) RMSNorm need no special code.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn

from sae_kit.errors import SaeKitError

FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "final_norm")
"""Attribute names of the final norm on a Hugging Face base model (Llama/Gemma, GPT-2, NeoX, …)."""


@dataclass(frozen=True)
class Unembedding:
    """The direct path from the residual stream to the logits, as a linear map."""

    W_U: torch.Tensor
    """[vocab, d_in] the unembedding (the LM head's weight; tied to the embedding in some models)."""
    gain: torch.Tensor | None
    """[d_in] the final norm's per-coordinate gain, or None if the model has no final norm."""
    centered: bool
    """Whether the final norm subtracts the mean first (LayerNorm) or not (RMSNorm)."""
    norm_name: str | None
    """Module name of the final norm folded in (None if none was found)."""

    def direction_logits(self, directions: torch.Tensor) -> torch.Tensor:
        """Logit change per unit along each direction: [n, d_in] -> [n, vocab]."""
        d = directions.to(self.W_U)
        if self.centered:
            d = d - d.mean(-1, keepdim=True)
        if self.gain is not None:
            d = d * self.gain
        return d @ self.W_U.T


@dataclass(frozen=True)
class LogitEffects:
    """The top promoted and suppressed tokens of every feature."""

    promoted_ids: torch.Tensor
    """[F, n] int64 token ids with the largest logit change, largest first."""
    promoted_logits: torch.Tensor
    """[F, n] their logit change per unit of activation."""
    suppressed_ids: torch.Tensor
    """[F, n] int64 token ids with the most negative logit change, most negative first."""
    suppressed_logits: torch.Tensor
    """[F, n] their logit change per unit of activation (negative)."""
    norm_name: str | None
    """The final norm folded in, if any."""

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "promoted_ids": self.promoted_ids,
            "promoted_logits": self.promoted_logits,
            "suppressed_ids": self.suppressed_ids,
            "suppressed_logits": self.suppressed_logits,
        }


def find_final_norm(model: nn.Module) -> tuple[str | None, nn.Module | None]:
    """(name, module) of the norm applied right before the LM head, or (None, None)."""
    base = getattr(model, "base_model", model)
    prefix = getattr(model, "base_model_prefix", "")
    for name in FINAL_NORM_NAMES:
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return (f"{prefix}.{name}" if prefix and base is not model else name), module
    return None, None


@torch.no_grad()
def probe_norm(norm: nn.Module, d: int, device, dtype) -> tuple[torch.Tensor, bool]:
    """Gain g [d] and centring of a LayerNorm-like module, read from its outputs.

    With β = norm(0) and a zero-mean unit-RMS probe s, g = (norm(s) − β) / s; the module
    centres if norm(1) = β (LayerNorm maps constants to its bias; RMSNorm does not). A second
    probe checks the module really acts as x ↦ g ⊙ c(x)/rms + β; otherwise SaeKitError.
    """
    def run(x: torch.Tensor) -> torch.Tensor:  # [d] on the CPU -> the norm's output [d] on the CPU
        return norm(x.to(device, dtype)[None, None, :]).reshape(-1).float().cpu()

    generator = torch.Generator().manual_seed(0)
    signs = torch.where(torch.arange(d) % 2 == 0, 1.0, -1.0)
    probe = _zero_mean_unit_rms(signs)
    bias = run(torch.zeros(d))
    gain = (run(probe) - bias) / probe
    centered = bool(torch.allclose(run(torch.ones(d)), bias, atol=1e-4 * (1 + bias.abs().max().item())))
    check = _zero_mean_unit_rms(torch.randn(d, generator=generator))
    expected = gain * check + bias
    if not torch.allclose(run(check), expected, rtol=1e-3, atol=1e-3 * (1 + expected.abs().max().item())):
        raise SaeKitError(f"the final norm ({type(norm).__name__}) does not act like a LayerNorm or RMSNorm; "
                          "logit effects cannot fold it in: run the analysis with --no-logits")
    return gain, centered


def _zero_mean_unit_rms(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean()
    return x / x.pow(2).mean().sqrt()


def unembedding(model: nn.Module) -> Unembedding:
    """The direct path of a Hugging Face causal LM: its LM head and final norm (probed)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight"):
        raise SaeKitError(f"{type(model).__name__} has no output embedding (LM head); logit effects need one")
    W_U = head.weight.detach().float()
    name, norm = find_final_norm(model)
    if norm is None:
        print("sae-kit: no final norm found; logit effects use the unembedding alone", file=sys.stderr)
        return Unembedding(W_U=W_U, gain=None, centered=False, norm_name=None)
    gain, centered = probe_norm(norm, W_U.shape[1], head.weight.device, head.weight.dtype)
    return Unembedding(W_U=W_U, gain=gain.to(W_U.device), centered=centered, norm_name=name)


@torch.no_grad()
def logit_effects(W_dec: torch.Tensor, model: nn.Module, top: int = 10, batch: int = 256) -> LogitEffects:
    """Top `top` promoted and suppressed tokens of each decoder row W_dec [F, d_in], in batches
    of `batch` features (memory: batch × vocab floats)."""
    unembed = unembedding(model)
    if W_dec.shape[1] != unembed.W_U.shape[1]:
        raise SaeKitError(f"the autoencoder's d_in ({W_dec.shape[1]}) differs from the model's width "
                          f"({unembed.W_U.shape[1]}): it was not trained on this model's residual stream")
    top = min(top, unembed.W_U.shape[0])
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("pi", "pv", "si", "sv")}
    for start in range(0, W_dec.shape[0], batch):
        logits = unembed.direction_logits(W_dec[start : start + batch].detach())  # [b, vocab]
        high = logits.topk(top, dim=1)
        low = logits.topk(top, dim=1, largest=False)
        parts["pi"].append(high.indices.cpu())
        parts["pv"].append(high.values.float().cpu())
        parts["si"].append(low.indices.cpu())
        parts["sv"].append(low.values.float().cpu())
    return LogitEffects(
        promoted_ids=torch.cat(parts["pi"]).long(),
        promoted_logits=torch.cat(parts["pv"]),
        suppressed_ids=torch.cat(parts["si"]).long(),
        suppressed_logits=torch.cat(parts["sv"]),
        norm_name=unembed.norm_name,
    )
