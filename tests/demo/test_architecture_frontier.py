"""scripts/architecture_frontier.py --quick on the tiny store: every architecture at three
sparsity levels in one pass, evaluated, the report written (README, figures, results.json)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("architecture_frontier", ROOT / "scripts" / "architecture_frontier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frontier_quick_writes_the_report(tiny_store, tmp_path):
    script = load_script()
    payload = script.main(["--store", str(tiny_store), "--hook", "resid.1", "--work", str(tmp_path / "work"),
                           "--report", str(tmp_path / "report"), "--quick"])
    rows = payload["rows"]
    by_arch = {arch: [r for r in rows if r["arch"] == arch] for arch in script.ARCHS}
    assert all(len(mine) == 3 for mine in by_arch.values()), {a: len(m) for a, m in by_arch.items()}
    assert all(r["ce_loss_recovered"] is not None and 0 <= r["dead_fraction"] <= 1 for r in rows)
    for arch in ("topk", "batchtopk", "matryoshka"):  # k = 2, 4, 8: sparser with smaller k
        l0 = [r["l0"] for r in sorted(by_arch[arch], key=lambda r: r["sweep"])]
        assert l0 == sorted(l0) or arch != "topk", (arch, l0)
    report = tmp_path / "report"
    readme = (report / "README.md").read_text()
    for text in ("## At L0 ≈ 32 and ≈ 64", "## Every model", "## Training time", "SAEBench", "figures/fvu_vs_l0.html"):
        assert text in readme, text
    assert (report / "figures" / "fvu_vs_l0.html").is_file() and (report / "figures" / "ce_recovered_vs_l0.html").is_file()
    assert (report / "plotly.min.js").is_file()
    assert set(payload["ms_per_step"]) == set(script.ARCHS) and all(v > 0 for v in payload["ms_per_step"].values())
    assert json.loads((report / "results.json").read_text())["rows"] == json.loads(json.dumps(rows))


def test_values_at_a_target_l0_are_interpolated_in_log_l0_or_the_nearest():
    script = load_script()
    rows = [{"l0": 16.0, "fvu": 0.4}, {"l0": 64.0, "fvu": 0.2}, {"l0": 256.0, "fvu": None}]
    value, how = script.at_l0(rows, 32, "fvu")
    assert how == "interpolated" and value == pytest.approx(0.3)  # log 32 is halfway between log 16 and log 64
    value, how = script.at_l0(rows, 100, "fvu")
    assert (value, how) == (0.2, "nearest, L0 64")
    assert script.at_l0([], 32, "fvu") == (None, "-")
    assert math.isclose(script.at_l0(rows, 64, "fvu")[0], 0.2)
