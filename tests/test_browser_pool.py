"""The browser pool with real Chromium: one context per session however many ask at once,
isolation between sessions, recycling, crash replacement, and finding a browser."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from browser_site import Site, serve_site

from greenroom import load_settings
from greenroom.browser import BrowserNotFound, BrowserPool
from greenroom.browser.launch import find_chromium
from greenroom.failures import ErrorClass, classify


@pytest.fixture
def site() -> Iterator[Site]:
    with serve_site() as s:
        yield s


@pytest.fixture
async def pool() -> AsyncIterator[BrowserPool]:
    p = BrowserPool(load_settings())
    yield p
    await p.close()


def _pool(**settings: Any) -> BrowserPool:
    return BrowserPool(load_settings(**settings))


async def test_fifty_concurrent_acquisitions_of_one_session_create_one_context(
    pool: BrowserPool,
) -> None:
    entries = await asyncio.gather(*(pool.acquire("tenant\0s1") for _ in range(50)))
    assert len({id(e) for e in entries}) == 1
    assert entries[0].users == 50
    assert pool.stats.contexts_created == 1
    assert pool.stats.contexts_reused == 49
    assert len(entries[0].owner.browser.contexts) == 1
    other = await pool.acquire("tenant\0s2")
    assert other is not entries[0] and pool.stats.contexts_created == 2
    assert pool.stats.browsers_launched == 1, "one long-lived browser serves both sessions"


async def test_two_sessions_logged_in_at_once_never_see_each_others_cookies_or_storage(
    pool: BrowserPool, site: Site
) -> None:
    async def log_in(user: str) -> Any:
        entry = await pool.acquire(f"t\0{user}")
        page = await entry.take_page()
        await page.goto(f"{site.url}/login?user={user}&password={site.password(user)}")
        return entry, page

    (a, page_a), (b, page_b) = await asyncio.gather(log_in("alice"), log_in("bob"))
    await asyncio.gather(page_a.goto(f"{site.url}/me"), page_b.goto(f"{site.url}/me"))
    assert await page_a.text_content("#user") == "alice"
    assert await page_b.text_content("#user") == "bob"
    assert await page_a.text_content("#local") == "alice"
    assert await page_b.text_content("#local") == "bob"
    cookies_a = {c["value"] for c in await a.context.cookies()}
    cookies_b = {c["value"] for c in await b.context.cookies()}
    assert len(cookies_a) == len(cookies_b) == 1 and not cookies_a & cookies_b
    assert site.sessions[cookies_a.pop()] == "alice"
    state_b = await b.context.storage_state()
    assert "alice" not in str(state_b)


async def test_a_warm_context_is_kept_for_its_session_and_replaced_when_state_is_newer(
    pool: BrowserPool,
) -> None:
    entry = await pool.acquire("t\0s", version=3)
    page = await entry.take_page()
    await pool.release(entry, page, keep=True)
    again = await pool.acquire("t\0s", version=3)
    assert again is entry and await again.take_page() is page, "same context, same tab"
    await pool.release(again, page, keep=True)
    newer = await pool.acquire("t\0s", version=4)
    assert newer is not entry and entry.closed
    await pool.release(newer, None, keep=False)
    assert newer.closed and pool.stats.contexts_created == 2


async def test_browser_is_recycled_after_serving_its_contexts() -> None:
    pool = _pool(browser_recycle_after=2)
    try:
        first = [await pool.acquire(None) for _ in range(2)]
        assert first[0].owner is first[1].owner and first[0].owner.retiring
        third = await pool.acquire(None)
        assert third.owner is not first[0].owner
        assert pool.stats.browsers_launched == 2 and pool.stats.browsers_recycled == 1
        old = first[0].owner
        for entry in first:
            await pool.release(entry, None, keep=False)
        assert old.dead, "a retired browser closes once its last context is gone"
        assert old.pid is not None and not _group_alive(old.pid, wait=5)
        await pool.release(third, None, keep=False)
    finally:
        await pool.close()


async def test_browser_over_its_memory_limit_is_replaced() -> None:
    pool = _pool(browser_memory_limit_mb=1)
    try:
        first = await pool.acquire("t\0a")
        await pool.release(first, None, keep=True)
        second = await pool.acquire("t\0b")
        assert second.owner is not first.owner
        assert pool.stats.browsers_recycled >= 1 and first.closed
    finally:
        await pool.close()


async def test_crashed_browser_is_detected_its_contexts_dropped_and_replaced(
    pool: BrowserPool, site: Site
) -> None:
    entry = await pool.acquire("t\0s")
    page = await entry.take_page()
    await page.goto(f"{site.url}/page")
    (pid,) = pool.browser_pids()
    navigation = asyncio.ensure_future(page.goto(f"{site.url}/hang"))
    await asyncio.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(Exception) as info:
        await navigation
    assert classify(info.value) is ErrorClass.TRANSIENT, "an in-flight step fails as transient"
    for _ in range(100):
        if pool.stats.browsers_crashed:
            break
        await asyncio.sleep(0.05)
    assert pool.stats.browsers_crashed == 1 and not entry.usable
    again = await pool.acquire("t\0s")
    assert again is not entry and again.owner.pid != pid
    fresh = await again.take_page()
    await fresh.goto(f"{site.url}/page")
    assert await fresh.text_content("#path") == "/page"
    assert pool.stats.browsers_launched == 2
    assert not _group_alive(pid, wait=5)


def test_browser_lookup_says_which_was_found_and_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    assert find_chromium(None, None).source == "system"
    with pytest.raises(BrowserNotFound, match="not an executable"):
        find_chromium(str(tmp_path / "nothing"), None)
    monkeypatch.setattr("greenroom.browser.launch.SYSTEM_CHROMIUM", str(tmp_path / "none"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrowserNotFound) as info:
        find_chromium(None, str(tmp_path / "missing"))
    assert "playwright install chromium" in str(info.value)
    assert "GREENROOM_BROWSER_EXECUTABLE" in str(info.value)
    assert find_chromium(None, "/usr/bin/chromium").source == "playwright"


def _group_alive(pgid: int, *, wait: float = 0.0) -> bool:
    """Whether any process of this process group still runs, after up to `wait` seconds."""
    import time

    deadline = time.monotonic() + wait
    while True:
        alive = _group_members(pgid)
        if not alive or time.monotonic() >= deadline:
            return bool(alive)
        time.sleep(0.1)


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members
