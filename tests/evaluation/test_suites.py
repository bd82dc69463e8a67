"""`sae-kit evaluate --suite probing,absorption` end to end on the tiny store and Llama, and
`scripts/evaluation_suite.py --quick` over the same sweep."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sae_kit.cli import main as cli_main
from sae_kit.evaluation.core import LATENTS_FILE
from sae_kit.training import train
from sae_kit.training.recipe import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("sae-l1_5", "topk-k_4", "pca")
RECONSTRUCTION_KEYS = {"n_tokens", "mse", "fvu", "explained_variance", "l0", "l1", "dead_fraction", "dense_fraction"}
CORE_KEYS = {"cossim", "l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias", "explained_variance",
             "explained_variance_legacy", "frac_alive", "freq_over_1_percent", "freq_over_10_percent",
             "normalized_freq_over_1_percent", "normalized_freq_over_10_percent", "average_max_encoder_cosine_sim",
             "average_max_decoder_cosine_sim", "encoder_decoder_cosine_sim", "feature_density_histogram"}
QUICK_FLAGS = ["--ce-contexts", "2", "--ce-batch-size", "2", "--probe-train-size", "40", "--probe-test-size", "20",
               "--probe-context-len", "32", "--probe-k", "1,2,5"]


@pytest.fixture(scope="module")
def sweep(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("suites") / "sweep"
    train(TrainConfig(store=str(tiny_store), out=str(out), hook="resid.1", archs=("sae", "topk", "pca"), ks=(4,),
                      expansion=2, batch_size=256, tokens=256 * 4, lr=3e-3, norm_estimation_tokens=1024,
                      checkpoint_every_tokens=None), progress=False)
    return out


def test_evaluate_cli_runs_probing_and_absorption_for_every_model(sweep, capsys):
    assert cli_main(["evaluate", "--run", str(sweep), "--suite", "probing", "--suite", "absorption", *QUICK_FLAGS]) == 0
    captured = capsys.readouterr()
    # the tiny tokenizer has 52 one-letter words: the first-letter task says why it cannot run
    assert "absorption skipped: first-letter task" in captured.err and "too small" in captured.err
    raw = None
    for name in NAMES:
        r = json.loads((sweep / name / "eval.json").read_text())
        assert set(r["reconstruction"]) == RECONSTRUCTION_KEYS  # the existing keys, exactly
        assert {"run", "name", "arch", "d_sae", "store", "hook", "split", "spliced", "eval_config"} <= set(r)
        assert r["suites"] == ["core", "probing", "absorption"]
        assert CORE_KEYS <= set(r["core"]) and r["core"]["explained_variance"] == pytest.approx(
            r["reconstruction"]["explained_variance"])
        latents = load_file(sweep / name / LATENTS_FILE)
        assert all(t.shape == (r["d_sae"],) for t in latents.values())
        p = r["probing"]
        assert p["k"] == [1, 2, 5] and len(p["tasks"]) == 6
        assert set(p["datasets"]) == {"python-docs/package", "python-docs/prose-vs-code"}
        assert all(0 <= v <= 1 for v in p["mean"].values())
        llm = {k: v for k, v in p["mean"].items() if k.startswith("llm_")}
        assert raw is None or llm == raw  # the raw-activation ceiling is shared by every model
        raw = llm
        assert r["absorption"] is None and "too small" in r["absorption_skipped"]
    table = (sweep / "eval.md").read_text()
    assert "## Core metrics" in table and "## Sparse probing" in table and "| raw activations (ceiling) |" in table
    assert "## Feature absorption (first letter)\n\nSkipped:" in table


def test_unknown_suites_are_refused_with_a_pointer(sweep, capsys):
    assert cli_main(["evaluate", "--run", str(sweep), "--suite", "autointerp"]) == 1
    assert "sae-kit explain" in capsys.readouterr().err


def test_evaluation_suite_script_quick(sweep, tmp_path, tiny_llama_dir):
    spec = importlib.util.spec_from_file_location("evaluation_suite", ROOT / "scripts" / "evaluation_suite.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "suite"
    summary = script.main(["--run", str(sweep), "--quick", "--out", str(out), "--model", str(tiny_llama_dir),
                           "--autointerp"])
    text = (out / "evaluation_suite.md").read_text()
    assert "| raw activations (ceiling) |" in text and all(f"| {name} |" in text for name in NAMES)
    assert "probe top-1" in text and "absorption frac." in text
    assert "- absorption: skipped" in text and "- autointerp: " in text
    assert summary["autointerp"].startswith(("not available", "no --analysis"))
    for figure in ("probing", "core"):
        html = (out / "figures" / f"{figure}.html").read_text()
        assert "../plotly.min.js" in html and "cdn.plot.ly" not in html
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    ceiling = summary["rows"][-1]
    assert ceiling["model"] == "raw activations (ceiling)" and 0 <= ceiling["probe_all"] <= 1
    assert json.loads((out / "evaluation_suite.json").read_text())["rows"] == json.loads(json.dumps(summary["rows"]))
    # --from-eval tabulates the eval.json files just written, evaluating nothing
    again = script.main(["--run", str(sweep), "--from-eval", "--out", str(tmp_path / "again")])
    assert json.loads(json.dumps(again["rows"])) == json.loads(json.dumps(summary["rows"]))
