"""EleutherAI sparsify's on-disk format: files written with sparsify's own names and shapes open
here and encode as sparsify's SparseCoder does; errors name what is wrong."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sae_kit.autoencoders.sparsify import alias_of_hookpoint, import_sparsify, sparsify_hookpoints
from sae_kit.errors import SaeKitError


def write_sparsify(path, d_in=6, expansion=4, k=3, **cfg):
    """A hook point directory as sparsify's SparseCoder.save_to_disk writes it."""
    g = torch.Generator().manual_seed(0)
    m = d_in * expansion
    tensors = {"encoder.weight": torch.randn(m, d_in, generator=g), "encoder.bias": torch.randn(m, generator=g) * 0.1,
               "W_dec": torch.randn(m, d_in, generator=g), "b_dec": torch.randn(d_in, generator=g)}
    path.mkdir(parents=True)
    settings = {"activation": "topk", "expansion_factor": expansion, "normalize_decoder": True, "num_latents": 0,
                "k": k, "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": d_in}
    settings.update(cfg)
    (path / "cfg.json").write_text(json.dumps(settings))
    save_file({n: t.to(torch.bfloat16) for n, t in tensors.items()}, str(path / "sae.safetensors"))
    return {n: t.to(torch.bfloat16).float() for n, t in tensors.items()}


def sparsify_forward(t, x, k):
    """sparsify's SparseCoder.encode / decode, written out: TopK of ReLU((x − b_dec) Wᵀ + b), then Σ a·W_dec + b_dec."""
    pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    values, indices = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter_(-1, indices, values)
    return z, (values[..., None] * t["W_dec"][indices]).sum(-2) + t["b_dec"]


def test_a_sparsify_topk_coder_opens_and_encodes_as_sparsify_does(tmp_path):
    tensors = write_sparsify(tmp_path / "ckpt" / "layers.3")
    write_sparsify(tmp_path / "ckpt" / "layers.3.mlp")
    assert sparsify_hookpoints(tmp_path / "ckpt") == ["layers.3", "layers.3.mlp"]
    model = import_sparsify(tmp_path / "ckpt", hookpoint="layers.3")
    assert model.arch == "topk" and model.cfg.k == 3 and (model.d_in, model.d_sae) == (6, 24)
    assert model.cfg.hook == "resid.3"
    x = torch.randn(20, 6) * 2
    z, x_hat = sparsify_forward(tensors, x, 3)
    with torch.no_grad():
        assert torch.allclose(model.encode(x), z, atol=1e-5)
        assert torch.allclose(model.decode(model.encode(x)), x_hat, atol=1e-4)
    assert import_sparsify(tmp_path / "ckpt" / "layers.3.mlp").cfg.hook == "mlp.3"


def test_sparsify_errors_are_one_line_and_specific(tmp_path):
    write_sparsify(tmp_path / "ckpt" / "layers.0")
    write_sparsify(tmp_path / "ckpt" / "layers.1")
    with pytest.raises(SaeKitError, match="several hook points; pick one with --hookpoint: layers.0, layers.1"):
        import_sparsify(tmp_path / "ckpt")
    with pytest.raises(SaeKitError, match="not a sparsify directory"):
        import_sparsify(tmp_path / "nothing")
    write_sparsify(tmp_path / "g" / "layers.0", activation="groupmax")
    with pytest.raises(SaeKitError, match="activation='groupmax'.*not supported; sae-kit reads topk"):
        import_sparsify(tmp_path / "g" / "layers.0")
    write_sparsify(tmp_path / "n" / "layers.0", num_latents=99)
    with pytest.raises(SaeKitError, match="99 latents"):
        import_sparsify(tmp_path / "n" / "layers.0")


def test_hookpoint_aliases():
    assert alias_of_hookpoint("layers.10") == "resid.10"
    assert alias_of_hookpoint("model.layers.2.mlp") == "mlp.2"
    assert alias_of_hookpoint("h.4.attn") == "attn.4"
    assert alias_of_hookpoint("layers.5.self_attn") == "attn.5"
    assert alias_of_hookpoint("embed_tokens") == "embed_tokens"
