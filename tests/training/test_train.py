"""The trainer on a real (tiny) activation store: run dirs, sweeps in one pass, bit-exact resume,
non-finite losses, schedules, checkpoints, dead latents, the CLI."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from sae_kit.autoencoders import ARCHS, AutoencoderConfig, build_autoencoder, load_autoencoder
from sae_kit.cli import main as cli_main
from sae_kit.errors import SaeKitError
from sae_kit.harvest import ActivationStore
from sae_kit.training import fit, make_slot, train
from sae_kit.training.checkpoint import find_checkpoint, load_checkpoint, optimizer_from_tensors, optimizer_to_tensors
from sae_kit.training.dead_latents import DeadLatentTracker, resample_dead_latents_
from sae_kit.training.derive import resolve
from sae_kit.training.input_stats import InputStats
from sae_kit.training.recipe import TrainConfig, l1_scale_at, lr_at
from sae_kit.training.specs import model_specs


def small(tiny_store, out, **overrides) -> TrainConfig:
    settings = dict(store=str(tiny_store), out=str(out), hook="resid.1", expansion=2, batch_size=256, tokens=256 * 12,
                    lr=3e-3, log_every=4, norm_estimation_tokens=1024, checkpoint_every_tokens=None)
    settings.update(overrides)
    return TrainConfig(**settings)


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_autoencoder(run_dir).state_dict()


def test_single_run_writes_a_complete_run_dir(tiny_store, tmp_path):
    cfg = small(tiny_store, tmp_path / "run")
    [run] = train(cfg, progress=False)
    assert run == tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "weights.safetensors", "metrics.jsonl"}
    config = json.loads((run / "config.json").read_text())
    saved = TrainConfig.from_dict(config["training"])  # the resolved config: what was left open, derived
    assert saved == cfg.replace(b_dec_init="geometric_median")
    assert [d["field"] for d in config["derived"]] == ["b_dec_init"]
    provenance = config["provenance"]
    assert provenance["store"] == str(tiny_store.resolve()) and provenance["hook_module"] == "model.layers.1"
    assert provenance["model"]["spec"] == ActivationStore(tiny_store).manifest["model"]["spec"]
    assert provenance["tokens_trained"] == 12 * 256
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [4, 8, 12]
    for key in ("loss", "loss_reconstruction", "loss_l1", "mse", "fvu", "l0", "dead_fraction", "lr",
                "l1_coefficient", "tokens_per_s", "grad_norm"):
        assert key in lines[-1], key
    assert lines[0]["l1_coefficient"] == pytest.approx(5.0)  # λ warmup (5 % of 12 steps) is over by step 4
    assert lines[-1]["lr"] < cfg.lr  # decaying over the last 20 %
    model = load_autoencoder(run)
    assert model.cfg.hook == "resid.1" and model.cfg.metadata["input_scale_folded"] > 0


def test_saved_model_takes_raw_activations(tiny_store, tmp_path):
    """The input scale is folded in: the saved SAE reconstructs raw store activations."""
    [run] = train(small(tiny_store, tmp_path / "run", tokens=256 * 40, l1_coefficients=(0.5,)), progress=False)
    model = load_autoencoder(run)
    store = ActivationStore(tiny_store)
    x = next(store.batches("model.layers.1", 512, split="eval", drop_last=False))
    with torch.no_grad():
        x_hat = model.decode(model.encode(x))
    fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fvu < 0.5
    assert model.cfg.metadata["input_scale_folded"] != pytest.approx(1.0)


def test_sweep_trains_every_model_on_the_same_batches(tiny_store, tmp_path):
    sweep = small(tiny_store, tmp_path / "sweep", archs=("sae", "topk", "pca"), l1_coefficients=(1.0, 5.0), ks=(4,))
    runs = train(sweep, progress=False)
    assert [r.name for r in runs] == ["sae-l1_1", "sae-l1_5", "topk-k_4", "pca"]
    listing = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["path"] for r in listing["runs"]] == ["sae-l1_1", "sae-l1_5", "topk-k_4", "pca"]
    with pytest.raises(SaeKitError, match="sweep of 4 runs"):
        load_autoencoder(tmp_path / "sweep")
    assert load_autoencoder(runs[3]).d_sae == 4  # PCA matched to k
    # one model of the sweep equals the same model trained alone: same init, same batches
    [alone] = train(small(tiny_store, tmp_path / "alone", l1_coefficients=(5.0,)), progress=False)
    for name, tensor in weights(alone).items():
        assert torch.equal(weights(runs[1])[name], tensor), name


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tiny_store, tmp_path):
    """Killed after step 7 with a checkpoint at step 4: resuming redoes 5–7 and ends bit-identical.
    Covers Adam state, the RNG (dae noise, vae sampling), dead-latent trackers (topk AuxK) and
    PCA moments."""
    common = dict(archs=("sae", "topk", "dae", "vae", "pca"), ks=(4,), checkpoint_every_tokens=4 * 256,
                  dead_window_tokens=2 * 256)
    [*full] = train(small(tiny_store, tmp_path / "full", **common), progress=False)
    cfg = small(tiny_store, tmp_path / "killed", **common)
    assert train(cfg, stop_after_steps=7, progress=False) == []
    state, _ = load_checkpoint(find_checkpoint(tmp_path / "killed"))
    assert state["step"] == 4 and state["reader"]["skip_batches"] == 4
    assert not (tmp_path / "killed" / "sae-l1_5" / "weights.safetensors").exists()
    assert cli_main(["train", "--out", str(tmp_path / "killed"), "--resume", "--no-progress"]) == 0
    for run in full:
        resumed = tmp_path / "killed" / run.name
        for name, tensor in weights(run).items():
            assert torch.equal(weights(resumed)[name], tensor), (run.name, name)
        if run.name != "pca":  # PCA logs nothing: it is fitted in closed form at the end
            steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
            assert steps == [4, 8, 12]  # lines after the checkpoint were dropped, then re-logged


def test_resume_refuses_changed_settings_and_missing_checkpoints(tiny_store, tmp_path):
    with pytest.raises(SaeKitError, match="holds no checkpoint"):
        train(small(tiny_store, tmp_path / "none"), resume=True)
    cfg = small(tiny_store, tmp_path / "run", checkpoint_every_tokens=4 * 256)
    train(cfg, stop_after_steps=5, progress=False)
    with pytest.raises(SaeKitError, match=r"different settings \(lr"):
        train(small(tiny_store, tmp_path / "run", checkpoint_every_tokens=4 * 256, lr=1e-4), resume=True)
    with pytest.raises(SaeKitError, match="already holds a run"):
        train(cfg)


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    d_in = 8
    cfg = TrainConfig(store="-", out=str(tmp_path), d_sae=16, batch_size=32, lr=5e-5, b_dec_init="zeros",
                      log_every=100, checkpoint_every_tokens=3 * 32)
    stats = InputStats(scale=1.0, mean=[0.0] * d_in, geometric_median=None, n_tokens=0)
    slots = [make_slot(spec, cfg, torch.device("cpu"), 10, stats) for spec in model_specs(cfg, d_in)]
    slots[0].run_dir = tmp_path

    def source(skip):
        for i in itertools.count(skip):
            x = torch.randn(32, d_in)
            if i == 4:
                x[3, 1] = float("inf")  # one bad activation in the fifth batch
            yield x

    with pytest.raises(SaeKitError, match=r"^step 5: the loss of sae-l1_5 is not finite; the last good checkpoint \(3"):
        fit(cfg, slots, source, 20, stats, device=torch.device("cpu"), checkpoint_dir=tmp_path, progress=False)
    assert load_checkpoint(find_checkpoint(tmp_path))[0]["step"] == 3


def test_bfloat16_autocast_trains(tiny_store, tmp_path):
    [run] = train(small(tiny_store, tmp_path / "bf16", dtype="bfloat16", archs=("topk",), ks=(4,)), progress=False)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < last["fvu"] < 1.5 and last["l0"] <= 4
    assert load_autoencoder(run).W_dec.dtype == torch.float32


def test_schedules_by_hand():
    cfg = TrainConfig(store="-", out="-", lr=1.0, lr_warmup_fraction=0.1, lr_decay_fraction=0.2, l1_warmup_fraction=0.05)
    n = 100
    assert lr_at(0, n, cfg) == pytest.approx(0.1)  # warmup: (step + 1) / 10
    assert lr_at(9, n, cfg) == pytest.approx(1.0)
    assert lr_at(50, n, cfg) == 1.0
    assert lr_at(80, n, cfg) == pytest.approx(1.0)  # decay starts at step 80: (100 − 80) / 20
    assert lr_at(90, n, cfg) == pytest.approx(0.5)
    assert lr_at(99, n, cfg) == pytest.approx(0.05)
    assert l1_scale_at(0, n, cfg) == pytest.approx(0.2)  # (0 + 1) / 5
    assert l1_scale_at(4, n, cfg) == 1.0 and l1_scale_at(60, n, cfg) == 1.0
    plain, _ = resolve(TrainConfig(store="-", out="-"), 10**8)  # a 10⁸-token run gets the recipe
    assert lr_at(0, n, plain) == 5e-5  # the recipe: no lr warmup


def test_model_specs_names_widths_and_matched_pca():
    cfg = TrainConfig(store="s", out="o", archs=("sae", "topk", "ae", "dae", "vae", "pca"), l1_coefficients=(0.5, 10.0),
                      ks=(16, 64), baseline_d_sae=100)
    specs = model_specs(cfg, d_in=32, hook="resid.3", metadata={"store": "s"})
    assert [s.name for s in specs] == ["sae-l1_0.5", "sae-l1_10", "topk-k_16", "topk-k_64", "ae", "dae", "vae", "pca"]
    widths = {s.name: s.cfg.d_sae for s in specs}
    assert widths["sae-l1_10"] == widths["topk-k_64"] == 8 * 32 and widths["vae"] == 100 and widths["pca"] == 16
    assert all(s.cfg.hook == "resid.3" and s.cfg.metadata == {"store": "s"} for s in specs)
    with pytest.raises(SaeKitError, match="at most d_in=8"):
        model_specs(TrainConfig(store="s", out="o", archs=("pca",)), d_in=8)


def test_train_config_round_trip_defaults_and_validation():
    cfg = TrainConfig(store="s", out="o", archs=("sae", "pca"), l1_coefficients=(1.0, 2.0))
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    text = cfg.describe()
    assert "lr                       None  (default)" in text and "archs" in text and "(set)" in text
    recipe, _ = resolve(cfg, 10**8)  # left open, lr and batch size are derived: the recipe from 10⁸ tokens on
    assert (recipe.lr, recipe.adam_beta1, recipe.adam_beta2, recipe.batch_size, recipe.max_grad_norm) == (
        5e-5, 0.9, 0.999, 4096, 1.0)
    assert (cfg.l1_coefficients, TrainConfig(store="s", out="o").l1_coefficients) == ((1.0, 2.0), (5.0,))
    for bad, message in ((dict(archs=("sae", "sae")), "twice"), (dict(archs=("rnn",)), "unknown --arch"),
                         (dict(l1_coefficients=(-1.0,)), "--l1"), (dict(batch_size=0), "--batch-size"),
                         (dict(lr_warmup_fraction=0.9), "add up"), (dict(lr=float("nan")), "finite"),
                         (dict(tokens=0), "--tokens must be positive")):
        with pytest.raises(SaeKitError, match=message):
            TrainConfig(store="s", out="o", **bad)
    with pytest.raises(SaeKitError, match="--out is empty"):
        TrainConfig(store="s", out=" ")


def test_optimizer_state_round_trips_through_safetensors_and_json():
    model = build_autoencoder(AutoencoderConfig(arch="sae", d_in=4, d_sae=8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).loss.backward()
        optimizer.step()
    tensors, index = optimizer_to_tensors(optimizer)
    json.dumps(index)  # the index is plain JSON
    fresh = torch.optim.Adam(model.parameters(), lr=1.0)
    optimizer_from_tensors(fresh, tensors, json.loads(json.dumps(index)))
    for a, b in zip(optimizer.state.values(), fresh.state.values(), strict=True):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a[key], b[key])
    assert fresh.param_groups[0]["lr"] == 1e-3 and fresh.param_groups[0]["betas"] == (0.9, 0.999)


def test_adam_is_fused_where_torch_has_it_and_takes_the_same_steps_as_torchs_default():
    from sae_kit.training.loop import adam

    torch.manual_seed(0)
    cfg = TrainConfig(store="s", out="o", lr=1e-3)
    models = [build_autoencoder(AutoencoderConfig(arch="sae", d_in=8, d_sae=32)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = adam(models[0], cfg)
    plain = torch.optim.Adam(models[1].optimizer_groups(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    if tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 4):
        assert fused.defaults["fused"] is True
    for _ in range(5):
        x = torch.randn(16, 8)
        for model, optimizer in zip(models, (fused, plain), strict=True):
            optimizer.zero_grad()
            model(x).loss.backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dead_latent_tracking_and_resampling():
    tracker = DeadLatentTracker(4, window_steps=3)
    tracker.update(torch.tensor([[0.0, 1.0, 0.0, 0.0]]), step=0)
    tracker.update(torch.tensor([[0.0, 0.0, 2.0, 0.0]]), step=2)
    # before step s runs, dead = fired in none of steps s − 3 … s − 1
    assert tracker.dead_mask(2).tolist() == [False, False, False, False]
    assert tracker.dead_mask(3).tolist() == [True, False, False, True]
    assert tracker.dead_mask(4).tolist() == [True, True, False, True]
    assert tracker.dead_mask(6).tolist() == [True, True, True, True]
    tracker.revive(torch.tensor([0]), step=5)
    assert tracker.dead_mask(6).tolist() == [False, True, True, True]

    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig(arch="sae", d_in=4, d_sae=6))
    optimizer = torch.optim.Adam(model.parameters())
    optimizer.zero_grad()
    model(torch.randn(8, 4)).loss.backward()
    optimizer.step()
    dead = torch.tensor([True, False, False, True, False, False])
    before = model.W_dec.detach().clone()
    x = torch.randn(16, 4)
    assert resample_dead_latents_(model, optimizer, dead, x) == 2
    directions = model.W_dec[dead] / model.W_dec[dead].norm(dim=-1, keepdim=True)
    cos_with_inputs = directions @ (x / x.norm(dim=-1, keepdim=True)).T
    assert torch.allclose(cos_with_inputs.max(dim=1).values, torch.ones(2), atol=1e-5)  # each is an input
    assert torch.equal(model.W_dec[~dead], before[~dead])
    assert (model.b_enc[dead] == 0).all()
    assert (optimizer.state[model.W_dec]["exp_avg"][dead] == 0).all()
    assert (optimizer.state[model.W_enc]["exp_avg_sq"][:, dead] == 0).all()


def test_resampling_option_runs_in_training(tiny_store, tmp_path):
    [run] = train(small(tiny_store, tmp_path / "rs", archs=("ae",), d_sae=512, tokens=256 * 12,
                        dead_window_tokens=256, resample_every_tokens=6 * 256), progress=False)
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("event" not in e or e["n_resampled"] > 0 for e in events)


def test_cli_errors_are_one_line(tiny_store, tmp_path, capsys):
    assert cli_main(["train", "--store", str(tiny_store), "--out", str(tmp_path / "x"), "--arch", "gru"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"sae-kit train: error: unknown --arch 'gru'; choose from {', '.join(ARCHS)}"
    assert ", ".join(ARCHS).startswith("sae, topk, batchtopk, jumprelu, gated, matryoshka, ae")
    assert ", ".join(ARCHS).endswith("pca, transcoder, skip-transcoder")
    assert cli_main(["train", "--out", str(tmp_path / "y"), "--resume"]) == 1
    assert "holds no checkpoint" in capsys.readouterr().err


def test_cli_trains_a_sweep_with_counts_and_lists(tiny_store, tmp_path, capsys):
    code = cli_main(["train", "--store", str(tiny_store), "--hook", "resid.1", "--out", str(tmp_path / "cli"),
                     "--l1", "1,5", "--expansion", "2", "--batch-size", "256", "--tokens", "2.048k",
                     "--norm-estimation-tokens", "1k", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr()
    assert "adam_beta1               0.9  (default)" in printed.err  # every setting is printed,
    assert "lr                       0.002  (derived)" in printed.err  # the derived ones with their rule
    assert "lr: 5e-5 · (24,414 / 8 steps)^0.715" in printed.err
    assert "warning: 8 steps of 256 tokens is too short to train well" in printed.err
    assert printed.out.split() == [str(tmp_path / "cli" / "sae-l1_1"), str(tmp_path / "cli" / "sae-l1_5")]
    assert json.loads((tmp_path / "cli" / "sae-l1_1" / "config.json").read_text())["training"]["tokens"] == 2048


def test_sparsity_sweep_script_quick(tiny_store, tmp_path):
    """scripts/sparsity_sweep.py --quick: two λ in one pass, evaluated, frontier written."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "sparsity_sweep.py"
    spec = importlib.util.spec_from_file_location("sparsity_sweep", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "sweep"
    rows = script.main(["--store", str(tiny_store), "--hook", "resid.1", "--out", str(out), "--quick"])
    assert [r["l1_coefficient"] for r in rows] == [1.0, 5.0]
    assert rows[0]["l0"] > rows[1]["l0"]  # a larger λ gives a sparser code
    assert all(r["ce_loss_recovered"] is not None for r in rows)
    assert {"sparsity_sweep.json", "sparsity_sweep.md", "sparsity_sweep.html", "sweep.json"} <= {p.name for p in out.iterdir()}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_on_cuda_matches_cpu(tiny_store, tmp_path, dtype):
    runs = {}
    for device in ("cpu", "cuda"):
        [runs[device]] = train(small(tiny_store, tmp_path / device, device=device, dtype=dtype), progress=False)
    cpu, cuda = weights(runs["cpu"]), weights(runs["cuda"])
    for name in cpu:
        assert torch.allclose(cuda[name], cpu[name], atol=1e-3 if dtype == "float32" else 2e-2), name
