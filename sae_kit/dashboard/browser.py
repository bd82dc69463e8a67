"""Open a built site in headless Chromium and report what a person would see (tests, screenshots).

Uses playwright's Python API with the system's Chromium (Debian: `apt-get install chromium`);
playwright's own browser download is never used. Each page is loaded from file:// with every
request recorded, so a page that reaches for the network is caught.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sae_kit.errors import SaeKitError

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


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
    """Rows in the index table (0 on other pages)."""
    plots: int
    """Rendered plotly figures (elements with class js-plotly-plot)."""
    tokens: int
    """Rendered token spans."""
    screenshot: str | None = None
    """Where the screenshot was saved, if one was asked for."""


@dataclass(frozen=True)
class SiteReport:
    """The three page types of a site."""

    index: PageReport
    """SITE/index.html."""
    feature: PageReport
    """One feature page."""
    prompts: PageReport
    """SITE/prompts.html."""
    pages: list[PageReport] = field(default_factory=list)
    """All three, in that order."""


def find_chromium() -> str | None:
    """Path of a system Chromium, from $CHROMIUM or the usual Debian/Ubuntu locations."""
    candidates = [os.environ.get("CHROMIUM", "")] + list(CHROMIUM_CANDIDATES) + [shutil.which("chromium") or ""]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def check_site(site: str | Path, feature: int | None = None, screenshots: str | Path | None = None,
               width: int = 1280, height: int = 900) -> SiteReport:
    """Load index.html, a feature page (`feature`, default the first built) and prompts.html
    headless; optionally save index.png, feature.png and prompts.png into `screenshots`."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise SaeKitError("checking a site in a browser needs playwright: pip install playwright "
                          "(its browser download is not needed; the system chromium is used)") from None
    chromium = find_chromium()
    if chromium is None:
        raise SaeKitError("no chromium found; install it (Debian: apt-get install -y chromium) or set $CHROMIUM")
    site = Path(site).resolve()
    if feature is None:
        pages = sorted((site / "features").glob("*.html"), key=lambda p: int(p.stem))
        if not pages:
            raise SaeKitError(f"{site} has no feature pages")
        feature = int(pages[0].stem)
    targets = [("index", site / "index.html"), ("feature", site / "features" / f"{feature}.html"),
               ("prompts", site / "prompts.html")]
    out = Path(screenshots) if screenshots else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    reports = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            for name, path in targets:
                shot = out / f"{name}.png" if out else None
                reports.append(_load(browser, path, shot, width, height))
        finally:
            browser.close()
    return SiteReport(index=reports[0], feature=reports[1], prompts=reports[2], pages=reports)


def _load(browser, path: Path, screenshot: Path | None, width: int, height: int) -> PageReport:
    if not path.is_file():
        raise SaeKitError(f"{path} does not exist")
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    errors: list[str] = []
    foreign: list[str] = []
    failed: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda req: foreign.append(req.url) if not req.url.startswith(("file://", "data:")) else None)
    page.on("requestfailed", lambda req: failed.append(req.url))
    try:
        page.goto(path.as_uri(), wait_until="load")
        page.wait_for_selector("body[data-rendered='1']", timeout=30_000)
        page.wait_for_timeout(300)  # let plotly finish laying out
        report = PageReport(
            url=path.as_uri(), console_errors=errors, foreign_requests=foreign, failed_requests=failed,
            table_rows=page.locator("#features tbody tr").count(), plots=page.locator(".js-plotly-plot").count(),
            tokens=page.locator(".tok").count(),
            screenshot=str(screenshot) if screenshot else None)
        if screenshot:
            page.screenshot(path=str(screenshot), full_page=False)
        return report
    finally:
        context.close()
