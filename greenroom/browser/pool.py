"""Per-worker browser pool: long-lived Chromium processes, one isolated context per session.

Contexts of one session key are created once however many runs ask at the same moment (a lock
per key); idle ones stay warm for the session's next run. A browser is replaced after serving
`browser_recycle_after` contexts or growing past `browser_memory_limit_mb`, and a crashed one is
dropped with its contexts (their in-flight calls fail with TargetClosedError, a transient error).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from greenroom.browser.guard import Shield, trusted
from greenroom.browser.launch import (
    CHROMIUM_ARGS,
    FoundBrowser,
    find_chromium,
    group_rss_bytes,
    write_wrapper,
)
from greenroom.browser.locks import KeyedLocks
from greenroom.metrics import (
    BROWSER_CONTEXTS_CREATED,
    BROWSER_CONTEXTS_REUSED,
    BROWSER_CRASHES,
    BROWSER_LAUNCHES,
    BROWSER_RECYCLES,
)
from greenroom.metrics.browser import track
from greenroom.settings import Settings

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page, Playwright

log = structlog.get_logger("greenroom.browser")
CLOSE_TIMEOUT = 10.0
MEMORY_CHECK_SECONDS = 5.0

#: Makes a new context's initial state: Playwright storage state plus greenroom's extras.
StateFactory = Callable[[], Awaitable["InitialState | None"]]


@dataclass(frozen=True, kw_only=True)
class InitialState:
    storage_state: dict[str, Any]
    #: JavaScript run in every page before its own scripts (restores sessionStorage).
    init_script: str | None = None
    url: str | None = None


@dataclass(eq=False)
class PooledBrowser:
    browser: Browser
    number: int
    pid: int | None
    contexts_created: int = 0
    live: set[SessionContext] = field(default_factory=set)
    retiring: bool = False
    dead: bool = False
    memory_checked_at: float = 0.0


@dataclass(eq=False)
class SessionContext:
    """A browser context held by runs of one session (or one run, when it has no session key)."""

    key: str | None
    context: BrowserContext
    owner: PooledBrowser
    #: Version of the saved session state this context matches (0: none saved yet).
    version: int = 0
    url: str | None = None
    users: int = 0
    idle_page: Page | None = None
    last_used: float = 0.0
    closed: bool = False

    @property
    def usable(self) -> bool:
        return not self.closed and not self.owner.dead

    async def take_page(self) -> Page:
        """The session's idle page (its sessionStorage intact), or a new one."""
        page, self.idle_page = self.idle_page, None
        if page is not None and not page.is_closed():
            return page
        return await self.context.new_page()


@dataclass
class PoolStats:
    browsers_launched: int = 0
    contexts_created: int = 0
    contexts_reused: int = 0
    browsers_recycled: int = 0
    browsers_crashed: int = 0


class BrowserPool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = PoolStats()
        self.found: FoundBrowser | None = None
        self._pw: Playwright | None = None
        self._browsers: list[PooledBrowser] = []
        self._sessions: dict[str, SessionContext] = {}
        self._locks = KeyedLocks()
        self._launch_lock = asyncio.Lock()
        self._dir: Path | None = None
        self._wrapper: Path | None = None
        self._closed = False
        #: Keeps runs' integration secrets to the origins they may go to (guard.py).
        self.shield = Shield()
        track(self)

    # -- acquiring contexts ----------------------------------------------------------------

    async def acquire(
        self, key: str | None, *, version: int = 0, state: StateFactory | None = None
    ) -> SessionContext:
        """The context of session `key`, created from `state` unless a warm one matches
        `version`; with key None, a new private context. Release it with release()."""
        if key is None:
            entry = await self._create(None, version, state)
            entry.users = 1
            return entry
        async with self._locks.hold(key):
            warm = self._sessions.get(key)
            if warm is not None and warm.usable and (warm.version == version or warm.users):
                self.stats.contexts_reused += 1
                BROWSER_CONTEXTS_REUSED.inc()
                entry = warm
            else:
                if warm is not None:
                    await self._close_entry(warm)
                entry = await self._create(key, version, state)
                self._sessions[key] = entry
            entry.users += 1
            entry.last_used = time.monotonic()
            return entry

    async def release(self, entry: SessionContext, page: Page | None, *, keep: bool) -> None:
        """A run is done with a context: keep it warm for its session, or close it."""
        entry.users = max(entry.users - 1, 0)
        entry.last_used = time.monotonic()
        keep = keep and entry.key is not None and entry.usable and not entry.owner.retiring
        if not keep:
            self.forget(entry)
            if entry.users == 0:
                await self._close_entry(entry)
            return
        if entry.users == 0:
            await self._close_extra_pages(entry, page)
        await self._evict_idle()

    def forget(self, entry: SessionContext) -> None:
        """Stop handing this context out (it is broken or about to close)."""
        if entry.key is not None and self._sessions.get(entry.key) is entry:
            del self._sessions[entry.key]

    async def _close_extra_pages(self, entry: SessionContext, keep_page: Page | None) -> None:
        if keep_page is not None and not keep_page.is_closed() and entry.idle_page is None:
            entry.idle_page = keep_page
        for page in list(entry.context.pages):
            if page is not entry.idle_page:
                await _quietly(page.close(), "close page")

    async def _evict_idle(self) -> None:
        idle = sorted(
            (e for e in self._sessions.values() if e.users == 0),
            key=lambda e: e.last_used,
        )
        for entry in idle[: max(len(idle) - self.settings.browser_idle_contexts, 0)]:
            self.forget(entry)
            await self._close_entry(entry)

    async def _create(
        self, key: str | None, version: int, state: StateFactory | None
    ) -> SessionContext:
        initial = await state() if state is not None else None
        pooled = await self._browser_for_new_context()
        options: dict[str, Any] = {}
        if initial is not None:
            options["storage_state"] = initial.storage_state
        with trusted():  # a saved session goes back to the origins that stored it
            context = await pooled.browser.new_context(**options)
            context.set_default_timeout(self.settings.browser_action_timeout * 1000)
            if initial is not None and initial.init_script:
                await context.add_init_script(script=initial.init_script)
        entry = SessionContext(
            key=key,
            context=context,
            owner=pooled,
            version=version,
            url=initial.url if initial else None,
        )
        pooled.live.add(entry)
        pooled.contexts_created += 1
        self.stats.contexts_created += 1
        BROWSER_CONTEXTS_CREATED.inc()
        if pooled.contexts_created >= self.settings.browser_recycle_after:
            self._retire(pooled, "served its contexts")
        return entry

    # -- browsers --------------------------------------------------------------------------

    async def _browser_for_new_context(self) -> PooledBrowser:
        async with self._launch_lock:
            live = [b for b in self._browsers if not b.dead and not b.retiring]
            for pooled in live:
                await self._check_memory(pooled)
            live = [b for b in live if not b.retiring]
            least = min(live, key=lambda b: len(b.live), default=None)
            if least is None or (least.live and len(live) < self.settings.browser_processes):
                least = await self._launch()
            return least

    async def _start(self) -> Playwright:
        if self._closed:
            raise RuntimeError("the browser pool is closed")
        if self._pw is None:
            from playwright.async_api import async_playwright

            pw = await async_playwright().start()
            try:
                self.shield.install(pw)
            except BaseException:
                await pw.stop()
                raise
            self._pw = pw
            self._dir = Path(tempfile.mkdtemp(prefix="greenroom-browser-"))
            self._wrapper = write_wrapper(self._dir)
        return self._pw

    async def _launch(self) -> PooledBrowser:
        pw = await self._start()
        assert self._dir is not None
        if self.found is None:
            self.found = find_chromium(
                self.settings.browser_executable, pw.chromium.executable_path
            )
            log.info("browser found", path=self.found.path, source=self.found.source)
        number = self.stats.browsers_launched + 1
        pidfile = self._dir / f"browser-{number}.pid"
        env: dict[str, str | float | bool] = {
            **os.environ,
            "GREENROOM_CHROMIUM": self.found.path,
            "GREENROOM_WORKER_PID": str(os.getpid()),
            "GREENROOM_BROWSER_PIDFILE": str(pidfile),
            # Kept by every process of this browser: lets tools find them all.
            "GREENROOM_BROWSER_OF": str(os.getpid()),
        }
        browser = await pw.chromium.launch(
            executable_path=str(self._wrapper or self.found.path),
            headless=self.settings.browser_headless,
            args=CHROMIUM_ARGS,
            env=env,
        )
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        pooled = PooledBrowser(browser=browser, number=number, pid=pid)
        browser.on("disconnected", lambda _: self._on_disconnected(pooled))
        self._browsers.append(pooled)
        self.stats.browsers_launched += 1
        BROWSER_LAUNCHES.inc()
        log.info("browser launched", browser=number, pid=pid, version=browser.version)
        return pooled

    def _on_disconnected(self, pooled: PooledBrowser) -> None:
        if pooled.dead:
            return
        pooled.dead = True
        if pooled in self._browsers:
            self._browsers.remove(pooled)
        if not pooled.retiring and not self._closed:
            self.stats.browsers_crashed += 1
            BROWSER_CRASHES.inc()
            log.warning("browser disconnected; replacing it", browser=pooled.number)
        for entry in list(pooled.live):
            entry.closed = True
            self.forget(entry)
        pooled.live.clear()

    def _retire(self, pooled: PooledBrowser, why: str) -> None:
        if not pooled.retiring:
            pooled.retiring = True
            self.stats.browsers_recycled += 1
            BROWSER_RECYCLES.inc()
            log.info("browser retiring", browser=pooled.number, why=why)

    async def _check_memory(self, pooled: PooledBrowser) -> None:
        limit = self.settings.browser_memory_limit_mb
        now = time.monotonic()
        if limit is None or pooled.pid is None or now - pooled.memory_checked_at < 5.0:
            return
        pooled.memory_checked_at = now
        rss = await asyncio.to_thread(group_rss_bytes, pooled.pid)
        if rss > limit * 1024 * 1024:
            self._retire(pooled, f"uses {rss // 2**20} MB (limit {limit} MB)")
            await self._close_if_unused(pooled)

    async def _close_if_unused(self, pooled: PooledBrowser) -> None:
        for entry in [e for e in pooled.live if e.users == 0]:
            self.forget(entry)
            await self._close_entry(entry)

    async def _close_entry(self, entry: SessionContext) -> None:
        if entry.closed:
            entry.owner.live.discard(entry)
        else:
            entry.closed = True
            ok = await _quietly(entry.context.close(), "close context")
            entry.owner.live.discard(entry)
            if not ok:
                # A renderer that will not let its context go: the whole browser goes instead.
                self._retire(entry.owner, "a context would not close")
                await self._close_browser(entry.owner)
                return
        pooled = entry.owner
        if pooled.retiring and not pooled.live:
            await self._close_browser(pooled)

    async def _close_browser(self, pooled: PooledBrowser) -> None:
        pooled.retiring = True
        if pooled in self._browsers:
            self._browsers.remove(pooled)
        if not await _quietly(pooled.browser.close(), "close browser") and pooled.pid:
            _kill_group(pooled.pid)
        pooled.dead = True

    def live_contexts(self) -> list[SessionContext]:
        """Every open context, in use or warm."""
        return [e for b in self._browsers if not b.dead for e in b.live]

    def browser_pids(self) -> list[int]:
        """Main Chromium process ids of the live browsers (for tests and metrics)."""
        return [b.pid for b in self._browsers if b.pid is not None and not b.dead]

    # -- shutdown --------------------------------------------------------------------------

    async def close(self) -> None:
        """Close every context and browser and stop Playwright's driver."""
        if self._closed:
            return
        self._closed = True
        for pooled in list(self._browsers):
            for entry in list(pooled.live):
                entry.closed = True
            await self._close_browser(pooled)
        self._sessions.clear()
        if self._pw is not None:
            await _quietly(self._pw.stop(), "stop playwright")
            self._pw = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


async def _quietly(aw: Awaitable[Any], what: str, timeout: float = CLOSE_TIMEOUT) -> bool:
    """Await a cleanup call, bounded in time; whether it finished without error."""
    try:
        async with asyncio.timeout(timeout):
            await aw
        return True
    except Exception as exc:
        log.warning(f"could not {what}", error=f"{type(exc).__name__}: {exc}")
        return False


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
