"""The autoencoder core: interface invariants for all five models, their losses on explicit
weights, folding the input scale, the fused fast path against plain autograd, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from sae_kit.autoencoders import (
    ARCHS,
    PCA,
    AutoencoderConfig,
    SparseAutoencoder,
    TrainingState,
    build_autoencoder,
    load_autoencoder,
)
from sae_kit.errors import SaeKitError

D_IN, D_SAE = 6, 12


def make(arch: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    d_sae = 4 if arch == "pca" else D_SAE
    model = build_autoencoder(AutoencoderConfig(arch=arch, d_in=D_IN, d_sae=d_sae, k=3, **overrides))
    if arch == "pca":
        model.fit([torch.randn(200, D_IN) @ torch.randn(D_IN, D_IN) + 1.0])
    else:  # move off the symmetric init so every parameter matters
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_interface_names_and_shapes(arch):
    model = make(arch)
    d_sae = model.d_sae
    assert (model.d_in, model.cfg.d_in, model.cfg.d_sae) == (D_IN, D_IN, d_sae)
    assert model.W_enc.shape == (D_IN, d_sae) and model.b_enc.shape == (d_sae,)
    assert model.W_dec.shape == (d_sae, D_IN) and model.b_dec.shape == (D_IN,)
    x = torch.randn(5, D_IN)
    out = model(x)
    assert out.x_hat.shape == (5, D_IN) and out.z.shape == (5, d_sae)
    assert out.loss.dim() == 0 and "reconstruction" in out.losses
    assert torch.allclose(out.loss, sum(out.losses.values()))


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_equals_decode_of_encode_in_eval_mode(arch):
    """forward == reconstruct == decode(encode(x)), plus x W_skip for a skip transcoder."""
    model = make(arch)
    x = torch.randn(7, D_IN)
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(out.z, model.encode(x), atol=1e-6)
        assert torch.allclose(out.x_hat, model.reconstruct(x), atol=1e-6)
        skip = x @ model.W_skip if hasattr(model, "W_skip") else 0
        assert torch.allclose(model.reconstruct(x), model.decode(model.encode(x)) + skip, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_decode_accept_leading_dimensions(arch):
    model = make(arch)
    x = torch.randn(2, 3, D_IN)
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (2, 3, model.d_sae)
        assert torch.allclose(z[1, 2], model.encode(x[1, 2][None])[0], atol=1e-6)
        assert model.decode(z).shape == (2, 3, D_IN)


@pytest.mark.parametrize("arch", ARCHS)
def test_folding_the_input_scale_changes_no_output(arch):
    model = make(arch)
    scale = 3.7
    x = torch.randn(9, D_IN) * 5
    with torch.no_grad():
        z_scaled = model.encode(scale * x)
        x_hat_scaled = model.decode(z_scaled)
        logvar = model.log_variance(scale * x) if arch == "vae" else None
        model.fold_input_scale_(scale)
        assert torch.allclose(model.encode(x), z_scaled, atol=1e-5)
        assert torch.allclose(model.decode(model.encode(x)), x_hat_scaled / scale, atol=1e-5)
        if arch == "vae":
            assert torch.allclose(model.log_variance(x), logvar, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_load_round_trip(arch, tmp_path):
    model = make(arch, hook="resid.3", metadata={"store": "/some/store", "model": {"spec": "default"}})
    model.save(tmp_path / "run", extra={"training": {"lr": 1e-3}})
    loaded = load_autoencoder(tmp_path / "run")
    assert type(loaded) is type(model) and loaded.cfg == model.cfg
    assert not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x = torch.randn(4, D_IN)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), model.encode(x))
    payload = json.loads((tmp_path / "run" / "config.json").read_text())
    assert payload["training"] == {"lr": 1e-3} and payload["autoencoder"]["hook"] == "resid.3"


def test_load_errors_are_one_line_and_specific(tmp_path):
    with pytest.raises(SaeKitError, match="not an autoencoder run directory"):
        load_autoencoder(tmp_path)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"runs": [{"name": "sae-l1_1", "path": "sae-l1_1"},
                                                           {"name": "sae-l1_5", "path": "sae-l1_5"}]}))
    with pytest.raises(SaeKitError, match=r"sweep of 2 runs.*sae-l1_1.*sae-l1_5"):
        load_autoencoder(sweep)
    make("sae").save(tmp_path / "bad")
    cfg = json.loads((tmp_path / "bad" / "config.json").read_text())
    cfg["autoencoder"]["d_sae"] = 99
    (tmp_path / "bad" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SaeKitError, match="W_enc has shape"):
        load_autoencoder(tmp_path / "bad")


def test_config_json_round_trip_and_validation():
    cfg = AutoencoderConfig(arch="topk", d_in=8, d_sae=32, k=4, hook="mlp.2", metadata={"a": [1, 2]})
    assert AutoencoderConfig.from_json(cfg.to_json()) == cfg
    assert cfg.decoder_norm == "unit" and cfg.k_aux == 4
    assert AutoencoderConfig(arch="sae", d_in=8, d_sae=32).decoder_norm == "free"
    for bad, message in (
        (dict(arch="topk", d_in=8, d_sae=32), "needs k"),
        (dict(arch="topk", d_in=8, d_sae=32, k=33), "k must be between"),
        (dict(arch="pca", d_in=8, d_sae=9), "at most d_in"),
        (dict(arch="gatd", d_in=8, d_sae=9), "unknown architecture"),
        (dict(arch="batchtopk", d_in=8, d_sae=32), "needs k"),
        (dict(arch="matryoshka", d_in=8, d_sae=32, k=4, matryoshka_prefixes=(8, 4)), "increase strictly"),
        (dict(arch="matryoshka", d_in=8, d_sae=32, k=4, matryoshka_prefixes=(8, 64)), "at most d_sae"),
        (dict(arch="jumprelu", d_in=8, d_sae=32, jumprelu_bandwidth=0.0), "must be positive"),
        (dict(arch="jumprelu", d_in=8, d_sae=32, l0_coefficient=-1.0), "non-negative"),
        (dict(arch="sae", d_in=8, d_sae=9, metadata={"x": object()}), "JSON-serialisable"),
    ):
        with pytest.raises(SaeKitError, match=message):
            AutoencoderConfig(**bad)
    with pytest.raises(SaeKitError, match="unknown autoencoder config field"):
        AutoencoderConfig.from_dict({"arch": "sae", "d_in": 2, "d_sae": 2, "colour": "red"})


def test_april_2024_init():
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig(arch="sae", d_in=16, d_sae=64))
    assert torch.allclose(model.W_dec.norm(dim=-1), torch.full((64,), 0.1), atol=1e-6)
    assert torch.equal(model.W_enc, model.W_dec.T)
    assert model.b_enc.abs().sum() == 0 and model.b_dec.abs().sum() == 0
    unit = build_autoencoder(AutoencoderConfig(arch="topk", d_in=16, d_sae=64, k=4))
    assert torch.allclose(unit.W_dec.norm(dim=-1), torch.ones(64), atol=1e-6)


def test_sae_loss_on_explicit_weights():
    model = SparseAutoencoder(AutoencoderConfig(arch="sae", d_in=2, d_sae=2, l1_coefficient=0.5))
    with torch.no_grad():
        model.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        model.b_enc.copy_(torch.tensor([0.0, 0.5]))
        model.W_dec.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))  # norms 2 and 3
        model.b_dec.copy_(torch.tensor([1.0, 0.0]))
    x = torch.tensor([[2.0, 0.0]])
    # pre = (x − b_dec) W_enc + b_enc = [1, 0] W_enc + [0, 0.5] = [1, 0.5]; z = [1, 0.5]
    # x̂ = z W_dec + b_dec = [2, 1.5] + [1, 0] = [3, 1.5]; ‖x − x̂‖² = 1 + 2.25 = 3.25
    # L1 = λ (1·2 + 0.5·3) = 0.5 · 3.5 = 1.75
    for fused in (True, False):
        model.fused = fused
        out = model(x)
        assert out.z.tolist() == [[1.0, 0.5]]
        assert out.x_hat.tolist() == [[3.0, 1.5]]
        assert out.losses["reconstruction"].item() == pytest.approx(3.25)
        assert out.losses["l1"].item() == pytest.approx(1.75)
        assert model.training_loss(x, TrainingState(sparsity_scale=0.0)).losses["l1"].item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_sae_loss_matches_plain_autograd(dtype):
    torch.manual_seed(1)
    model = SparseAutoencoder(AutoencoderConfig(arch="sae", d_in=16, d_sae=48))
    with torch.no_grad():
        model.b_dec.normal_()
        model.b_enc.normal_(0, 0.1)
        model.W_dec.mul_(torch.rand(48, 1) * 3)
    x = torch.randn(64, 16)
    results = {}
    for fused in (True, False):
        model.fused = fused
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model.training_loss(x, TrainingState(sparsity_scale=0.5))  # λ = 5 · 0.5 = 2.5
        out.loss.backward()
        results[fused] = out, {n: p.grad.clone() for n, p in model.named_parameters()}
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.05, atol=0.05)
    (fast, fast_grads), (plain, plain_grads) = results[True], results[False]
    assert torch.allclose(fast.x_hat.float(), plain.x_hat.float(), **tol)
    for key in ("reconstruction", "l1"):
        assert torch.allclose(fast.losses[key], plain.losses[key].float(), **tol)
    for name in plain_grads:
        scale = plain_grads[name].abs().max()
        assert torch.allclose(fast_grads[name] / scale, plain_grads[name] / scale, **tol), name


def test_topk_keeps_exactly_the_k_largest():
    model = make("topk")
    x = torch.randn(20, D_IN)
    with torch.no_grad():
        pre = model.pre_activation(x)
        z = model.encode(x)
    assert ((z != 0).sum(-1) <= 3).all()
    top = pre.topk(3, dim=-1).indices
    positive = torch.gather(pre, -1, top) > 0
    assert torch.equal(torch.gather(z, -1, top) > 0, positive)
    assert torch.allclose(torch.gather(z, -1, top), torch.gather(pre, -1, top).clamp_min(0))


def test_topk_auxk_term_appears_only_with_dead_latents():
    model = make("topk").train()
    x = torch.randn(10, D_IN)
    assert set(model(x).losses) == {"reconstruction"}
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:5] = True
    out = model.training_loss(x, TrainingState(dead_mask=dead))
    assert set(out.losses) == {"reconstruction", "auxk"} and out.losses["auxk"].item() > 0


def test_unit_norm_decoder_constraint():
    model = make("topk").train()
    model(torch.randn(10, D_IN)).loss.backward()
    model.remove_parallel_decoder_grad_()
    unit = model.W_dec / model.W_dec.norm(dim=-1, keepdim=True)
    assert (model.W_dec.grad * unit).sum(-1).abs().max() < 1e-6
    with torch.no_grad():
        model.W_dec.mul_(7.0)
    model.normalize_decoder_()
    assert torch.allclose(model.W_dec.norm(dim=-1), torch.ones(D_SAE), atol=1e-6)


@pytest.mark.parametrize("corruption", ["gaussian", "dropout"])
def test_denoising_corrupts_in_training_only_and_targets_the_clean_input(corruption):
    model = make("dae", corruption=corruption, corruption_level=0.5)
    x = torch.randn(50, D_IN)
    with torch.no_grad():
        clean = model(x)
        model.train()
        noisy_a, noisy_b = model(x), model(x)
    assert not torch.allclose(noisy_a.x_hat, noisy_b.x_hat)
    assert torch.allclose(noisy_a.losses["reconstruction"], ((noisy_a.x_hat - x) ** 2).sum(-1).mean())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).x_hat, clean.x_hat)


def test_vae_reparameterisation_kl_and_prior_samples():
    model = make("vae", beta=2.0)
    x = torch.randn(30, D_IN)
    with torch.no_grad():
        mu, logvar = model.encode(x), model.log_variance(x)
        out = model(x)
        assert torch.equal(out.z, mu)  # eval: z = μ
        expected_kl = 2.0 * 0.5 * (mu**2 + logvar.exp() - logvar - 1).sum(-1).mean()
        assert out.losses["kl"].item() == pytest.approx(expected_kl.item(), rel=1e-5)
        model.train()
        torch.manual_seed(3)
        sampled = model(x).z
        torch.manual_seed(3)
        eps = torch.randn_like(mu)
        assert torch.allclose(sampled, mu + torch.exp(0.5 * logvar) * eps, atol=1e-6)
        samples = model.sample(11, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (11, D_IN) and torch.isfinite(samples).all()


def test_pca_recovers_principal_directions():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(D_IN, D_IN))[0]
    stds = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    x = (torch.randn(4000, D_IN) * stds) @ basis.T + torch.arange(D_IN).float()
    pca = PCA(AutoencoderConfig(arch="pca", d_in=D_IN, d_sae=2))
    pca.fit(x.split(512))
    cosines = (pca.W_dec @ basis[:, :2]).abs().diagonal()
    assert (cosines > 0.99).all()
    assert torch.allclose(pca.b_dec, x.mean(0), atol=1e-4)
    assert pca.explained_variance_ratio.sum().item() == pytest.approx(34 / 35.3, abs=0.02)
    with torch.no_grad():
        centred = x - x.mean(0)
        projection = centred @ pca.W_enc @ pca.W_enc.T + x.mean(0)
        assert torch.allclose(pca(x).x_hat, projection, atol=1e-4)
