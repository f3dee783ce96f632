"""The secret guard with real Chromium and two real sites on 127.0.0.1 (two origins): every way
Playwright can send a guarded secret to a page or URL works for the allowed origin and is
refused, with nothing sent, for any other; frames, page-wide settings, other contexts and event
handlers; other runs' guards stay out of the way."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from browser_site import Site, serve_site
from helpers import fast_app
from playwright.async_api import Page, Route

from greenroom import SecretRefused
from greenroom.browser.guard import SecretGuard
from greenroom.browser.page_capture import Redactor
from greenroom.browser.pool import BrowserPool, SessionContext

SECRET = "pa55-word-of-the-integration"
OTHER = "another-runs-secret-value"


@pytest.fixture
def good() -> Iterator[Site]:
    with serve_site() as s:
        yield s


@pytest.fixture
def evil() -> Iterator[Site]:
    with serve_site() as s:
        yield s


@dataclass
class Guarded:
    pool: BrowserPool
    entry: SessionContext
    guard: SecretGuard
    page: Page


def make_guard(secret: str, *origins: str) -> SecretGuard:
    redactor = Redactor()
    redactor.add(secret)
    return SecretGuard(
        integration="int_test",
        redactor=redactor,
        origins=frozenset(origins),
        log=structlog.get_logger("test"),
    )


@pytest.fixture
async def guarded(sqlite_url: str, good: Site) -> AsyncIterator[Guarded]:
    """A context guarded as a run for an integration whose secret origin is `good`'s, held by
    this test's task (as the run's task holds its own)."""
    pool = BrowserPool(fast_app(sqlite_url, browser_action_timeout=5.0).settings)
    try:
        entry = await pool.acquire(None)
        guard = make_guard(SECRET, good.url)
        pool.shield.attach(guard, entry.context)
        guard.act()
        yield Guarded(pool, entry, guard, await entry.take_page())
    finally:
        await pool.close()


def received(site: Site) -> str:
    return "\n".join(site.received)


Call = Callable[[Page, str], Awaitable[Any]]

#: Every way a workflow can put the secret into a page or a request, given the site's URL.
SENDS: dict[str, Call] = {
    "fill": lambda p, url: p.fill("#password", SECRET),
    "locator.fill": lambda p, url: p.locator("#password").fill(SECRET),
    "type": lambda p, url: p.type("#password", SECRET),
    "press_sequentially": lambda p, url: p.locator("#password").press_sequentially(SECRET),
    "keyboard.type": lambda p, url: p.keyboard.type(SECRET),
    "keyboard.insert_text": lambda p, url: p.keyboard.insert_text(SECRET),
    "element.fill": lambda p, url: _element_fill(p),
    "evaluate": lambda p, url: p.evaluate("v => document.title = v", SECRET),
    "evaluate with the secret in the script": lambda p, url: p.evaluate(
        f"document.title = {SECRET!r}"
    ),
    "set_input_files": lambda p, url: p.set_input_files(
        "#user", files=[{"name": "a.txt", "mimeType": "text/plain", "buffer": SECRET.encode()}]
    ),
    "request.post": lambda p, url: p.request.post(f"{url}/login", form={"password": SECRET}),
    "goto with the secret in the URL": lambda p, url: p.goto(f"{url}/login?password={SECRET}"),
}


async def _element_fill(page: Page) -> None:
    handle = await page.query_selector("#password")
    assert handle is not None
    await handle.fill(SECRET)


async def test_a_secret_goes_to_the_allowed_origin_by_every_way(
    guarded: Guarded, good: Site
) -> None:
    for name, send in SENDS.items():
        await guarded.page.goto(f"{good.url}/form")
        await send(guarded.page, good.url)
        await guarded.page.wait_for_load_state()
        assert not guarded.guard.refused, name
    await guarded.page.goto(f"{good.url}/form")
    await guarded.page.fill("#user", "bot")
    await guarded.page.fill("#password", Site.password("bot"))  # not a guarded secret
    await guarded.page.click("#go")
    await guarded.page.wait_for_url("**/home")
    assert SECRET in received(good), "the secret did reach the allowed site"


async def test_a_secret_is_refused_for_any_other_origin_and_nothing_is_sent(
    guarded: Guarded, evil: Site
) -> None:
    for name, send in SENDS.items():
        await guarded.page.goto(f"{evil.url}/form")
        with pytest.raises(SecretRefused) as refused:
            await send(guarded.page, evil.url)
        message = str(refused.value)
        assert f"refused to send a secret of integration int_test to {evil.url}" in message, name
        assert "allow only http://127.0.0.1:" in message and SECRET not in message
        # The page shows nothing of it either: its input and its title are empty.
        assert await guarded.page.input_value("#password") == "", name
        assert SECRET not in await guarded.page.title(), name
    await guarded.page.click("#go")  # the form, posted as the page has it
    assert len(guarded.guard.refused) == len(SENDS)
    assert received(evil) and SECRET not in received(evil), "no request carried the secret"


async def test_pages_in_frames_get_the_secret_only_when_every_frame_it_may_reach_is_allowed(
    guarded: Guarded, good: Site, evil: Site
) -> None:
    page = guarded.page
    await page.goto(f"{good.url}/framed?src={evil.url}/form")
    await page.frame_locator("#inner").locator("#user").wait_for()
    await page.fill("#password", SECRET)  # the allowed page's own input
    with pytest.raises(SecretRefused):  # the other origin's form in the frame
        await page.frame_locator("#inner").locator("#password").fill(SECRET)
    with pytest.raises(SecretRefused):  # the focused element could be in the evil frame
        await page.keyboard.type(SECRET)
    assert SECRET not in received(evil)

    await page.goto(f"{evil.url}/framed?src={good.url}/form")
    await page.frame_locator("#inner").locator("#user").wait_for()
    with pytest.raises(SecretRefused):  # the evil page would pick the frame the selector enters
        await page.frame_locator("#inner").locator("#password").fill(SECRET)
    inner = page.frame(url=f"{good.url}/form")
    assert inner is not None
    await inner.fill("#password", SECRET)  # the allowed frame itself, addressed directly
    with pytest.raises(SecretRefused):
        await page.fill("#password", SECRET)

    await page.goto(f"{good.url}/framed?src=about:blank")  # a blank frame is its parent's
    await page.keyboard.type(SECRET)
    await page.goto("about:blank")
    with pytest.raises(SecretRefused) as refused:
        await page.set_content("<input id=x>")
        await page.fill("#x", SECRET)
    assert "to null" in str(refused.value), "a blank page has no origin to allow"


async def test_page_wide_settings_and_other_contexts_never_get_the_secret(
    guarded: Guarded, good: Site
) -> None:
    context, page = guarded.entry.context, guarded.page
    await page.goto(f"{good.url}/form")
    page_wide = [
        page.set_extra_http_headers({"Authorization": f"Bearer {SECRET}"}),
        context.set_extra_http_headers({"Authorization": f"Bearer {SECRET}"}),
        page.add_init_script(f"window.pw = {SECRET!r}"),
        context.add_cookies([{"name": "t", "value": SECRET, "url": good.url}]),
    ]
    for call in page_wide:
        with pytest.raises(SecretRefused) as refused:
            await call
        assert "every page" in str(refused.value)
    browser = context.browser
    assert browser is not None
    other = await browser.new_context()  # made by the run, but not its guarded context
    try:
        stray = await other.new_page()
        await stray.goto(f"{good.url}/form")
        with pytest.raises(SecretRefused) as refused:
            await stray.fill("#password", SECRET)
        assert "another browser context" in str(refused.value)
    finally:
        await other.close()
    assert SECRET not in received(good)


async def test_a_route_handler_cannot_answer_another_origin_with_the_secret(
    guarded: Guarded, good: Site, evil: Site
) -> None:
    """A handler runs outside the run's task: the context's guard still applies."""
    failures: list[BaseException] = []

    async def answer(route: Route) -> None:
        try:
            await route.fulfill(body=f"<p id=leak>{SECRET}</p>", content_type="text/html")
        except SecretRefused as exc:
            failures.append(exc)
            await route.fulfill(body="<p id=leak>refused</p>", content_type="text/html")

    page = guarded.page
    await page.route(f"{evil.url}/**", answer)
    await page.goto(f"{evil.url}/anything")
    assert await page.inner_text("#leak") == "refused" and len(failures) == 1
    await page.route(f"{good.url}/**", answer)
    await page.goto(f"{good.url}/anything")
    assert await page.inner_text("#leak") == SECRET, "its own origin may have it"


async def test_other_runs_secrets_and_unguarded_runs_are_left_alone(
    guarded: Guarded, good: Site, evil: Site
) -> None:
    """Another run's guard, with the same secret in another context, neither permits nor
    refuses this context's calls; a run without an integration is not guarded at all."""
    pool = guarded.pool
    neighbour = await pool.acquire(None)
    twin = make_guard(SECRET, evil.url)  # another integration, another context
    pool.shield.attach(twin, neighbour.context)
    unguarded = await pool.acquire(None)

    async def elsewhere() -> None:  # another run's task: its own guard acts there
        twin.act()
        page = await neighbour.take_page()
        await page.goto(f"{evil.url}/form")
        await page.fill("#password", SECRET)
        with pytest.raises(SecretRefused):
            await page.goto(f"{good.url}/form?pw={SECRET}")

    async def no_integration() -> None:
        page = await unguarded.take_page()
        await page.goto(f"{evil.url}/form")
        await page.fill("#password", OTHER)
        await page.fill("#user", SECRET)  # not this run's secret: none of its business

    # Each run's task is the worker's, not started by another run's: nothing inherited.
    await asyncio.gather(
        *(
            asyncio.create_task(c, context=contextvars.Context())
            for c in (elsewhere(), no_integration())
        )
    )
    await guarded.page.goto(f"{good.url}/form")
    await guarded.page.fill("#password", SECRET)
    with pytest.raises(SecretRefused):
        await guarded.page.goto(f"{evil.url}/form?pw={SECRET}")
    assert guarded.guard.refused == [("goto", evil.url)]
    assert twin.refused == [("goto", good.url)]
    pool.shield.detach(guarded.guard)
    pool.shield.detach(twin)
