"""The registry of architectures: every class states its contract, the contract is what the rest
of the package reads, and adding an architecture is one class and one registry entry (the
README's "Contributing an architecture" walk-through, run here end to end)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sae_kit.autoencoders import (ARCHITECTURES, ARCHS, Autoencoder, AutoencoderConfig, ForwardOutput, RunInfo,
                                  TrainingState, architecture, build_autoencoder, load_autoencoder)
from sae_kit.autoencoders.losses import reconstruction_loss
from sae_kit.errors import SaeKitError
from sae_kit.evaluation import EvalConfig, evaluate
from sae_kit.harvest import ActivationStore
from sae_kit.training import TrainConfig, train

WIDTHS = ("dictionary", "baseline", "components")


@pytest.mark.parametrize("name", ARCHS)
def test_every_class_states_its_contract(name):
    cls = ARCHITECTURES[name]
    assert cls.arch == name and issubclass(cls, Autoencoder)
    assert cls.description and cls.display_name
    assert cls.width in WIDTHS
    assert cls.default_decoder_norm in ("free", "unit")
    assert cls.dead_latent_remedy in (None, "resample", "auxk")
    assert not (cls.dead_latent_remedy and not cls.latents_fire), "only latents that fire can be dead"
    assert (cls.sweep_field is None) == (cls.sweep_label == "")
    if cls.sweep_field:
        assert cls.sweep_field in AutoencoderConfig.__dataclass_fields__


def test_unknown_architecture_lists_the_valid_names():
    with pytest.raises(SaeKitError, match="unknown architecture 'nope'; choose one of sae, topk"):
        architecture("nope")


@pytest.mark.parametrize("name", ARCHS)
def test_subset_encoder_equals_encoding_everything_and_picking(name):
    torch.manual_seed(0)
    model = build_autoencoder(AutoencoderConfig(arch=name, d_in=8, d_sae=6 if name == "pca" else 24, k=5))
    if model.fitted_in_closed_form:
        model.fit([torch.randn(300, 8) @ torch.randn(8, 8)])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(2, 7, 8)
        features = torch.tensor([3, 0, 5])
        assert torch.allclose(model.subset_encoder(features)(x), model.encode(x)[..., features], atol=1e-5)
        if model.separable:  # one latent per entry, as the example windows use it
            centred = x.reshape(-1, 8) - model.b_dec if model.apply_b_dec_to_input else x.reshape(-1, 8)
            u = (centred @ model.W_enc[:, features])[:, 0]
            assert torch.allclose(model.subset_activation(u, features[:1].expand_as(u)),
                                  model.encode(x.reshape(-1, 8))[:, 3], atol=1e-5)


# ----------------------------------------------------------------------------- contributing an architecture


class ShiftedReluSAE(Autoencoder):
    """A new architecture as the README's walk-through writes it: z = ReLU(pre − 0.05), L1 penalty."""

    arch = "shifted-relu"
    description = "test-only: ReLU with a fixed threshold of 0.05 and an L1 penalty"
    display_name = "shifted-ReLU SAE"
    sweep_field = "l1_coefficient"
    sweep_label = "l1"
    dead_latent_remedy = "resample"
    separable = True

    def encode(self, x):
        return F.relu(self.pre_activation(x) - 0.05)

    def subset_activation(self, u, features):
        return F.relu(u + self.b_enc[features] - 0.05)

    def training_loss(self, x, state: TrainingState) -> ForwardOutput:
        z = self.encode(x)
        x_hat = self.decode(z)
        terms = {"reconstruction": reconstruction_loss(x, x_hat),
                 "l1": self.cfg.l1_coefficient * state.sparsity_scale * z.sum(-1).mean()}
        return ForwardOutput(x_hat=x_hat, z=z, losses=terms, loss=sum(terms.values()))


def test_a_new_architecture_needs_one_class_and_one_registry_entry(monkeypatch, tiny_store, tmp_path):
    monkeypatch.setitem(ARCHITECTURES, ShiftedReluSAE.arch, ShiftedReluSAE)  # the one registry line
    cfg = TrainConfig(store=str(tiny_store), out=str(tmp_path / "runs"), hook="resid.1",
                      archs=("shifted-relu", "sae"), l1_coefficients=(0.5, 2.0), expansion=2, tokens=4096,
                      batch_size=256, lr=3e-3, log_every=4, checkpoint_every_tokens=None,
                      norm_estimation_tokens=1024)
    runs = train(cfg, progress=False)
    assert [r.name for r in runs] == ["shifted-relu-l1_0.5", "shifted-relu-l1_2", "sae-l1_0.5", "sae-l1_2"]
    model = load_autoencoder(runs[0])
    assert type(model) is ShiftedReluSAE and model.d_sae == 64
    assert RunInfo.load(runs[0]).hook_module == "model.layers.1"
    results = evaluate(EvalConfig(run=str(tmp_path / "runs"), ce_contexts=0))
    assert results["shifted-relu-l1_0.5"]["arch"] == "shifted-relu"
    assert results["shifted-relu-l1_0.5"]["reconstruction"]["fvu"] < 1.0
    assert results["shifted-relu-l1_2"]["reconstruction"]["l0"] < results["shifted-relu-l1_0.5"]["reconstruction"]["l0"]


# ----------------------------------------------------------------------------- RunInfo


def test_run_info_is_read_once_from_a_run(tiny_store, tmp_path):
    cfg = TrainConfig(store=str(tiny_store), out=str(tmp_path / "run"), hook="resid.1", expansion=2, tokens=1024,
                      batch_size=256, log_every=2, checkpoint_every_tokens=None, norm_estimation_tokens=512)
    run = train(cfg, progress=False)[0]
    info = RunInfo.load(run)
    store = ActivationStore(tiny_store)
    assert info.store == str(tiny_store.resolve()) and info.hook == "resid.1" and info.hook_module == "model.layers.1"
    assert info.model == store.manifest["model"]["spec"] and info.context_len == store.context_len
    assert info.input_scale > 0 and info.prepend_bos is True
    assert RunInfo.of(load_autoencoder(run)) == info  # the model's own metadata says the same
    assert info.language_model() == info.model and info.language_model("gpt2") == "gpt2"
    bare = RunInfo(store=str(tiny_store))  # no model recorded: the store's manifest names it
    assert bare.language_model() == info.model
    with pytest.raises(SaeKitError, match="pass --store"):
        RunInfo().store_path()
    with pytest.raises(SaeKitError, match="name it with --model"):
        RunInfo().language_model()
