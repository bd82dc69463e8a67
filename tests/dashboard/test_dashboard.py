"""The dashboard site: layout, offline assets, the compact records decoded against the example
windows they encode, explanations, the CLI, the example script, and real pages in headless
Chromium (marked `browser`: skipped when no Chromium is installed, except under CI=true where
that is a failure): loading, search, sort, navigation, neighbours, the feature map, and an index
of 65,536 features."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae_kit.analysis import AnalysisConfig, analyze
from sae_kit.analysis.examples import example_windows
from sae_kit.analysis.neighbours import brute_force_neighbours
from sae_kit.cli import main
from sae_kit.dashboard import build_site
from sae_kit.dashboard.encoding import ACT_ZERO, decode_examples
from sae_kit.dashboard.pages import embed_json
from sae_kit.errors import SaeKitError
from sae_kit.lm.tokens import display_tokens, make_visible
from tests.dashboard.conftest import (
    index_rows,
    rank_texts,
    read_data,
    records,
    site_info,
    vocab_texts,
)

REPO = Path(__file__).resolve().parents[2]
TARGET_BYTES = 15_000


def test_site_layout_and_offline_assets(tiny_site, tiny_analysis):
    manifest = json.loads((tiny_site / "site.json").read_text())
    live = (tiny_analysis.fire_count > 0).nonzero().squeeze(1).tolist()
    assert manifest["format"] == "sae-kit-dashboard" and manifest["format_version"] == 2
    assert manifest["features"] == live  # --all is the default: every feature that fired, by id
    for name in ("index.html", "feature.html", "map.html", "prompts.html", "data/site.js", "data/vocab.js",
                 "data/index-000.js", "data/map.js"):
        assert (tiny_site / name).is_file(), name
    shards = sorted(int(p.stem.split("-")[1]) for p in (tiny_site / "data").glob("features-*.js"))
    assert shards == sorted({f // 16 for f in live}) and not (tiny_site / "features").exists()
    for file in (tiny_site / "data").glob("features-*.js"):
        kind, key, payload = read_data(file)
        assert kind == "features" and [r["id"] for r in payload] == [f for f in live if f // 16 == key]
    plotly_js = list(tiny_site.rglob("plotly*.js"))
    assert [p.relative_to(tiny_site).as_posix() for p in plotly_js] == ["assets/plotly.min.js"]  # written once
    assert plotly_js[0].stat().st_size > 1_000_000
    for page in tiny_site.glob("*.html"):
        html = page.read_text(encoding="utf-8")
        assert not re.search(r"(src|href)=\"(https?:)?//", html), page  # nothing from the network
        assert "cdn" not in html.lower(), page
    for script in [*(tiny_site / "assets").glob("*.js"), *(tiny_site / "data").glob("*.js")]:
        if script.name == "plotly.min.js":
            continue
        text = script.read_text(encoding="utf-8")
        assert "fetch(" not in text and "XMLHttpRequest" not in text, script  # file:// forbids both
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), script
    cols = index_rows(tiny_site)
    assert cols["ids"] == live and cols["fires"] == tiny_analysis.fire_count[live].tolist()
    info = site_info(tiny_site)
    assert info["n_features"] == tiny_analysis.n_features and info["built"] == len(live)
    built = [f for f in range(info["n_features"]) if (info["alphabet"].index(info["built_bits"][f // 6]) >> (f % 6)) & 1]
    assert built == live


def test_records_decode_to_the_examples_they_encode(tiny_site, tiny_analysis, tiny_tokenizer):
    """Every record, decoded in Python exactly as site.js decodes it, gives back the example windows
    (tokens, activations within the code's step, context and position), bands, histogram, logit
    effects, labels and prev/next; its neighbours are the brute-force decoder-cosine ones."""
    from sae_kit.autoencoders import load_autoencoder

    a, info = tiny_analysis, site_info(tiny_site)
    recs = records(tiny_site)
    live = sorted(recs)
    sae = load_autoencoder(a.run)
    windows = example_windows(a, live, autoencoder=sae, before=5, after=3)
    k = a.top_k
    brute = brute_force_neighbours(sae.W_dec, n=10)
    cols = index_rows(tiny_site)
    for row, f in enumerate(live):
        rec = recs[f]
        groups = decode_examples(rec["tokens"], rec["acts"], rec["where"], rec["scale"], info["context_width"],
                                 info["position_width"])
        assert len(groups) == 1 + a.n_quantiles
        for g, examples in enumerate(groups):
            slots = [s for s in range(k * g, k * (g + 1)) if windows.centers[row, s] >= 0]
            assert len(examples) == len(slots)
            for ex, s in zip(examples, slots):
                present = windows.tokens[row, s] >= 0
                ids = windows.tokens[row, s][present]
                names = display_tokens(tiny_tokenizer, ids.tolist())
                assert rank_texts(tiny_site, ex["t"]) == [names[i] for i in ids.tolist()]
                values = windows.activations[row, s][present]
                assert torch.tensor(ex["a"]) == pytest.approx(values, abs=rec["scale"] / ACT_ZERO)
                assert ex["c"] == int(present[:5].sum()) and (ex["ctx"], ex["pos"]) == (
                    int(windows.contexts[row, s]), int(windows.positions[row, s]))
        top_centres = [ex["a"][ex["c"]] for ex in groups[0]]
        assert top_centres == pytest.approx(a.top_values[f, : len(top_centres)].tolist(), abs=rec["scale"] / ACT_ZERO)
        assert sum(b[2] for b in rec["bands"]) == int(a.fire_count[f]) == sum(rec["hist"]) == rec["fires"]
        assert [b[1] for b in rec["bands"]] == pytest.approx(a.band_upper[f].tolist(), rel=1e-3)
        promoted = display_tokens(tiny_tokenizer, a.promoted_ids[f].tolist())
        assert vocab_texts(tiny_site, rec["promoted"]) == [promoted[int(i)] for i in a.promoted_ids[f]]
        assert rec["promoted_logits"] == pytest.approx(a.promoted_logits[f].tolist(), rel=2e-3)
        assert rec["neighbours"] == brute.indices[f].tolist()
        assert rec["cosines"] == pytest.approx(brute.cosines[f].tolist(), abs=6e-4)
        assert (rec["prev"], rec["next"]) == (live[row - 1] if row else None, live[row + 1] if row + 1 < len(live) else None)
        # the label: distinct top-example tokens, strongest first (here computed the plain way)
        centre_ids = [int(t) for t in windows.tokens[row, :k, 5] if t >= 0]
        label = list(dict.fromkeys(centre_ids))[:4]
        names = display_tokens(tiny_tokenizer, label)
        assert vocab_texts(tiny_site, cols["labels"][row]) == [names[i] for i in label]


def test_embedded_text_cannot_break_out_of_the_page(tiny_site):
    hostile = {"t": ["</script><script>alert(1)</script>", "a & b", "\u2028"]}
    text = embed_json(hostile)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == hostile
    raw = re.search(r'<script id="data" type="application/json">(.*?)</script>',
                    (tiny_site / "prompts.html").read_text(encoding="utf-8"), re.DOTALL).group(1)
    assert "<bos>" not in raw and "\\u003cbos\\u003e" in raw
    prompts = json.loads(raw)["prompts"]
    assert [p["title"] for p in prompts][:2] == ["Stored context 0", "Stored context 1"] and len(prompts) == 3
    assert prompts[2]["tokens"][0]["t"] == "<bos>"


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


def test_explanations_and_scores_reach_the_records_and_index(explained_analysis, tmp_path):
    site = build_site(explained_analysis, tmp_path / "site", features=list(range(12)), progress=False)
    recs, cols = records(site), index_rows(site)
    assert recs[3]["explanation"] == "feature 3 likes zebras"
    assert recs[3]["scores"]["detection"] == {"balanced_accuracy": 0.53, "n": 20}
    assert "explanation" not in recs[10] and site_info(site)["explanations"] is True
    assert cols["explanation"][:4] == [f"feature {f} likes {'zebras' if f == 3 else 'tokens'}" for f in range(4)]
    assert cols["explanation"][10] == "" and cols["detection"][10] is None and cols["detection"][5] == 0.55
    for rec in recs.values():
        assert [e.startswith(f"feature {n} ") if n < 8 else e == ""
                for n, e in zip(rec["neighbours"], rec["neighbour_explanations"])] == [True] * len(rec["neighbours"])


def test_record_bytes_under_the_target(tiny_run, tmp_path):
    """With the default analysis (20 top examples, 10 bands of 20, 64 bins) and windows (10 + 1 + 4),
    every record stays under 15 KB, including those that fill ≥ 90 % of the 220 example slots (a
    sanity bound; scripts/bench/dashboard.py reports real sizes)."""
    analysis = analyze(AnalysisConfig(run=str(tiny_run), out=str(tmp_path / "A")), progress=False)
    site = build_site(analysis.path, tmp_path / "site", progress=False, prompt_contexts=0, feature_map=False)
    sizes = {}
    for file in (site / "data").glob("features-*.js"):
        for rec in read_data(file)[2]:
            sizes[rec["id"]] = len(json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    examples = (analysis.top_indices >= 0).sum(1) + (analysis.band_indices >= 0).flatten(1).sum(1)  # of 20 + 10 · 20
    full = [f for f in sizes if int(examples[f]) >= 0.9 * 220]
    assert len(full) >= 3  # features showing nearly every example slot: the largest records
    print("record bytes: max", max(sizes.values()), "mean of the fullest", sum(sizes[f] for f in full) / len(full))
    assert max(sizes.values()) <= TARGET_BYTES, max(sizes.values())
    assert sum(sizes[f] for f in full) / len(full) <= TARGET_BYTES


def test_dashboard_cli_and_errors(tiny_analysis, tmp_path, capsys, monkeypatch):
    import sae_kit.dashboard.site

    monkeypatch.setattr(sae_kit.dashboard.site, "CHUNK", 2)  # windows computed a shard at a time
    out = tmp_path / "site"
    assert main(["dashboard", "--analysis", str(tiny_analysis.path), "--out", str(out), "--features", "0-3,7,40",
                 "--prompt-contexts", "0", "--shard-features", "4", "--neighbours", "3", "--no-feature-map"]) == 0
    assert json.loads((out / "site.json").read_text())["features"] == [0, 1, 2, 3, 7, 40]
    assert sorted(p.name for p in (out / "data").glob("features-*.js")) == [
        "features-00000.js", "features-00001.js", "features-00010.js"]
    recs = records(out)
    assert [(recs[f]["prev"], recs[f]["next"]) for f in (0, 3, 7, 40)] == [(None, 1), (2, 7), (3, 40), (7, None)]
    assert all(len(r["neighbours"]) == 3 for r in recs.values()) and not (out / "data" / "map.js").exists()
    assert index_rows(out)["ids"] == [0, 1, 2, 3, 7, 40]
    capsys.readouterr()
    assert main(["dashboard", "--analysis", str(tiny_analysis.path), "--out", str(out), "--features", "3"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["dashboard", "--analysis", str(tiny_analysis.path), "--out", str(out), "--features", "999",
                 "--overwrite"]) == 1
    assert "out of range" in capsys.readouterr().err
    assert main(["dashboard", "--analysis", str(tiny_analysis.path), "--out", str(out), "--all", "--overwrite",
                 "--prompt-contexts", "0", "--before", "20", "--after", "5"]) == 0
    assert json.loads((out / "site.json").read_text())["features"] == (tiny_analysis.fire_count > 0).nonzero().squeeze(1).tolist()
    with pytest.raises(SaeKitError, match="no feature matches"):
        build_site(tiny_analysis.path, tmp_path / "empty", top=5, min_density=0.9, progress=False)
    with pytest.raises(SaeKitError, match="at most 91"):
        build_site(tiny_analysis.path, tmp_path / "wide", before=80, after=20, progress=False)


def test_build_dashboards_script_quick(tiny_llama_dir, tmp_path):
    """The example script end to end (harvest, train, analyze, build) at its --quick size."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "build_dashboards.py"), "--quick", "--model",
                             str(tiny_llama_dir), "--hook", "resid.1", "--work", str(tmp_path)],
                            check=False, capture_output=True, text=True, timeout=600, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    site = tmp_path / "site"
    manifest = json.loads((site / "site.json").read_text())
    assert manifest["features"] and (site / "index.html").is_file() and (site / "data" / "site.js").is_file()
    assert f"{site / 'index.html'}" in result.stdout
