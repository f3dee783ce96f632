"""Failure diagnostics with real Chromium: screenshot, redacted HTML, console and page errors,
URL, linked to run, step and attempt; size caps; opt-in Playwright tracing."""

from __future__ import annotations

import asyncio
import io
import json
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from browser_site import Site, serve_site
from helpers import fast_app, wait_for_states, worker_running
from pydantic import BaseModel, SecretStr

from greenroom import App, RetryPolicy, RunContext, RunState, SecretOrigin, integrations, step
from greenroom.browser.artifacts import default_artifact_store
from greenroom.crypto import load_keyring
from greenroom.model import Artifact

SECRET = "hunter2-very-secret"
ONCE = RetryPolicy(max_attempts=1)
FAILED_ONCE: set[str] = set()


@pytest.fixture
def site() -> Iterator[Site]:
    with serve_site() as s:
        yield s


@step(name="fill_and_fail", retry=ONCE)
async def fill_and_fail(ctx: RunContext, site_url: str) -> None:
    assert ctx.browser is not None
    ctx.browser.add_secret(SECRET)
    page = await ctx.page()
    await page.goto(f"{site_url}/noisy")
    await page.fill("#pw", SECRET)
    await page.fill("#note", "a visible note")
    await page.wait_for_timeout(100)  # let the page's error surface
    raise RuntimeError("expected #total on the page")


@step(name="visit", retry=ONCE)
async def visit(ctx: RunContext, site_url: str) -> str:
    assert ctx.browser is not None
    ctx.browser.add_secret(SECRET)
    page = await ctx.page()
    await page.goto(f"{site_url}/form")
    await page.fill("#password", SECRET)
    return page.url


@step(name="look", retry=ONCE)
async def look(ctx: RunContext) -> str:
    assert ctx.browser is not None
    ctx.browser.add_secret(SECRET)
    page = await ctx.page(restore_url=True)
    await page.fill("#password", SECRET)  # typed again, now with tracing on
    return page.url


def build_app(db_url: str, **settings: Any) -> App:
    app = fast_app(db_url, **settings)

    @app.workflow(name="broken")
    async def broken(ctx: RunContext, site_url: str) -> None:
        await fill_and_fail(ctx, site_url)

    @app.workflow(
        name="flaky", session="s:{n}", retry=RetryPolicy(max_attempts=2, initial_delay=0.05)
    )
    async def flaky(ctx: RunContext, site_url: str, n: int) -> str:
        url = await visit(ctx, site_url)
        if ctx.run_id not in FAILED_ONCE:
            FAILED_ONCE.add(ctx.run_id)
            raise RuntimeError("failed outside any step")
        assert await look(ctx) == url
        return url

    @app.workflow(name="no_page")
    async def no_page(ctx: RunContext) -> None:
        raise RuntimeError("no browser involved")

    return app


async def run_to_end(app: App, workflow: str, input: dict[str, Any]) -> Any:
    async with worker_running(app):
        run = await app.enqueue(workflow, input)
        (done,) = await wait_for_states(app.store, [run.id], timeout=30)
    return done


def _files(app: App, run_id: str) -> list[tuple[Artifact, bytes]]:
    store = default_artifact_store(app.settings)
    return [(a, store.get(a.location)) for a in app.store.sessions.artifacts(run_id)]


async def test_a_failed_step_leaves_screenshot_redacted_html_console_and_url(
    sqlite_url: str, site: Site
) -> None:
    app = build_app(sqlite_url)
    done = await run_to_end(app, "broken", {"site_url": site.url})
    assert done.state is RunState.FAILED
    files = await asyncio.to_thread(_files, app, done.id)
    by_kind = {a.kind: (a, data) for a, data in files}
    assert set(by_kind) == {"screenshot", "html", "log"}
    for a, data in files:
        assert (a.run_id, a.attempt, a.step_position, a.step_name, a.step_attempt) == (
            done.id,
            1,
            0,
            "fill_and_fail",
            1,
        )
        assert a.size == len(data) and not a.truncated
        assert SECRET.encode() not in data, f"the password leaked into the {a.kind}"
    shot, html, log = by_kind["screenshot"][1], by_kind["html"][1], by_kind["log"][1]
    assert shot.startswith(b"\x89PNG") and by_kind["screenshot"][0].content_type == "image/png"
    assert re.search(rb'<input type="password" id="pw"[^>]* value="\[redacted\]"', html)
    assert re.search(rb'<input id="note" value="a visible note"', html)
    doc = json.loads(log)
    assert doc["url"] == f"{site.url}/noisy" and doc["title"] == "noisy"
    assert doc["error"] == {"type": "RuntimeError", "message": "expected #total on the page"}
    texts = [m["text"] for m in doc["console"]]
    assert "hello from the page" in texts and "something went wrong" in texts
    assert any("boom in the page" in e["error"] for e in doc["page_errors"])
    app.close()


async def test_artifacts_respect_the_size_cap(sqlite_url: str, site: Site) -> None:
    app = build_app(sqlite_url, artifact_max_bytes=1000)
    done = await run_to_end(app, "broken", {"site_url": site.url})
    files = await asyncio.to_thread(_files, app, done.id)
    assert {a.kind for a, _ in files} >= {"html", "log"}
    assert all(len(data) <= 1000 and a.size <= 1000 for a, data in files)
    assert any(a.truncated for a, _ in files)
    app.close()


async def test_a_run_that_never_opened_a_page_has_no_artifacts(sqlite_url: str) -> None:
    app = build_app(sqlite_url)
    done = await run_to_end(app, "no_page", {})
    assert done.state is RunState.FAILED
    assert await asyncio.to_thread(app.store.sessions.artifacts, done.id) == []
    app.close()


async def test_tracing_on_retry_records_the_second_attempt_without_secrets(
    sqlite_url: str, site: Site
) -> None:
    app = build_app(sqlite_url, browser_trace="retry")
    done = await run_to_end(app, "flaky", {"site_url": site.url, "n": 1})
    assert done.state is RunState.SUCCEEDED and done.attempt == 2
    files = await asyncio.to_thread(_files, app, done.id)
    first = {a.kind for a, _ in files if a.attempt == 1}
    second = [(a, data) for a, data in files if a.attempt == 2]
    assert first == {"screenshot", "html", "log"}, "the failure outside a step was captured"
    assert all(a.step_position is None for a, _ in files if a.attempt == 1)
    assert [a.kind for a, _ in second] == ["trace"]
    (trace, data) = second[0]
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        everything = b"".join(z.read(n) for n in names)
    assert any(n.endswith(".trace") for n in names)
    assert b"/form" in everything, "the trace recorded the run's navigation"
    assert SECRET.encode() not in everything and b"[redacted]" in everything
    assert trace.content_type == "application/zip"
    app.close()


async def test_tracing_on_records_every_run(sqlite_url: str, site: Site) -> None:
    app = build_app(sqlite_url, browser_trace="on")
    done = await run_to_end(app, "broken", {"site_url": site.url})
    kinds = [a.kind for a in await asyncio.to_thread(app.store.sessions.artifacts, done.id)]
    assert sorted(kinds) == ["html", "log", "screenshot", "trace"]
    app.close()


ODD_SECRET = 'hunter2 "pässwörd" & <key>'


class SiteCredentials(BaseModel):
    username: str
    password: SecretStr


class SiteSettings(BaseModel):
    site: SecretOrigin


@step(name="type_credentials", retry=ONCE)
async def type_credentials(ctx: RunContext) -> None:
    creds = await ctx.credentials(SiteCredentials)
    password = creds.password.get_secret_value()
    settings: SiteSettings = ctx.integration.settings
    page = await ctx.page()
    await page.goto(f"{settings.site}/noisy")
    await page.fill("#pw", password)
    await page.fill("#note", f"the page echoes {password}")  # a page that shows it
    await page.evaluate("pw => console.log('typed ' + pw)", password)
    raise RuntimeError(f"the page did not accept {password}")


async def test_credentials_opened_by_a_run_never_reach_its_artifacts(
    sqlite_url: str, site: Site
) -> None:
    """Nothing registers the password by hand: opening the credentials does. The password has
    characters that JSON, HTML and URLs escape, and the step's error message carries it."""
    app = fast_app(sqlite_url, browser_trace="on")
    connector = app.connector("site", credentials=SiteCredentials, settings=SiteSettings)

    @app.workflow(name="site.login", connector=connector)
    async def login(ctx: RunContext) -> None:
        await type_credentials(ctx)

    app.store.accounts.create_tenant("t1", actor="test")
    integration = integrations.create(
        app.store.accounts,
        load_keyring(app.settings),
        connector,
        tenant="t1",
        name="site",
        credentials={"username": "bot", "password": ODD_SECRET},
        settings={"site": site.url},
        actor="test",
    )
    async with worker_running(app):
        run = await app.enqueue("site.login", tenant="t1", integration=integration.id)
        (done,) = await wait_for_states(app.store, [run.id], timeout=30)
    assert done.state is RunState.FAILED
    files = await asyncio.to_thread(_files, app, done.id)
    assert {a.kind for a, _ in files} == {"screenshot", "html", "log", "trace"}
    forms = {ODD_SECRET, json.dumps(ODD_SECRET)[1:-1], "pässwörd", "p\\u00e4ssw"}
    for a, data in files:
        contents = data
        if a.kind == "trace":
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                contents = b"".join(z.read(n) for n in z.namelist())
        for form in forms:
            assert form.encode() not in contents, f"the password leaked into the {a.kind}"
    html = dict((a.kind, data) for a, data in files)["html"]
    assert b"the page echoes [redacted]" in html
    assert done.error is not None
    stored = json.dumps([done.error, [s.error for s in app.store.runs.steps(done.id)]])
    assert "pässwörd" not in stored and "p\\u00e4ssw" not in stored
    assert "the page did not accept [redacted]" in done.error["message"]
    app.close()
