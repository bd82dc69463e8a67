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


def test_saelens_loads_our_export_and_encodes_identically(tmp_path):
    """Where SAELens is installed (pip install sae-lens), it opens our files and agrees with us."""
    sae_lens = pytest.importorskip("sae_lens")
    model = trained_like("sae")
    export_saelens(model, tmp_path / "s")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "s"), device="cpu")
    x = torch.randn(6, 8)
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), model.encode(x), atol=1e-6)
        assert torch.allclose(theirs.decode(theirs.encode(x)), model.decode(model.encode(x)), atol=1e-6)


@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_we_load_saes_that_saelens_saved(architecture, tmp_path):
    """Where SAELens is installed: an SAE it writes with save_model opens here and agrees."""
    sae_lens = pytest.importorskip("sae_lens")
    if architecture == "topk":
        theirs = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=8, d_sae=24, k=5))
    else:
        theirs = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=8, d_sae=24))
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theirs.save_model(str(tmp_path / "s"))
    ours = import_saelens(tmp_path / "s")
    x = torch.randn(6, 8)
    with torch.no_grad():
        assert torch.allclose(ours.encode(x), theirs.encode(x), atol=1e-6)
        assert torch.allclose(ours.decode(ours.encode(x)), theirs.decode(theirs.encode(x)), atol=1e-6)
