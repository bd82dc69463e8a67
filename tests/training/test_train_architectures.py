"""The trainer with the BatchTopK, JumpReLU, Gated and Matryoshka SAEs on a real (tiny) store:
sparsity sweeps in one pass, bit-exact resume per architecture (thresholds and running
statistics included), bfloat16 autocast, and the saved model encoding one token at a time."""

from __future__ import annotations

import json

import pytest
import torch

from sae_kit.autoencoders import load_autoencoder
from sae_kit.harvest import ActivationStore
from sae_kit.training import train
from sae_kit.training.checkpoint import find_checkpoint, load_checkpoint
from sae_kit.training.recipe import TrainConfig

OPTIONS = {"batchtopk": {"ks": (4,)}, "jumprelu": {"l0_coefficients": (0.5,), "jumprelu_threshold_lr_scale": 10.0},
           "gated": {"l1_coefficients": (1.0,)}, "matryoshka": {"ks": (4,), "matryoshka_prefixes": (8, 32)},
           "jumprelu-tanh": {"l0_coefficients": (0.5,), "jumprelu_sparsity": "tanh", "pre_act_loss_coefficient": 1e-3}}


def small(tiny_store, out, **overrides) -> TrainConfig:
    settings = dict(store=str(tiny_store), out=str(out), hook="resid.1", expansion=2, batch_size=256, tokens=256 * 12,
                    lr=3e-3, log_every=4, norm_estimation_tokens=1024, checkpoint_every_tokens=None,
                    dead_window_tokens=2 * 256)
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.parametrize("variant", sorted(OPTIONS))
def test_resume_reaches_the_same_weights(variant, tiny_store, tmp_path):
    arch = variant.split("-")[0]
    common = dict(archs=(arch,), checkpoint_every_tokens=4 * 256, **OPTIONS[variant])
    [full] = train(small(tiny_store, tmp_path / "full", **common), progress=False)
    assert train(small(tiny_store, tmp_path / "killed", **common), stop_after_steps=7, progress=False) == []
    state, files = load_checkpoint(find_checkpoint(tmp_path / "killed"))
    assert state["step"] == 4
    [resumed] = train(small(tiny_store, tmp_path / "killed", **common), resume=True, progress=False)
    a, b = load_autoencoder(full).state_dict(), load_autoencoder(resumed).state_dict()
    assert set(a) == set(b)
    for name, tensor in a.items():
        assert torch.equal(b[name], tensor), (variant, name)
    if arch in ("batchtopk", "matryoshka"):  # the running threshold travels in the checkpoint
        assert "threshold" in files[f"model-{state['models'][0]['name']}"] and a["threshold"] > 0


def test_one_pass_trains_every_new_architecture_at_several_sparsities(tiny_store, tmp_path):
    cfg = small(tiny_store, tmp_path / "sweep", archs=("batchtopk", "jumprelu", "gated", "matryoshka"), ks=(2, 8),
                l0_coefficients=(0.1, 2.0), l1_coefficients=(0.5, 4.0), tokens=256 * 24, jumprelu_threshold_lr_scale=30.0,
                jumprelu_init_threshold=0.01, jumprelu_bandwidth=0.05)
    runs = train(cfg, progress=False)
    assert [r.name for r in runs] == ["batchtopk-k_2", "batchtopk-k_8", "jumprelu-l0_0.1", "jumprelu-l0_2",
                                      "gated-l1_0.5", "gated-l1_4", "matryoshka-k_2", "matryoshka-k_8"]
    store = ActivationStore(tiny_store)
    x = next(store.batches("model.layers.1", 512, split="eval", drop_last=False))
    l0 = {}
    for run in runs:
        model = load_autoencoder(run)
        with torch.no_grad():
            z = model.encode(x)
            one = model.encode(x[:1])  # the saved model encodes one token at a time
            fvu = float(((model.decode(z) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
        assert torch.allclose(one, z[:1], atol=1e-5), run.name
        l0[run.name] = float((z != 0).sum(-1).float().mean())
        assert fvu < 1.0, run.name
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert all("loss_reconstruction" in line for line in lines)
    for low, high in (("batchtopk-k_2", "batchtopk-k_8"), ("jumprelu-l0_2", "jumprelu-l0_0.1"),
                      ("gated-l1_4", "gated-l1_0.5"), ("matryoshka-k_2", "matryoshka-k_8")):
        assert l0[low] < l0[high], (low, high, l0)


@pytest.mark.parametrize("arch", ["batchtopk", "jumprelu", "gated", "matryoshka"])
def test_bfloat16_autocast_trains(arch, tiny_store, tmp_path):
    [run] = train(small(tiny_store, tmp_path / arch, dtype="bfloat16", archs=(arch,), ks=(4,)), progress=False)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < last["fvu"] < 1.5 and last["loss"] == last["loss"]
    assert all(t.dtype == torch.float32 for t in load_autoencoder(run).state_dict().values())


def test_cli_flags_for_the_new_architectures(tiny_store, tmp_path):
    from sae_kit.cli import main as cli_main

    out = tmp_path / "cli"
    code = cli_main(["train", "--store", str(tiny_store), "--out", str(out), "--hook", "resid.1", "--arch", "jumprelu,matryoshka",
                     "--l0-coefficient", "0.5,1", "--k", "4", "--matryoshka-prefixes", "8,32", "--expansion", "2",
                     "--tokens", "1024", "--batch-size", "256", "--norm-estimation-tokens", "1k", "--no-progress",
                     "--jumprelu-sparsity", "tanh", "--jumprelu-threshold-lr-scale", "5"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["jumprelu-l0_0.5", "jumprelu-l0_1", "matryoshka-k_4"]
    assert load_autoencoder(out / "matryoshka-k_4").prefixes == (8, 32, 64)
    jump = load_autoencoder(out / "jumprelu-l0_1").cfg
    assert (jump.l0_coefficient, jump.jumprelu_sparsity, jump.jumprelu_threshold_lr_scale) == (1.0, "tanh", 5.0)
