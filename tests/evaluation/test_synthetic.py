"""Ground truth: on data in superposition with a known dictionary, every sparse architecture (L1,
TopK, BatchTopK, JumpReLU, Gated, Matryoshka) recovers the features (MMCS ≥ 0.95) and PCA and the
dense autoencoder do not."""

from __future__ import annotations

import pytest
import torch

from sae_kit.evaluation.synthetic import (SPARSE_ARCHS, SyntheticConfig, SyntheticData, format_results, mmcs,
                                          run_benchmark)


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


def test_every_sparse_architecture_recovers_the_true_features_and_the_baselines_do_not():
    threads = torch.get_num_threads()
    results = run_benchmark(archs=SPARSE_ARCHS + ("ae", "pca"))
    assert torch.get_num_threads() == threads  # restored
    print(format_results(results, SyntheticConfig()))
    by_arch = {r["arch"]: r for r in results.values()}
    assert set(by_arch) == set(SPARSE_ARCHS) | {"ae", "pca"}
    for arch in SPARSE_ARCHS:
        assert by_arch[arch]["mmcs"] >= 0.95, (arch, by_arch[arch])
        assert by_arch[arch]["l0"] < 8, (arch, by_arch[arch])  # sparse codes
    assert by_arch["ae"]["mmcs"] <= by_arch["sae"]["mmcs"] - 0.08 and by_arch["pca"]["mmcs"] <= 0.6
    assert by_arch["ae"]["l0"] > 30  # a dense code
    assert "matryoshka-k_3" in results and results["matryoshka-k_3"]["d_sae"] == 128  # arch_settings apply
