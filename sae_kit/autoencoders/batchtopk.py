"""arch 'batchtopk': the BatchTopK sparse autoencoder (Bussmann, Leask & Nanda 2024, arXiv:2412.06410).

In training, over a batch of B tokens, the B·k largest entries of ReLU(pre) [B, d_sae] survive —
k active latents per token on average, more on hard tokens, fewer on easy ones — and the rest
are zeroed:

    z = ReLU(pre) ⊙ 1[ReLU(pre) ≥ v_B],   v_B = the (B·k)-th largest entry of ReLU(pre) over the batch,
    L = (1/B) Σ_b ‖x_b − x̂_b‖² + α · AuxK   (Gao et al. 2024's AuxK for dead latents).

A batch selection makes a token's code depend on the other tokens of its batch, so a saved model
uses one threshold θ instead, estimated during training as a running average of the smallest
kept activation of each batch (SAELens: θ ← (1 − r)·θ + r·v_B with r = `topk_threshold_lr`;
dictionary_learning keeps the same kind of EMA): at inference (eval mode, `encode`)

    z = pre · 1[pre > θ]    (JumpReLU form: one token at a time, separable),

and SAELens saves a trained BatchTopK SAE as a JumpReLU SAE with that threshold, as
`saelens_tensors` does here. θ is a buffer (in state_dict, so checkpoints and saved runs carry
it); −1 means "not estimated yet", where encode is a plain ReLU. Decoder columns are kept at unit
norm, so activations are comparable across latents and one θ fits all.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sae_kit.autoencoders.base import Autoencoder, ForwardOutput, TrainingState
from sae_kit.autoencoders.losses import auxk_loss, reconstruction_loss
from sae_kit.autoencoders.sparse import (Pairs, centred_input, compute_dtype, decode_pairs, dense_pre, encode_at_pairs,
                                         sparse_auxk, sparse_output, wants_sparse)
from sae_kit.errors import SaeKitError

CANDIDATES_PER_K = 4
"""The fast batch selection first keeps each token's CANDIDATES_PER_K · k largest activations."""


@torch.no_grad()
def batch_topk_cut(acts: torch.Tensor, n: int) -> torch.Tensor:
    """The n-th largest entry of acts [R, F] (a 0-dim tensor): the cut of a batch top-n.

    Fast path: each row's m = 4·⌈n/R⌉ largest entries are candidates, and the n-th largest
    candidate is the cut unless some row had all m candidates at or above it (then that row may
    hold more entries above the cut, and the full flattened top-n decides). Exact either way.
    """
    rows, width = acts.shape
    if n >= acts.numel():
        return acts.min()
    m = CANDIDATES_PER_K * math.ceil(n / rows)
    if m < width:
        candidates = acts.topk(m, dim=-1, sorted=False).values  # [R, m]
        cut = candidates.flatten().topk(n, sorted=False).values.min()
        if not bool((candidates.min(dim=-1).values >= cut).any()):
            return cut
    return acts.flatten().topk(n, sorted=False).values.min()


def batch_topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, cut): keep the B·k largest entries of ReLU(pre) over the whole batch pre [..., d_sae].

    z = ReLU(pre) ⊙ 1[ReLU(pre) ≥ cut] and cut > 0 (entries equal to the cut are all kept, so a
    tie at the cut keeps a few more than B·k; with fewer than B·k positive entries every positive
    one is kept). The gradient flows like a ReLU's through the kept entries.
    """
    acts = F.relu(pre)
    cut = batch_cut(acts, k)
    return acts * (acts >= cut), cut


@torch.no_grad()
def batch_cut(acts: torch.Tensor, k: int) -> torch.Tensor:
    """The cut (> 0) of `batch_topk` for acts = ReLU(pre) [..., d_sae]: the (B·k)-th largest entry,
    or the smallest positive one when fewer than B·k are positive (1 when none is)."""
    flat = acts.reshape(-1, acts.shape[-1])
    cut = batch_topk_cut(flat, k * flat.shape[0])
    if not bool(cut > 0):  # fewer than B·k positive entries: keep them all
        positive = flat[flat > 0]
        cut = positive.min() if positive.numel() else torch.ones((), dtype=acts.dtype, device=acts.device)
    return cut


class BatchTopKSparseAutoencoder(Autoencoder):
    """The BatchTopK SAE (module docstring): cfg.k active latents per token on average."""

    arch = "batchtopk"
    description = "sparse autoencoder, BatchTopK: the B·k largest activations of a batch; threshold at inference (Bussmann et al. 2024)"
    display_name = "BatchTopK sparse AE"
    sweep_field = "k"
    sweep_label = "k"
    default_decoder_norm = "unit"
    decoder_norm_choice = True
    dead_latent_remedy = "auxk"
    separable = True
    saelens_architecture = "jumprelu"  # SAELens saves a trained BatchTopK SAE as JumpReLU

    threshold: torch.Tensor

    def __init__(self, cfg):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.tensor(-1.0))

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.k is None:
            raise SaeKitError(f"arch {cls.arch!r} needs k (active latents per token on average), e.g. --k 32")
        if not 1 <= cfg.k <= cfg.d_sae:
            raise SaeKitError(f"k must be between 1 and d_sae={cfg.d_sae} (got {cfg.k})")
        if not 0 < cfg.topk_threshold_lr <= 1:
            raise SaeKitError(f"topk_threshold_lr must be in (0, 1] (got {cfg.topk_threshold_lr})")

    # -- inference: the JumpReLU form with the estimated threshold -------------------------------

    def jump(self, pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        """pre · 1[pre > θ], and ReLU while θ is not estimated (θ < 0)."""
        return torch.where(pre > threshold.clamp_min(0), pre, 0.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z [..., d_sae] for raw activations x [..., d_in]: pre · 1[pre > θ] (one token at a time)."""
        return self.jump(self.pre_activation(x), self.threshold)

    def subset_activation(self, u: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """pre · 1[pre > θ] with pre = u + b_enc[features]."""
        return self.jump(u + self.b_enc[features], self.threshold)

    # -- training: the batch selection ---------------------------------------------------------

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """Training mode: the batch top-(B·k), updating θ from the batch's cut; eval mode: θ."""
        if not self.training:
            return self.jump(pre, self.threshold)
        z, cut = batch_topk(pre, self.cfg.k)
        self.update_threshold_(cut)
        return z

    @torch.no_grad()
    def update_threshold_(self, cut: torch.Tensor) -> None:
        """θ ← (1 − r)·θ + r·cut (r = topk_threshold_lr), θ ← cut on the first batch; in float32
        outside autocast (the EMA of a bfloat16 value would round away small updates)."""
        cut = cut.detach().float()
        rate = self.cfg.topk_threshold_lr
        new = torch.where(self.threshold < 0, cut, (1 - rate) * self.threshold + rate * cut)
        self.threshold.copy_(new)

    def training_loss(self, x: torch.Tensor, state: TrainingState) -> ForwardOutput:
        """x [batch, d_in] -> ForwardOutput with losses {'reconstruction'} (+ 'auxk' when latents are
        dead); on the sparse path when `kernels` asks for it ('auto': k / d_sae low enough)."""
        if self.training and wants_sparse(self, x, self.cfg.k / self.d_sae):
            return self.sparse_training_loss(x, state)
        pre = self.pre_activation(x)
        z = self.activation(pre)
        x_hat = self.decode(z)
        terms = {"reconstruction": reconstruction_loss(x, x_hat)}
        self.add_auxk(terms, x, x_hat, pre, state)
        return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=sum(terms.values()))

    def sparse_pairs(self, x: torch.Tensor):
        """(x − b_dec, pre, pairs, z at the pairs) of the sparse path: the pairs are the batch top-(B·k)
        (all ≥ the cut > 0, so ReLU is the identity on them); θ is updated from the cut."""
        dtype = compute_dtype(x)
        x_centred = centred_input(self, x, dtype)
        pre = dense_pre(self, x_centred)
        cut = batch_cut(F.relu(pre), self.cfg.k)
        self.update_threshold_(cut)
        pairs = Pairs.from_mask(pre >= cut)
        return x_centred, pre, pairs, encode_at_pairs(self, x_centred, pre, pairs)

    def sparse_training_loss(self, x: torch.Tensor, state: TrainingState) -> ForwardOutput:
        """`training_loss` through the active pairs (`sae_kit.autoencoders.sparse`)."""
        x_centred, pre, pairs, z = self.sparse_pairs(x)
        x_hat = decode_pairs(z, self.W_dec, self.b_dec, pairs, x_centred.dtype)
        terms = {"reconstruction": reconstruction_loss(x, x_hat)}
        aux = sparse_auxk(self, x_centred, pre, x - x_hat, state.dead_mask)
        if aux is not None:
            terms["auxk"] = aux
        return sparse_output(pairs, x_hat, z, terms)

    def add_auxk(self, terms: dict, x, x_hat, pre, state: TrainingState) -> None:
        """terms['auxk'] = α · AuxK(x − x̂) when the state marks dead latents and α > 0."""
        dead = state.dead_mask
        if dead is not None and self.cfg.auxk_coefficient > 0 and bool(dead.any()):
            terms["auxk"] = self.cfg.auxk_coefficient * auxk_loss(x - x_hat, pre, self.W_dec, dead, self.cfg.k_aux)

    def schedule_metrics(self, state: TrainingState) -> dict[str, float]:
        return {"threshold": float(self.threshold)}

    # -- SAELens ---------------------------------------------------------------------------------

    def saelens_fields(self) -> dict:
        return {"activation_fn": "relu", "activation_fn_kwargs": {}, "k": self.cfg.k}

    def saelens_tensors(self) -> dict[str, torch.Tensor]:
        """As SAELens saves a trained BatchTopK SAE: JumpReLU with threshold = θ for every latent."""
        theta = self.threshold.clamp_min(0).float()
        return {**super().saelens_tensors(), "threshold": theta.expand(self.d_sae).clone()}

    @classmethod
    def from_saelens_config(cls, raw: dict) -> dict | None:
        """SAELens' training-format 'batchtopk' (k may be fractional there: rounded; only training uses it)."""
        if raw.get("architecture") != "batchtopk":
            return None
        return {"k": max(1, round(float(raw.get("k") or 100))), "topk_threshold_lr": raw.get("topk_threshold_lr", 0.01)}

    @torch.no_grad()
    def load_saelens_tensors(self, state: dict[str, torch.Tensor], raw: dict) -> None:
        """The four tensors (decoder norms folded where SAELens rescaled) and `topk_threshold`,
        which SAELens measures on the rescaled activations, i.e. on ours after folding."""
        super().load_saelens_tensors(state, raw)
        if "topk_threshold" in state:
            self.threshold.copy_(state["topk_threshold"].reshape(()))
