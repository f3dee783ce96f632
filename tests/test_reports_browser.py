"""Both reports, rendered from the golden tests' fixed data, in real Chromium: they load
nothing from anywhere (CSS inlined, charts inline SVG, no scripts), draw their charts, and fit
a laptop's and a phone's width (tables scroll inside their box). With
GREENROOM_UI_SCREENSHOTS=1 the laptop run writes docs/img/report-*.png for the README."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from greenroom.browser.launch import CHROMIUM_ARGS
from greenroom.reports import gather, render
from tests.test_reports import CONTEXT, END, GROUPS, RUNS, H, T, finding

NAMES = {"int_crm": "Acme CRM", "int_hr": "Payroll (HR)"}

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")
DOC_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "img"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


def pages() -> dict[str, str]:
    health = gather.health(
        RUNS,
        integrations=NAMES,
        last_success={"int_crm": T + 12 * H, "int_hr": None},
        groups=GROUPS,
        period_end=END,
    )
    open_findings = [finding(n, savings=float(n % 7 * 9 + 6)) for n in range(1, 26)]
    savings = gather.savings(
        open_findings,
        [finding(40, savings=12.5, state="closed", outcome="reclaimed", closed_at=T + H)],
        integrations=NAMES,
    )
    context = {**CONTEXT, "report_key": "savings/week/2026-11-30"}
    return {
        "health": render.health_files(health, CONTEXT)[0].body,
        "savings": render.savings_files(savings, context)[0].body,
    }


@pytest.mark.parametrize(("width", "height", "name"), [(1280, 900, "laptop"), (390, 844, "phone")])
async def test_reports_render_alone_and_fit(
    browser: Any, width: int, height: int, name: str
) -> None:
    page = await browser.new_page(viewport={"width": width, "height": height})
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    write = name == "laptop" and os.environ.get("GREENROOM_UI_SCREENSHOTS") == "1"
    for kind, html in pages().items():
        await page.set_content(html, wait_until="load")
        chart = await page.query_selector("figure svg")
        assert chart is not None, kind
        box = await chart.bounding_box()
        assert box is not None and box["height"] > 0, f"the {kind} chart is not drawn"
        assert await page.evaluate("document.scripts.length") == 0
        scroll = await page.evaluate("document.documentElement.scrollWidth")
        assert scroll <= width, f"the {kind} report is {scroll}px wide on a {name}"
        if write:
            DOC_IMAGES.mkdir(exist_ok=True)
            await page.screenshot(path=DOC_IMAGES / f"report-{kind}.png", full_page=True)
    assert [u for u in requested if not u.startswith(("about:", "data:"))] == []
