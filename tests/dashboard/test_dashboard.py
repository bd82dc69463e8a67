"""The dashboard site: structure, offline assets, escaping, token display, the CLI, the example
script, and a real headless-Chromium check of every page type (marked `browser`: skipped when
no Chromium is installed, except under CI=true where that is a failure)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae_kit.cli import main
from sae_kit.dashboard import build_site
from sae_kit.dashboard.pages import embed_json
from sae_kit.errors import SaeKitError
from sae_kit.lm.tokens import display_tokens, make_visible

REPO = Path(__file__).resolve().parents[2]
DATA = re.compile(r'<script id="data" type="application/json">(.*?)</script>', re.S)


def page_data(path: Path) -> dict:
    match = DATA.search(path.read_text(encoding="utf-8"))
    assert match, path
    return json.loads(match.group(1))


@pytest.fixture(scope="session")
def tiny_site(tiny_analysis, tmp_path_factory):  # noqa: F811
    return build_site(tiny_analysis.path, tmp_path_factory.mktemp("site") / "site", top=12, before=5, after=3,
                      prompts=["def add(a, b):\n    return a < b"], prompt_contexts=2, progress=False)


def test_site_structure_and_offline_assets(tiny_site, tiny_analysis):  # noqa: F811
    manifest = json.loads((tiny_site / "site.json").read_text())
    built = manifest["features"]
    assert manifest["format"] == "sae-kit-dashboard" and len(built) == 12
    assert built == [f for f in sorted(range(tiny_analysis.n_features), key=lambda f: -float(tiny_analysis.max_activation[f]))
                     if tiny_analysis.fire_count[f] > 0][:12]
    assert sorted(int(p.stem) for p in (tiny_site / "features").glob("*.html")) == sorted(built)
    plotly_js = list(tiny_site.rglob("plotly*.js"))
    assert [p.relative_to(tiny_site).as_posix() for p in plotly_js] == ["assets/plotly.min.js"]  # written once
    assert plotly_js[0].stat().st_size > 1_000_000
    for page in [tiny_site / "index.html", tiny_site / "prompts.html", *(tiny_site / "features").glob("*.html")]:
        html = page.read_text(encoding="utf-8")
        assert not re.search(r"(src|href)=\"(https?:)?//", html), page  # nothing from the network
        assert "cdn" not in html.lower(), page
    index = page_data(tiny_site / "index.html")
    assert [row["id"] for row in index["rows"]] == built
    assert index["summary"]["n_features"] == tiny_analysis.n_features


def test_feature_page_content(tiny_site, tiny_analysis):  # noqa: F811
    a = tiny_analysis
    f = json.loads((tiny_site / "site.json").read_text())["features"][0]
    data = page_data(tiny_site / "features" / f"{f}.html")
    assert data["id"] == f and data["max"] == pytest.approx(float(a.max_activation[f]))
    assert len(data["top"]) == min(a.top_k, int(a.fire_count[f]))
    centre_values = [ex["a"][ex["c"]] for ex in data["top"]]
    assert centre_values == pytest.approx(a.top_values[f, : len(centre_values)].tolist(), rel=1e-3)
    assert [ex["i"] for ex in data["top"]] == a.top_indices[f, : len(centre_values)].tolist()
    for ex in data["top"]:
        assert len(ex["t"]) == len(ex["a"]) and 0 <= ex["c"] < len(ex["t"]) and len(ex["t"]) <= 5 + 1 + 3
    assert [b["q"] for b in data["bands"]] == list(reversed(range(a.n_quantiles)))
    assert sum(b["count"] for b in data["bands"]) == int(a.fire_count[f])
    assert data["hist"]["data"][0]["type"] == "bar" and sum(data["hist"]["data"][0]["y"]) == int(a.fire_count[f])
    assert len(data["promoted"]) == 10 and data["logits"]["data"][0]["orientation"] == "h"
    prompts = page_data(tiny_site / "prompts.html")
    assert [p["title"] for p in prompts["prompts"]][:2] == ["Stored context 0", "Stored context 1"]
    assert prompts["prompts"][2]["tokens"][0]["t"] == "<bos>" and len(prompts["prompts"]) == 3


def test_embedded_text_cannot_break_out_of_the_page(tiny_site):
    hostile = {"t": ["</script><script>alert(1)</script>", "a & b", "\u2028"]}
    text = embed_json(hostile)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == hostile
    # Every page: the data block is valid JSON and the token "<bos>" never appears raw in it.
    for page in [tiny_site / "prompts.html", *(tiny_site / "features").glob("*.html")]:
        raw = DATA.search(page.read_text(encoding="utf-8")).group(1)
        assert "<bos>" not in raw and "\\u003cbos\\u003e" in raw, page


def test_tokens_are_shown_as_the_tokenizer_renders_them(tiny_tokenizer):
    ids = tiny_tokenizer(" the\n\tx", add_special_tokens=False)["input_ids"]
    names = display_tokens(tiny_tokenizer, ids)
    joined = "".join(names[i] for i in ids)
    assert joined == " the↵⇥x"  # leading space kept, newline and tab visible
    euro = tiny_tokenizer("€", add_special_tokens=False)["input_ids"]  # 3 bytes, split by byte-level BPE
    pieces = display_tokens(tiny_tokenizer, euro)
    assert "".join(pieces[i] for i in euro) in ("€", "\\xe2\\x82\\xac")
    assert all("\ufffd" not in pieces[i] for i in euro)
    assert make_visible("a\x00\r") == "a\\x00␍"


def test_dashboard_cli_and_errors(tiny_analysis, tmp_path, capsys, monkeypatch):  # noqa: F811
    import sae_kit.dashboard.site

    monkeypatch.setattr(sae_kit.dashboard.site, "CHUNK", 2)  # windows computed two features at a time
    out = tmp_path / "site"
    assert main(["dashboard", "--analysis", str(tiny_analysis.path), "--out", str(out), "--features", "0-3,7",
                 "--prompt-contexts", "0"]) == 0
    assert json.loads((out / "site.json").read_text())["features"] == [0, 1, 2, 3, 7]
    assert [row["id"] for row in page_data(out / "index.html")["rows"]] == [0, 1, 2, 3, 7]
    neighbours = [(page_data(out / "features" / f"{f}.html")["prev"], page_data(out / "features" / f"{f}.html")["next"])
                  for f in (0, 3, 7)]
    assert neighbours == [(None, 1), (2, 7), (3, None)]
    assert page_data(out / "prompts.html")["prompts"] == []
    capsys.readouterr()
    assert main(["dashboard", "--analysis", str(tiny_analysis.path), "--out", str(out), "--features", "3"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["dashboard", "--analysis", str(tiny_analysis.path), "--out", str(out), "--features", "999",
                 "--overwrite"]) == 1
    assert "out of range" in capsys.readouterr().err
    with pytest.raises(SaeKitError, match="no feature matches"):
        build_site(tiny_analysis.path, tmp_path / "empty", top=5, min_density=0.9, progress=False)


def test_build_dashboards_script_quick(tiny_llama_dir, tmp_path):
    """The example script end to end (harvest, train, analyze, build) at its --quick size."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "build_dashboards.py"), "--quick", "--model",
                             str(tiny_llama_dir), "--hook", "resid.1", "--work", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    site = tmp_path / "site"
    manifest = json.loads((site / "site.json").read_text())
    assert manifest["features"] and (site / "index.html").is_file()
    assert f"{site / 'index.html'}" in result.stdout


@pytest.mark.browser
def test_site_in_headless_chromium(tiny_site, tmp_path):
    """Index, a feature page and the prompt view load from file:// with no console error and no
    network request; one table row per feature; the plots and tokens render; screenshots saved."""
    from sae_kit.dashboard.browser import check_site, find_chromium

    missing = None
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing = "playwright is not installed (pip install playwright; no browser download needed)"
    if find_chromium() is None:
        missing = "no chromium is installed (apt-get install -y chromium)"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {missing}")
        pytest.skip(missing)
    built = json.loads((tiny_site / "site.json").read_text())["features"]
    report = check_site(tiny_site, feature=built[0], screenshots=tmp_path / "shots")
    for page in report.pages:
        assert page.console_errors == [], page.url
        assert page.foreign_requests == [] and page.failed_requests == [], page.url
        assert Path(page.screenshot).stat().st_size > 10_000
    assert report.index.table_rows == len(built)
    assert report.index.plots == 1 and report.feature.plots == 2
    feature_data = page_data(tiny_site / "features" / f"{built[0]}.html")
    shown_tokens = sum(len(ex["t"]) for ex in feature_data["top"]) + sum(len(ex["t"]) for b in feature_data["bands"]
                                                                      for ex in b["examples"])
    assert report.feature.tokens >= shown_tokens
    assert report.prompts.tokens == sum(len(p["tokens"]) for p in page_data(tiny_site / "prompts.html")["prompts"])
    assert torch.tensor([p.tokens for p in report.pages]).gt(0).all()
