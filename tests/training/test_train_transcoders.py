"""Training with a target: transcoders on a real store of mlp_in.1 / mlp.1 (the tiny Llama), the
two scales estimated separately and folded, provenance, bit-exact resume of paired batches,
resampling in the output space, and the command line."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch

from sae_kit.autoencoders import AutoencoderConfig, RunInfo, build_autoencoder, load_autoencoder
from sae_kit.cli import main as cli_main
from sae_kit.harvest import ActivationStore
from sae_kit.training import train
from sae_kit.training.checkpoint import find_checkpoint, load_checkpoint
from sae_kit.training.dead_latents import resample_dead_latents_
from sae_kit.training.input_stats import estimate_input_stats
from sae_kit.training.recipe import TrainConfig

IN, OUT = "model.layers.1.mlp:input", "model.layers.1.mlp"


def small(store, out, **overrides) -> TrainConfig:
    settings = dict(store=str(store), out=str(out), hook="mlp_in.1", target="mlp.1", archs=("skip-transcoder",),
                    expansion=2, batch_size=128, tokens=128 * 24, lr=3e-3, log_every=8, norm_estimation_tokens=1024,
                    checkpoint_every_tokens=None)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_input_and_target_scales_are_estimated_separately():
    """E‖s·x‖ = √d for each: x rows of norm 2 in d=4 give s_x = 1; y rows of norm 10 in d=9, s_y = 0.3."""
    x = torch.tensor([[2.0, 0, 0, 0], [0, -2.0, 0, 0]])
    y = torch.zeros(2, 9)
    y[:, 0] = torch.tensor([10.0, -10.0])
    stats = estimate_input_stats(iter([(x, y)]), 2, normalize=True, want_median=False)
    assert stats.scale == pytest.approx(1.0) and stats.target_scale == pytest.approx(0.3)
    assert stats.output_scale == stats.target_scale and stats.target_mean == y.mean(0).tolist()
    assert stats.decoder_origin("mean") == stats.target_mean  # a transcoder's b_dec starts in y's space
    single = estimate_input_stats(iter([x]), 2, normalize=True, want_median=False)
    assert single.target_scale is None and single.output_scale == single.scale


def test_a_skip_transcoder_trains_and_records_both_hooks(tiny_mlp_store, tmp_path):
    cfg = small(tiny_mlp_store, tmp_path / "run")
    [run] = train(cfg, progress=False)
    config = json.loads((run / "config.json").read_text())
    provenance = config["provenance"]
    assert provenance["hook_module"] == IN and provenance["hook_requested"] == "mlp_in.1"
    assert provenance["target_module"] == OUT and provenance["target_requested"] == "mlp.1"
    info = RunInfo.load(run)
    assert (info.hook, info.hook_module, info.target_hook, info.target_module) == ("mlp_in.1", IN, "mlp.1", OUT)
    assert info.splice_hooks() == ("mlp_in.1", "mlp.1") and RunInfo.of(load_autoencoder(run)) == info
    # the scales are those of the estimation reader's rows, x and y separately
    store = ActivationStore(tiny_mlp_store)
    with contextlib.closing(store.batches((IN, OUT), cfg.batch_size, seed=cfg.seed + 1, epochs=None)) as reader:
        stats = estimate_input_stats(reader, cfg.norm_estimation_tokens, True, False)
    assert info.input_scale == stats.scale and info.target_scale == stats.target_scale
    assert not math.isclose(stats.scale, stats.target_scale, rel_tol=0.1)  # the MLP output is much smaller
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_reconstruction", "loss_l1", "fvu", "mse", "l0", "dead_fraction"} <= set(metrics[-1])
    assert metrics[-1]["fvu"] < metrics[0]["fvu"]


def test_the_saved_transcoder_predicts_raw_targets_from_raw_inputs(tiny_mlp_store, tmp_path):
    """Both scales are folded in: on raw store rows, FVU(y, ŷ(x)) matches the training metric."""
    [run] = train(small(tiny_mlp_store, tmp_path / "run", tokens=128 * 60, l1_coefficients=(1.0,)), progress=False)
    model = load_autoencoder(run)
    assert model.W_skip.abs().sum() > 0  # the skip term learned something
    x, y = next(ActivationStore(tiny_mlp_store).batches((IN, OUT), 2048, split="train", seed=11, drop_last=False))
    with torch.no_grad():
        y_hat = model.reconstruct(x)
    fvu = float(((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert fvu < 0.7 and fvu == pytest.approx(last["fvu"], abs=0.15)


def test_resume_of_paired_batches_is_bit_exact(tiny_mlp_store, tmp_path):
    common = dict(archs=("transcoder", "skip-transcoder"), transcoder_activation="topk", ks=(4,),
                  checkpoint_every_tokens=4 * 128, dead_window_tokens=2 * 128, tokens=128 * 12)
    full = train(small(tiny_mlp_store, tmp_path / "full", **common), progress=False)
    assert [r.name for r in full] == ["transcoder-k_4", "skip-transcoder-k_4"]
    assert train(small(tiny_mlp_store, tmp_path / "killed", **common), stop_after_steps=7, progress=False) == []
    state, _ = load_checkpoint(find_checkpoint(tmp_path / "killed"))
    assert state["step"] == 4 and state["input_stats"]["target_scale"] > 0
    assert cli_main(["train", "--out", str(tmp_path / "killed"), "--resume", "--no-progress"]) == 0
    for run in full:
        resumed = load_autoencoder(tmp_path / "killed" / run.name).state_dict()
        for name, tensor in load_autoencoder(run).state_dict().items():
            assert torch.equal(resumed[name], tensor), (run.name, name)


def test_resampling_a_transcoder_uses_the_output_space():
    """A dead latent's new decoder direction is the badly predicted token's target y_n, its
    encoder direction that token's input x_n."""
    model = build_autoencoder(AutoencoderConfig(arch="transcoder", d_in=2, d_sae=4, d_out=3, decoder_norm="unit"))
    optimizer = torch.optim.Adam(model.parameters())
    dead = torch.tensor([False, False, True, False])
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([[30.0, 0.0, 40.0]])
    assert resample_dead_latents_(model, optimizer, dead, x, target=y) == 1
    torch.testing.assert_close(model.W_dec[2], torch.tensor([0.6, 0.0, 0.8]))
    direction = model.W_enc[:, 2] / model.W_enc[:, 2].norm()
    torch.testing.assert_close(direction, torch.tensor([1.0, 2.0]) / math.sqrt(5))


def test_the_command_line_trains_a_transcoder_and_refuses_a_target_for_an_sae(tiny_mlp_store, tmp_path, capsys):
    args = ["train", "--store", str(tiny_mlp_store), "--hook", "mlp_in.1", "--target", "mlp.1", "--arch",
            "skip-transcoder", "--transcoder-activation", "topk", "--k", "4", "--expansion", "2", "--batch-size",
            "128", "--tokens", "1024", "--norm-estimation-tokens", "512", "--no-progress"]
    assert cli_main(args + ["--out", str(tmp_path / "r")]) == 0
    assert load_autoencoder(tmp_path / "r").cfg.transcoder_activation == "topk"
    capsys.readouterr()
    assert cli_main(["train", "--store", str(tiny_mlp_store), "--hook", "mlp_in.1", "--target", "mlp.1",
                     "--out", str(tmp_path / "bad")]) == 1
    assert "--target is for transcoders; --arch sae reconstructs its input" in capsys.readouterr().err
    assert cli_main(["train", "--store", str(tiny_mlp_store), "--hook", "mlp_in.1", "--target", "mlp_in.1",
                     "--arch", "transcoder", "--out", str(tmp_path / "same")]) == 1
    assert "is the input hook itself" in capsys.readouterr().err


def test_bfloat16_autocast_trains_a_transcoder(tiny_mlp_store, tmp_path):
    [run] = train(small(tiny_mlp_store, tmp_path / "bf16", dtype="bfloat16", transcoder_activation="topk", ks=(4,)),
                  progress=False)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(last["loss"]) and last["fvu"] < 1.0 and last["l0"] <= 4
