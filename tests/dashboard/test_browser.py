"""The dashboard's pages in real headless Chromium, from file://: they load with no console error and
no network request; the index searches, sorts and opens features; a feature page renders its
examples, histogram, logit effects and neighbours and moves between features; the feature map
renders and a click opens the feature; an index of 65,536 features (a synthetic analysis) stays
usable. Marked `browser`: skipped when Chromium or playwright is missing, except under CI=true."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import torch

from sae_kit.analysis.result import FeatureAnalysis
from sae_kit.dashboard.encoding import TokenCodes, decode_examples
from sae_kit.dashboard.site import SiteOptions, write_site_files
from sae_kit.lm.tokens import display_tokens
from tests.dashboard.conftest import (
    index_rows,
    read_data,
    records,
    site_info,
    vocab_texts,
)

pytestmark = pytest.mark.browser
WIDE = 65_536


def require_browser() -> None:
    """Skip without playwright or Chromium (a failure under CI=true, where both must be installed)."""
    from sae_kit.dashboard.browser import find_chromium

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


@pytest.fixture(scope="module")
def browser():
    from sae_kit.dashboard.browser import chromium

    require_browser()
    with chromium() as b:
        yield b


def open_page(browser, path: Path, fragment: str = ""):
    from sae_kit.dashboard.browser import open_page as open_

    return open_(browser, path, fragment)


def clean(log) -> None:
    assert log.errors == [], log.errors
    assert log.foreign == [] and log.failed == [], (log.foreign, log.failed)


def visible_ids(page) -> list[int]:
    return page.eval_on_selector_all("#features tbody tr[data-id]", "rows => rows.map(r => +r.dataset.id)")


def wait_total(page, n: int) -> None:
    page.wait_for_function(f"document.getElementById('features').dataset.total === '{n}'", timeout=10_000)


def test_every_page_loads_offline(tiny_site, tmp_path):
    """check_site (the demo report's screenshots): four pages, no console error, no request that
    leaves file://; every feature listed, the plots drawn, every example token rendered."""
    from sae_kit.dashboard.browser import check_site

    require_browser()
    built = json.loads((tiny_site / "site.json").read_text())["features"]
    report = check_site(tiny_site, feature=built[0], screenshots=tmp_path / "shots")
    assert [Path(p.url.split("#")[0]).name for p in report.pages] == ["index.html", "feature.html", "prompts.html", "map.html"]
    for page in report.pages:
        assert page.console_errors == [], page.url
        assert page.foreign_requests == [] and page.failed_requests == [], page.url
        assert Path(page.screenshot).stat().st_size > 10_000
    assert report.index.listed == len(built) and 0 < report.index.table_rows <= len(built)
    assert report.index.plots == 1 and report.feature.plots == 2 and report.map.plots == 1
    assert report.map.listed == len(built)
    rec, info = records(tiny_site)[built[0]], site_info(tiny_site)
    groups = decode_examples(rec["tokens"], rec["acts"], rec["where"], rec["scale"], info["context_width"],
                             info["position_width"])
    assert report.feature.tokens >= sum(len(ex["t"]) for group in groups for ex in group)
    prompts = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>',
                                   (tiny_site / "prompts.html").read_text(), re.DOTALL).group(1))
    assert report.prompts.tokens == sum(len(p["tokens"]) for p in prompts["prompts"])


def test_index_search_sort_and_open(browser, tiny_site, tiny_analysis):
    cols = index_rows(tiny_site)
    ids = cols["ids"]
    labels = [vocab_texts(tiny_site, c) for c in cols["labels"]]
    promoted = [vocab_texts(tiny_site, c) for c in cols["promoted"]]
    hay = [f"#{f} {' '.join(lab)} {' '.join(pro)} ".lower() for f, lab, pro in zip(ids, labels, promoted)]
    # a top token that few features share: searching for it lists exactly the features whose text holds it
    candidates = [t for lab in labels for t in lab if t.strip().isalnum()]
    query = min(candidates, key=lambda t: (sum(t.lower() in h for h in hay), t))
    expected = [f for f, h in zip(ids, hay) if query.lower() in h]
    page, log = open_page(browser, tiny_site / "index.html")
    page.fill("#search", query)
    wait_total(page, len(expected))
    assert visible_ids(page) == expected
    page.fill("#search", "")
    wait_total(page, len(ids))

    page.click("th[data-key=max]")  # largest first
    shown = visible_ids(page)
    maxima = [float(tiny_analysis.max_activation[f]) for f in shown]
    assert shown[0] == int(torch.argmax(tiny_analysis.max_activation)) and maxima == sorted(maxima, reverse=True)
    page.click("th[data-key=max]")  # again: smallest first
    shown = visible_ids(page)
    assert [float(tiny_analysis.max_activation[f]) for f in shown] == sorted(float(tiny_analysis.max_activation[f]) for f in shown)
    assert page.get_attribute("#features", "data-sort") == "max asc"

    target = expected[0]
    page.fill("#search", query)
    wait_total(page, len(expected))
    page.click(f"#features a[href='feature.html#{target}']")
    page.wait_for_url(f"**/feature.html#{target}")
    page.wait_for_selector("body[data-rendered='1']")
    assert page.inner_text("#feature-title") == f"Feature #{target}"
    clean(log)
    page.context.close()


def test_feature_page_examples_neighbours_and_navigation(browser, tiny_site):
    recs = records(tiny_site)
    f = sorted(recs)[5]
    rec = recs[f]
    page, log = open_page(browser, tiny_site / "feature.html", str(f))
    assert page.locator("#top-examples .example").count() == len(decode_examples(
        rec["tokens"], rec["acts"], rec["where"], rec["scale"], 1, 1)[0])
    assert page.locator("#hist-plot.js-plotly-plot").count() == 1 and page.locator("#logit-plot.js-plotly-plot").count() == 1
    assert page.locator("#logit-lists .row").count() == len(rec["promoted_logits"]) + len(rec["suppressed_logits"])
    assert page.locator("details.band").count() == len(rec["bands"])
    rows = page.locator("#neighbours tr.neighbour")
    assert rows.count() == 10 == len(rec["neighbours"])
    assert rows.first.inner_text().split()[:2] == [f"#{rec['neighbours'][0]}", f"{rec['cosines'][0]:.3f}"]

    nearest = rec["neighbours"][0]
    page.click(f"#neighbours a[href='#{nearest}']")  # the hash changes; the page loads that feature's file
    page.wait_for_function(f"document.title === 'Feature {nearest} · sae-kit' && document.body.dataset.rendered === '1'")
    page.keyboard.press("ArrowRight")
    after = recs[nearest]["next"]
    page.wait_for_function(f"document.title === 'Feature {after} · sae-kit' && document.body.dataset.rendered === '1'")
    assert page.inner_text("#feature-title") == f"Feature #{after}"

    page.goto((tiny_site / "feature.html").as_uri() + "?f=3")
    page.wait_for_selector("body[data-rendered='1']")
    assert page.inner_text("#feature-title") == "Feature #3"
    page.goto((tiny_site / "feature.html").as_uri() + "#999")
    page.wait_for_selector("body[data-rendered='1']")
    assert "There is no feature 999" in page.inner_text("#missing")
    clean(log)
    page.context.close()


def test_explanations_search_and_features_outside_the_site(browser, explained_analysis, tmp_path):
    from sae_kit.dashboard import build_site

    site = build_site(explained_analysis, tmp_path / "site", features=list(range(12)), progress=False)
    page, log = open_page(browser, site / "index.html")
    page.fill("#search", "zebras")
    wait_total(page, 1)
    assert visible_ids(page) == [3]
    assert "feature 3 likes zebras" in page.inner_text("#features tbody")
    page.goto((site / "feature.html").as_uri() + "#3")
    page.wait_for_selector("body[data-rendered='1']")
    text = page.inner_text("#explanation")
    assert "feature 3 likes zebras" in text and "detection 0.53 (n=20)" in text and "fuzzing 0.6 (n=20)" in text
    outside = [n for n in records(site)[3]["neighbours"] if n >= 12]
    assert outside and page.locator(f"#neighbours a[href='#{outside[0]}']").count() == 0  # listed, not linked
    page.goto((site / "feature.html").as_uri() + "#20")
    page.wait_for_selector("body[data-rendered='1']")
    assert "not in this site" in page.inner_text("#missing")
    clean(log)
    page.context.close()


def test_feature_map_hover_and_click(browser, tiny_site):
    cols = index_rows(tiny_site)
    m = read_data(tiny_site / "data" / "map.js")[2]
    i = max(range(len(m["x"])), key=lambda j: m["x"][j])  # the rightmost point: nothing overlaps it
    page, log = open_page(browser, tiny_site / "map.html")
    assert page.get_attribute("#map-plot", "data-points") == str(len(cols["ids"]))
    x, y = page.evaluate("""(i) => { const gd = document.getElementById('map-plot'), L = gd._fullLayout, t = gd._fullData[0];
        const box = gd.getBoundingClientRect();
        return [box.left + L.xaxis._offset + L.xaxis.l2p(t.x[i]), box.top + L.yaxis._offset + L.yaxis.l2p(t.y[i])]; }""", i)
    page.mouse.move(x, y)
    page.wait_for_selector(".hoverlayer .hovertext")
    assert f"#{cols['ids'][i]}" in page.text_content(".hoverlayer")
    page.mouse.click(x, y)
    page.wait_for_url(f"**/feature.html#{cols['ids'][i]}")
    page.wait_for_selector("body[data-rendered='1']")
    assert page.inner_text("#feature-title") == f"Feature #{cols['ids'][i]}"
    clean(log)
    page.context.close()


# ----------------------------------------------------------------------------- 65,536 features


@pytest.fixture(scope="module")
def wide_site(tmp_path_factory, tiny_tokenizer):
    """The index side of a site (index, vocabulary, map, site.js, pages) for a synthetic analysis of
    65,536 features, written by the same code as build_site. One token (PLANTED) is the label of
    feature 4242 alone, and one explanation names 'zanzibar'."""
    F, H = WIDE, 16
    g = torch.Generator().manual_seed(0)
    n_tokens = 1_000_000
    fire_count = torch.randint(0, 20_000, (F,), generator=g)
    fire_count[::97] = 0  # some dead features
    max_activation = torch.rand(F, generator=g) * 10 * (fire_count > 0)
    hist = torch.randint(0, 50, (F, H), generator=g) * (fire_count > 0)[:, None]
    vocab = len(tiny_tokenizer)
    planted = vocab - 1
    labels = torch.randint(3, vocab - 1, (F, 4), generator=g)
    labels[4242] = torch.tensor([planted, -1, -1, -1])
    one = torch.zeros(F, 1)
    analysis = FeatureAnalysis(
        path=tmp_path_factory.mktemp("wide-analysis"), info={"n_tokens": n_tokens, "top_k": 1, "n_quantiles": 1,
                                                              "run": None, "store": "", "hook": "h", "model": "m"},
        density=fire_count / n_tokens, fire_count=fire_count, max_activation=max_activation,
        mean_nonzero=max_activation / 3, top_values=one, top_indices=one.long(), band_values=one[:, :, None],
        band_indices=one.long()[:, :, None], band_counts=one.long(), band_lower=one, band_upper=one,
        hist_counts=hist, hist_upper=max_activation * 2, promoted_ids=torch.randint(3, vocab - 1, (F, 10), generator=g),
        promoted_logits=torch.rand(F, 10, generator=g), suppressed_ids=torch.randint(3, vocab - 1, (F, 10), generator=g),
        suppressed_logits=-torch.rand(F, 10, generator=g))
    built = (fire_count > 0).nonzero().squeeze(1)
    explanations = {int(f): {"explanation": f"pattern {int(f) % 500}"} for f in built[:30_000]}
    explanations[int(built[20_000])] = {"explanation": "mentions of zanzibar", "detection": {"balanced_accuracy": 0.9, "n": 4}}
    codes = TokenCodes.from_counts(torch.randint(0, 100, (vocab,), generator=g).numpy())
    out = tmp_path_factory.mktemp("wide") / "site"
    started = time.perf_counter()
    write_site_files(out, analysis, built, labels=labels, codes=codes, used=torch.zeros(vocab, dtype=torch.bool).numpy(),
                     tokenizer=tiny_tokenizer, explanations=explanations, W_dec=torch.randn(F, 16, generator=g),
                     info={"run": None, "store": "", "hook": "h", "model": "m", "analysis": "", "built": len(built)},
                     widths={"context_width": 1, "position_width": 1}, opts=SiteOptions(), prompts={"prompts": []})
    (out / "site.json").write_text(json.dumps({"format": "sae-kit-dashboard", "features": built.tolist(),
                                               "options": SiteOptions().to_dict()}))
    written = time.perf_counter() - started
    return {"site": out, "built": built, "planted": display_tokens(tiny_tokenizer, [planted])[planted],
            "zanzibar": int(built[20_000]), "analysis": analysis, "seconds": written}


def test_index_of_65536_features_loads_searches_and_sorts(browser, wide_site):
    site, built = wide_site["site"], wide_site["built"]
    started = time.perf_counter()
    page, log = open_page(browser, site / "index.html")
    loaded = time.perf_counter() - started
    assert page.get_attribute("#features", "data-total") == str(len(built))
    assert 10 < len(visible_ids(page)) < 200  # virtual scrolling: only the rows in view are drawn

    started = time.perf_counter()
    page.fill("#search", wide_site["planted"])  # a token only feature 4242's label holds
    wait_total(page, 1)
    searched = time.perf_counter() - started
    assert visible_ids(page) == [4242]
    page.fill("#search", "zanzibar")  # an explanation
    wait_total(page, 1)
    assert visible_ids(page) == [wide_site["zanzibar"]]
    page.fill("#search", "")
    wait_total(page, len(built))

    started = time.perf_counter()
    page.click("th[data-key=density]")
    sorted_in = time.perf_counter() - started
    density = wide_site["analysis"].density
    shown = visible_ids(page)
    assert density[shown[0]] == density[built].max()
    assert [float(density[f]) for f in shown] == sorted((float(density[f]) for f in shown), reverse=True)
    page.evaluate("document.getElementById('table-scroll').scrollTop = 1e9")  # the far end of the table
    page.wait_for_function("document.querySelectorAll('#features tbody tr[data-id]').length > 10")
    page.wait_for_timeout(200)
    last = visible_ids(page)[-1]
    assert density[last] == density[built].min()
    href = page.get_attribute(f"#features a[href='feature.html#{last}']", "href")
    assert href == f"feature.html#{last}"
    clean(log)
    page.context.close()
    # timings are the benchmark's job (scripts/bench/dashboard.py --browser); printed here for the log
    print(f"65,536-feature index: loaded in {loaded:.2f} s, search {searched:.2f} s, sort {sorted_in:.2f} s")


def test_feature_map_of_65536_features(browser, wide_site):
    page, log = open_page(browser, wide_site["site"] / "map.html")
    assert page.get_attribute("#map-plot", "data-points") == str(len(wide_site["built"]))
    assert page.locator("#map-plot.js-plotly-plot").count() == 1
    clean(log)
    page.context.close()
