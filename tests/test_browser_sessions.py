"""Saved browser sessions: encrypted at rest, fenced, verified before trusted, and restored in a
run's retry and in the session's next run on another worker, without logging in again."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_site import Site, serve_site
from helpers import fast_app, wait_for_states, worker_running

from greenroom import App, ConfigError, LeaseLost, RetryPolicy, RunContext, RunState, step
from greenroom.browser.state import Snapshot, seal, unseal
from greenroom.crypto import KeyRing, key_id, load_keyring
from greenroom.settings import load_settings

FLAKY: set[str] = set()


@pytest.fixture
def site() -> Iterator[Site]:
    with serve_site() as s:
        yield s


@step(name="login")
async def login(ctx: RunContext, site_url: str, user: str) -> bool:
    page = await ctx.page()
    await page.goto(f"{site_url}/form")
    await page.fill("#user", user)
    await page.fill("#password", Site.password(user))
    await page.click("#go")
    await page.wait_for_url("**/home")
    return True


@step(name="read_me")
async def read_me(ctx: RunContext, site_url: str) -> dict[str, Any]:
    page = await ctx.page()
    await page.goto(f"{site_url}/me")
    return {
        "user": await page.text_content("#user"),
        "local": await page.text_content("#local"),
        "session": await page.text_content("#session"),
    }


@step(name="where")
async def where(ctx: RunContext) -> dict[str, Any]:
    page = await ctx.page(restore_url=True)
    return {"url": page.url, "user": await page.text_content("#user")}


@step(name="leave")
async def leave(ctx: RunContext, site_url: str, say_so: bool) -> None:
    page = await ctx.page()
    await page.goto(f"{site_url}/logout")
    if say_so:
        assert ctx.browser is not None
        ctx.browser.logged_out()


@step(name="read_through_a_crash", retry=RetryPolicy(max_attempts=3, initial_delay=0.1))
async def read_through_a_crash(ctx: RunContext, site_url: str) -> str | None:
    page = await ctx.page()
    assert ctx.browser is not None
    pool = ctx.browser.runtime.pool
    if not pool.stats.browsers_crashed:
        os.kill(pool.browser_pids()[0], signal.SIGKILL)
    await page.goto(f"{site_url}/me")
    return await page.text_content("#user")


def build_app(db_url: str, **settings: Any) -> App:
    app = fast_app(db_url, **settings)
    retry = RetryPolicy(max_attempts=3, initial_delay=0.05)

    @app.workflow(name="sync", session="acct:{user}", retry=retry)
    async def sync(ctx: RunContext, site_url: str, user: str, flaky: bool = False) -> Any:
        await login(ctx, site_url, user)
        if flaky and ctx.run_id not in FLAKY:
            FLAKY.add(ctx.run_id)
            raise RuntimeError("flaky after login")
        return await read_me(ctx, site_url)

    @app.workflow(name="crash", session="acct:{user}")
    async def crash(ctx: RunContext, site_url: str, user: str) -> Any:
        await login(ctx, site_url, user)
        return await read_through_a_crash(ctx, site_url)

    @app.workflow(name="check", session="acct:{user}")
    async def check(ctx: RunContext, user: str) -> Any:
        return await where(ctx)

    @app.workflow(name="logout", session="acct:{user}")
    async def logout(ctx: RunContext, site_url: str, user: str, say_so: bool) -> None:
        await leave(ctx, site_url, say_so)

    @app.workflow(name="private")
    async def private(ctx: RunContext, site_url: str) -> str:
        page = await ctx.page()
        await page.goto(f"{site_url}/login?user=zed&password={Site.password('zed')}")
        return page.url

    return app


@pytest.fixture
def app(sqlite_url: str) -> Iterator[App]:
    a = build_app(sqlite_url)
    yield a
    a.close()


async def run_once(app: App, workflow: str, input: dict[str, Any], **kw: Any) -> Any:
    async with worker_running(app) as worker:
        run = await app.enqueue(workflow, input, **kw)
        (done,) = await wait_for_states(app.store, [run.id], timeout=30)
        return done, worker


async def test_a_retry_after_login_restores_the_session_instead_of_logging_in_again(
    app: App, site: Site
) -> None:
    async with worker_running(app) as worker:
        run = await app.enqueue("sync", {"site_url": site.url, "user": "alice", "flaky": True})
        (done,) = await wait_for_states(app.store, [run.id], timeout=30)
        stats = worker.browser.pool.stats
    assert done.state is RunState.SUCCEEDED, done.error
    assert done.attempt == 2, "the run failed once after its login step"
    assert site.logins["alice"] == 1, "the retry did not log in again"
    assert done.output == {"user": "alice", "local": "alice", "session": "alice-tab"}
    assert stats.contexts_created == 2, "the retry rebuilt its context from the saved state"
    steps = await asyncio.to_thread(app.store.runs.steps, run.id)
    assert [s.name for s in steps] == ["login", "read_me"]


async def test_the_sessions_next_run_on_another_worker_starts_logged_in_at_its_saved_url(
    sqlite_url: str, site: Site
) -> None:
    first = build_app(sqlite_url)
    done, _ = await run_once(first, "sync", {"site_url": site.url, "user": "bob"})
    assert done.state is RunState.SUCCEEDED, done.error
    first.close()
    second = build_app(sqlite_url)  # a new worker: new pool, nothing warm
    try:
        later, _ = await run_once(second, "check", {"user": "bob"})
    finally:
        second.close()
    assert later.state is RunState.SUCCEEDED, later.error
    assert later.output == {"url": f"{site.url}/me", "user": "bob"}
    assert site.logins["bob"] == 1


async def test_a_step_hit_by_a_browser_crash_retries_in_a_new_browser_still_logged_in(
    app: App, site: Site
) -> None:
    async with worker_running(app) as worker:
        run = await app.enqueue("crash", {"site_url": site.url, "user": "frank"})
        (done,) = await wait_for_states(app.store, [run.id], timeout=30)
        stats = worker.browser.pool.stats
    assert done.state is RunState.SUCCEEDED and done.output == "frank", done.error
    assert stats.browsers_crashed == 1 and stats.browsers_launched == 2
    assert site.logins["frank"] == 1
    steps = await asyncio.to_thread(app.store.runs.steps, run.id)
    assert steps[1].attempts == 2, "the crash failed the step once; its retry succeeded"


async def test_saved_state_is_encrypted_with_a_key_file_beside_the_database(
    app: App, site: Site, sqlite_url: str
) -> None:
    done, _ = await run_once(app, "sync", {"site_url": site.url, "user": "carol"})
    assert done.state is RunState.SUCCEEDED, done.error
    saved = await asyncio.to_thread(app.store.sessions.load_session_state, "default", "acct:carol")
    assert saved is not None and saved.cookie_count == 1 and saved.run_id == done.id
    (token,) = site.sessions
    assert token not in saved.state and "carol" not in saved.state
    key_file = Path(sqlite_url.removeprefix("sqlite:///")).parent / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    ring = load_keyring(app.settings)
    assert saved.key_id == ring.current_id
    snap = unseal(ring, saved.key_id, saved.state, "default", "acct:carol")
    assert snap is not None and snap.storage_state["cookies"][0]["value"] == token
    assert snap.session_storage == {site.url: {"tab": "carol-tab"}}
    assert unseal(ring, saved.key_id, saved.state, "default", "acct:mallory") is None


async def test_an_empty_session_replaces_a_saved_one_only_after_a_declared_logout(
    app: App, site: Site
) -> None:
    store = app.store

    async def run(workflow: str, **input: Any) -> Any:
        r = await app.enqueue(workflow, input)
        (done,) = await wait_for_states(store, [r.id], timeout=30)
        assert done.state is RunState.SUCCEEDED, done.error
        return done.output

    async with worker_running(app):
        await run("sync", site_url=site.url, user="dave")
        before = await asyncio.to_thread(store.sessions.load_session_state, "default", "acct:dave")
        assert before is not None and before.cookie_count == 1
        await run("logout", site_url=site.url, user="dave", say_so=False)
        kept = await asyncio.to_thread(store.sessions.load_session_state, "default", "acct:dave")
        assert kept == before, "a session that lost its cookies did not overwrite the good one"
        # The warm context lost its login, so the next run starts again from the saved state.
        assert (await run("check", user="dave"))["user"] == "dave"
        assert site.logins["dave"] == 1
        await run("logout", site_url=site.url, user="dave", say_so=True)
        after = await asyncio.to_thread(store.sessions.load_session_state, "default", "acct:dave")
        assert after is not None and after.cookie_count == 0 and after.version > before.version


async def test_a_run_without_session_key_gets_a_private_context_closed_at_its_end(
    app: App, site: Site
) -> None:
    async with worker_running(app) as worker:
        run = await app.enqueue("private", {"site_url": site.url})
        (done,) = await wait_for_states(app.store, [run.id], timeout=30)
        assert done.state is RunState.SUCCEEDED, done.error
        assert done.output == f"{site.url}/home"
        pool = worker.browser.pool
        assert pool.stats.contexts_created == 1 and pool.browser_pids()
        assert pool.live_contexts() == [], "closed before the run's end was recorded"


# -- the store: fencing and verification, on SQLite and PostgreSQL -------------------------


def _claim_session_run(app: App) -> Any:
    app.enqueue_sync("check", {"user": "erin"}, tenant="t1")
    return app.store.runs.claim("w1", ["default"], 1, 0.05)[0]


async def test_a_stale_workers_save_is_refused(db_url: str) -> None:
    app = build_app(db_url)
    store = app.store
    try:
        old = await asyncio.to_thread(_claim_session_run, app)
        assert await asyncio.to_thread(
            store.sessions.save_session_state, old, key_id="k", state="first", cookie_count=1
        )
        time.sleep(0.1)
        await asyncio.to_thread(store.runs.recover, "w2", 5)
        (new,) = await asyncio.to_thread(store.runs.claim, "w2", ["default"], 1, 10.0)
        assert new.run.id == old.run.id and new.token > old.token
        version = await asyncio.to_thread(
            store.sessions.save_session_state, new, key_id="k", state="current", cookie_count=2
        )
        with pytest.raises(LeaseLost):
            await asyncio.to_thread(
                store.sessions.save_session_state, old, key_id="k", state="stale", cookie_count=5
            )
        saved = await asyncio.to_thread(store.sessions.load_session_state, "t1", "acct:erin")
        assert saved is not None and saved.state == "current" and saved.version == version == 2
    finally:
        app.close()


async def test_store_keeps_a_saved_session_over_an_empty_one_unless_logged_out(
    db_url: str,
) -> None:
    app = build_app(db_url)
    store = app.store
    try:
        lease = await asyncio.to_thread(_claim_session_run, app)
        save = store.sessions.save_session_state
        assert await asyncio.to_thread(save, lease, key_id="k", state="e", cookie_count=0) == 1
        assert await asyncio.to_thread(save, lease, key_id="k", state="good", cookie_count=3) == 2
        assert await asyncio.to_thread(save, lease, key_id="k", state="x", cookie_count=0) is None
        saved = await asyncio.to_thread(store.sessions.load_session_state, "t1", "acct:erin")
        assert saved is not None and saved.state == "good" and saved.cookie_count == 3
        version = await asyncio.to_thread(
            save, lease, key_id="k", state="out", cookie_count=0, logged_out=True
        )
        assert version == 3
        stale = dataclasses.replace(lease, token=lease.token - 1)
        with pytest.raises(LeaseLost):
            await asyncio.to_thread(store.sessions.discard_session_state, stale)
        assert (
            await asyncio.to_thread(store.sessions.load_session_state, "t1", "acct:erin")
            is not None
        )
        assert await asyncio.to_thread(store.sessions.discard_session_state, lease)
        assert await asyncio.to_thread(store.sessions.load_session_state, "t1", "acct:erin") is None
    finally:
        app.close()


# -- keys ----------------------------------------------------------------------------------


def _key() -> tuple[bytes, str]:
    raw = os.urandom(32)
    return raw, base64.b64encode(raw).decode()


def test_keys_rotate_old_states_stay_readable_and_unknown_keys_read_nothing() -> None:
    old_raw, old = _key()
    new_raw, new = _key()
    snap = Snapshot(storage_state={"cookies": [{"name": "sid"}]}, session_storage={}, url=None)
    kid, blob = seal(KeyRing(old_raw), snap, "t", "s")
    assert kid == key_id(old_raw)
    rotated = load_keyring(load_settings(secret_key=new, previous_secret_keys=old))
    assert rotated.current_id == key_id(new_raw)
    assert unseal(rotated, kid, blob, "t", "s") == snap
    assert unseal(load_keyring(load_settings(secret_key=new)), kid, blob, "t", "s") is None
    with pytest.raises(ConfigError, match="32 random bytes"):
        load_keyring(load_settings(secret_key="short"))
    with pytest.raises(ConfigError, match="GREENROOM_SECRET_KEY"):
        load_keyring(load_settings(db="postgresql://db/x"))


def test_two_workers_creating_the_key_file_at_once_share_one_key(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    settings = load_settings(db=f"sqlite:///{tmp_path / 'g.db'}")
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: load_keyring(settings).current_id, range(16)))
    assert len(ids) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]
