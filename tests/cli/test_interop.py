"""`sae-kit export saelens` and `sae-kit import saelens|sparsify` on a real trained run: the files
round-trip, the imported run is a normal run directory that evaluate opens."""

from __future__ import annotations

import json

import torch

from sae_kit.autoencoders import load_autoencoder
from sae_kit.cli import main
from sae_kit.harvest import ActivationStore
from sae_kit.training import TrainConfig, train
from tests.autoencoders.test_sparsify import write_sparsify


def test_export_then_import_saelens_through_the_cli(tiny_store, tmp_path, capsys):
    cfg = TrainConfig(store=str(tiny_store), out=str(tmp_path / "runs"), hook="resid.1", archs=("jumprelu", "gated"),
                      expansion=2, batch_size=256, tokens=256 * 4, lr=3e-3, norm_estimation_tokens=512,
                      checkpoint_every_tokens=None)
    runs = train(cfg, progress=False)
    x = next(ActivationStore(tiny_store).batches("model.layers.1", 64, split="eval"))
    for run in runs:
        assert main(["export", "saelens", "--run", str(run), "--out", str(tmp_path / "sl" / run.name)]) == 0
        saelens_cfg = json.loads((tmp_path / "sl" / run.name / "cfg.json").read_text())
        assert saelens_cfg["architecture"] == run.name.split("-")[0]
        assert saelens_cfg["hook_name"] == "blocks.1.hook_resid_post"
        assert main(["import", "saelens", "--path", str(tmp_path / "sl" / run.name), "--out", str(tmp_path / "back" / run.name)]) == 0
        ours, back = load_autoencoder(run), load_autoencoder(tmp_path / "back" / run.name)
        with torch.no_grad():
            assert torch.allclose(back.encode(x), ours.encode(x), atol=1e-5)
    assert main(["import", "saelens", "--path", str(tmp_path / "sl" / runs[0].name), "--out", str(tmp_path / "back" / runs[0].name)]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path / "back" / runs[0].name), "--store", str(tiny_store),
                 "--ce-contexts", "0"]) == 0
    assert json.loads((tmp_path / "back" / runs[0].name / "eval.json").read_text())


def test_import_sparsify_through_the_cli(tmp_path, capsys):
    write_sparsify(tmp_path / "ckpt" / "layers.2")
    write_sparsify(tmp_path / "ckpt" / "layers.3")
    assert main(["import", "sparsify", "--path", str(tmp_path / "ckpt"), "--out", str(tmp_path / "run")]) == 1
    assert "--hookpoint" in capsys.readouterr().err
    assert main(["import", "sparsify", "--path", str(tmp_path / "ckpt"), "--hookpoint", "layers.2",
                 "--out", str(tmp_path / "run")]) == 0
    model = load_autoencoder(tmp_path / "run")
    assert model.arch == "topk" and model.cfg.hook == "resid.2"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["provenance"]["source"] == "sparsify"
