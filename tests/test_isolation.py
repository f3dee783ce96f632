"""isolation="process": a run executes in its own process group, is killed whole at its
timeout or cancellation, and resumes from its checkpoints like any other run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greenroom import App, RunState, integrations
from greenroom.crypto import load_keyring
from tests.apps import isolated_app
from tests.browser_site import Site, serve_site
from tests.helpers import fast_app, wait_for_states, worker_running
from tests.test_browser_cleanup import _browser_processes


@pytest.fixture
def app(db_url: str) -> App:
    """The module's workflows on a test database (the run's process gets these settings)."""
    test_app = fast_app(db_url)
    test_app.workflows.update(isolated_app.app.workflows)
    return test_app


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


async def _pid_from(path: Path, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} was never written"
        await asyncio.sleep(0.02)
    return int(path.read_text())


async def test_a_run_executes_in_its_own_process_group(app: App) -> None:
    run = await app.enqueue("iso.where")
    async with worker_running(app):
        [done] = await wait_for_states(app.store, [run.id], timeout=30)
    assert done.state is RunState.SUCCEEDED, done.error
    assert done.output["pid"] != os.getpid()
    assert done.output["pgid"] == done.output["pid"]  # it leads its own group


async def test_a_resumed_isolated_run_replays_its_checkpoints(app: App, tmp_path: Path) -> None:
    marker = str(tmp_path / "count")
    run = await app.enqueue("iso.resume", {"marker": marker})
    async with worker_running(app):
        [done] = await wait_for_states(app.store, [run.id], timeout=30)
    assert done.state is RunState.SUCCEEDED, done.error
    assert done.attempt == 2
    assert done.output == {"counted": 1, "then": "ok"}  # the checkpointed step ran once
    assert Path(marker).read_text() == "1"


async def test_a_busy_loop_is_killed_at_the_timeout_and_the_worker_goes_on(
    app: App, tmp_path: Path
) -> None:
    pidfile = tmp_path / "spin.pid"
    spinning = await app.enqueue("iso.spin", {"pidfile": str(pidfile)})
    async with worker_running(app):
        child = await _pid_from(pidfile)
        [spun] = await wait_for_states(app.store, [spinning.id], timeout=30)
        after = await app.enqueue("iso.where")
        [served] = await wait_for_states(app.store, [after.id], timeout=30)
    assert spun.state is RunState.FAILED
    assert spun.error is not None and spun.error["type"] == "TimeoutError"
    assert not _alive(child)
    assert served.state is RunState.SUCCEEDED


async def test_a_hung_page_takes_its_browser_down_with_the_run(app: App, tmp_path: Path) -> None:
    pidfile = tmp_path / "browser.pid"
    run = await app.enqueue("iso.browser", {"pidfile": str(pidfile), "hang": True})
    async with worker_running(app):
        child = await _pid_from(pidfile)
        assert _browser_processes(child), "the run's own browser should be running"
        [done] = await wait_for_states(app.store, [run.id], timeout=30)
        deadline = time.monotonic() + 5
        while _browser_processes(child) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    assert done.state is RunState.FAILED
    assert not _alive(child)
    assert _browser_processes(child) == []


async def test_cancelling_kills_the_runs_process(app: App, tmp_path: Path) -> None:
    pidfile = tmp_path / "sleep.pid"
    run = await app.enqueue("iso.sleep", {"pidfile": str(pidfile)})
    async with worker_running(app):
        child = await _pid_from(pidfile)
        await asyncio.to_thread(app.store.runs.cancel, run.id, actor="test", reason="stop it")
        [done] = await wait_for_states(app.store, [run.id], timeout=10)
    assert done.state is RunState.CANCELLED
    assert not _alive(child)


WORKER = """
import asyncio, sys
from greenroom import Worker, load_settings
from tests.apps.isolated_app import app

app.settings = load_settings(db=sys.argv[1], lease_seconds=1.0, heartbeat_seconds=0.2,
                             poll_seconds=0.05)
asyncio.run(Worker(app).run(install_signal_handlers=True))
"""


def test_a_sigkilled_worker_takes_its_isolated_run_and_browser_with_it(
    sqlite_url: str, tmp_path: Path
) -> None:
    app = fast_app(sqlite_url)
    app.workflows.update(isolated_app.app.workflows)
    pidfile = tmp_path / "browser.pid"
    app.enqueue_sync("iso.browser", {"pidfile": str(pidfile), "hang": True})
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, sqlite_url],
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        child = asyncio.run(_pid_from(pidfile))
        assert _alive(child) and _browser_processes(child)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        deadline = time.monotonic() + 5
        while (_alive(child) or _browser_processes(child)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child)
        assert _browser_processes(child) == []
    finally:
        worker.kill()
        worker.wait()
        app.close()


async def test_a_pause_stops_an_isolated_run_at_its_next_step(app: App, tmp_path: Path) -> None:
    """The pause reaches the run's process however early it comes (it once killed it)."""
    run = await app.enqueue("iso.steps", {"pidfile": str(tmp_path / "steps.pid")})
    async with worker_running(app):
        await wait_for_states(app.store, [run.id], {RunState.RUNNING}, timeout=20)
        await asyncio.to_thread(
            app.store.controls.pause,
            "workflow",
            "iso.steps",
            actor="test",
            reason="hold",
            drain=False,
        )
        [held] = await wait_for_states(app.store, [run.id], {RunState.PAUSED}, timeout=30)
        await asyncio.to_thread(
            app.store.controls.resume, "workflow", "iso.steps", actor="test", reason="go on"
        )
        [done] = await wait_for_states(app.store, [run.id], timeout=30)
    assert held.attempt == 1 and held.error is None
    assert done.state is RunState.SUCCEEDED, done.error
    assert done.output == 20


async def test_an_isolated_run_reads_its_settings_and_its_secrets_keep_to_their_origin(
    sqlite_url: str,
) -> None:
    """In the run's own process too: ctx.integration, and the secret guard."""
    app = fast_app(sqlite_url)
    app.connectors.update(isolated_app.app.connectors)
    app.workflows.update(isolated_app.app.workflows)
    try:
        app.store.accounts.create_tenant("t1", actor="test")
        with serve_site() as good, serve_site() as evil:
            made = integrations.create(
                app.store.accounts,
                load_keyring(app.settings),
                app.connectors["site"],
                tenant="t1",
                name="site",
                credentials={"user": "bot", "password": Site.password("bot")},
                settings={"site": good.url},
                actor="test",
            )
            runs = [
                await app.enqueue(
                    "iso.login", {"login_url": s.url}, tenant="t1", integration=made.id
                )
                for s in (good, evil)
            ]
            async with worker_running(app):
                ok, refused = await wait_for_states(app.store, [r.id for r in runs], timeout=60)
        assert ok.state is RunState.SUCCEEDED, ok.error
        assert ok.output == {"site": good.url, "user": "bot"}
        assert refused.state is RunState.FAILED and refused.error is not None
        assert refused.error["type"] == "SecretRefused", refused.error
        assert f"to {evil.url}" in refused.error["message"]
        assert evil.received and Site.password("bot") not in "".join(evil.received)
    finally:
        app.close()
