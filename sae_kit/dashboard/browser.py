"""Open a built site in headless Chromium and report what a person would see (tests, screenshots).

Uses playwright's Python API with the system's Chromium (Debian: `apt-get install chromium`);
playwright's own browser download is never used. Each page is loaded from file:// with every
request recorded, so a page that reaches for the network is caught.

    report = check_site(SITE, screenshots="shots")        # index, a feature, the prompt view, the map
    with chromium() as browser:                           # drive pages yourself (the tests do)
        page, log = open_page(browser, SITE / "index.html")
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sae_kit.errors import SaeKitError

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
RENDER_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class PageReport:
    """What loading one page showed."""

    url: str
    """The file:// URL loaded."""
    console_errors: list[str]
    """Console messages of type error, and uncaught page errors."""
    foreign_requests: list[str]
    """Requests to anything other than file:// or data: (should be none)."""
    failed_requests: list[str]
    """Requests that failed (a missing local file, for instance)."""
    table_rows: int
    """Rows drawn in the index table (virtual scrolling draws only those in view; 0 on other pages)."""
    plots: int
    """Rendered plotly figures (elements with class js-plotly-plot)."""
    tokens: int
    """Rendered token spans."""
    screenshot: str | None = None
    """Where the screenshot was saved, if one was asked for."""
    listed: int = 0
    """Features the index lists (all rows, drawn or not) or the map shows as points."""
    seconds: float = 0.0
    """From navigation to the page saying it has rendered."""


@dataclass(frozen=True)
class SiteReport:
    """The page types of a site."""

    index: PageReport
    """SITE/index.html."""
    feature: PageReport
    """SITE/feature.html#<id>."""
    prompts: PageReport
    """SITE/prompts.html."""
    map: PageReport | None = None
    """SITE/map.html (None when the site has no feature map)."""
    pages: list[PageReport] = field(default_factory=list)
    """All of them, in that order."""


@dataclass
class PageLog:
    """Console errors and requests of one open page, recorded as they happen."""

    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def find_chromium() -> str | None:
    """Path of a system Chromium, from $CHROMIUM or the usual Debian/Ubuntu locations."""
    candidates = [os.environ.get("CHROMIUM", "")] + list(CHROMIUM_CANDIDATES) + [shutil.which("chromium") or ""]
    return next((c for c in candidates if c and Path(c).is_file()), None)


@contextmanager
def chromium():
    """A headless system Chromium driven by playwright; closed on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SaeKitError("checking a site in a browser needs playwright: pip install playwright "
                          "(its browser download is not needed; the system chromium is used)") from None
    executable = find_chromium()
    if executable is None:
        raise SaeKitError("no chromium found; install it (Debian: apt-get install -y chromium) or set $CHROMIUM")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, path: Path, fragment: str = "", width: int = 1280, height: int = 900):
    """Load SITE/page (+ '#fragment') in a new context and wait until it says it has rendered.
    Returns (page, PageLog); close with page.context.close()."""
    path = Path(path).resolve()
    if not path.is_file():
        raise SaeKitError(f"{path} does not exist")
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    log = PageLog()
    page.on("console", lambda msg: log.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: log.errors.append(str(exc)))
    page.on("request", lambda req: log.foreign.append(req.url) if not req.url.startswith(("file://", "data:")) else None)
    page.on("requestfailed", lambda req: log.failed.append(req.url))
    page.goto(path.as_uri() + (f"#{fragment}" if fragment else ""), wait_until="load")
    wait_rendered(page)
    return page, log


def wait_rendered(page) -> None:
    """Wait for body[data-rendered='1'] (set once the page has loaded its data and drawn it)."""
    page.wait_for_selector("body[data-rendered='1']", timeout=RENDER_TIMEOUT_MS, state="attached")


def check_site(site: str | Path, feature: int | None = None, screenshots: str | Path | None = None,
               width: int = 1280, height: int = 900) -> SiteReport:
    """Load index.html, feature.html#<feature> (default: the first built), prompts.html and (when
    built) map.html headless; optionally save index.png, feature.png, prompts.png and map.png
    into `screenshots`."""
    site = Path(site).resolve()
    manifest = site / "site.json"
    if not manifest.is_file():
        raise SaeKitError(f"{site} is not a dashboard site (no site.json)")
    info = json.loads(manifest.read_text())
    if feature is None:
        if not info.get("features"):
            raise SaeKitError(f"{site} holds no feature")
        feature = int(info["features"][0])
    targets = [("index", "index.html", ""), ("feature", "feature.html", str(feature)), ("prompts", "prompts.html", "")]
    if info.get("options", {}).get("feature_map", False):
        targets.append(("map", "map.html", ""))
    out = Path(screenshots) if screenshots else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    reports = []
    with chromium() as browser:
        for name, file, fragment in targets:
            reports.append(_report(browser, site / file, fragment, out / f"{name}.png" if out else None, width, height))
    return SiteReport(index=reports[0], feature=reports[1], prompts=reports[2],
                      map=reports[3] if len(reports) > 3 else None, pages=reports)


def _report(browser, path: Path, fragment: str, screenshot: Path | None, width: int, height: int) -> PageReport:
    started = time.perf_counter()
    page, log = open_page(browser, path, fragment, width, height)
    try:
        seconds = time.perf_counter() - started
        page.wait_for_timeout(300)  # let plotly finish laying out
        listed = page.evaluate("""() => { const t = document.querySelector('#features[data-total]');
            const m = document.querySelector('#map-plot[data-points]');
            return t ? +t.dataset.total : m ? +m.dataset.points : 0; }""")
        if screenshot:
            page.screenshot(path=str(screenshot), full_page=False)
        return PageReport(
            url=page.url, console_errors=list(log.errors), foreign_requests=list(log.foreign),
            failed_requests=list(log.failed), table_rows=page.locator("#features tbody tr:not(.spacer)").count(),
            plots=page.locator(".js-plotly-plot").count(), tokens=page.locator(".tok").count(),
            screenshot=str(screenshot) if screenshot else None, listed=int(listed), seconds=round(seconds, 2))
    finally:
        page.context.close()
