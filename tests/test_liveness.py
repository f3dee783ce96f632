"""A worker never executes a run that another worker may have taken: a live worker whose
PostgreSQL connections are dropped is never taken for dead while it may still execute its runs,
and a run whose heartbeats cannot get through stops before its lease expires
(docs/durability.md, "Liveness").

The connection tests are PostgreSQL's: there a liveness lock lives on a connection, which a
failover, a restarted pooler or `pg_terminate_backend` drops while the worker lives on. SQLite's
lock is a `flock` that only the process's death releases.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from greenroom import ManualClock, RunContext, RunState, step
from greenroom.model import NewRun
from greenroom.storage import RunStore, open_store
from tests.apps.durable_app import CHAIN, build_app
from tests.helpers import fast_app, wait_for_states, worker_running
from tests.procs import WorkerPool, executions, overlaps, read_records, wait_for

OBSERVER = "liveness-observer"  # the test's own connections, never dropped
_LOCK_HELD = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def terminate(url: str, where: str) -> int:
    """Drop the connections to the test's database that match `where`; how many."""
    with psycopg.connect(url, autocommit=True, application_name=OBSERVER) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid, 2000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            f" AND application_name <> '{OBSERVER}' AND ({where})"
        ).fetchall()
    return sum(1 for row in rows if row[0])


ALL = "true"
LIVENESS = "application_name = 'greenroom liveness'"


@pytest.fixture
def store(pg_url: str, clock: ManualClock) -> Iterator[RunStore]:
    s = open_store(pg_url + f"?application_name={OBSERVER}", clock=clock)
    yield s
    s.backend.close()


def lock_held(url: str, key: int) -> bool:
    with psycopg.connect(url, autocommit=True, application_name=OBSERVER) as conn:
        row = conn.execute(_LOCK_HELD, (key,)).fetchone()
    return bool(row and row[0])


@pytest.mark.postgres
def test_a_dropped_lock_is_taken_back_and_its_worker_never_declared(
    store: RunStore, pg_url: str
) -> None:
    holder = store.backend.hold_liveness(4242, "w1")
    store.runs.register_worker(
        "w1", host="h", pid=1, queues=["default"], concurrency=1, lock_key=4242
    )
    try:
        for _ in range(5):
            assert terminate(pg_url, LIVENESS) == 1
            wait_for(lambda: lock_held(pg_url, 4242), 5, "the lock to be taken back")
            assert store.runs.recover("w2", max_stalls=3).lost_workers == []
            assert not holder.ended()
        wait_for(lambda: not holder.unconfirmed(), 2, "the lock to be confirmed")
    finally:
        holder.close()
    [w1] = [w for w in store.runs.workers() if w.id == "w1"]
    assert w1.state == "alive"


_FROZEN = """
import sys, time
from greenroom.storage import open_store
store = open_store(sys.argv[1])
handle = store.backend.hold_liveness(777, "frozen")
store.runs.register_worker(
    "frozen", host="h", pid=0, queues=["default"], concurrency=1, lock_key=777
)
print(len(store.runs.claim("frozen", ["default"], 1, 3600.0)), flush=True)
sys.stdin.readline()
deadline = time.monotonic() + 10
while not handle.ended() and time.monotonic() < deadline:
    time.sleep(0.01)
print("ended" if handle.ended() else "kept", handle.unconfirmed(), flush=True)
"""


@pytest.mark.postgres
def test_a_worker_declared_lost_cannot_take_its_lock_back(
    store: RunStore, clock: ManualClock, pg_url: str
) -> None:
    """Frozen while its connection is dropped (the worker and its lock's process: a suspended
    machine), the worker is declared lost; woken, it finds its lock gone for good, and its runs
    are handed out only after the grace."""
    run, _ = store.runs.enqueue(NewRun(workflow="wf"))
    with subprocess.Popen(
        [sys.executable, "-c", _FROZEN, pg_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        start_new_session=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "1"
            os.killpg(proc.pid, signal.SIGSTOP)
            assert terminate(pg_url, LIVENESS) == 1
            wait_for(lambda: not lock_held(pg_url, 777), 5, "the server to drop the lock")
            recovery = store.runs.recover("w2", max_stalls=3)
            assert recovery.lost_workers == ["frozen"]
            assert recovery.requeued == []
            grace = store.backend.liveness_grace
            assert grace > 0 and recovery.next_due == clock.now() + grace
            os.killpg(proc.pid, signal.SIGCONT)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline().split() == ["ended", "True"]
            assert not lock_held(pg_url, 777)
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGKILL)
    clock.advance(grace - 0.01)
    assert store.runs.recover("w2", max_stalls=3).requeued == []
    clock.advance(0.01)
    assert store.runs.recover("w2", max_stalls=3).requeued == [run.id]
    events = store.runs.events(run.id)
    assert events[-1].reason == "stalled: worker frozen lost its liveness lock"
    states = {w.id: w.state for w in store.runs.workers(include_gone=True)}
    assert states["frozen"] == "dead"


# -- three workers, long steps, connections dropped -----------------------------------------

LONG_RUNS = 9
LONG_STEP_MS = [3000.0, 3000.0]
SHORT_RUNS = 300


def _drop_repeatedly(url: str, rounds: list[str], stop: threading.Event, counts: list[int]) -> None:
    rng = random.Random()
    for where in rounds:
        if stop.wait(rng.uniform(0.5, 1.0)):
            return
        counts.append(terminate(url, where))


def _workers_under(
    pg_url: str, tmp_path: Path, disturb: Callable[[Callable[[], bool]], None]
) -> tuple[list[Any], str]:
    """Nine runs of 3-second steps beside short ones on three workers of 8 slots, while
    `disturb(done)` does its worst; every run's record and the workers' logs."""
    observed = pg_url + f"?application_name={OBSERVER}"
    app = build_app(observed)
    app.store.runs.count_by_state()
    record = tmp_path / "record.jsonl"
    pool = WorkerPool(pg_url, tmp_path, {"concurrency": 8, "max_stalls": 100})
    try:
        long_runs = [
            app.enqueue_sync(CHAIN, {"record": str(record), "steps": 3, "step_ms": LONG_STEP_MS})
            for _ in range(LONG_RUNS)
        ]
        short_runs = [
            app.enqueue_sync(CHAIN, {"record": str(record), "steps": 3}) for _ in range(SHORT_RUNS)
        ]
        for name in ("A", "B", "C"):
            pool.start(name)
        wait_for(lambda: len(app.store.runs.workers()) == 3, 30, "three workers")
        wait_for(lambda: read_records(record), 10, "the first step")

        def done() -> bool:
            try:
                counts = app.store.runs.count_by_state()
            except psycopg.OperationalError:
                return False  # the server restarting
            return not any(counts.get(s) for s in (RunState.QUEUED, RunState.RUNNING))

        disturb(done)
        try:
            wait_for(done, 90, "every run to finish", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{pool.logs()}") from None
        finals = [app.store.runs.get_run(r.id) for r in long_runs + short_runs]
        failed = {r.id: r.error for r in finals if r.state is not RunState.SUCCEEDED}
        assert not failed, failed
        return read_records(record), pool.logs()
    finally:
        pool.close()
        app.close()


def _assert_no_run_executed_twice_at_once(records: list[dict[str, Any]]) -> None:
    by_run: dict[str, list[Any]] = defaultdict(list)
    for e in executions(records, killed={}):
        by_run[e.run].append(e)
    twice = [pair for items in by_run.values() for pair in overlaps(items)]
    assert not twice, f"runs executed twice at once: {twice[:5]}"


@pytest.mark.postgres
@pytest.mark.timeout(240)
@pytest.mark.parametrize("what", ["all connections", "liveness connections"])
def test_dropped_connections_never_let_a_run_execute_twice_at_once(
    pg_url: str, tmp_path: Path, what: str
) -> None:
    where = ALL if what == "all connections" else LIVENESS
    counts: list[int] = []

    def disturb(done: Callable[[], bool]) -> None:
        stop = threading.Event()
        _drop_repeatedly(pg_url, [where] * 8, stop, counts)

    records, logs = _workers_under(pg_url, tmp_path, disturb)
    # Every round dropped each worker's lock, but a worker declared lost may still be taking
    # its new identity's lock when the next round comes.
    assert sum(counts) >= 8 * 3 - logs.count("declared lost by another worker"), counts
    _assert_no_run_executed_twice_at_once(records)
    long_steps = [r for r in records if r["ev"] == "start" and r["pos"] is not None]
    assert long_steps
    print(
        f"{what}: {sum(counts)} connections dropped in 8 rounds;"
        f" declared lost {logs.count('declared lost by another worker')} times;"
        f" runs stopped unconfirmed {logs.count('stopping runs')} times"
    )


@pytest.fixture
def restartable_server() -> Iterator[list[str]]:
    """The command that restarts the local PostgreSQL cluster, where this machine has one."""
    versions = Path("/etc/postgresql")
    if shutil.which("pg_ctlcluster") is None or not versions.is_dir() or os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs root and pg_ctlcluster (a Debian cluster)")
    [version] = [p.name for p in versions.iterdir()]
    yield ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"]
    wait_for(_server_up, 60, "PostgreSQL to come back")


def _server_up() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1"], check=False).returncode == 0


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_a_database_restart_never_lets_a_run_execute_twice_at_once(
    pg_url: str, tmp_path: Path, restartable_server: list[str]
) -> None:
    def disturb(done: Callable[[], bool]) -> None:
        for _ in range(2):
            time.sleep(random.uniform(1.0, 2.0))
            subprocess.run(restartable_server, check=True, capture_output=True, timeout=120)
            wait_for(_server_up, 60, "PostgreSQL to come back")

    records, logs = _workers_under(pg_url, tmp_path, disturb)
    _assert_no_run_executed_twice_at_once(records)
    print(
        f"restarts: declared lost {logs.count('declared lost by another worker')} times;"
        f" runs stopped unconfirmed {logs.count('stopping runs')} times"
    )


# -- heartbeats that cannot get through -----------------------------------------------------


@contextlib.contextmanager
def runs_locked(db_url: str, run_id: str) -> Iterator[float]:
    """Hold the run's row (SQLite: the whole database) so that no heartbeat can renew its
    lease; the lease's expiry as stored, which therefore stays put."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            [(expires,)] = conn.execute(
                "SELECT lease_expires_at FROM runs WHERE id = ?", (run_id,)
            ).fetchall()
            yield float(expires)
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return
    with psycopg.connect(db_url, application_name=OBSERVER) as pg, pg.transaction():
        row = pg.execute(
            "SELECT lease_expires_at FROM runs WHERE id = %s FOR UPDATE", (run_id,)
        ).fetchone()
        assert row is not None
        yield float(row[0])


async def test_a_run_whose_heartbeats_are_held_up_stops_before_its_lease_expires(
    db_url: str,
) -> None:
    app = fast_app(db_url, lease_seconds=1.0, heartbeat_seconds=0.2)
    started = asyncio.Event()
    stopped: list[float] = []

    @step(name="long")
    async def long() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.append(app.store.clock.now())
            raise

    @app.workflow(name="liveness.long")
    async def workflow(ctx: RunContext) -> None:
        await long()

    run = await app.enqueue("liveness.long")
    try:
        async with worker_running(app, concurrency=1):
            await asyncio.wait_for(started.wait(), 10)
            taken: queue.Queue[float] = queue.Queue()
            release = threading.Event()

            def hold() -> None:  # one thread: a SQLite connection stays in its own
                with runs_locked(db_url, run.id) as expires:
                    taken.put(expires)
                    release.wait(10)

            holder = threading.Thread(target=hold)
            holder.start()
            try:
                expires = await asyncio.to_thread(taken.get, True, 10)
                deadline = time.monotonic() + 5
                while not stopped and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
            finally:
                release.set()
                await asyncio.to_thread(holder.join)
            assert stopped, "the run went on with its lease expired"
            assert stopped[0] < expires
            reason = "released: its lease expires before a heartbeat renewed it"
            deadline = time.monotonic() + 10
            while reason not in [e.reason for e in app.store.runs.events(run.id)]:
                assert time.monotonic() < deadline, app.store.runs.events(run.id)
                await asyncio.sleep(0.05)
    finally:
        app.close()


def _holding_the_gil_for(seconds: float) -> int:
    """How long a range to `sum` for a C call that keeps the GIL that long (no thread switch
    happens inside one)."""
    n = 10**6
    started = time.perf_counter()
    sum(range(n))
    return int(n * seconds / (time.perf_counter() - started))


@pytest.mark.postgres
async def test_work_that_keeps_the_gil_does_not_stop_the_runs(pg_url: str) -> None:
    """A step's thread keeping the GIL for most of a second at a time leaves the worker's lock
    confirmed (its own process holds it): the run is not stopped, and no step runs twice."""
    app = fast_app(pg_url, lease_seconds=30.0, heartbeat_seconds=5.0)
    n = _holding_the_gil_for(0.8)
    executed: list[int] = []

    @step(name="crunch")
    async def crunch(i: int) -> int:
        executed.append(i)
        for _ in range(2):
            await asyncio.to_thread(sum, range(n))
        return i

    @app.workflow(name="liveness.crunch")
    async def workflow(ctx: RunContext) -> None:
        for i in range(3):
            await crunch(i)

    try:
        run = await app.enqueue("liveness.crunch")
        async with worker_running(app, concurrency=1):
            [done] = await wait_for_states(app.store, [run.id], timeout=60)
        assert done.state is RunState.SUCCEEDED, done.error
        assert executed == [0, 1, 2]
        assert [e.reason for e in app.store.runs.events(run.id)] == [
            "enqueued",
            "leased",
            "completed",
        ]
    finally:
        app.close()


def _lock_processes() -> list[int]:
    """This process's children that hold liveness locks."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
            if ppid == os.getpid() and b"liveness_process.py" in cmdline:
                found.append(int(stat.parent.name))
    return found


@pytest.mark.postgres
async def test_a_killed_lock_process_is_replaced(pg_url: str) -> None:
    """Its lock goes with it; the worker starts another, which takes the lock back: the worker
    keeps its identity and goes on claiming."""
    app = fast_app(pg_url)

    @app.workflow(name="liveness.noop")
    async def noop(ctx: RunContext) -> int:
        return 1

    try:
        async with worker_running(app, concurrency=1) as worker:
            with psycopg.connect(pg_url, application_name=OBSERVER) as conn:
                row = conn.execute("SELECT lock_key FROM workers").fetchone()
            assert row is not None
            [pid] = _lock_processes()
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while not (lock_held(pg_url, row[0]) and _lock_processes() not in ([], [pid])):
                assert time.monotonic() < deadline, "no lock process took the lock back"
                await asyncio.sleep(0.02)
            run = await app.enqueue("liveness.noop")
            [done] = await wait_for_states(app.store, [run.id], timeout=30)
            assert done.state is RunState.SUCCEEDED
            assert [w.id for w in app.store.runs.workers()] == [worker.id]
        assert _lock_processes() == []  # released when the worker stopped
    finally:
        app.close()
