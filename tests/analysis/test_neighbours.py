"""Decoder-cosine neighbours in blocks against the full F × F computation."""

from __future__ import annotations

import pytest
import torch

from sae_kit.analysis.neighbours import (
    brute_force_neighbours,
    decoder_neighbours,
    unit_rows,
)


def test_cosines_of_a_hand_example():
    W = torch.tensor([[1.0, 0.0], [2.0, 2.0], [0.0, -3.0], [1.0, 0.1]])
    result = decoder_neighbours(W, n=2, block=2)
    # cos(w0, w3) = 1/√1.01, cos(w0, w1) = 1/√2, cos(w0, w2) = 0
    assert result.indices[0].tolist() == [3, 1]
    assert result.cosines[0].tolist() == pytest.approx([1 / 1.01**0.5, 2**-0.5], abs=1e-6)
    # from w2: cos(w2, w0) = 0 > cos(w2, w3) = −0.1/√1.01 > cos(w2, w1) = −1/√2
    assert result.indices[2].tolist() == [0, 3]
    assert result.cosines[2].tolist() == pytest.approx([0.0, -0.1 / 1.01**0.5], abs=1e-6)


@pytest.mark.parametrize("block", [1, 7, 64, 4096])
def test_blocks_match_brute_force(block):
    torch.manual_seed(0)
    W = torch.randn(257, 12) * torch.rand(257, 1) * 3  # norms differ: cosines, not dot products
    fast = decoder_neighbours(W, n=6, block=block)
    plain = brute_force_neighbours(W, n=6)
    assert torch.equal(fast.indices, plain.indices)
    assert torch.allclose(fast.cosines, plain.cosines, atol=1e-6)
    assert not (fast.indices == torch.arange(257)[:, None]).any()  # never its own neighbour


def test_queries_and_candidates_subsets():
    torch.manual_seed(1)
    W = torch.randn(100, 8)
    queries, candidates = torch.tensor([5, 50, 99]), torch.arange(0, 100, 3)
    result = decoder_neighbours(W, n=4, queries=queries, candidates=candidates, block=5)
    sims = unit_rows(W)[queries] @ unit_rows(W)[candidates].T
    sims[queries[:, None] == candidates[None, :]] = float("-inf")  # 99 is a candidate (99 = 3 · 33)
    top = sims.topk(4, dim=1)
    assert torch.equal(result.indices, candidates[top.indices])
    assert torch.allclose(result.cosines, top.values, atol=1e-6)


def test_duplicates_padding_and_ties():
    W = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    result = decoder_neighbours(W, n=3, block=1)
    assert result.indices[0].tolist() == [1, 2, 3]  # equal cosines: the smaller row first
    assert result.cosines[0, :2].tolist() == pytest.approx([1.0, 1.0])
    few = decoder_neighbours(W, n=5, candidates=torch.tensor([0, 3]))
    assert few.indices[0].tolist() == [3, -1, -1, -1, -1] and few.cosines[0, 1:].isinf().all()
    assert few.indices[3].tolist()[:2] == [0, -1]
