"""Dead latents: tracking (steps since each latent last fired) and Anthropic's 2023 resampling."""

from __future__ import annotations

import torch

from sae_kit.autoencoders import Autoencoder


class DeadLatentTracker:
    """Step at which each latent last fired; dead = not fired in the last `window` completed steps.

    A latent fires on a token when its activation is > 0 (the ReLU/TopK models; z ≥ 0 there).
    `update` costs one reduction over z per step and never synchronises with the device.
    """

    def __init__(self, d_sae: int, window_steps: int, start_step: int = 0, device=None):
        self.window = max(1, window_steps)
        # as if every latent fired just before the first step: none is dead before `window` steps
        self.last_fired = torch.full((d_sae,), start_step - 1, dtype=torch.long, device=device)

    @torch.no_grad()
    def update(self, z: torch.Tensor, step: int) -> None:
        """Record latents with a positive activation anywhere in z [batch, d_sae] at `step`."""
        self.mark_fired(z.detach().amax(0) > 0, step)

    @torch.no_grad()
    def mark_fired(self, fired: torch.Tensor, step: int) -> None:
        """Record latents `fired` [d_sae] bool (under data parallelism: fired on any rank) at `step`."""
        self.last_fired.masked_fill_(fired, step)

    def dead_mask(self, step: int) -> torch.Tensor:
        """[d_sae] bool, before step `step` runs: latents that fired in none of the last `window`
        steps (steps step − window … step − 1)."""
        return (step - self.last_fired) > self.window

    def revive(self, indices: torch.Tensor, step: int) -> None:
        """Treat `indices` as just fired (after resampling them)."""
        self.last_fired[indices] = step


def _unit_rows(t: torch.Tensor) -> torch.Tensor:
    """Each row of t [n, d] divided by its norm."""
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-8)


@torch.no_grad()
def resample_dead_latents_(
    model: Autoencoder,
    optimizer: torch.optim.Optimizer,
    dead: torch.Tensor,
    x: torch.Tensor,
    encoder_scale: float = 0.2,
    target: torch.Tensor | None = None,
) -> int:
    """Re-initialise dead latents on inputs the model reconstructs badly (Bricken et al. 2023,
    "Towards Monosemanticity", appendix "Neuron Resampling").

    For each dead latent i: draw an input x_n with probability ∝ ‖x_n − x̂_n‖² from the batch x
    [batch, d_in] (the paper samples from 819,200 inputs; a batch is our sample); set
    W_dec,i = u·c_dec with u = x_n/‖x_n‖ and c_dec the mean decoder norm of live latents (1 for a
    unit-norm decoder), W_enc[:, i] = u·0.2·(mean encoder norm of live latents), b_enc,i = 0,
    and zero Adam's moments for those entries. Returns the number resampled.

    A transcoder (`target` y [batch, d_out]) is scored by ‖y_n − ŷ_n‖², its decoder direction is
    y_n/‖y_n‖ (the output space) and its encoder direction x_n/‖x_n‖.
    """
    indices = torch.nonzero(dead).flatten()
    if len(indices) == 0:
        return 0
    x = x.float()
    y = x if target is None else target.float()
    error = (model.reconstruct(x).float() - y).pow(2).sum(-1)
    if float(error.sum()) <= 0:
        return 0
    chosen = torch.multinomial(error, len(indices), replacement=True)
    directions, enc_directions = _unit_rows(y[chosen]), _unit_rows(x[chosen])  # [n_dead, d_out], [n_dead, d_in]
    alive = ~dead
    if bool(alive.any()):
        enc_norm = float(model.W_enc[:, alive].norm(dim=0).mean())
        dec_norm = float(model.W_dec[alive].norm(dim=-1).mean())
    else:
        enc_norm, dec_norm = 1.0, 1.0
    if model.cfg.decoder_norm == "unit":
        dec_norm = 1.0
    model.W_dec[indices] = (directions * dec_norm).to(model.W_dec.dtype)
    model.W_enc[:, indices] = (enc_directions.T * encoder_scale * enc_norm).to(model.W_enc.dtype)
    model.b_enc[indices] = 0.0
    for param, rows in ((model.W_dec, (indices, slice(None))), (model.W_enc, (slice(None), indices)),
                        (model.b_enc, (indices,))):
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][rows] = 0.0
    return len(indices)
