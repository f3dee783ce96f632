"""The browser side of a worker (BrowserRuntime) and of one run (RunBrowser).

A run gets its page from the pool lazily, at its first `ctx.page()`: a run that never asks for
one never starts Chromium. Its session's state is saved encrypted after each step and at the
run's end, diagnostics are captured when a step fails, and the context goes back to the pool
(kept warm after a success, closed after anything else).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace

from greenroom import tracing
from greenroom.browser.artifacts import ArtifactStore, default_artifact_store
from greenroom.browser.guard import SecretGuard
from greenroom.browser.locks import KeyedLocks
from greenroom.browser.page_capture import Capture, ConsoleLog, Redactor, capture_failure
from greenroom.browser.pool import BrowserPool, InitialState, SessionContext
from greenroom.browser.state import capture, seal, unseal
from greenroom.crypto import KeyRing, load_keyring
from greenroom.model import Lease
from greenroom.settings import Settings

if TYPE_CHECKING:
    from playwright.async_api import Page, Request

    from greenroom.model import SavedSession
    from greenroom.storage import DbCall
    from greenroom.storage.sessions import Sessions

#: A workflow's "still logged in?" check, asked before a session's state is trusted and saved.
Probe = Callable[["Page"], Awaitable[bool]]
#: How often a run waiting for another worker's login of its session looks again.
LOGIN_POLL_SECONDS = 0.2


class BrowserRuntime:
    """A worker's browser pool, session key ring and artifact store, all created lazily."""

    def __init__(self, settings: Settings, *, artifacts: ArtifactStore | None = None) -> None:
        self.settings = settings
        self.pool = BrowserPool(settings)
        self._keyring: KeyRing | None = None
        self._artifacts = artifacts
        #: One login at a time per session key (runs of a session may share its context).
        self.logins = KeyedLocks()

    @property
    def keyring(self) -> KeyRing:
        if self._keyring is None:
            self._keyring = load_keyring(self.settings)
        return self._keyring

    @property
    def artifacts(self) -> ArtifactStore:
        if self._artifacts is None:
            self._artifacts = default_artifact_store(self.settings)
        return self._artifacts

    def for_run(self, lease: Lease, sessions: Sessions, db: DbCall, log: Any) -> RunBrowser:
        return RunBrowser(self, lease, sessions, db, log)

    async def close(self) -> None:
        await self.pool.close()


class RunBrowser:
    """What one run has of the browser: `ctx.page()` and the hooks the engine calls."""

    def __init__(
        self, runtime: BrowserRuntime, lease: Lease, sessions: Sessions, db: DbCall, log: Any
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.console = ConsoleLog()
        self.redactor = Redactor()
        self._lease = lease
        self._sessions = sessions
        self._db = db
        self._log = log
        self._entry: SessionContext | None = None
        self._page: Page | None = None
        self._lock = asyncio.Lock()
        self._probe: Probe | None = None
        self._logged_out = False
        self._ok = False
        self._diagnosed: BaseException | None = None
        self._step: tuple[int, str, int] | None = None
        #: Where navigations are noted: the step's span, between steps the run attempt's.
        self._run_span = trace.get_current_span()
        self._span = self._run_span
        self._tracing = False
        self._traces = 0  # a re-login starts a second trace in a new context
        self.guard: SecretGuard | None = None

    # -- for workflows ---------------------------------------------------------------------

    async def page(self, *, restore_url: bool = False) -> Page:
        """This run's page; with restore_url, a fresh page first goes back to the session's
        saved URL. After a browser crash, a new context starts from the saved state."""
        async with self._lock:
            if self._entry is not None and not self._entry.usable:
                await self._release(keep=False)
            if self._entry is None:
                await self._acquire()
            assert self._entry is not None
            if self._page is None or self._page.is_closed():
                self._page = await self._entry.take_page()
                self._page.on("requestfinished", self._navigated)
            if restore_url and self._entry.url and self._page.url == "about:blank":
                await self._page.goto(self._entry.url)
            return self._page

    def logged_out(self) -> None:
        """The workflow logged out on purpose: the next save may store a session without
        cookies (otherwise an empty session never replaces a saved one)."""
        self._logged_out = True

    def set_probe(self, probe: Probe | None) -> None:
        """Check before each save that the page is still logged in; a failed check keeps the
        previously saved state."""
        self._probe = probe

    def add_secret(self, value: str) -> None:
        """A value (e.g. a password) that must never appear in artifacts; in a run for an
        integration, also one that only goes to the integration's secret origins."""
        self.redactor.add(value)

    def guard_secrets(self, origins: frozenset[str], *, integration: str) -> None:
        """From now on this run's secrets go only to pages and URLs of `origins` (guard.py).
        Called by the run's task, before its workflow starts, for a run with an integration."""
        self.guard = SecretGuard(
            integration=integration, redactor=self.redactor, origins=origins, log=self._log
        )
        self.guard.act()
        if self._entry is not None:
            self.runtime.pool.shield.attach(self.guard, self._entry.context)

    # -- logins ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def login_lock(self) -> AsyncIterator[None]:
        """Held while a login step runs: one login per session key at a time, in this worker
        (a lock) and across workers (a row in the database, which only counts while its run
        holds its lease, so a dead worker's login does not block the next)."""
        key = self._pool_key
        if key is None:
            yield
            return
        async with self.runtime.logins.hold(key):
            while not await self._db(self._sessions.take_login, self._lease):
                await asyncio.sleep(LOGIN_POLL_SECONDS)
            try:
                yield
            finally:
                with contextlib.suppress(Exception):  # the holder's lease ending frees it too
                    await self._db(self._sessions.release_login, self._lease)

    async def discard_session(self) -> None:
        """The session turned out to be logged out: forget its saved state and its context,
        so the next page starts from nothing and a login saves a fresh state."""
        async with self._lock:
            await self._release(keep=False)  # closed once no other run of the session uses it
            if self._lease.run.session_key is not None:
                await self._db(self._sessions.discard_session_state, self._lease)
        self._log.info("saved browser session discarded")

    # -- hooks called by the engine --------------------------------------------------------

    def step_started(self, position: int, name: str, attempt: int) -> None:
        self._step = (position, name, attempt)
        self._span = trace.get_current_span()

    async def step_completed(self, position: int, name: str) -> None:
        """Save the session before the step is checkpointed: a resumed run that skips the step
        then always finds the browser state the step left."""
        self._step = None
        await self.save()
        self._span = self._run_span

    async def step_failed(self, position: int, name: str, attempt: int, exc: BaseException) -> None:
        await self._diagnose(exc, (position, name, attempt))
        self._span = self._run_span

    def _navigated(self, request: Request) -> None:
        """A page loaded a document: noted with its timing on the current step's span (the
        URL without its query, which may carry tokens)."""
        if not self._span.is_recording() or not request.is_navigation_request():
            return
        parts = urlsplit(request.url)
        url = self.redactor.text(urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")))
        timing = request.timing
        self._span.add_event(
            "navigation",
            {
                "url.full": url,
                "greenroom.navigation.main_frame": request.frame.parent_frame is None,
                "greenroom.navigation.response_ms": round(timing["responseEnd"], 1),
            },
        )

    async def run_completed(self) -> None:
        await self.save()
        self._ok = True

    async def run_failed(self, exc: BaseException) -> None:
        if exc is not self._diagnosed:
            await self._diagnose(exc, self._step)
        if self._entry is not None:
            self.runtime.pool.forget(self._entry)  # the session's next run starts clean

    async def close(self) -> None:
        """Hand the context back: warm for the session after a success, else closed."""
        await self._release(keep=self._ok)

    # -- session state ---------------------------------------------------------------------

    @property
    def _pool_key(self) -> str | None:
        run = self._lease.run
        return None if run.session_key is None else f"{run.tenant}\0{run.session_key}"

    async def _acquire(self) -> None:
        with tracing.span("browser context"):
            await self._open()

    async def _open(self) -> None:
        run = self._lease.run
        version, factory = 0, None
        if run.session_key is not None:
            self.runtime.keyring  # noqa: B018 - no key, no saved sessions: say so before any work
            saved = await self._db(self._sessions.load_session_state, run.tenant, run.session_key)
            if saved is not None:
                version = saved.version
                factory = self._state_factory(saved)
        entry = await self.runtime.pool.acquire(self._pool_key, version=version, state=factory)
        self._entry = entry
        if self.guard is not None:
            self.runtime.pool.shield.attach(self.guard, entry.context)
        self.console.attach(entry.context)
        await self._start_tracing(entry)

    def _state_factory(self, saved: SavedSession) -> Callable[[], Awaitable[InitialState | None]]:
        async def load() -> InitialState | None:
            snap = unseal(
                self.runtime.keyring, saved.key_id, saved.state, saved.tenant, saved.session_key
            )
            if snap is None:
                self._log.warning(
                    "saved browser session cannot be decrypted; starting without it",
                    key_id=saved.key_id,
                )
                return None
            self._log.info("browser session restored", version=saved.version)
            return snap.initial_state()

        return load

    async def save(self) -> None:
        """Save the session's state, fenced by the run's lease; skipped without a session."""
        entry = self._entry
        if entry is None or entry.key is None or not entry.usable:
            return
        with tracing.span("browser session save"):
            await self._save(entry)

    async def _save(self, entry: SessionContext) -> None:
        run = self._lease.run
        assert run.session_key is not None
        if not self._logged_out and not await self._probe_ok():
            entry.version = -1  # not trusted: the session's next run starts from the saved one
            return
        try:
            async with asyncio.timeout(self.settings.browser_action_timeout):
                snap = await capture(entry.context, self._current_url(entry))
        except Exception as exc:
            self._log.warning("could not read the browser session", error=_brief(exc))
            return
        kid, blob = seal(self.runtime.keyring, snap, run.tenant, run.session_key)
        version = await self._db(
            self._sessions.save_session_state,
            self._lease,
            key_id=kid,
            state=blob,
            cookie_count=snap.cookie_count,
            logged_out=self._logged_out,
        )
        if version is None:
            entry.version = -1
            self._log.warning(
                "browser session has no cookies; kept the saved one (call "
                "ctx.browser.logged_out() after a deliberate logout)"
            )
            return
        entry.version, entry.url = version, snap.url
        self._logged_out = False

    async def _probe_ok(self) -> bool:
        if self._probe is None or self._page is None or self._page.is_closed():
            return True
        try:
            async with asyncio.timeout(self.settings.browser_action_timeout):
                ok = await self._probe(self._page)
        except Exception as exc:
            self._log.warning("session probe failed", error=_brief(exc))
            return False
        if not ok:
            self._log.warning("session probe says logged out; not saving the session")
        return ok

    def _current_url(self, entry: SessionContext) -> str | None:
        page = self._page
        if page is not None and not page.is_closed() and page.url.startswith("http"):
            return page.url
        return entry.url

    async def _release(self, *, keep: bool) -> None:
        entry, page = self._entry, self._page
        self._entry = self._page = None
        if entry is None:
            return
        if self.guard is not None:
            self.runtime.pool.shield.detach(self.guard)
        await self._stop_tracing(entry)
        with contextlib.suppress(Exception):
            self.console.detach(entry.context)
        await self.runtime.pool.release(entry, page, keep=keep)

    # -- diagnostics -----------------------------------------------------------------------

    async def _diagnose(self, exc: BaseException, step: tuple[int, str, int] | None) -> None:
        """Capture what the page showed when the run failed; never raises."""
        if self._entry is None:
            return
        self._diagnosed = exc
        run = self._lease.run
        where = "run" if step is None else f"step{step[0]}-try{step[2]}"
        with tracing.span("browser failure capture"):
            try:
                captures = await capture_failure(
                    self._page,
                    self.console,
                    error=exc,
                    redactor=self.redactor,
                    max_bytes=self.settings.artifact_max_bytes,
                    timeout=self.settings.diagnostics_timeout,
                    prefix=f"attempt{run.attempt}-{where}",
                )
                for item in captures:
                    await self._store_artifact(item, step)
            except Exception as exc2:
                self._log.warning("could not capture failure diagnostics", error=_brief(exc2))

    async def _store_artifact(self, item: Capture, step: tuple[int, str, int] | None) -> None:
        run = self._lease.run
        location = await asyncio.to_thread(self.runtime.artifacts.put, run.id, item.name, item.data)
        await self._db(
            self._sessions.add_artifact,
            run_id=run.id,
            tenant=run.tenant,
            attempt=run.attempt,
            step_position=None if step is None else step[0],
            step_name=None if step is None else step[1],
            step_attempt=None if step is None else step[2],
            kind=item.kind,
            content_type=item.content_type,
            location=location,
            size=len(item.data),
            truncated=item.truncated,
        )

    # -- tracing ---------------------------------------------------------------------------

    async def _start_tracing(self, entry: SessionContext) -> None:
        mode = self.settings.browser_trace
        run = self._lease.run
        if mode == "off" or (mode == "retry" and run.attempt < 2):
            return
        try:
            await entry.context.tracing.start(
                screenshots=True, snapshots=True, title=f"run {run.id} attempt {run.attempt}"
            )
            self._tracing = True
        except Exception as exc:  # e.g. another run of the session is tracing this context
            self._log.warning("could not start tracing", error=_brief(exc))

    async def _stop_tracing(self, entry: SessionContext) -> None:
        if not self._tracing:
            return
        self._tracing = False
        with tempfile.TemporaryDirectory(prefix="greenroom-trace-") as tmp:
            path = Path(tmp) / "trace.zip"
            try:
                async with asyncio.timeout(self.settings.diagnostics_timeout * 2):
                    await entry.context.tracing.stop(path=str(path))
                data = self.redactor.zip(await asyncio.to_thread(path.read_bytes))
            except Exception as exc:
                self._log.warning("could not save the trace", error=_brief(exc))
                return
        if len(data) > self.settings.artifact_max_bytes:
            self._log.warning("trace larger than artifact_max_bytes; not stored", size=len(data))
            return
        self._traces += 1
        part = "" if self._traces == 1 else f"-{self._traces}"
        name = f"attempt{self._lease.run.attempt}-trace{part}.zip"
        trace = Capture(kind="trace", name=name, content_type="application/zip", data=data)
        try:
            await self._store_artifact(trace, None)
        except Exception as exc:
            self._log.warning("could not store the trace", error=_brief(exc))


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"
