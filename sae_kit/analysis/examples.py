"""Context windows for the examples of an analysis: the tokens around each top / band example,
with the feature's activation at every one of them.

Activations are re-encoded from the stored activations of the window's tokens (one shard at a
time, only the (token, feature) pairs shown), at the hook the analysis encoded (`analysis.hook`:
a transcoder's input hook, the MLP input). For separable models (latent i depends on x only
through W_enc[:, i]: ReLU SAE, dense AE, VAE mean, PCA; the class says so) a fast path computes
just those pairs; other models (TopK) encode the needed rows in full. The example token's own
value is the one the analysis recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from sae_kit.autoencoders import load_autoencoder
from sae_kit.errors import SaeKitError
from sae_kit.harvest.reader import ActivationStore


@dataclass(frozen=True)
class ExampleWindows:
    """Windows around every example slot of S features. E = k·(1 + Q) slots per feature: slots
    [0, k) are the top examples, band q occupies [k·(1+q), k·(2+q)). W = before + 1 + after."""

    features: torch.Tensor
    """[S] int64 feature ids."""
    centers: torch.Tensor
    """[S, E] int64 global token index of each example (−1: empty slot)."""
    center_values: torch.Tensor
    """[S, E] the example's activation as the analysis recorded it."""
    tokens: torch.Tensor
    """[S, E, W] int64 token ids of the window (−1 outside the example's context or empty slot)."""
    activations: torch.Tensor
    """[S, E, W] the feature's activation at each window token (NaN where tokens is −1)."""
    positions: torch.Tensor
    """[S, E] int64 position of the example token in its context (−1 for an empty slot)."""
    contexts: torch.Tensor
    """[S, E] int64 context index of the example (−1 for an empty slot)."""
    before: int
    """Tokens shown before the example token (its column in the window)."""
    top_k: int
    """k: slots per group (top examples, then each band)."""


def feature_activations(autoencoder, x: torch.Tensor, rows: torch.Tensor, feature: torch.Tensor,
                        block: int = 8192) -> torch.Tensor:
    """z[feature_j] at row x[rows_j] for each pair j: x [u, d_in], rows [n], feature [n] -> [n].

    Fast path (separable models): only the features named, from their W_enc columns: one matrix
    product per block of rows (`subset_encoder`) when the pairs cover that product densely
    enough, else pair by pair (`subset_activation`). Plain path (any model, or any callable
    encoder): encode(x) and pick. Tests check they agree."""
    if not getattr(autoencoder, "separable", False):
        return encoded_activations(autoencoder.encode, x, rows, feature, block)
    out = torch.empty(rows.shape[0], dtype=torch.float32, device=x.device)
    features, column = unique_in_range(feature, autoencoder.d_sae)
    if x.shape[0] * len(features) <= 64 * rows.shape[0]:  # a matmul beats 64 gathered dot products
        encode_subset = autoencoder.subset_encoder(features)
        order = torch.argsort(rows)
        bounds = torch.searchsorted(rows[order], torch.arange(0, x.shape[0] + block, block, device=x.device))
        for i in range(len(bounds) - 1):
            sel = order[bounds[i] : bounds[i + 1]]
            if sel.numel():
                start = i * block
                z = encode_subset(x[start : start + block])  # [block, S]
                out[sel] = z[rows[sel] - start, column[sel]].float()
        return out
    W_T = autoencoder.W_enc.detach().T  # [d_sae, d_in]
    # the encoder's input is x − b_dec, or x itself for a transcoder (its b_dec is in the target's space)
    b_dec = autoencoder.b_dec.detach() if getattr(autoencoder, "apply_b_dec_to_input", True) else 0.0
    for start in range(0, rows.shape[0], block):
        r, f = rows[start : start + block], feature[start : start + block]
        u = ((x[r] - b_dec) * W_T[f]).sum(-1)  # (x − b_dec)·W_enc[:, f], one pair per entry
        out[start : start + block] = autoencoder.subset_activation(u, f).float()
    return out


def unique_in_range(values: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.unique(values, return_inverse=True) for integers in [0, size), in O(n + size)."""
    present = torch.zeros(size, dtype=torch.bool, device=values.device)
    present[values] = True
    position = present.cumsum(0) - 1
    return present.nonzero().squeeze(1), position[values]


def encoded_activations(encode, x: torch.Tensor, rows: torch.Tensor, feature: torch.Tensor,
                        batch: int = 4096) -> torch.Tensor:
    """The plain path of `feature_activations`: encode x [u, d_in] in batches, pick z[rows_j, feature_j]."""
    out = torch.empty(rows.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], batch):
        z = encode(x[start : start + batch]).float()  # [b, d_sae]
        sel = ((rows >= start) & (rows < start + batch)).nonzero().squeeze(1)
        out[sel] = z[rows[sel] - start, feature[sel]]
    return out


@torch.no_grad()
def example_windows(
    analysis, features: list[int], *, autoencoder=None, store: ActivationStore | None = None, before: int = 10,
    after: int = 4, device=None, progress: bool = False,
) -> ExampleWindows:
    """Windows of `before` + 1 + `after` tokens around every example of `features` (see ExampleWindows).

    autoencoder / store default to the analysis' run and store."""
    if before < 0 or after < 0:
        raise SaeKitError("window sizes must be non-negative")
    if autoencoder is None:
        if not analysis.run:
            raise SaeKitError("the analysis records no run directory; pass the autoencoder")
        autoencoder = load_autoencoder(analysis.run, device=device)
    store = store or ActivationStore(analysis.store)
    hook = analysis.hook
    feats = torch.as_tensor(features, dtype=torch.long)
    S, k = len(feats), analysis.top_k
    centers = torch.cat([analysis.top_indices[feats], analysis.band_indices[feats].reshape(S, -1)], 1)  # [S, E]
    center_values = torch.cat([analysis.top_values[feats], analysis.band_values[feats].reshape(S, -1)], 1)
    positions = torch.full(centers.shape, -1, dtype=torch.long)
    contexts = torch.full(centers.shape, -1, dtype=torch.long)
    filled = (centers >= 0).nonzero(as_tuple=True)
    if filled[0].numel():
        meta = store.gather(None, centers[filled])
        positions[filled], contexts[filled] = meta["position"], meta["context"]

    window = centers[..., None] + torch.arange(-before, after + 1)  # [S, E, W]
    inside = (centers >= 0)[..., None] & (window >= 0) & (window < store.n_tokens)
    where = inside.nonzero(as_tuple=True)
    meta = store.gather(None, window[where])
    same = meta["context"] == contexts[where[0], where[1]]  # windows stop at the context's edges
    where = tuple(w[same] for w in where)
    tokens = torch.full(window.shape, -1, dtype=torch.long)
    tokens[where] = meta["tokens"][same]

    index, feature = window[where], feats[where[0]]
    values = torch.empty(index.shape[0])
    device = next(autoencoder.parameters(), torch.empty(0)).device
    shard_of = torch.searchsorted(torch.from_numpy(store.shard_starts[1:]), index, right=True)
    for s in tqdm(shard_of.unique().tolist(), desc="windows", unit="shard", disable=not progress):
        pick = (shard_of == s).nonzero().squeeze(1)
        start, stop = int(store.shard_starts[s]), int(store.shard_starts[s + 1])
        local, inverse = unique_in_range(index[pick] - start, stop - start)
        x = store.load_shard(s)[hook][local].to(device, torch.float32)
        values[pick] = feature_activations(autoencoder, x, inverse.to(device), feature[pick].to(device)).cpu()
    activations = torch.full(window.shape, float("nan"))
    activations[where] = values
    activations[..., before] = torch.where(centers >= 0, center_values, float("nan"))  # exactly as analysed
    return ExampleWindows(features=feats, centers=centers, center_values=center_values, tokens=tokens,
                          activations=activations, positions=positions, contexts=contexts, before=before, top_k=k)
