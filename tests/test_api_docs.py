"""The API's documentation pages render in a real Chromium with no network but the API itself:
their scripts are served by the API, not fetched from a CDN."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenroom.browser.launch import CHROMIUM_ARGS
from tests.api_helpers import api_setup

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")
@pytest.mark.parametrize(
    ("path", "heading"),
    [("/docs", ".opblock-summary-description"), ("/redoc", "h2")],  # Swagger UI, ReDoc
)
async def test_the_api_docs_render_offline(sqlite_url: str, path: str, heading: str) -> None:
    from playwright.async_api import Route, async_playwright

    elsewhere: list[str] = []

    async def local_only(route: Route) -> None:
        if route.request.url.startswith(base):
            await route.continue_()
            return
        # ReDoc's "powered by" logo is an image from its CDN; nothing else may come from afar.
        if route.request.resource_type != "image":
            elsewhere.append(route.request.url)
        await route.abort()

    with api_setup(sqlite_url) as api:
        base = api.url
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.route("**/*", local_only)
                await page.goto(base + path)
                operation = page.locator(heading, has_text="List Runs").first
                await operation.wait_for(timeout=20_000)  # visible: rendered from the schema
                assert await page.locator(heading, has_text="Retry Run").count() > 0
            finally:
                await browser.close()
    assert elsewhere == [], "the page needed more than the API serves"
