"""Training speed paths in the real trainer: the sparse kernels (forced, against dense; exact resume),
bfloat16 batches from a bfloat16 store without a float32 round trip, and the benchmark's quick form."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae_kit.autoencoders import load_autoencoder
from sae_kit.cli import main as cli_main
from sae_kit.harvest import ActivationStore, HarvestConfig, harvest
from sae_kit.training import train
from sae_kit.training.checkpoint import find_checkpoint
from sae_kit.training.input_stats import InputStats
from sae_kit.training.loop import scaled_inputs
from sae_kit.training.recipe import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def small(store, out, **overrides) -> TrainConfig:
    settings = dict(store=str(store), out=str(out), hook="resid.1", expansion=4, batch_size=256, tokens=256 * 12,
                    lr=3e-3, log_every=4, norm_estimation_tokens=1024, checkpoint_every_tokens=None)
    settings.update(overrides)
    return TrainConfig(**settings)


def last_metrics(run) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def bf16_store(tmp_path_factory, tiny_llama_dir) -> Path:
    out = tmp_path_factory.mktemp("bf16-store") / "store"
    cfg = HarvestConfig(out=str(out), model=str(tiny_llama_dir), hooks=("resid.1",), tokens=4096, context_len=32,
                        shard_tokens=1024, batch_size=16, dtype="bfloat16")
    return harvest(cfg, progress=False)


def test_sparse_kernels_train_like_dense_ones(tiny_store, tmp_path):
    """The same run with --kernels sparse and dense: every architecture trains to (nearly) the same
    FVU and L0 on the same batches (the paths differ only in float rounding)."""
    archs = ("sae", "topk", "batchtopk", "jumprelu", "gated", "matryoshka")
    common = dict(archs=archs, ks=(8,), l1_coefficients=(1.0,), matryoshka_prefixes=(16, 64))
    dense = train(small(tiny_store, tmp_path / "dense", kernels="dense", **common), progress=False)
    sparse = train(small(tiny_store, tmp_path / "sparse", kernels="sparse", **common), progress=False)
    for d, s in zip(dense, sparse):
        a, b = last_metrics(d), last_metrics(s)
        assert b["fvu"] == pytest.approx(a["fvu"], rel=2e-3, abs=1e-4), d.name
        assert b["l0"] == pytest.approx(a["l0"], rel=2e-2, abs=0.5), d.name


def test_sparse_kernels_resume_bit_for_bit(tiny_store, tmp_path):
    common = dict(archs=("sae", "topk"), ks=(8,), kernels="sparse", checkpoint_every_tokens=4 * 256,
                  dead_window_tokens=2 * 256)
    full = train(small(tiny_store, tmp_path / "full", **common), progress=False)
    assert train(small(tiny_store, tmp_path / "killed", **common), stop_after_steps=7, progress=False) == []
    assert find_checkpoint(tmp_path / "killed") is not None
    assert cli_main(["train", "--out", str(tmp_path / "killed"), "--resume", "--no-progress"]) == 0
    for run in full:
        resumed = tmp_path / "killed" / run.name
        for name, tensor in load_autoencoder(run).state_dict().items():
            assert torch.equal(load_autoencoder(resumed).state_dict()[name], tensor), (run.name, name)


def test_kernels_flag_is_generated_and_checked(tiny_store, tmp_path):
    with pytest.raises(SystemExit):
        cli_main(["train", "--store", str(tiny_store), "--out", str(tmp_path / "x"), "--kernels", "fast"])
    assert cli_main(["train", "--store", str(tiny_store), "--hook", "resid.1", "--out", str(tmp_path / "r"),
                     "--tokens", "1024", "--batch-size", "256", "--kernels", "sparse", "--no-progress"]) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["training"]["kernels"] == "sparse"


def test_bfloat16_store_feeds_autocast_without_a_float32_round_trip(bf16_store, tiny_store, tmp_path):
    store = ActivationStore(bf16_store)
    hook = store.resolve_hook_name("resid.1")
    assert store.storage_dtype(hook) == torch.bfloat16
    assert store.batch_dtype(hook, "bfloat16") == torch.bfloat16
    assert store.batch_dtype(hook, "float32") == torch.float32  # float32 training reads float32
    f32 = ActivationStore(tiny_store)
    assert f32.batch_dtype(f32.resolve_hook_name("resid.1"), "bfloat16") == torch.float32
    batch = next(iter(store.batches(hook, 64, dtype=torch.bfloat16, epochs=1)))
    assert batch.dtype == torch.bfloat16
    reference = next(iter(store.batches(hook, 64, dtype=torch.float32, epochs=1)))
    assert torch.equal(batch.float(), reference)  # bfloat16 → float32 is exact: the same values
    stats = InputStats(scale=2.0, mean=[0.0] * batch.shape[1], geometric_median=None, n_tokens=0)

    class OneSlot:  # what scaled_inputs reads of a slot
        key, stats = None, None

    [(x, y)] = scaled_inputs(batch, [OneSlot()], stats, torch.device("cpu")).values()
    assert x.dtype == torch.bfloat16 and y is None
    for arch in ("sae", "topk", "pca"):
        [run] = train(small(bf16_store, tmp_path / arch, dtype="bfloat16", archs=(arch,), ks=(4,), tokens=256 * 8),
                      progress=False)
        if arch != "pca":
            metrics = last_metrics(run)
            assert 0 < metrics["fvu"] < 2 and metrics["loss"] == metrics["loss"]


def test_training_benchmark_quick_form_runs_our_side(tiny_store, tmp_path):
    """scripts/bench/train.py --quick: every architecture, ours in memory and from a store, the dense
    floor, float32 and bfloat16, no peers (no network), the markdown report written."""
    report = tmp_path / "training.md"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench" / "train.py"), "--quick", "--no-peers",
                             "--store", str(tiny_store), "--hook", "resid.1",
                             "--work", str(tmp_path / "work"), "--md", str(report)], check=False,
                            capture_output=True, text=True, timeout=600, cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    text = report.read_text()
    for arch in ("sae", "topk", "batchtopk", "jumprelu", "gated", "matryoshka"):
        assert f"| {arch} |" in text, arch
    for row in ("sae-kit in-memory", "sae-kit from store", "dense floor"):
        assert row in text, row
    assert "bfloat16" in text and "float32" in text
    assert "Targets (issue 13)" in text and "from store / in-memory" in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_reader_copies_pinned_batches_to_cuda(tiny_store):
    """The pinned, side-stream copies give the CPU batches, on the device."""
    store = ActivationStore(tiny_store)
    hook = store.resolve_hook_name("resid.1")
    cpu = list(store.batches(hook, 256, epochs=1))
    cuda = list(store.batches(hook, 256, epochs=1, device="cuda"))
    assert len(cpu) == len(cuda) and all(b.is_cuda for b in cuda)
    for a, b in zip(cpu, cuda):
        assert torch.equal(a, b.cpu())
