"""Latents sharded over ranks (`--shard-latents`), for dictionaries too large for one device
(openai/sparse_autoencoder's `n_op_shards`).

Rank r of N holds latents [r·F/N, (r+1)·F/N): its columns of W_enc and b_enc, its rows of W_dec;
b_dec is replicated. Every rank sees the same batch x [B, d_in]:

    pre_r = copy(x − b_dec) W_enc,r + b_enc,r            local pre-activations [B, F/N]
    z_r   = the activation of pre_r (TopK: a global top-k across the shards, `LatentShard.topk`)
    x̂     = sum_r (z_r W_dec,r) + b_dec                  one all-reduce [B, d_in]

`copy` is the identity forward and sums its gradient over ranks backward; `sum_r` all-reduces
forward and is the identity backward (every rank computes the same loss from the same x̂, so
each shard's share of ∂L/∂x̂ is ∂L/∂x̂ itself). With these two (Megatron-LM's pair of
operators), autograd gives every rank the exact gradients of its slice, and b_dec the same
gradient everywhere. Loss terms summed over latents (L1) are added up over ranks for their
value and keep their local gradient. The gradient norm for clipping is the global one.

An architecture opts in with `supports_latent_sharding` and implements
`sharded_training_loss(x, state, shard)` with the `LatentShard` operations below.
"""

from __future__ import annotations

import torch

from sae_kit.autoencoders import build_autoencoder
from sae_kit.errors import SaeKitError
from sae_kit.training.checkpoint import optimizer_from_tensors, optimizer_to_tensors
from sae_kit.training.distributed import Distributed

SHARDED_DIMS = {"W_enc": 1, "b_enc": 0, "W_dec": 0}
"""The dimension of each parameter that runs over latents (b_dec is replicated)."""
SUMMED_METRICS = ("l0", "l1")
"""Per-token sums over latents: each rank holds part of them."""


class _CopyToShards(torch.autograd.Function):
    """Identity forward; the gradient is summed over ranks backward."""

    @staticmethod
    def forward(ctx, x, ranks):
        ctx.ranks = ranks
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return ctx.ranks.all_reduce_(grad.contiguous().clone()), None


class _SumFromShards(torch.autograd.Function):
    """All-reduce (sum) forward; identity backward (the loss after it is replicated)."""

    @staticmethod
    def forward(ctx, x, ranks):
        return ranks.all_reduce_(x.contiguous().clone())

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class LatentShard:
    """The collectives a sharded model's loss uses, for this rank's slice of `d_sae` latents."""

    def __init__(self, ranks: Distributed, d_sae: int):
        if d_sae % ranks.world_size:
            raise SaeKitError(f"--shard-latents splits the latents evenly: d_sae={d_sae} is not a multiple of "
                              f"{ranks.world_size} ranks")
        self.ranks = ranks
        self.d_sae = d_sae
        self.local = d_sae // ranks.world_size
        self.start = ranks.rank * self.local

    def copy_in(self, x: torch.Tensor) -> torch.Tensor:
        """x replicated on every rank, entering the local latents: its gradient is summed over ranks."""
        return _CopyToShards.apply(x, self.ranks)

    def sum_out(self, partial: torch.Tensor) -> torch.Tensor:
        """Σ_r partial_r (e.g. z_r W_dec,r), the same on every rank; identity backward."""
        return _SumFromShards.apply(partial, self.ranks)

    def total(self, term: torch.Tensor) -> torch.Tensor:
        """A loss term summed over latents: its value added up over ranks, its gradient local."""
        whole = self.ranks.all_reduce_(term.detach().clone())
        return term + (whole - term.detach())

    def count(self, mask: torch.Tensor) -> int:
        """Σ over ranks of mask.sum() (e.g. dead latents)."""
        return int(self.ranks.all_reduce_(mask.sum().reshape(1).long())[0])

    @torch.no_grad()
    def _selected(self, candidates: torch.Tensor, k: int) -> torch.Tensor:
        """Which of this rank's candidates [B, c] are among the k largest of all ranks' [B, N·c]."""
        everyone = torch.cat(self.ranks.all_gather(candidates), dim=-1)  # rank r's at [r·c, (r+1)·c)
        chosen = everyone.topk(k, dim=-1, sorted=False).indices  # [B, k]
        c = candidates.shape[-1]
        mine = (chosen // c) == self.ranks.rank
        hits = torch.zeros_like(candidates, dtype=torch.long).scatter_add_(-1, chosen % c, mine.long())
        return hits > 0

    def topk(self, pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The global top-k of pre-activations split over ranks (Gao et al. 2024's TopK, sharded):
        each rank's local top-k are the candidates, all-gathered; the k largest of the N·k are kept.
        Returns (values [B, c], local indices [B, c]) with values zeroed where not kept, c = min(k, F/N);
        equals the unsharded top-k (up to ties)."""
        c = min(k, pre.shape[-1])
        values, indices = pre.topk(c, dim=-1, sorted=False)
        kept = self._selected(values.detach(), k)
        return torch.where(kept, values, torch.zeros_like(values)), indices

    # -- the whole model, for checkpoints and the saved run ----------------------------------

    def gather(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's slice of a latent-indexed tensor, concatenated along `dim` (the full tensor)."""
        return torch.cat(self.ranks.all_gather(tensor.detach()), dim=dim)

    def local_slice(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        return tensor.narrow(dim, self.start, self.local)


class LatentSharding:
    """`Slot.parallel` for a model whose latents are split over the ranks (module docstring)."""

    def __init__(self, ranks: Distributed, full_cfg):
        self.ranks = ranks
        self.full_cfg = full_cfg
        self.shard = LatentShard(ranks, full_cfg.d_sae)

    def local_model(self, full_model):
        """This rank's slice of an initialised full model (every rank builds the same one)."""
        cls = type(full_model)
        if not getattr(cls, "supports_latent_sharding", False):
            raise SaeKitError(f"arch {self.full_cfg.arch!r} does not support --shard-latents")
        local = build_autoencoder(self.full_cfg.replace(d_sae=self.shard.local))
        with torch.no_grad():
            for name, tensor in full_model.state_dict().items():
                dim = SHARDED_DIMS.get(name)
                local.state_dict()[name].copy_(tensor if dim is None else self.shard.local_slice(tensor, dim))
        return local.to(full_model.W_dec.device).train()

    def prepare(self, slot) -> None:
        pass

    def training_loss(self, model, x, state, target=None):
        if target is not None:
            raise SaeKitError("--shard-latents does not train transcoders; train them data parallel")
        return model.sharded_training_loss(x, state, self.shard)

    def sync(self, model, fired):
        return fired  # gradients are exact per shard already; firing is per local latent

    @torch.no_grad()
    def clip(self, model, max_norm: float) -> torch.Tensor:
        """torch's clip_grad_norm_ with the global norm: √(Σ_r ‖local slices‖² + ‖b_dec‖²)."""
        local, replicated = [], []
        for name, p in model.named_parameters():
            if p.grad is not None:
                (replicated if name not in SHARDED_DIMS else local).append(p.grad)
        squares = torch.stack([g.float().pow(2).sum() for g in local]).sum().reshape(1)
        total_sq = self.ranks.all_reduce_(squares)[0] + sum(g.float().pow(2).sum() for g in replicated)
        norm = total_sq.sqrt()
        scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in local + replicated:
            g.mul_(scale.to(g.dtype))
        return norm

    def combine_metrics(self, record: dict) -> dict:
        keys = [k for k in SUMMED_METRICS if k in record] + (["dead_fraction"] if "dead_fraction" in record else [])
        values = self.ranks.all_reduce_(torch.tensor([float(record[k]) for k in keys], dtype=torch.float64)).tolist()
        out = dict(record, **dict(zip(keys, values)))
        if "dead_fraction" in out:
            out["dead_fraction"] /= self.ranks.world_size
        return out

    def share_resampled(self, slot, n: int) -> int:
        raise SaeKitError("--shard-latents does not resample dead latents; drop --resample-every-tokens")

    def reduce_moments(self, covariance, keep_on_all: bool) -> None:
        raise SaeKitError("--shard-latents trains sparse dictionaries only")

    def export_state(self, slot) -> None:
        pass

    def after_restore(self, slot) -> None:
        pass

    def gather_latents(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.shard.gather(tensor, 0)

    def full_model(self, slot):
        """The whole model, gathered from the ranks (for saving the run)."""
        full = build_autoencoder(self.full_cfg)
        full.load_state_dict(self._gather_params(slot.model))
        return full

    def _gather_params(self, model) -> dict[str, torch.Tensor]:
        out = {}
        for name, tensor in model.state_dict().items():
            dim = SHARDED_DIMS.get(name)
            out[name] = tensor.detach().cpu() if dim is None else self.shard.gather(tensor, dim).cpu()
        return out

    def full_state(self, slot):
        """(model tensors, (optimizer tensors, index)) of the whole model, as one process saves them."""
        names = [name for name, _ in slot.model.named_parameters()]
        tensors, index = optimizer_to_tensors(slot.optimizer)
        full_opt = {}
        for key, value in tensors.items():
            _, param_id, _ = key.split(".", 2)
            dim = SHARDED_DIMS.get(names[int(param_id)])
            full_opt[key] = value if dim is None or value.dim() == 0 else self.shard.gather(value, dim)
        return self._gather_params(slot.model), (full_opt, index)

    def load_full_state(self, slot, tensors: dict, optimizer) -> None:
        """Take this rank's slices of a whole model's checkpoint."""
        names = [name for name, _ in slot.model.named_parameters()]
        local = {}
        for name, tensor in tensors.items():
            if "." in name:
                continue
            dim = SHARDED_DIMS.get(name)
            local[name] = tensor if dim is None else self.shard.local_slice(tensor, dim)
        slot.model.load_state_dict(local)
        if optimizer is not None:
            opt_tensors, index = optimizer
            sliced = {}
            for key, value in opt_tensors.items():
                dim = SHARDED_DIMS.get(names[int(key.split(".", 2)[1])])
                sliced[key] = value if dim is None or value.dim() == 0 else self.shard.local_slice(value, dim).clone()
            optimizer_from_tensors(slot.optimizer, sliced, index)
        if slot.tracker is not None:
            slot.tracker.last_fired.copy_(self.shard.local_slice(tensors["tracker.last_fired"], 0))


def check_shardable(cfg, ranks: Distributed) -> None:
    """Refuse settings latent sharding does not cover, with what to do instead."""
    if not ranks.enabled:
        raise SaeKitError("--shard-latents needs several processes: launch with torchrun --nproc-per-node N")
    if cfg.resample_every_tokens:
        raise SaeKitError("--shard-latents does not resample dead latents; drop --resample-every-tokens")
