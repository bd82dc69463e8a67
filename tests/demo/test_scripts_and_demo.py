"""The example scripts in their quick forms, and `sae-kit demo --quick` end to end (slow: real model)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_harvest_layers_quick(tmp_path, tiny_llama_dir, capsys):
    store = load_script("harvest_layers").main(["--quick", "--model", str(tiny_llama_dir), "--every", "1", "--mlp",
                                                "--out", str(tmp_path / "layers")])
    assert [h["requested"] for h in store.manifest["hooks"]] == ["resid.0", "resid.1", "resid.2",
                                                                  "mlp.0", "mlp.1", "mlp.2"]
    assert store.n_tokens == 2048 and store.manifest["hooks"][0]["dtype"] == "bfloat16"
    assert "mean ‖x‖" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_quick_end_to_end_and_resume(tmp_path):
    from sae_kit.demo import STAGES, quick_config, run_demo

    cfg = quick_config(work=str(tmp_path / "work"), report=str(tmp_path / "report"))
    report = run_demo(cfg, progress=False)
    state = json.loads((tmp_path / "work" / "demo-state.json").read_text())
    assert list(state["stages"]) == list(STAGES)
    text = (report / "README.md").read_text()
    for label in ("L1 sparse AE", "dense AE", "denoising AE", "VAE", "PCA"):
        assert f"| {label} (" in text
    summary = json.loads((report / "summary.json").read_text())
    assert {m["arch"] for m in summary["models"].values()} == {"sae", "ae", "dae", "vae", "pca"}
    sae = next(m for m in summary["models"].values() if m["arch"] == "sae")
    assert 0 < sae["fvu"] < 1 and 0 < sae["l0"] < 2 * 576 and sae["ce_loss_recovered"] is not None
    assert (report / "dashboard" / "index.html").is_file()
    assert json.loads((report / "dashboard" / "site.json").read_text())["features"] == sorted(summary["gallery"])
    assert f"(dashboard/feature.html#{summary['gallery'][0]})" in text
    assert summary["steered"] and (report / "steering" / f"feature-{summary['steered'][0]}" / "report.md").is_file()
    assert (report / "figures" / "training_curves.html").is_file()
    for html in report.rglob("*.html"):  # offline: no CDN anywhere in the report
        assert "cdn.plot.ly" not in html.read_text() and "https://cdn" not in html.read_text()

    # resume: every stage is kept (no file is written again); dropping one stage re-runs only that one
    def written() -> dict[str, int]:
        return {str(f): f.stat().st_mtime_ns for root in (tmp_path / "work", report) for f in root.rglob("*")
                if f.is_file()}

    before = written()
    run_demo(cfg, progress=False)
    assert written() == before
    del state["stages"]["report"]
    (tmp_path / "work" / "demo-state.json").write_text(json.dumps(state))
    (report / "README.md").unlink()
    run_demo(cfg, progress=False)
    assert (report / "README.md").is_file()

    from sae_kit.errors import SaeKitError

    with pytest.raises(SaeKitError, match="other settings"):
        run_demo(quick_config(work=str(tmp_path / "work"), report=str(tmp_path / "report"), tokens=4096))
