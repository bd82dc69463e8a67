"""Ground truth: on data in superposition with a known dictionary, the SAE recovers the features
(MMCS ≥ 0.9) and PCA and the dense autoencoder do not."""

from __future__ import annotations

import pytest
import torch

from sae_kit.evaluation.synthetic import SyntheticConfig, SyntheticData, format_results, mmcs, run_benchmark


def test_mmcs_by_hand():
    true = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    learned = torch.tensor([[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    # row 0 best matches [2, 0] (cos 1); row 1 best matches [1, 1] (cos 1/√2)
    assert mmcs(true, learned) == pytest.approx((1 + 2**-0.5) / 2)
    assert mmcs(true, true) == pytest.approx(1.0)


def test_synthetic_data_is_sparse_superposition_of_the_dictionary():
    cfg = SyntheticConfig(d_in=8, n_features=20, active_features=2.0)
    data = SyntheticData(cfg)
    assert data.dictionary.shape == (20, 8)
    assert torch.allclose(data.dictionary.norm(dim=-1), torch.ones(20))
    x, f = data.sample(20000, torch.Generator().manual_seed(0))
    assert torch.allclose(x, f @ data.dictionary)
    assert (f != 0).float().sum(-1).mean().item() == pytest.approx(2.0, rel=0.05)
    assert f.min() >= 0 and f.max() <= 1
    stream = data.batches(64, seed=3)
    first, second = next(stream), next(stream)
    assert torch.equal(next(data.batches(64, seed=3)), first)  # deterministic
    assert torch.equal(next(data.batches(64, seed=3, skip_batches=1)), second)  # resumable


def test_sae_recovers_the_true_features_and_the_baselines_do_not():
    threads = torch.get_num_threads()
    results = run_benchmark(archs=("sae", "topk", "ae", "pca"))
    assert torch.get_num_threads() == threads  # restored
    print(format_results(results, SyntheticConfig()))
    sae, topk, ae, pca = (results[name]["mmcs"] for name in ("sae-l1_1", "topk-k_3", "ae", "pca"))
    assert sae >= 0.9 and topk >= 0.9
    assert ae <= sae - 0.08 and pca <= 0.6
    assert results["sae-l1_1"]["l0"] < 8 and results["ae"]["l0"] > 30  # sparse vs dense codes
