"""Evaluation: streamed metrics by hand, splicing checks on a tiny Llama, and the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch

from sae_kit.autoencoders import PCA, AutoencoderConfig, build_autoencoder
from sae_kit.cli import main as cli_main
from sae_kit.evaluation import metrics
from sae_kit.evaluation.evaluator import (
    EvalConfig,
    ReconstructionStats,
    evaluate,
    held_out_contexts,
    splice_reconstruction,
    spliced_metrics,
)
from sae_kit.harvest import ActivationStore
from sae_kit.lm.hooks import intervene, resolve_hooks
from sae_kit.lm.models import load_model
from sae_kit.training import train
from sae_kit.training.recipe import TrainConfig


def test_reconstruction_stats_by_hand():
    stats = ReconstructionStats(d_in=2, d_sae=3)
    # batch 1: x = [[1, 2]], x̂ = [[1, 1]], z = [[0, 2, 0]]; batch 2: x = [[3, 4]], x̂ = [[2, 4]], z = [[0, 1, -3]]
    stats.update(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 2.0, 0.0]]))
    stats.update(torch.tensor([[3.0, 4.0]]), torch.tensor([[2.0, 4.0]]), torch.tensor([[0.0, 1.0, -3.0]]))
    r = stats.result(dense_threshold=0.6)
    # SSE = 1 + 1 = 2 over 2 tokens × 2 dims; x̄ = [2, 3]; Σ‖x − x̄‖² = 4
    assert r["n_tokens"] == 2
    assert r["mse"] == pytest.approx(2 / 4)
    assert r["fvu"] == pytest.approx(0.5) and r["explained_variance"] == pytest.approx(0.5)
    assert r["l0"] == pytest.approx((1 + 2) / 2)
    assert r["l1"] == pytest.approx((2 + 4) / 2)
    assert r["dead_fraction"] == pytest.approx(1 / 3)  # latent 0 never fires
    assert r["dense_fraction"] == pytest.approx(1 / 3)  # latent 1 fires on 2/2 > 60 %
    assert torch.allclose(stats.mean, torch.tensor([2.0, 3.0], dtype=torch.float64))


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    return loaded.model, resolve_hooks(loaded.model, ["resid.1"])[0]


@pytest.fixture(scope="module")
def contexts(tiny_store):
    return held_out_contexts(ActivationStore(tiny_store), "model.layers.1", 6)


def mean_ce(lm, tokens) -> float:
    return float(metrics.next_token_ce(lm(input_ids=tokens).logits, tokens).mean())


def test_splicing_reconstruction_plus_error_leaves_ce_unchanged(llama, contexts):
    """x̂ + (x − x̂) spliced at the hook must give the clean CE (to 1e-4)."""
    lm, module = llama
    torch.manual_seed(0)
    sae = build_autoencoder(AutoencoderConfig(arch="sae", d_in=32, d_sae=128)).eval()
    splice = splice_reconstruction(sae, keep_first=True)

    def with_error(hidden):
        x_hat = splice(hidden)
        return x_hat + (hidden - x_hat)

    with torch.no_grad():
        clean = mean_ce(lm, contexts)
        with intervene(lm, module, with_error):
            spliced = mean_ce(lm, contexts)
        with intervene(lm, module, splice):
            reconstructed = mean_ce(lm, contexts)
    assert spliced == pytest.approx(clean, abs=1e-4)
    assert abs(reconstructed - clean) > 1e-3  # the splice itself does change the model


def test_spliced_metrics_match_manual_ablation(llama, contexts, tiny_store):
    lm, module = llama
    store = ActivationStore(tiny_store)
    acts = torch.cat([c.acts for c in store.iter_chunks("model.layers.1", split="eval", skip_bos=True)])
    mean = acts.mean(0)
    full = PCA(AutoencoderConfig(arch="pca", d_in=32, d_sae=32)).fit([acts])  # exact reconstruction
    torch.manual_seed(0)
    random_sae = build_autoencoder(AutoencoderConfig(arch="sae", d_in=32, d_sae=64)).eval()
    results = spliced_metrics(lm, module, contexts, {"full": full, "random": random_sae}, mean, keep_first=True,
                              batch_size=4)

    def zero_after_bos(hidden):
        return torch.cat([hidden[:, :1], torch.zeros_like(hidden[:, 1:])], dim=1)

    with torch.no_grad():
        clean = mean_ce(lm, contexts)
        with intervene(lm, module, zero_after_bos):
            zero = mean_ce(lm, contexts)
    r = results["full"]
    assert r["ce_clean"] == pytest.approx(clean, abs=1e-5)
    assert r["ce_zero_ablated"] == pytest.approx(zero, abs=1e-5)
    assert r["ce_spliced"] == pytest.approx(clean, abs=1e-4)
    assert r["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-2)
    assert r["kl_clean_spliced"] == pytest.approx(0.0, abs=1e-5)
    assert r["n_predictions"] == contexts.numel() - len(contexts)
    s = results["random"]
    expected = (s["ce_zero_ablated"] - s["ce_spliced"]) / (s["ce_zero_ablated"] - s["ce_clean"])
    assert s["ce_loss_recovered"] == pytest.approx(expected)
    assert s["delta_ce"] == pytest.approx(s["ce_spliced"] - clean, abs=1e-5) and s["kl_clean_spliced"] > 1e-4


@pytest.fixture(scope="module")
def trained_sweep(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "sweep"
    cfg = TrainConfig(store=str(tiny_store), out=str(out), hook="resid.1", archs=("sae", "topk", "ae", "dae", "vae", "pca"),
                      ks=(4,), expansion=2, batch_size=256, tokens=256 * 8, lr=3e-3, norm_estimation_tokens=1024,
                      checkpoint_every_tokens=None)
    train(cfg, progress=False)
    return out


def test_evaluate_cli_writes_eval_json_and_a_table_for_all_five_baselines(trained_sweep, capsys):
    assert cli_main(["evaluate", "--run", str(trained_sweep), "--ce-contexts", "4", "--ce-batch-size", "4"]) == 0
    table = capsys.readouterr().out
    for name in ("sae-l1_5", "topk-k_4", "ae", "dae", "vae", "pca"):
        assert f"| {name} |" in table
        result = json.loads((trained_sweep / name / "eval.json").read_text())
        rec, sp = result["reconstruction"], result["spliced"]
        assert set(rec) == {"n_tokens", "mse", "fvu", "explained_variance", "l0", "l1", "dead_fraction", "dense_fraction"}
        assert rec["fvu"] == pytest.approx(1 - rec["explained_variance"])
        assert sp["n_contexts"] == 4 and {"ce_clean", "ce_spliced", "ce_zero_ablated", "ce_mean_ablated",
                                          "ce_loss_recovered", "delta_ce", "kl_clean_spliced"} <= set(sp)
    assert "| model | arch | d_sae | FVU |" in (trained_sweep / "eval.md").read_text()
    topk = json.loads((trained_sweep / "topk-k_4" / "eval.json").read_text())["reconstruction"]
    assert topk["l0"] <= 4


def test_evaluate_reuses_a_loaded_language_model(trained_sweep, tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    cfg = EvalConfig(run=str(trained_sweep / "topk-k_4"), model="/not/used/when/lm/is/given", ce_contexts=2)
    result = evaluate(cfg, lm=loaded)["topk-k_4"]
    assert result["spliced"]["n_contexts"] == 2 and result["language_model"] == loaded.spec


def test_evaluate_without_a_language_model(trained_sweep, tmp_path, capsys):
    cfg = EvalConfig(run=str(trained_sweep / "sae-l1_5"), model=str(tmp_path / "no-such-model"), eval_tokens=300)
    result = evaluate(cfg)["sae-l1_5"]
    assert result["spliced"] is None and "no-such-model" in result["spliced_skipped"]
    assert result["reconstruction"]["n_tokens"] == 300
    assert "spliced-model metrics skipped" in capsys.readouterr().err
