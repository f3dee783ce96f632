"""Hostile pages: one that never loads and one whose script never ends are stopped at the step
timeout, their contexts closed, and the worker keeps serving other runs meanwhile and after."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from browser_site import Site, serve_site
from helpers import fast_app, wait_for_states, worker_running

from greenroom import RetryPolicy, RunContext, RunState, step

STEP_TIMEOUT = 2.0


@pytest.fixture
def site() -> Iterator[Site]:
    with serve_site() as s:
        yield s


@step(name="open", timeout=STEP_TIMEOUT, retry=RetryPolicy(max_attempts=1))
async def open_page(ctx: RunContext, url: str) -> str:
    page = await ctx.page()
    await page.goto(url)
    return str(await page.title())


async def test_hung_and_looping_pages_stop_at_the_step_timeout_and_the_worker_goes_on(
    sqlite_url: str, site: Site
) -> None:
    app = fast_app(sqlite_url, diagnostics_timeout=0.5, concurrency=4)

    @app.workflow(name="visit", session="visit:{name}")
    async def visit(ctx: RunContext, name: str, url: str) -> str:
        return await open_page(ctx, url)

    async with worker_running(app) as worker:
        warm = await app.enqueue("visit", {"name": "warm", "url": f"{site.url}/ok"})
        await wait_for_states(app.store, [warm.id], timeout=30)  # the browser is up
        started = time.monotonic()
        hang = await app.enqueue("visit", {"name": "hang", "url": f"{site.url}/hang"})
        loop = await app.enqueue("visit", {"name": "loop", "url": f"{site.url}/loop"})
        while not (site.hits["/hang"] and site.hits["/loop"]):
            await asyncio.sleep(0.02)  # both hostile pages are loading now
        fine = await app.enqueue("visit", {"name": "fine", "url": f"{site.url}/ok"})
        (ok,) = await wait_for_states(app.store, [fine.id], timeout=30)
        assert ok.state is RunState.SUCCEEDED and ok.output == "page"
        hostile = await wait_for_states(app.store, [hang.id, loop.id], timeout=30)
        elapsed = time.monotonic() - started
        assert ok.finished_at is not None
        for run in hostile:
            assert run.state is RunState.FAILED
            assert run.error is not None and run.error["type"] == "TimeoutError"
            assert run.error["step"] == "open"
            assert run.finished_at is not None and ok.finished_at < run.finished_at
        assert elapsed < STEP_TIMEOUT + 10, f"hostile runs took {elapsed:.1f}s to stop"
        live = {e.key for e in worker.browser.pool.live_contexts()}
        assert "default\0visit:fine" in live, "a succeeded run's context stays warm"
        assert not live & {"default\0visit:hang", "default\0visit:loop"}, "hostile ones closed"
        after = await app.enqueue("visit", {"name": "after", "url": f"{site.url}/ok"})
        (done,) = await wait_for_states(app.store, [after.id], timeout=30)
        assert done.state is RunState.SUCCEEDED
        kinds = {a.kind for a in await asyncio.to_thread(app.store.sessions.artifacts, loop.id)}
        assert "log" in kinds, "diagnostics were captured, as far as the page allowed"
    app.close()
