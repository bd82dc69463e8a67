"""SAELens on-disk format: export, import, round trip, folding of SAELens-only options."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_kit.autoencoders import AutoencoderConfig, build_autoencoder
from sae_kit.autoencoders.saelens import (
    export_saelens,
    from_transformerlens_hook,
    import_saelens,
    to_transformerlens_hook,
)
from sae_kit.errors import SaeKitError


def trained_like(arch: str, **kw):
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig(arch=arch, d_in=8, d_sae=24, k=5, hook="resid.3",
                                                metadata={"model": {"name": "SmolLM2-135M-Instruct"},
                                                          "context_len": 128}, **kw))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("arch", ["sae", "topk", "ae"])
def test_round_trip_gives_identical_outputs(arch, tmp_path):
    model = trained_like(arch)
    out = export_saelens(model, tmp_path / "saelens")
    assert {p.name for p in out.iterdir()} == {"cfg.json", "sae_weights.safetensors"}
    back = import_saelens(out)
    x = torch.randn(10, 8) * 3
    with torch.no_grad():
        assert torch.equal(back.encode(x), model.encode(x))
        assert torch.equal(back.decode(back.encode(x)), model.decode(model.encode(x)))
    assert back.cfg.hook == "resid.3"
    assert back.cfg.arch == ("topk" if arch == "topk" else "sae")


def test_exported_cfg_uses_saelens_field_names(tmp_path):
    export_saelens(trained_like("topk"), tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 5 and cfg["activation_fn_kwargs"] == {"k": 5}
    assert (cfg["d_in"], cfg["d_sae"]) == (8, 24)
    assert cfg["hook_name"] == "blocks.3.hook_resid_post" and cfg["hook_layer"] == 3
    assert cfg["model_name"] == "SmolLM2-135M-Instruct" and cfg["context_size"] == 128
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["dtype"] == "float32" and cfg["device"] == "cpu"
    tensors = load_file(str(tmp_path / "s" / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"W_enc": (8, 24), "b_enc": (24,), "W_dec": (24, 8),
                                                              "b_dec": (8,)}


def write_saelens(path, cfg: dict, tensors: dict):
    path.mkdir(parents=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(path / "sae_weights.safetensors"))


def test_import_folds_saelens_only_options_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    W_enc, b_enc = torch.randn(4, 6, generator=g), torch.randn(6, generator=g)
    W_dec, b_dec = torch.randn(6, 4, generator=g), torch.randn(4, generator=g)
    scaling = torch.rand(6, generator=g) + 0.5
    write_saelens(tmp_path / "s", {"architecture": "standard", "d_in": 4, "d_sae": 6, "dtype": "float32",
                                   "apply_b_dec_to_input": False, "normalize_activations": "expected_average_only_in",
                                   "finetuning_scaling_factor": True, "hook_name": "blocks.0.hook_resid_pre",
                                   "activation_fn_str": "relu"},
                  {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "scaling_factor": scaling})
    with pytest.raises(SaeKitError, match="pass norm_scaling_factor"):
        import_saelens(tmp_path / "s")
    model = import_saelens(tmp_path / "s", norm_scaling_factor=2.0)
    x = torch.randn(5, 4, generator=g)
    # SAELens: x' = 2x; z = ReLU(x' W_enc + b_enc); x̂' = (z ⊙ s) W_dec + b_dec; x̂ = x̂' / 2
    z = torch.relu(2 * x @ W_enc + b_enc)
    with torch.no_grad():
        assert torch.allclose(model.encode(x), z, atol=1e-5)
        assert torch.allclose(model.decode(model.encode(x)), ((z * scaling) @ W_dec + b_dec) / 2, atol=1e-5)
    assert model.cfg.hook == "blocks.0.hook_resid_pre"  # the embeddings: no alias


def test_unsupported_architectures_fail_clearly(tmp_path):
    with pytest.raises(SaeKitError, match="SAELens has no architecture for 'vae'"):
        export_saelens(trained_like("vae"), tmp_path / "v")
    write_saelens(tmp_path / "t", {"architecture": "standard", "activation_fn": "tanh-relu", "d_in": 2, "d_sae": 2},
                  {n: torch.zeros(2, 2) for n in ("W_enc", "W_dec")} | {n: torch.zeros(2) for n in ("b_enc", "b_dec")})
    with pytest.raises(SaeKitError, match="'standard' \\(activation 'tanh-relu'\\) is not supported.*'jumprelu'"):
        import_saelens(tmp_path / "t")
    write_saelens(tmp_path / "j", {"architecture": "jumprelu", "d_in": 2, "d_sae": 2},
                  {n: torch.zeros(2, 2) for n in ("W_enc", "W_dec")} | {n: torch.zeros(2) for n in ("b_enc", "b_dec")})
    with pytest.raises(SaeKitError, match="lacks tensor 'threshold'"):
        import_saelens(tmp_path / "j")
    with pytest.raises(SaeKitError, match="not a SAELens SAE directory"):
        import_saelens(tmp_path)


def test_hook_name_translation():
    assert to_transformerlens_hook("resid.8") == ("blocks.8.hook_resid_post", 8)
    assert to_transformerlens_hook("mlp.2") == ("blocks.2.hook_mlp_out", 2)
    assert to_transformerlens_hook("model.layers.5") == ("blocks.5.hook_resid_post", 5)
    assert to_transformerlens_hook("transformer.h.7") == ("blocks.7.hook_resid_post", 7)
    assert from_transformerlens_hook("blocks.8.hook_resid_pre") == "resid.7"
    assert from_transformerlens_hook("blocks.8.hook_resid_post") == "resid.8"
    assert from_transformerlens_hook("blocks.1.hook_attn_out") == "attn.1"


@pytest.mark.parametrize("arch", ["sae", "topk", "jumprelu", "gated", "batchtopk", "matryoshka"])
def test_saelens_loads_our_export_and_encodes_identically(arch, tmp_path):
    """Where SAELens is installed (pip install sae-lens), it opens our files and agrees with us."""
    sae_lens = pytest.importorskip("sae_lens")
    model = trained_new(arch)
    export_saelens(model, tmp_path / "s")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "s"), device="cpu")
    x = torch.randn(6, 8)
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), model.encode(x), atol=1e-6)
        assert torch.allclose(theirs.decode(theirs.encode(x)), model.decode(model.encode(x)), atol=1e-6)


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu", "gated"])
def test_we_load_saes_that_saelens_saved(architecture, tmp_path):
    """Where SAELens is installed: an SAE it writes with save_model opens here and agrees."""
    sae_lens = pytest.importorskip("sae_lens")
    classes = {"standard": ("StandardSAE", "StandardSAEConfig", {}), "topk": ("TopKSAE", "TopKSAEConfig", {"k": 5}),
               "jumprelu": ("JumpReLUSAE", "JumpReLUSAEConfig", {}), "gated": ("GatedSAE", "GatedSAEConfig", {})}
    sae_class, cfg_class, extra = classes[architecture]
    theirs = getattr(sae_lens, sae_class)(getattr(sae_lens, cfg_class)(d_in=8, d_sae=24, **extra))
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if architecture == "jumprelu":
            theirs.threshold.copy_(torch.rand(24) * 0.2)
    theirs.save_model(str(tmp_path / "s"))
    ours = import_saelens(tmp_path / "s")
    x = torch.randn(6, 8)
    with torch.no_grad():
        assert torch.allclose(ours.encode(x), theirs.encode(x), atol=1e-6)
        assert torch.allclose(ours.decode(ours.encode(x)), theirs.decode(theirs.encode(x)), atol=1e-6)


# ----------------------------------------------------------------------------- BatchTopK, JumpReLU, Gated, Matryoshka


def trained_new(arch: str):
    model = trained_like(arch)
    if hasattr(model, "log_threshold"):
        with torch.no_grad():
            model.log_threshold.copy_((torch.rand(24) * 0.5 + 0.05).log())
    elif arch in ("batchtopk", "matryoshka"):
        model.threshold.fill_(0.3)
    return model


@pytest.mark.parametrize("arch, saelens_arch, back", [("jumprelu", "jumprelu", "jumprelu"), ("gated", "gated", "gated"),
                                                      ("batchtopk", "jumprelu", "jumprelu"),
                                                      ("matryoshka", "jumprelu", "jumprelu")])
def test_new_architectures_round_trip_with_saelens_names(arch, saelens_arch, back, tmp_path):
    model = trained_new(arch)
    out = export_saelens(model, tmp_path / "s")
    cfg = json.loads((out / "cfg.json").read_text())
    tensors = load_file(str(out / "sae_weights.safetensors"))
    assert cfg["architecture"] == saelens_arch and cfg["activation_fn"] == "relu"
    expected = {"W_enc": (8, 24), "W_dec": (24, 8), "b_dec": (8,)}
    expected.update({"b_gate": (24,), "b_mag": (24,), "r_mag": (24,)} if arch == "gated"
                    else {"b_enc": (24,), "threshold": (24,)})
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
    back_model = import_saelens(out)
    assert back_model.arch == back
    x = torch.randn(50, 8) * 3
    with torch.no_grad():
        assert torch.allclose(back_model.encode(x), model.encode(x), atol=1e-6)
        assert (model.encode(x) != 0).any() and (model.encode(x) == 0).any()  # the threshold matters here
        assert torch.allclose(back_model.decode(back_model.encode(x)), model.decode(model.encode(x)), atol=1e-5)


def test_gemma_scope_jumprelu_saved_by_saelens_opens_and_encodes_as_saelens_does(tmp_path):
    """A Gemma-Scope-style JumpReLU SAE as SAELens 6 writes it (nested metadata, apply_b_dec_to_input
    false, `threshold`): our encode equals SAELens' ReLU(x W_enc + b_enc) · 1[x W_enc + b_enc > θ]."""
    g = torch.Generator().manual_seed(0)
    d_in, d_sae = 6, 16
    W_enc, W_dec = torch.randn(d_in, d_sae, generator=g), torch.randn(d_sae, d_in, generator=g)
    b_enc, b_dec = torch.randn(d_sae, generator=g) * 0.1, torch.randn(d_in, generator=g)
    threshold = torch.rand(d_sae, generator=g) + 0.2
    cfg = {"architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.5.1", "model_name": "gemma-2-2b", "hook_name": "blocks.12.hook_resid_post",
                        "context_size": 1024, "prepend_bos": True}}
    write_saelens(tmp_path / "gs", cfg, {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec,
                                         "threshold": threshold})
    model = import_saelens(tmp_path / "gs")
    assert model.arch == "jumprelu" and model.cfg.hook == "resid.12"
    x = torch.randn(40, d_in, generator=g) * 2
    pre = x @ W_enc + b_enc
    theirs = torch.relu(pre) * (pre > threshold)
    with torch.no_grad():
        assert torch.allclose(model.encode(x), theirs, atol=1e-5)
        assert torch.allclose(model.decode(model.encode(x)), theirs @ W_dec + b_dec, atol=1e-4)
    assert torch.allclose(model.threshold, threshold)


def test_saelens_gated_file_opens_and_encodes_as_saelens_does(tmp_path):
    g = torch.Generator().manual_seed(1)
    d_in, d_sae = 5, 12
    t = {"W_enc": torch.randn(d_in, d_sae, generator=g), "W_dec": torch.randn(d_sae, d_in, generator=g),
         "b_dec": torch.randn(d_in, generator=g), "b_gate": torch.randn(d_sae, generator=g),
         "b_mag": torch.randn(d_sae, generator=g), "r_mag": torch.randn(d_sae, generator=g) * 0.3}
    write_saelens(tmp_path / "g", {"architecture": "gated", "d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": True,
                                   "l1_coefficient": 2.0, "metadata": {"sae_lens_version": "6.3.0"}}, t)
    model = import_saelens(tmp_path / "g")
    assert model.arch == "gated" and model.cfg.l1_coefficient == 2.0
    x = torch.randn(30, d_in, generator=g)
    sae_in = x - t["b_dec"]  # SAELens GatedSAE.encode
    gate = (sae_in @ t["W_enc"] + t["b_gate"]) > 0
    magnitude = torch.relu(sae_in @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"])
    with torch.no_grad():
        assert torch.allclose(model.encode(x), gate * magnitude, atol=1e-5)
    with pytest.raises(SaeKitError, match="lacks tensor.*b_mag"):
        write_saelens(tmp_path / "g2", {"architecture": "gated", "d_in": d_in, "d_sae": d_sae},
                      {k: v for k, v in t.items() if k != "b_mag"})
        import_saelens(tmp_path / "g2")


@pytest.mark.parametrize("architecture", ["batchtopk", "matryoshka_batchtopk"])
def test_saelens_training_format_batchtopk_with_rescaled_activations(architecture, tmp_path):
    """SAELens' BatchTopK training SAE (rescale_acts_by_decoder_norm, `topk_threshold`): folded so that
    our threshold encode equals SAELens' inference encode, ReLU(pre·‖W_dec‖)·1[pre·‖W_dec‖ > θ],
    decoded with W_dec/‖W_dec‖."""
    g = torch.Generator().manual_seed(2)
    d_in, d_sae = 4, 10
    W_enc, W_dec = torch.randn(d_in, d_sae, generator=g), torch.randn(d_sae, d_in, generator=g) * 3
    b_enc, b_dec = torch.randn(d_sae, generator=g) * 0.1, torch.randn(d_in, generator=g)
    cfg = {"architecture": architecture, "d_in": d_in, "d_sae": d_sae, "k": 3.0, "rescale_acts_by_decoder_norm": True,
           "topk_threshold_lr": 0.02, "metadata": {"sae_lens_version": "6.10.0"}}
    if architecture == "matryoshka_batchtopk":
        cfg["matryoshka_widths"] = [2, 5, 10]
    write_saelens(tmp_path / "b", cfg, {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec,
                                        "topk_threshold": torch.tensor(0.8, dtype=torch.float64)})
    model = import_saelens(tmp_path / "b")
    assert model.arch == ("batchtopk" if architecture == "batchtopk" else "matryoshka") and model.cfg.k == 3
    if architecture == "matryoshka_batchtopk":
        assert model.prefixes == (2, 5, 10)
    x = torch.randn(20, d_in, generator=g) * 2
    norms = W_dec.norm(dim=-1)
    pre = ((x - b_dec) @ W_enc + b_enc) * norms
    theirs = torch.relu(pre) * (pre > 0.8)
    with torch.no_grad():
        assert torch.allclose(model.encode(x), theirs, atol=1e-5)
        assert torch.allclose(model.decode(model.encode(x)), (theirs / norms) @ W_dec + b_dec, atol=1e-4)


def test_export_writes_the_recipe_in_saelens_training_names(tmp_path):
    model = trained_new("jumprelu")
    export_saelens(model, tmp_path / "j")
    cfg = json.loads((tmp_path / "j" / "cfg.json").read_text())
    assert cfg["l0_coefficient"] == model.cfg.l0_coefficient and cfg["jumprelu_sparsity_loss_mode"] == "step"
    assert cfg["jumprelu_bandwidth"] == 0.001 and cfg["sae_kit"]["arch"] == "jumprelu"
    export_saelens(trained_new("matryoshka"), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["matryoshka_widths"] == [1, 3, 6, 12, 24] and cfg["k"] == 5


@pytest.mark.parametrize("architecture", ["batchtopk", "matryoshka_batchtopk"])
@pytest.mark.parametrize("inference", [True, False])
def test_we_load_batchtopk_saes_that_saelens_trained(architecture, inference, tmp_path):
    """Where SAELens is installed: its BatchTopK / Matryoshka training SAE, saved as the training
    format (`save_model`: topk_threshold, rescaled activations) or as inference JumpReLU
    (`save_inference_model`), opens here and encodes as SAELens' own inference model does."""
    sae_lens = pytest.importorskip("sae_lens")
    if architecture == "batchtopk":
        theirs = sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(d_in=8, d_sae=24, k=3))
    else:
        theirs = sae_lens.MatryoshkaBatchTopKTrainingSAE(
            sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(d_in=8, d_sae=24, k=3, matryoshka_widths=[6, 12, 24]))
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.3 * torch.randn_like(p))
        theirs.topk_threshold = torch.tensor(0.2, dtype=torch.double)
    (theirs.save_inference_model if inference else theirs.save_model)(str(tmp_path / "s"))
    ours = import_saelens(tmp_path / "s")
    assert ours.arch == ("jumprelu" if inference else "batchtopk" if architecture == "batchtopk" else "matryoshka")
    reference = sae_lens.SAE.load_from_disk(str(tmp_path / "s"), device="cpu") if inference else None
    x = torch.randn(16, 8)
    with torch.no_grad():
        if reference is None:  # the training format: SAELens' inference form is JumpReLU on rescaled activations
            norms = theirs.W_dec.norm(dim=-1)
            pre = ((x - theirs.b_dec) @ theirs.W_enc + theirs.b_enc) * norms
            z = torch.relu(pre) * (pre > 0.2)
            expected_z, expected_x = z, (z / norms) @ theirs.W_dec + theirs.b_dec
        else:
            expected_z, expected_x = reference.encode(x), reference.decode(reference.encode(x))
        assert (expected_z != 0).any()
        assert torch.allclose(ours.encode(x), expected_z, atol=1e-5)
        assert torch.allclose(ours.decode(ours.encode(x)), expected_x, atol=1e-5)
