"""The shared core: an affine encoder and decoder around a latent code, in SAELens shapes.

    pre = (x − b_dec) W_enc + b_enc        x [..., d_in], W_enc [d_in, d_sae], b_enc [d_sae]
    x̂   = z W_dec + b_dec                  z [..., d_sae], W_dec [d_sae, d_in], b_dec [d_in]

Subclasses choose z = activation(pre) and the loss terms. Everything that is the same for all
five models lives here: parameters, init, decoding, folding the input scale into the weights,
the unit-norm decoder constraint, and saving.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from sae_kit.autoencoders.config import AutoencoderConfig, ForwardOutput

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "sae-kit-autoencoder"
FORMAT_VERSION = 1


def affine(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x W + b for x [..., n], W [n, m], b [m] -> [..., m], as one fused addmm (no second
    pass over the [batch, m] output to add the bias)."""
    if x.dim() == 2:
        return torch.addmm(b, x, W)
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), W).reshape(*x.shape[:-1], W.shape[-1])


class Autoencoder(nn.Module):
    """Base class: parameters W_enc, b_enc, W_dec, b_dec and the operations shared by all models."""

    cfg: AutoencoderConfig

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        self.d_in = cfg.d_in
        self.d_sae = cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """April 2024 init: decoder columns in random directions with norm `init_decoder_norm`
        (1 for a unit-norm decoder), W_enc = W_decᵀ, biases 0."""
        direction = torch.randn(self.d_sae, self.d_in)
        norm = 1.0 if self.cfg.decoder_norm == "unit" else self.cfg.init_decoder_norm
        self.W_dec.copy_(direction / direction.norm(dim=-1, keepdim=True) * norm)
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    # -- the interface every model implements ------------------------------------------------

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """(x − b_dec) W_enc + b_enc: [..., d_in] -> [..., d_sae]."""
        return affine(x - self.b_dec, self.W_enc, self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic latent code z [..., d_sae] of raw activations x [..., d_in]."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """x̂ = z W_dec + b_dec: [..., d_sae] -> [..., d_in]."""
        return affine(z, self.W_dec, self.b_dec)

    def forward(
        self,
        x: torch.Tensor,
        *,
        l1_coefficient: float | None = None,
        dead_mask: torch.Tensor | None = None,
    ) -> ForwardOutput:
        """Reconstruction, latents and named loss terms for a batch x [batch, d_in].

        l1_coefficient overrides cfg.l1_coefficient (the trainer warms λ up); dead_mask [d_sae]
        marks latents the trainer considers dead (used by the topk AuxK loss). Models that have
        no use for an argument ignore it.
        """
        raise NotImplementedError

    # -- geometry: small in-place operations ---------------------------------------------------

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Fold a constant input scale into the weights: afterwards model(x) on raw x equals
        the old model on scale·x, with x̂ divided back by scale (z unchanged).

        The trainer feeds scale·x so that E‖scale·x‖ = √d_in (Anthropic, April 2024); folding
        lets the saved model take raw activations:
            W_enc ← s W_enc, b_dec ← b_dec / s, W_dec ← W_dec / s  (so (x − b_dec/s)·sW_enc = (sx − b_dec)·W_enc).
        """
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Set every decoder column W_dec,i to unit norm (the unit-norm constraint)."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Remove from ∂L/∂W_dec,i its component along W_dec,i, so that a step moves unit-norm
        columns along the sphere (Bricken et al. 2023; openai/sparse_autoencoder)."""
        if self.W_dec.grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        parallel = (self.W_dec.grad * unit).sum(-1, keepdim=True)
        self.W_dec.grad.sub_(parallel * unit)

    # -- persistence --------------------------------------------------------------------------

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers by name, contiguous float32 on CPU (what weights.safetensors holds)."""
        return {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in self.state_dict().items()}

    def save(self, run_dir: str | Path, extra: dict | None = None) -> Path:
        """Write `weights.safetensors` and `config.json` into run_dir (created; files replaced
        atomically). `extra` adds top-level keys to config.json (training config, provenance).
        Returns run_dir."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".{WEIGHTS_FILE}.tmp"
        save_file(self.state_tensors(), str(tmp), metadata={"format": FORMAT, "arch": self.cfg.arch})
        os.replace(tmp, run_dir / WEIGHTS_FILE)
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "autoencoder": self.cfg.to_dict()}
        payload.update(extra or {})
        tmp = run_dir / f".{CONFIG_FILE}.tmp"
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp, run_dir / CONFIG_FILE)
        return run_dir

    def extra_repr(self) -> str:
        return f"arch={self.cfg.arch}, d_in={self.d_in}, d_sae={self.d_sae}"
