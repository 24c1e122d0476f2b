"""The HTML report in a real headless browser, as an analyst opens it: Debian's ``chromium``
driven by playwright (no browser download). It loads without errors, every image decodes, no
table overflows the page at 1200 px; a full-page screenshot goes to ``test-artifacts/``
(``$ROUTER_TEST_ARTIFACTS`` overrides).

Chromium missing: in CI (``CI`` set, as ``.ci/run`` runs) the test fails, since ``.ci/run``
installs it; on a developer's machine without it the test is skipped with the reason shown
(``pytest -rs``), so a machine without root can still run the suite.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from router.analysis.render_html import to_html
from tests.analysis.demo_like import demo_like

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("ROUTER_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = os.environ.get("ROUTER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def _browser_or_reason() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[dev]')"
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run does it)"
    return None


def test_html_report_in_a_real_browser(tmp_path: Path) -> None:
    why = _browser_or_reason()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {why}")
        pytest.skip(f"browser test skipped outside CI: {why}")
    from playwright.sync_api import sync_playwright

    report, acc = demo_like()
    page_file = tmp_path / "report.html"
    page_file.write_text(to_html(report, acc), encoding="utf-8")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report-1200px.png"
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            response = page.goto(page_file.as_uri(), wait_until="load")
            assert response is not None and response.ok
            images = page.evaluate(
                "() => [...document.images].map(i => ({alt: i.alt, ok: i.complete && "
                "i.naturalWidth > 0 && i.naturalHeight > 0}))"
            )
            overflow = page.evaluate(
                "() => { const w = document.documentElement.clientWidth;"
                " return [...document.querySelectorAll('table')].map((t, k) => ({k,"
                " right: t.getBoundingClientRect().right, scroll: t.scrollWidth,"
                " box: t.parentElement.clientWidth, w}))"
                ".filter(x => x.right > x.w || x.scroll > x.box + 1); }"
            )
            page_width = page.evaluate("() => document.documentElement.scrollWidth")
            text = page.inner_text("body")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == [], errors
    assert len(images) >= 4, images
    assert all(i["ok"] for i in images), [i for i in images if not i["ok"]]
    assert overflow == [], overflow
    assert page_width <= 1200
    assert "CONTINUE" in text and "What would change it:" in text
    assert shot.stat().st_size > 10_000
