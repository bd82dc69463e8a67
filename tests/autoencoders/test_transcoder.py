"""Transcoders and skip transcoders: the loss and the skip term on explicit weights, the TopK
variant, folding the input and target scales, the training config's checks, and the SAELens
and sparsify formats (round trips, and hand-computed forwards of their own conventions)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_kit.autoencoders import AutoencoderConfig, SkipTranscoder, TrainingState, Transcoder, build_autoencoder
from sae_kit.autoencoders.losses import auxk_loss
from sae_kit.autoencoders.saelens import export_saelens, import_saelens
from sae_kit.autoencoders.sparsify_transcoder import import_sparsify_transcoder
from sae_kit.errors import SaeKitError
from sae_kit.training.recipe import TrainConfig
from sae_kit.training.specs import model_specs

ARCHS = ("transcoder", "skip-transcoder")


def make(arch: str, activation: str = "relu", d_in: int = 4, d_out: int = 5, d_sae: int = 12, **kw):
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig(arch=arch, d_in=d_in, d_sae=d_sae, d_out=d_out, k=3,
                                                transcoder_activation=activation, hook="mlp_in.1",
                                                target_hook="mlp.1", **kw))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def explicit(cls, **kw):
    """d_in 2, d_sae 2, d_out 3 with hand-picked weights (see the tests' comments)."""
    model = cls(AutoencoderConfig(arch=cls.arch, d_in=2, d_sae=2, d_out=3, l1_coefficient=0.5, **kw))
    with torch.no_grad():
        model.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        model.b_enc.copy_(torch.tensor([0.0, 0.5]))
        model.W_dec.copy_(torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]))  # norms 2 and 3
        model.b_dec.copy_(torch.tensor([1.0, 0.0, 0.0]))
        if cls.skip:
            model.W_skip.copy_(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    return model


def test_transcoder_loss_on_explicit_weights():
    model = explicit(Transcoder)
    x, y = torch.tensor([[2.0, 1.0]]), torch.tensor([[4.0, 2.0, 1.0]])
    # pre = x W_enc + b_enc (b_dec is not subtracted: it lives in y's space) = [2, −1] + [0, 0.5]; z = [2, 0]
    # ŷ = z W_dec + b_dec = [4, 0, 0] + [1, 0, 0] = [5, 0, 0]; ‖y − ŷ‖² = 1 + 4 + 1 = 6; L1 = 0.5 (2·2) = 2
    out = model(x, y)
    assert out.z.tolist() == [[2.0, 0.0]] and out.x_hat.tolist() == [[5.0, 0.0, 0.0]]
    assert out.losses["reconstruction"].item() == pytest.approx(6.0)
    assert out.losses["l1"].item() == pytest.approx(2.0)
    assert model.training_loss(x, TrainingState(sparsity_scale=0.5), target=y).losses["l1"].item() == pytest.approx(1.0)


def test_skip_transcoder_adds_x_W_skip():
    model = explicit(SkipTranscoder)
    x, y = torch.tensor([[2.0, 1.0]]), torch.tensor([[4.0, 2.0, 1.0]])
    # ŷ = [5, 0, 0] + x W_skip = [5, 0, 0] + [0, 2, 0]; ‖y − ŷ‖² = 1 + 0 + 1 = 2
    out = model(x, y)
    assert out.x_hat.tolist() == [[5.0, 2.0, 0.0]] and model.reconstruct(x).tolist() == [[5.0, 2.0, 0.0]]
    assert out.losses["reconstruction"].item() == pytest.approx(2.0)
    assert model.decode(model.encode(x)).tolist() == [[5.0, 0.0, 0.0]]  # decode alone has no skip
    fresh = SkipTranscoder(AutoencoderConfig(arch="skip-transcoder", d_in=4, d_sae=8, d_out=6))
    assert fresh.W_skip.shape == (4, 6) and fresh.W_skip.abs().sum() == 0  # initialised to zero
    assert fresh.W_dec.shape == (8, 6) and fresh.b_dec.shape == (6,) and fresh.W_enc.shape == (4, 8)


def test_topk_transcoder_keeps_k_latents_and_its_auxk_targets_the_residual():
    model = explicit(SkipTranscoder, transcoder_activation="topk", k=1).train()
    x = torch.tensor([[2.0, 1.0], [-1.0, -3.0]])
    y = torch.tensor([[4.0, 2.0, 1.0], [0.0, 1.0, -2.0]])
    plain = model.training_loss(x, TrainingState(), target=y)
    assert set(plain.losses) == {"reconstruction"} and ((plain.z != 0).sum(-1) <= 1).all()
    # second token: pre = [−1, 3.5]: only latent 1 survives, z = [0, 3.5]
    assert plain.z[1].tolist() == [0.0, 3.5]
    dead = torch.tensor([True, False])
    out = model.training_loss(x, TrainingState(dead_mask=dead), target=y)
    pre = x @ model.W_enc + model.b_enc
    expected = model.cfg.auxk_coefficient * auxk_loss(y - out.x_hat, pre, model.W_dec, dead, model.cfg.k_aux)
    assert out.losses["auxk"].item() == pytest.approx(expected.item())
    assert (model.separable, model.dead_latent_remedy, model.sweep_field) == (False, "auxk", "k")
    assert (SkipTranscoder.separable, SkipTranscoder.dead_latent_remedy) == (True, "resample")  # the relu variant


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("activation", ["relu", "topk"])
def test_folding_input_and_target_scales_is_exact(arch, activation):
    """Trained on (s_x·x, s_y·y): after folding, the model on raw x gives z unchanged and ŷ / s_y."""
    model = make(arch, activation)
    s_x, s_y = 3.7, 0.21
    x = torch.randn(9, 4) * 5
    with torch.no_grad():
        z_scaled, y_scaled = model.encode(s_x * x), model.reconstruct(s_x * x)
        model.fold_scales_(s_x, s_y)
        torch.testing.assert_close(model.encode(x), z_scaled, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.reconstruct(x), y_scaled / s_y, rtol=1e-5, atol=1e-5)


def test_autoencoders_have_one_scale_and_no_other_output_width():
    sae = build_autoencoder(AutoencoderConfig(arch="sae", d_in=4, d_sae=8))
    with pytest.raises(SaeKitError, match="reconstructs its input"):
        sae.fold_scales_(2.0, 3.0)
    with pytest.raises(SaeKitError, match="d_out = d_in"):
        AutoencoderConfig(arch="sae", d_in=4, d_sae=8, d_out=5)
    with pytest.raises(SaeKitError, match="transcoder_activation 'topk'.*needs k"):
        AutoencoderConfig(arch="transcoder", d_in=4, d_sae=8, transcoder_activation="topk")
    assert sae.apply_b_dec_to_input and not Transcoder.apply_b_dec_to_input
    assert Transcoder.has_target and SkipTranscoder.has_target and not type(sae).has_target


def test_training_config_asks_the_class_about_targets(tmp_path):
    common = dict(store="s", out=str(tmp_path))
    with pytest.raises(SaeKitError, match="--target is for transcoders; --arch sae"):
        TrainConfig(**common, archs=("sae",), target="mlp.1")
    with pytest.raises(SaeKitError, match="--arch skip-transcoder predicts a target.*give --target"):
        TrainConfig(**common, archs=("skip-transcoder",))
    with pytest.raises(SaeKitError, match="--arch topk reconstructs"):
        TrainConfig(**common, archs=("transcoder", "topk"), target="mlp.1")
    relu = TrainConfig(**common, archs=ARCHS, target="mlp.1", l1_coefficients=(1.0, 5.0))
    names = [s.name for s in model_specs(relu, 4, hook="mlp_in.1", d_out=6, target_hook="mlp.1")]
    assert names == ["transcoder-l1_1", "transcoder-l1_5", "skip-transcoder-l1_1", "skip-transcoder-l1_5"]
    topk = TrainConfig(**common, archs=("skip-transcoder",), target="mlp.1", transcoder_activation="topk", ks=(2, 3))
    specs = model_specs(topk, 4, hook="mlp_in.1", d_out=6, target_hook="mlp.1")
    assert [s.name for s in specs] == ["skip-transcoder-k_2", "skip-transcoder-k_3"]
    assert all(s.cfg.d_out == 6 and s.cfg.target_hook == "mlp.1" and s.cfg.decoder_norm == "unit" for s in specs)


# ----------------------------------------------------------------------------- SAELens


@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_round_trip_gives_identical_outputs(arch, tmp_path):
    model = make(arch)
    out = export_saelens(model, tmp_path / "saelens")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == arch.replace("-", "_") and (cfg["d_in"], cfg["d_out"], cfg["d_sae"]) == (4, 5, 12)
    assert cfg["apply_b_dec_to_input"] is False and cfg["activation_fn"] == "relu"
    assert cfg["hook_name"] == "blocks.1.ln2.hook_normalized" and cfg["hook_name_out"] == "blocks.1.hook_mlp_out"
    shapes = {k: tuple(v.shape) for k, v in load_file(str(out / "sae_weights.safetensors")).items()}
    expected = {"W_enc": (4, 12), "b_enc": (12,), "W_dec": (12, 5), "b_dec": (5,)}
    assert shapes == (expected | {"W_skip": (5, 4)} if arch == "skip-transcoder" else expected)  # SAELens: [d_out, d_in]
    back = import_saelens(out)
    assert type(back) is type(model) and (back.cfg.hook, back.cfg.target_hook) == ("mlp_in.1", "mlp.1")
    x = torch.randn(10, 4) * 3
    with torch.no_grad():
        assert torch.equal(back.encode(x), model.encode(x))
        assert torch.equal(back.reconstruct(x), model.reconstruct(x))


def test_topk_transcoders_have_no_saelens_format(tmp_path):
    with pytest.raises(SaeKitError, match="SAELens has no architecture"):
        export_saelens(make("transcoder", "topk"), tmp_path / "s")


def test_a_saelens_skip_transcoder_computes_what_saelens_computes(tmp_path):
    """SAELens' SkipTranscoder: relu(x W_enc + b_enc) W_dec + b_dec + x W_skipᵀ, W_skip [d_out, d_in]."""
    torch.manual_seed(1)
    d_in, d_sae, d_out = 4, 10, 6
    tensors = {"W_enc": torch.randn(d_in, d_sae), "b_enc": torch.randn(d_sae) * 0.1,
               "W_dec": torch.randn(d_sae, d_out), "b_dec": torch.randn(d_out), "W_skip": torch.randn(d_out, d_in)}
    path = tmp_path / "tc"
    path.mkdir()
    save_file(tensors, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps({
        "architecture": "skip_transcoder", "d_in": d_in, "d_sae": d_sae, "d_out": d_out, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none", "activation_fn": "relu",
        "model_name": "qwen3-4b", "hook_name": "blocks.3.mlp.hook_in", "hook_name_out": "blocks.3.hook_mlp_out"}))
    model = import_saelens(path)
    x = torch.randn(7, d_in)
    expected = (torch.relu(x @ tensors["W_enc"] + tensors["b_enc"]) @ tensors["W_dec"] + tensors["b_dec"]
                + x @ tensors["W_skip"].T)
    with torch.no_grad():
        torch.testing.assert_close(model.reconstruct(x), expected, rtol=1e-5, atol=1e-5)
    assert (model.arch, model.cfg.hook, model.cfg.target_hook) == ("skip-transcoder", "mlp_in.3", "mlp.3")


# ----------------------------------------------------------------------------- sparsify


def write_sparsify(path, skip: bool, d_in=4, d_sae=16, k=3):
    """A directory as sparsify's SparseCoder.save_to_disk writes a transcoder (cfg.json + sae.safetensors)."""
    torch.manual_seed(2)
    tensors = {"encoder.weight": torch.randn(d_sae, d_in), "encoder.bias": torch.randn(d_sae) * 0.1,
               "W_dec": torch.randn(d_sae, d_in), "b_dec": torch.randn(d_in)}
    if skip:
        tensors["W_skip"] = torch.randn(d_in, d_in)
    path.mkdir(parents=True)
    save_file(tensors, str(path / "sae.safetensors"))
    (path / "cfg.json").write_text(json.dumps({
        "activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": d_sae, "k": k,
        "multi_topk": False, "skip_connection": skip, "transcode": True, "d_in": d_in}))
    return tensors


@pytest.mark.parametrize("skip", [False, True])
def test_sparsify_transcoder_computes_what_sparsify_computes(skip, tmp_path):
    """sparsify: top-k of ReLU(x encoderᵀ + b), summed decoder rows + b_dec (+ x W_skipᵀ), no b_dec on the input."""
    tensors = write_sparsify(tmp_path / "layers.1.mlp", skip)
    model = import_sparsify_transcoder(tmp_path / "layers.1.mlp")
    assert model.arch == ("skip-transcoder" if skip else "transcoder") and model.cfg.k == 3
    assert (model.cfg.hook, model.cfg.target_hook) == ("mlp_in.1", "mlp.1")
    x = torch.randn(9, 4)
    pre = torch.relu(x @ tensors["encoder.weight"].T + tensors["encoder.bias"])
    values, indices = pre.topk(3, dim=-1)
    expected = (values[..., None] * tensors["W_dec"][indices]).sum(1) + tensors["b_dec"]
    if skip:
        expected = expected + x @ tensors["W_skip"].mT
    with torch.no_grad():
        torch.testing.assert_close(model.reconstruct(x), expected, rtol=1e-5, atol=1e-5)
        assert ((model.encode(x) != 0).sum(-1) <= 3).all()


def test_sparsify_saes_and_damaged_directories_are_refused(tmp_path):
    write_sparsify(tmp_path / "sae", skip=False)
    raw = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps({**raw, "transcode": False}))
    with pytest.raises(SaeKitError, match="not a transcoder"):
        import_sparsify_transcoder(tmp_path / "sae")
    with pytest.raises(SaeKitError, match="not a sparsify directory"):
        import_sparsify_transcoder(tmp_path / "nothing")
