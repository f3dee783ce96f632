"""The console in real Chromium against the real app on loopback: sign in, the overview, the
runs list and its filters, a failed run's steps and screenshot, a retry from the failed step
that succeeds while the page watches (pushed by Server-Sent Events), injected HTML that stays
text, and a license finding kept."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_site import Site, serve_site
from helpers import wait_for_states, worker_running

from greenroom import App, RetryPolicy, RunContext, RunState, step
from greenroom.browser.launch import CHROMIUM_ARGS
from greenroom.model import Role
from tests.api_helpers import ApiSetup, api_setup

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")
ONCE = RetryPolicy(max_attempts=1)
#: Runs (by their `token` input) whose check step failed already: the next one passes.
FAILED_ONCE: set[str] = set()
PAYLOAD = "<script>alert(1)</script>"


@step(name="open_form", retry=ONCE)
async def open_form(ctx: RunContext, site_url: str) -> str:
    page = await ctx.page()
    await page.goto(f"{site_url}/form")
    return page.url


@step(name="check_total", retry=ONCE)
async def check_total(ctx: RunContext, site_url: str, token: str) -> str:
    page = await ctx.page()
    await page.goto(f"{site_url}/form")
    if token not in FAILED_ONCE:
        FAILED_ONCE.add(token)
        raise RuntimeError("expected #total on the page")
    return "total found"


def add_workflows(app: App) -> None:
    @app.workflow(name="site.check", retry=ONCE)
    async def check(ctx: RunContext, site_url: str, token: str) -> str:
        await open_form(ctx, site_url)
        return await check_total(ctx, site_url, token)

    @app.workflow(name="plain.raise", retry=ONCE)
    async def fail_with(ctx: RunContext, message: str) -> None:
        raise RuntimeError(message)


@pytest.fixture
def site() -> Iterator[Site]:
    with serve_site() as s:
        yield s


@pytest.fixture
def console(sqlite_url: str) -> Iterator[ApiSetup]:
    with api_setup(sqlite_url, extend=add_workflows) as setup:
        yield setup


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


def start(api: ApiSetup, workflow: str, **body: Any) -> str:
    with api.as_("acme", Role.OPERATOR) as c:
        made = c.post("/v1/runs", json={"workflow": workflow, **body})
        assert made.status_code == 201, made.text
        return str(made.json()["id"])


async def sign_in(page: Any, base: str, key: str) -> None:
    await page.goto(base + "/ui/")
    assert page.url == base + "/ui/login", "an unauthenticated page goes to sign-in"
    await page.fill("#api_key", key)
    await page.click("button[type=submit]")
    await page.wait_for_url(base + "/ui/")


async def test_on_call_signs_in_finds_the_failure_sees_the_screenshot_and_retries(
    console: ApiSetup, site: Site, browser: Any
) -> None:
    base = console.url
    run_id = start(console, "site.check", input={"site_url": site.url, "token": "t1"})
    other = start(console, "plain.echo", input={"value": 1}, labels={"batch": "b2"})
    async with worker_running(console.app):
        await wait_for_states(console.app.store, [run_id, other], timeout=60)
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await sign_in(page, base, console.keys["acme"][Role.OPERATOR])

    # Overview: one failed run, one succeeded; the error group names the failure.
    assert await page.locator(".tile.state-failed .count").inner_text() == "1"
    assert await page.locator(".tile.state-succeeded .count").inner_text() == "1"
    assert "expected #total on the page" in await page.locator("table.groups").inner_text()

    # Runs list: both runs; the state filter and the label filter narrow it.
    await page.click("nav >> text=Runs")
    await page.wait_for_url(base + "/ui/runs")
    assert await page.locator("tr.run").count() == 2
    await page.select_option("select[name=state]", "failed")
    await page.click(".filters button[type=submit]")
    await page.wait_for_url("**/ui/runs?state=failed**")
    rows = page.locator("tr.run")
    assert await rows.count() == 1 and await rows.get_attribute("data-run") == run_id
    await page.goto(base + "/ui/runs?label=batch%3Db2")
    assert await page.locator("tr.run").count() == 1
    assert await page.locator("tr.run").get_attribute("data-run") == other
    await page.goto(base + "/ui/runs?workflow=nothing.like.it")
    assert await page.locator("tr.run").count() == 0

    # Run detail: steps with their statuses, the error, the failed step's screenshot.
    await page.goto(base + "/ui/runs?state=failed")
    await page.click(f"tr[data-run='{run_id}'] a")
    await page.wait_for_url(f"{base}/ui/runs/{run_id}")
    steps = page.locator("tr.step")
    assert await steps.count() == 2
    assert "open_form" in await steps.nth(0).inner_text()
    assert "failed" in await steps.nth(1).inner_text()
    assert await page.locator("#error-message").inner_text() == "expected #total on the page"
    shot = page.locator(".shot img").first
    await shot.scroll_into_view_if_needed()
    await page.wait_for_function(
        "() => { const i = document.querySelector('.shot img'); return i && i.complete }"
    )
    width = await shot.evaluate("i => i.naturalWidth")
    height = await shot.evaluate("i => i.naturalHeight")
    assert width > 0 and height > 0, "the screenshot did not load"
    # The saved page's HTML reads as text in a page of its own.
    view = await page.locator(".artifacts a", has_text="view").first.get_attribute("href")
    assert view is not None
    await page.goto(base + view)
    assert '<input type="password"' in await page.locator("#artifact").inner_text()
    assert await page.locator("#artifact input").count() == 0
    await page.goto(f"{base}/ui/runs/{run_id}")

    # Retry from the failed step: the new run's page follows and turns succeeded by itself.
    await page.fill("#retry input[name=reason]", "the site is fixed")
    await page.click("#retry button[value=false]")
    await page.wait_for_url(f"{base}/ui/runs/**")
    retry_id = page.url.rsplit("/", 1)[-1]
    assert retry_id != run_id
    assert await page.locator("#state").inner_text() == "queued"
    await page.wait_for_function("() => document.querySelector('[sse-connect]') !== null")
    await page.evaluate(
        "() => { window.pushed = 0;"
        " document.body.addEventListener('htmx:sseMessage', () => window.pushed++) }"
    )
    async with worker_running(console.app):  # pushed, well before the 30 s fallback poll
        await page.locator("#state", has_text="succeeded").wait_for(timeout=20_000)
    assert await page.evaluate("window.pushed") >= 1, "the change came by Server-Sent Events"
    retried = await asyncio.to_thread(console.app.store.runs.run_detail, retry_id, tenant="acme")
    assert retried.run.state is RunState.SUCCEEDED and retried.run.retry_of == run_id
    # The first step was kept, not run again: only the failed one ran in the retry.
    assert retried.run.output == "total found"
    assert [s.name for s in retried.steps] == ["open_form", "check_total"]
    assert "Retry from failed step" not in await page.content()


async def test_injected_html_in_input_error_and_labels_stays_text(
    console: ApiSetup, browser: Any
) -> None:
    run_id = start(console, "plain.raise", input={"message": PAYLOAD}, labels={"note": PAYLOAD})
    async with worker_running(console.app):
        await wait_for_states(console.app.store, [run_id], {RunState.FAILED})
    page = await browser.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), asyncio.ensure_future(d.dismiss())))
    await sign_in(page, console.url, console.keys["acme"][Role.VIEWER])
    assert PAYLOAD in await page.locator("table.groups").inner_text()
    for path in ("/ui/runs", "/ui/errors", f"/ui/runs/{run_id}"):
        await page.goto(console.url + path)
        await page.wait_for_timeout(200)
    assert await page.locator("#error-message").inner_text() == PAYLOAD
    assert PAYLOAD in await page.locator("#input").inner_text()
    assert PAYLOAD in await page.locator(".labels").inner_text()
    assert await page.locator("main script").count() == 0
    assert dialogs == [], "an injected script ran"


async def test_bulk_retry_of_an_error_group_previews_then_retries_and_rows_update_live(
    console: ApiSetup, site: Site, browser: Any
) -> None:
    base = console.url
    failing = [
        start(console, "site.check", input={"site_url": site.url, "token": f"bulk-{n}"})
        for n in range(2)
    ]
    async with worker_running(console.app):
        await wait_for_states(console.app.store, failing, {RunState.FAILED}, timeout=60)
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await sign_in(page, base, console.keys["acme"][Role.OPERATOR])
    await page.click("nav >> text=Errors")
    await page.wait_for_url(base + "/ui/errors")
    group = page.locator("form.inline-form").first
    assert "2 open" in await group.inner_text()
    await group.locator("input[name=reason]").fill("the site is back")
    await group.locator("button[type=submit]").click()

    # The dry run retries nothing and says how many it would.
    await page.locator("#matched").wait_for()
    assert (await page.locator("#matched").inner_text()).startswith("2 run(s) would be retried")
    assert "2 from step check_total" in await page.locator("main").inner_text()
    runs = await asyncio.to_thread(console.app.store.runs.get_run, failing[0])
    assert runs.superseded_by is None
    await page.click("#confirm")
    await page.locator("#matched", has_text="2 run(s) retried").wait_for()
    new_runs = [await a.inner_text() for a in await page.locator(".new-runs a").all()]
    assert len(new_runs) == 2 and not set(new_runs) & set(failing)

    # The runs list shows the retries queued, then succeeded, without a reload.
    await page.goto(base + "/ui/runs")
    for run_id in new_runs:
        assert "queued" in await page.locator(f"tr[data-run='{run_id}']").inner_text()
    await page.evaluate("window.notReloaded = true")
    async with worker_running(console.app):
        for run_id in new_runs:
            row = page.locator(f"tr[data-run='{run_id}'] .badge", has_text="succeeded")
            await row.wait_for(timeout=30_000)
    assert await page.evaluate("window.notReloaded === true"), "the page was reloaded"
    with console.as_("acme") as api:
        audit = api.get("/v1/audit").json()["items"]
    assert any(a["reason"] == "the site is back" for a in audit)


DOC_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "img"


@pytest.mark.parametrize(
    ("viewport", "name"),
    [({"width": 1280, "height": 800}, "desktop"), ({"width": 390, "height": 844}, "phone")],
)
async def test_the_pages_fit_the_screen(
    console: ApiSetup, site: Site, browser: Any, viewport: dict[str, int], name: str
) -> None:
    """No page is wider than the window (tables scroll inside their box). With
    GREENROOM_UI_SCREENSHOTS=1 the desktop run writes docs/img/console-*.png for the README."""
    failed = start(
        console,
        "site.check",
        input={"site_url": site.url, "token": f"fit-{name}"},
        labels={"batch": "nightly"},
    )
    done = [start(console, "plain.echo", input={"value": n}) for n in range(3)]
    async with worker_running(console.app):
        await wait_for_states(console.app.store, [failed, *done], timeout=60)
    page = await browser.new_page(viewport=viewport)
    await sign_in(page, console.url, console.platform_key)
    write = name == "desktop" and os.environ.get("GREENROOM_UI_SCREENSHOTS") == "1"
    pages = {
        "/ui/": "overview",
        "/ui/runs": "runs",
        f"/ui/runs/{failed}": "run",
        "/ui/errors": None,
        "/ui/schedules": None,
        "/ui/deliveries": None,
        "/ui/licenses": None,
        "/ui/reports": None,
        "/ui/integrations": None,
        "/ui/pauses": None,
        "/ui/audit": None,
        "/ui/login": None,
    }
    for path, shot in pages.items():
        await page.goto(console.url + path)
        await page.wait_for_load_state("networkidle")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= viewport["width"], f"{path} is {width}px wide on a {name}"
        if write and shot:
            DOC_IMAGES.mkdir(exist_ok=True)
            await page.screenshot(path=DOC_IMAGES / f"console-{shot}.png")


@pytest.fixture
def license_console(sqlite_url: str) -> Iterator[ApiSetup]:
    from tests.test_licenses_api import with_hr

    with api_setup(sqlite_url, extend=with_hr) as setup:
        yield setup


async def test_an_admin_keeps_a_license_finding(license_console: ApiSetup, browser: Any) -> None:
    from tests.test_licenses_api import account
    from tests.test_ui_licenses import findings

    findings(license_console, "acme", [account("ann", 200, cost=20)])
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await sign_in(page, license_console.url, license_console.keys["acme"][Role.ADMIN])
    await page.goto(license_console.url + "/ui/licenses")
    row = page.locator("tr.finding", has_text="ann@example.com")
    assert await row.locator(".finding-state").inner_text() != "kept"
    available = page.locator("tr.total td:nth-child(3)")
    assert await available.inner_text() == "20.00"
    await row.locator("input[name=note]").fill("the CEO's assistant")
    await row.locator("button[value=keep]").click()
    await page.wait_for_load_state("networkidle")
    assert page.url == license_console.url + "/ui/licenses"
    row = page.locator("tr.finding", has_text="ann@example.com")
    assert await row.locator(".finding-state").inner_text() == "kept"
    assert "the CEO's assistant" in await row.inner_text()
    assert await available.inner_text() == "0.00", "kept: no longer available"
