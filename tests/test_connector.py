"""The example connector against the real demo SaaS, in real Chromium: a sync that reads every
page in its own step, sessions reused across runs and workers, expired sessions logged into
again exactly once, resumes without a second login, a changed layout failing clearly with its
diagnostics, and an idempotent deactivation. Also the login step's guarantees on their own."""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import fast_app, wait_for_states, worker_running

from greenroom import App, LoggedOut, RetryPolicy, Run, RunContext, RunState, StepStatus, step
from greenroom.browser.artifacts import default_artifact_store
from greenroom.browser.locks import KeyedLocks
from greenroom.browser.pool import BrowserPool, SessionContext
from greenroom.cli import run as cli
from greenroom.crypto import load_keyring
from greenroom.demo import connector
from greenroom.demo.saas import DemoSaaS, admin_credentials, organization, running_demo_saas
from greenroom.demo.setup import connect_org, register_tenant

TENANT = "default"
USERS = 50  # per org: three pages of 20, 20 and 10
PAGE_SIZE = 20
SYNC = "demo.sync_users"
PAGES = ["demo.users_page"] * 3


@pytest.fixture(scope="module")
def demo_saas() -> Iterator[DemoSaaS]:
    with running_demo_saas(orgs=3, users_per_org=USERS, page_size=PAGE_SIZE) as saas:
        yield saas


@pytest.fixture
def saas(demo_saas: DemoSaaS) -> DemoSaaS:
    demo_saas.reset()  # counters, sessions, user changes and faults as at startup
    return demo_saas


def connector_app(db_url: str, **settings: Any) -> App:
    """The connector's workflows in an App on the test's own database (as `--db` does).

    Its lease is longer than fast_app's 1 s: with Chromium launching on a loaded CI machine a
    heartbeat can miss 0.75 s, the worker then stops the run itself and a resume logs in twice."""
    app = fast_app(db_url, **{"lease_seconds": 5.0, "heartbeat_seconds": 0.5, **settings})
    app.connectors.update(connector.app.connectors)
    app.workflows.update(connector.app.workflows)
    return app


@pytest.fixture
def app(sqlite_url: str) -> Iterator[App]:
    a = connector_app(sqlite_url, browser_action_timeout=5.0)
    yield a
    a.close()


def integration_for(app: App, saas: DemoSaaS, org: str) -> str:
    """The test tenant's integration with `org` of the console, made once per database."""
    for found in app.store.accounts.integrations(tenant=TENANT):
        if found.name == f"demo console {org}":
            return found.id
    register_tenant(app.store, TENANT)
    ring = load_keyring(app.settings)
    return connect_org(
        app.store, ring, app.connectors["demo"], tenant=TENANT, org=org, base_url=saas.url
    ).id


async def start(app: App, saas: DemoSaaS, workflow: str, org: str, **input: Any) -> Run:
    """A run of the connector for the org's integration, as an operator starts one."""
    integration = await asyncio.to_thread(integration_for, app, saas, org)
    return await app.enqueue(workflow, {"org": org, **input}, integration=integration)


def expected_users(org: str) -> list[dict[str, Any]]:
    return [
        {
            "email": u.email,
            "name": u.name,
            "role": u.role,
            "tier": u.tier,
            "monthly_cost": u.monthly_cost,
            "last_login": None if u.last_login is None else u.last_login.isoformat(),
            "active": u.active,
        }
        for u in organization(org, USERS).users
    ]


async def run_on_new_worker(app: App, saas: DemoSaaS, workflow: str, org: str) -> Run:
    """One run on a worker of its own: nothing warm, its session comes from the database."""
    async with worker_running(app):
        run = await start(app, saas, workflow, org)
        (done,) = await wait_for_states(app.store, [run.id], timeout=60)
    return done


async def step_names(app: App, run_id: str) -> list[str]:
    return [s.name for s in await asyncio.to_thread(app.store.runs.steps, run_id)]


# -- the sync ------------------------------------------------------------------------------


async def test_sync_reads_each_page_in_a_step_and_the_sessions_next_runs_reuse_its_login(
    app: App, saas: DemoSaaS
) -> None:
    first = await run_on_new_worker(app, saas, SYNC, "acme")
    assert first.state is RunState.SUCCEEDED, first.error
    assert first.session_key == "default:acme"
    assert first.output == {"org": "acme", "users": expected_users("acme"), "pages": 3}
    assert await step_names(app, first.id) == ["demo.login", *PAGES]
    assert saas.logins("acme") == 1

    assert saas.expire_sessions("acme") == 1
    async with worker_running(app):  # another worker: the session comes from the database

        async def sync() -> Run:
            run = await start(app, saas, SYNC, "acme")
            (done,) = await wait_for_states(app.store, [run.id], timeout=60)
            assert done.state is RunState.SUCCEEDED, done.error
            assert done.output is not None and len(done.output["users"]) == USERS
            return done

        await sync()
        assert saas.logins("acme") == 2, "the expired session logged in exactly once more"
        again = await sync()
        assert saas.logins("acme") == 2, "the session was reused: no login"
    login = (await asyncio.to_thread(app.store.runs.steps, again.id))[0]
    assert login.result == {"org": "acme", "account": "admin@acme.example", "restored": True}


# -- resumes and expired sessions ----------------------------------------------------------


async def wait_for_login_step(app: App, run_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = await asyncio.to_thread(app.store.runs.steps, run_id)
        if steps and steps[0].status is StepStatus.COMPLETED:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {run_id} did not complete its login step in {timeout}s")


async def stop_after_login(app: App, saas: DemoSaaS, org: str) -> str:
    """Start a sync and stop its worker (gracefully, no SIGKILL) as soon as the login step is
    checkpointed: the run goes back to the queue with pages still to read."""
    saas.set_faults(latency_ms=300)  # the first page cannot finish before the next line...
    async with worker_running(app) as worker:
        run = await start(app, saas, SYNC, org)
        await wait_for_login_step(app, run.id)
        saas.set_faults(latency_ms=30_000)  # ...and the next one hangs until the stop
        worker.stop()
    saas.set_faults(latency_ms=0)
    stopped = await asyncio.to_thread(app.store.runs.get_run, run.id)
    assert stopped.state is RunState.QUEUED, f"expected a released run, got {stopped.state}"
    steps = await step_names(app, run.id)
    assert steps[0] == "demo.login" and len(steps) < 4, steps
    assert saas.logins(org) == 1
    return run.id


async def resume(app: App, run_id: str) -> Run:
    async with worker_running(app):  # a new worker: its pool has nothing warm
        (done,) = await wait_for_states(app.store, [run_id], timeout=60)
    return done


async def test_a_run_stopped_after_its_login_resumes_on_another_worker_without_logging_in(
    app: App, saas: DemoSaaS
) -> None:
    run_id = await stop_after_login(app, saas, "globex")
    done = await resume(app, run_id)
    assert done.state is RunState.SUCCEEDED, done.error
    assert done.output is not None and done.output["users"] == expected_users("globex")
    assert saas.logins("globex") == 1, "the resumed run restored the session saved after login"
    steps = await asyncio.to_thread(app.store.runs.steps, run_id)
    assert [s.name for s in steps] == ["demo.login", *PAGES]
    assert steps[0].attempts == 1


async def test_a_resumed_run_whose_session_expired_logs_in_once_more_and_retries_the_step(
    app: App, saas: DemoSaaS
) -> None:
    run_id = await stop_after_login(app, saas, "initech")
    saved = await asyncio.to_thread(
        app.store.sessions.load_session_state, "default", "default:initech"
    )
    assert saved is not None and saved.cookie_count == 1
    assert saas.expire_sessions("initech") == 1

    done = await resume(app, run_id)
    assert done.state is RunState.SUCCEEDED, done.error
    assert done.output is not None and done.output["users"] == expected_users("initech")
    assert saas.logins("initech") == 2, "logged in exactly once more"
    steps = await asyncio.to_thread(app.store.runs.steps, run_id)
    assert [s.name for s in steps] == ["demo.login", *PAGES], "the re-login adds no step"
    assert steps[0].attempts == 1 and steps[0].result["restored"] is False
    assert all(s.attempts == 1 for s in steps), "the logged-out attempt is not counted"
    fresh = await asyncio.to_thread(
        app.store.sessions.load_session_state, "default", "default:initech"
    )
    assert fresh is not None and fresh.run_id == run_id and fresh.state != saved.state


# -- a changed layout ----------------------------------------------------------------------


def artifact_texts(app: App, run_id: str) -> list[bytes]:
    """Every stored artifact's bytes, a trace's members unzipped."""
    files = default_artifact_store(app.settings)
    blobs = []
    for a in app.store.sessions.artifacts(run_id):
        data = files.get(a.location)
        if a.kind == "trace":
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                blobs += [z.read(name) for name in z.namelist()]
        else:
            blobs.append(data)
    return blobs


async def test_a_changed_layout_fails_at_once_with_a_clear_error_and_its_diagnostics(
    sqlite_url: str, saas: DemoSaaS, capsys: pytest.CaptureFixture[str]
) -> None:
    app = connector_app(sqlite_url, browser_action_timeout=2.0, browser_trace="on")
    saas.set_faults(changed_layout=True)
    try:
        done = await run_on_new_worker(app, saas, SYNC, "acme")
        assert done.state is RunState.FAILED and done.attempt == 1, "permanent: no retry"
        assert done.error is not None and done.error["type"] == "LayoutChanged"
        assert done.error["step"] == "demo.users_page"
        assert "selector not found: [data-testid=users-table]" in done.error["message"]
        steps = await asyncio.to_thread(app.store.runs.steps, done.id)
        assert [(s.name, s.status, s.attempts) for s in steps] == [
            ("demo.login", StepStatus.COMPLETED, 1),
            ("demo.users_page", StepStatus.FAILED, 1),
        ]
        artifacts = await asyncio.to_thread(app.store.sessions.artifacts, done.id)
        kinds = {a.kind for a in artifacts if a.step_name == "demo.users_page"}
        assert {"screenshot", "html"} <= kinds, kinds
        html = next(a for a in artifacts if a.kind == "html")
        page = default_artifact_store(app.settings).get(html.location)
        assert b'data-testid="member-directory"' in page, "the HTML shows what the page had"
        password = admin_credentials("acme").password.encode()
        blobs = await asyncio.to_thread(artifact_texts, app, done.id)
        assert any(a.kind == "trace" for a in artifacts)
        assert not [b for b in blobs if password in b], "the typed password is redacted"

        assert cli(["--db", sqlite_url, "runs", "show", done.id]) == 0
        shown = capsys.readouterr().out
        assert "Artifacts" in shown and "1 demo.users_page (try 1)" in shown
        assert html.location in shown
        root = Path(sqlite_url.removeprefix("sqlite:///")).parent / "artifacts"
        assert f"locations are under {root.resolve()}" in " ".join(shown.split())
    finally:
        app.close()


# -- deactivation --------------------------------------------------------------------------


async def test_deactivate_user_is_idempotent_and_reuses_the_session(
    app: App, saas: DemoSaaS
) -> None:
    email = organization("wonka", USERS).users[7].email
    async with worker_running(app):

        async def deactivate(**changes: Any) -> Run:
            run = await start(
                app, saas, "demo.deactivate_user", "wonka", **{"email": email, **changes}
            )
            (done,) = await wait_for_states(app.store, [run.id], timeout=60)
            return done

        first = await deactivate()
        assert first.state is RunState.SUCCEEDED, first.error
        assert first.output == {"email": email, "deactivated": True, "changed": True}
        again = await deactivate()
        assert again.state is RunState.SUCCEEDED, again.error
        assert again.output == {"email": email, "deactivated": True, "changed": False}
        unknown = await deactivate(email="nobody@wonka.example")
        assert unknown.state is RunState.FAILED and unknown.attempt == 1
        assert unknown.error is not None and "is not a user" in unknown.error["message"]
        sync = await start(app, saas, SYNC, "wonka")
        (synced,) = await wait_for_states(app.store, [sync.id], timeout=60)
    stats = saas.stats()["wonka"]
    assert stats["actions"] == 1, "the repeat changed nothing"
    assert stats["logins"] == 1, "every later run reused the first run's session"
    assert synced.output is not None
    inactive = [u["email"] for u in synced.output["users"] if not u["active"]]
    assert inactive == [email]


# -- the login step on its own ---------------------------------------------------------------

CALLS: dict[str, int] = {}
INSIDE: dict[str, int] = {}


def login_app(db_url: str) -> App:
    app = fast_app(db_url)

    @step(name="login", login=True)
    async def login(ctx: RunContext, who: str) -> str:
        CALLS[who] = CALLS.get(who, 0) + 1
        INSIDE[who] = INSIDE.get(who, 0) + 1
        INSIDE["max"] = max(INSIDE.get("max", 0), INSIDE[who])
        await asyncio.sleep(0.05)
        INSIDE[who] -= 1
        return who

    @step(name="work", retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    async def work(ctx: RunContext, who: str, outs: int) -> int:
        CALLS[f"work:{who}"] = CALLS.get(f"work:{who}", 0) + 1
        if CALLS[f"work:{who}"] <= outs:
            raise LoggedOut("the page shows the login form")
        return CALLS[f"work:{who}"]

    @app.workflow(name="job", session="{who}", session_concurrency=4)
    async def job(ctx: RunContext, who: str, outs: int = 0) -> int:
        await login(ctx, who)
        return await work(ctx, who, outs)

    return app


async def test_a_logged_out_step_logs_in_again_once_then_the_error_counts(
    sqlite_url: str,
) -> None:
    app = login_app(sqlite_url)
    try:
        async with worker_running(app):
            once = await app.enqueue("job", {"who": "once", "outs": 1})
            always = await app.enqueue("job", {"who": "always", "outs": 99})
            ok, failed = await wait_for_states(app.store, [once.id, always.id], timeout=30)
        assert ok.state is RunState.SUCCEEDED and ok.output == 2, ok.error
        assert CALLS["once"] == 2, "one login, and one more after the LoggedOut"
        (_, work) = await asyncio.to_thread(app.store.runs.steps, ok.id)
        assert work.attempts == 1, "the logged-out attempt did not count"
        assert failed.state is RunState.FAILED and failed.error is not None
        assert failed.error["type"] == "LoggedOut"
        assert CALLS["always"] == 2, "logged in again only once"
        assert CALLS["work:always"] == 3, "then the step's own retries ran and failed"
    finally:
        app.close()


async def test_a_relogin_is_in_the_timeline_runs_show_and_the_api(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = login_app(sqlite_url)
    try:
        async with worker_running(app):
            run = await app.enqueue("job", {"who": "shown", "outs": 1})
            (done,) = await wait_for_states(app.store, [run.id], timeout=30)
        assert done.state is RunState.SUCCEEDED, done.error
        events = await asyncio.to_thread(app.store.runs.events, run.id)
    finally:
        app.close()
    [relogin] = [e for e in events if e.reason.startswith("session logged out")]
    assert relogin.reason == "session logged out; login step re-run (step 'work', attempt 1)"
    assert relogin.state is RunState.RUNNING and relogin.worker_id
    assert relogin.detail == {"step": "work", "attempt": 1, "login_step": "login"}
    assert [e.state for e in events][-1] is RunState.SUCCEEDED, "in order, before the end"
    assert cli(["--db", sqlite_url, "runs", "show", run.id]) == 0
    out = capsys.readouterr().out
    assert "session logged out; login step re-run (step 'work', attempt 1)" in " ".join(out.split())
    assert cli(["--db", sqlite_url, "runs", "show", run.id, "--json"]) == 0
    timeline = json.loads(capsys.readouterr().out)["timeline"]  # the API's RunDetail
    assert any(e["detail"].get("login_step") == "login" for e in timeline)


async def test_one_login_per_session_key_at_a_time(sqlite_url: str) -> None:
    app = login_app(sqlite_url)
    try:
        async with worker_running(app, concurrency=8):
            runs = [await app.enqueue("job", {"who": "shared"}) for _ in range(4)]
            others = [await app.enqueue("job", {"who": f"other{i}"}) for i in range(3)]
            done = await wait_for_states(app.store, [r.id for r in runs + others], timeout=30)
        assert all(r.state is RunState.SUCCEEDED for r in done)
        assert CALLS["shared"] == 4 and INSIDE["max"] == 1
    finally:
        app.close()


# -- the creation lock ---------------------------------------------------------------------


async def test_keyed_locks_stay_shared_while_anyone_waits_and_are_dropped_after() -> None:
    locks = KeyedLocks()
    holders: list[int] = []
    most = 0

    async def hold(n: int) -> None:
        nonlocal most
        async with locks.hold("k"):
            holders.append(n)
            most = max(most, len(holders))
            await asyncio.sleep(0.01)
            holders.remove(n)

    first = asyncio.create_task(hold(0))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(hold(n)) for n in range(1, 10)]
    await first
    late = [asyncio.create_task(hold(n)) for n in range(10, 20)]  # while others are woken
    await asyncio.gather(*waiting, *late)
    assert most == 1 and len(locks) == 0


async def test_a_context_forgotten_while_the_next_acquirer_is_woken_is_recreated_once(
    sqlite_url: str,
) -> None:
    pool = BrowserPool(fast_app(sqlite_url).settings)

    async def use_and_forget() -> SessionContext:
        entry = await pool.acquire("s")
        pool.forget(entry)  # at once, as a failed run does, while the next waiter wakes up
        return entry

    try:
        first = asyncio.create_task(use_and_forget())
        second = asyncio.create_task(pool.acquire("s"))  # waits for the first's creation
        await first
        late = [asyncio.create_task(pool.acquire("s")) for _ in range(25)]
        entries = await asyncio.gather(second, *late)
        assert len({id(e) for e in entries}) == 1, "one new context for all the others"
        assert pool.stats.contexts_created == 2
    finally:
        await pool.close()
