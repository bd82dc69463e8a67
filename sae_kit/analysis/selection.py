"""Vectorised selection primitives for streaming statistics: keep, in every group at once, the
k best items of a stream, without a Python loop over groups.

- `best_per_group`: the k smallest keys of every group (one sort of composite keys);
- `bottom_k_candidates` / `select_bottom_k`: the same for large inputs, after an exact pre-filter
  that drops items that cannot be among the k smallest (bucket counts of the keys' top bits);
- `token_keys` / `sample_keys`: pseudo-random keys (bijective hashes of token indices, salted
  per feature) whose k smallest form a uniform sample without replacement;
- `take` / `true_indices` / `positive_pairs`: gathers and indices of true / positive entries,
  several times faster than `x[i]` / `nonzero` on CPU; `torch_threads` sets the thread count
  of a block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

KEY_SPACE = 1 << 32
"""Keys are integers in [0, 2^32); an empty slot has key KEY_SPACE."""


def token_keys(index: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit mixing hash of token indices (the low 32 bits): [n] int64 -> [n] int64.

    (Thomas Mueller's hash32; every multiplication stays below 2^63, so int64 never overflows.)
    """
    mask = 0xFFFFFFFF
    x = index & mask
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & mask
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & mask
    return x ^ (x >> 16)


def feature_salts(d_sae: int, device=None) -> torch.Tensor:
    """Per-feature salt [d_sae] XOR-ed into token keys, so features sample different tokens."""
    return token_keys(torch.arange(d_sae, dtype=torch.int64, device=device) + 0x5BD1E995)


def sample_keys(index: torch.Tensor, feature: torch.Tensor, salts: torch.Tensor) -> torch.Tensor:
    """Sampling key of each (token, feature) pair: [n], [n] -> [n] int64 in [0, 2^32).

    For a fixed feature this is a bijection of the token index, so keys never tie."""
    return token_keys(index) ^ salts[feature]


def take(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """source[index] along dim 0 (index_select: several times faster than [] on CPU)."""
    return source.index_select(0, index)


def true_indices(mask: torch.Tensor) -> torch.Tensor:
    """Indices [m] of the True entries of a 1-d bool mask (numpy's is several times faster on CPU)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


def best_per_group(
    group: torch.Tensor, order_key: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Select, in every group, the k items with the smallest `order_key` (stable: earlier wins ties).

    group [n] int64 ≥ 0, order_key [n] int64 in [0, 2^32) -> (positions [m] of the kept items
    in the input, their group [m], their rank in the group [m]), sorted by (group, key).
    """
    composite, perm = torch.sort(group * KEY_SPACE + order_key, stable=True)
    sorted_group = composite >> 32
    rank = rank_in_runs(sorted_group)
    keep = true_indices(rank < k)
    return take(perm, keep), take(sorted_group, keep), take(rank, keep)


def bottom_k_candidates(group: torch.Tensor, key: torch.Tensor, k: int, n_groups: int, buckets: int = 16) -> torch.Tensor:
    """Positions [m] of the items that can be among the k smallest keys of their group; a cheap
    exact pre-filter for `best_per_group`. group [n] in [0, n_groups), key [n] in [0, 2^32).

    Keys are split into `buckets` ranges by their top bits; in each group, ranges above the one
    where the count reaches k hold only keys larger than k others, so they are dropped."""
    shift = 32 - (buckets.bit_length() - 1)
    bucket = key >> shift
    counts = torch.bincount(group * buckets + bucket, minlength=n_groups * buckets).reshape(n_groups, buckets)
    last = (counts.cumsum(1) < k).sum(1).clamp(max=buckets - 1)  # [n_groups] last bucket needed
    return true_indices(bucket <= take(last, group))


def select_bottom_k(group: torch.Tensor, key: torch.Tensor, group_size: torch.Tensor, k: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which items to keep so that every group holds its k smallest keys.

    group [n], key [n] in [0, 2^32), group_size [n_groups]: the number of items of each group.
    Returns (calm [m0]: positions of the items of groups with at most k items, all kept without
    sorting; chosen [m1]: positions of the k smallest of every larger group, sorted by (group,
    key); their group [m1]; their rank in the group [m1]). Larger groups are pre-filtered with
    `bottom_k_candidates` before the sort."""
    crowded = take(group_size > k, group)
    calm, busy = true_indices(~crowded), true_indices(crowded)
    busy_group, busy_key = take(group, busy), take(key, busy)
    candidates = take(busy, bottom_k_candidates(busy_group, busy_key, k, group_size.numel()))
    chosen, chosen_group, rank = best_per_group(take(group, candidates), take(key, candidates), k)
    return calm, take(candidates, chosen), chosen_group, rank


def rank_in_runs(sorted_group: torch.Tensor) -> torch.Tensor:
    """Position of each item within its run of equal values: [n] sorted -> [n] (0, 1, 2, 0, 1, …)."""
    n = len(sorted_group)
    position = torch.arange(n, device=sorted_group.device)
    starts = torch.ones(n, dtype=torch.bool, device=sorted_group.device)
    starts[1:] = sorted_group[1:] != sorted_group[:-1]
    return position - torch.where(starts, position, 0).cummax(0).values


def descending_value_key(values: torch.Tensor) -> torch.Tensor:
    """An int64 key in [0, 2^32) that sorts positive float32 values in descending order. [n] -> [n].

    Positive IEEE floats order like their bit patterns, so 2^31 − 1 − bits reverses the order."""
    bits = values.float().contiguous().view(torch.int32).long()
    return (1 << 31) - 1 - bits


def positive_pairs(z: torch.Tensor) -> torch.Tensor:
    """Flat indices [nnz] int64 of the entries z > 0 of a 2-d tensor (numpy is faster on CPU)."""
    if z.device.type == "cpu":
        array = z.detach().float().contiguous().numpy()
        return torch.from_numpy(np.flatnonzero(array > 0))
    return (z.reshape(-1) > 0).nonzero().squeeze(1)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` intra-op threads (None: unchanged), restoring the count after."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
