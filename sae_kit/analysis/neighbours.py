"""Nearest features by decoder cosine ("similar features", as Neuronpedia lists them).

    neighbours = decoder_neighbours(W_dec, n=10)        # every row against every other row
    neighbours.indices[i], neighbours.cosines[i]        # the n rows nearest row i, most similar first

The cosine of two latents i, j is cos(W_dec,i, W_dec,j) = W_dec,i · W_dec,j / (‖W_dec,i‖ ‖W_dec,j‖):
two latents whose decoder directions point the same way write the same thing into the residual
stream (the "redundancy" of Bricken et al. 2023 and the feature-splitting families of
Templeton et al. 2024 show up as high cosines). The full F × F matrix is never formed: queries
go through in blocks of `block` rows, candidates in blocks of `block` columns, and a running top-n
per query is merged after each candidate block, so memory is O(block² + F·n) for any width
(16 MiB blocks; 1M latents: 120 MB of results), and the cost is F² · d_in multiply-adds:
seconds for 16k latents on a CPU, about a minute for 65k, a GPU job for 1M.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Neighbours(NamedTuple):
    """The n nearest candidates of each query row, most similar first."""

    indices: torch.Tensor
    """[Q, n] int64 row of W_dec of each neighbour (−1 where fewer than n candidates exist)."""
    cosines: torch.Tensor
    """[Q, n] float32 decoder cosine of each neighbour (−inf where indices is −1)."""


def unit_rows(W: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """W [F, d] with every row scaled to unit L2 norm (a zero row stays zero). float32."""
    W = W.detach().float()
    return W / W.norm(dim=1, keepdim=True).clamp_min(eps)


@torch.no_grad()
def decoder_neighbours(
    W_dec: torch.Tensor, n: int = 10, *, queries: torch.Tensor | None = None, candidates: torch.Tensor | None = None,
    block: int = 2048, device: torch.device | str | None = None,
) -> Neighbours:
    """Top-n decoder-cosine neighbours of each query row of W_dec [F, d_in], among the candidate rows.

    queries [Q] / candidates [C]: row ids (default: every row). A row is never its own neighbour.
    Equal cosines are ordered by the smaller row first; which of several rows tied exactly at the
    n-th place is kept may depend on `block` (exact ties are rare outside duplicated rows).
    Computed on `device` (default: W_dec's) in blocks of `block` queries × `block` candidates."""
    F = W_dec.shape[0]
    device = torch.device(device) if device is not None else W_dec.device
    queries = torch.arange(F) if queries is None else torch.as_tensor(queries, dtype=torch.long).cpu()
    candidates = torch.arange(F) if candidates is None else torch.as_tensor(candidates, dtype=torch.long).cpu()
    unit = unit_rows(W_dec.to(device))
    cand_unit, cand_ids = unit[candidates.to(device)], candidates.to(device)
    n_out = min(n, len(candidates))
    indices = torch.full((len(queries), n), -1, dtype=torch.long)
    cosines = torch.full((len(queries), n), float("-inf"))
    for q0 in range(0, len(queries), block):
        q_ids = queries[q0 : q0 + block].to(device)
        best_val = torch.full((len(q_ids), 0), float("-inf"), device=device)
        best_idx = torch.full((len(q_ids), 0), -1, dtype=torch.long, device=device)
        for c0 in range(0, len(candidates), block):
            c_ids = cand_ids[c0 : c0 + block]
            sims = unit[q_ids] @ cand_unit[c0 : c0 + block].T  # [q, c] cosines of this block pair
            sims[q_ids[:, None] == c_ids[None, :]] = float("-inf")  # not its own neighbour
            top_val, top_at = sims.topk(min(n_out, sims.shape[1]), dim=1)
            best_val, best_idx = _merge(best_val, best_idx, top_val, c_ids[top_at], n_out)
        best_idx = torch.where(torch.isfinite(best_val), best_idx, -1)
        indices[q0 : q0 + block, :n_out] = best_idx.cpu()
        cosines[q0 : q0 + block, :n_out] = best_val.float().cpu()
    return Neighbours(indices=indices, cosines=cosines)


def _merge(val_a, idx_a, val_b, idx_b, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n largest of two [q, ·] candidate lists, by value descending then row ascending."""
    values, ids = torch.cat([val_a, val_b], 1), torch.cat([idx_a, idx_b], 1)
    by_id = ids.argsort(dim=1, stable=True)
    values, ids = values.gather(1, by_id), ids.gather(1, by_id)
    order = values.argsort(dim=1, descending=True, stable=True)[:, :n]
    return values.gather(1, order), ids.gather(1, order)


def brute_force_neighbours(W_dec: torch.Tensor, n: int = 10) -> Neighbours:
    """The plain version of `decoder_neighbours` (full F × F cosine matrix; for tests and small F)."""
    unit = unit_rows(W_dec)
    sims = unit @ unit.T
    sims.fill_diagonal_(float("-inf"))
    ids = torch.arange(W_dec.shape[0]).expand_as(sims)
    order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :n]
    return Neighbours(indices=ids.gather(1, order).clone(), cosines=sims.gather(1, order))
