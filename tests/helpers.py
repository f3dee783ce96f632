"""Small helpers shared by the engine and store tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection, Iterable
from typing import Any

from greenroom import App, Run, RunState, Worker, load_settings
from greenroom.clock import Clock
from greenroom.model import FINISHED_STATES
from greenroom.storage import RunStore


def fast_app(db_url: str, clock: Clock | None = None, **settings: Any) -> App:
    """An App with sub-second lease, heartbeat and polling, as tests need."""
    values: dict[str, Any] = {
        "db": db_url,
        "lease_seconds": 1.0,
        "heartbeat_seconds": 0.2,
        "poll_seconds": 0.05,
        "shutdown_grace_seconds": 0.2,
        # Event delivery, schedules and licenses are tested where they are the subject.
        "delivery_enabled": False,
        "schedules_enabled": False,
        "licenses_enabled": False,
    }
    values.update(settings)
    return App(db=db_url, settings=load_settings(**values), clock=clock)


async def wait_for_states(
    store: RunStore,
    ids: Iterable[str],
    states: Collection[RunState] = FINISHED_STATES,
    *,
    timeout: float = 10.0,
) -> list[Run]:
    """Poll until every run is in one of `states`; the runs, in the order of `ids`."""
    wanted = list(ids)
    deadline = time.monotonic() + timeout
    while True:
        runs = [await asyncio.to_thread(store.runs.get_run, run_id) for run_id in wanted]
        if all(r.state in states for r in runs):
            return runs
        if time.monotonic() > deadline:
            now = {r.id: r.state.value for r in runs}
            raise AssertionError(f"runs not in {sorted(states)} after {timeout}s: {now}")
        await asyncio.sleep(0.02)


async def _registered(worker: Worker, task: asyncio.Task[None], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(w.id == worker.id for w in await asyncio.to_thread(worker.store.runs.workers)):
        if task.done():
            await task  # raises what stopped the worker
            raise AssertionError(f"worker {worker.id} exited before registering")
        if time.monotonic() > deadline:
            raise AssertionError(f"worker {worker.id} did not register within {timeout}s")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def worker_running(app: App, **options: Any) -> AsyncIterator[Worker]:
    """A Worker running as a task for the block; stopped (and awaited) on exit."""
    worker = Worker(app, **options)
    task = asyncio.create_task(worker.run(), name=f"worker-{worker.id}")
    try:
        # stop() needs the worker's loop, which it learns when it starts: wait for that.
        await _registered(worker, task)
        yield worker
    finally:
        if not task.done():
            worker.stop()
        await asyncio.wait_for(task, timeout=15)


def settle_events(store: RunStore, timeout: float = 60.0) -> None:
    """Wait until every event committed so far is readable: on PostgreSQL, events wait for
    every older write transaction of the server to end (other tests' included)."""
    if store.backend.txid_sql == "0":
        return
    with store.backend.transaction() as tx:
        (mark,) = tx.execute("SELECT pg_current_xact_id()::text::bigint AS x")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.backend.transaction(write=False) as tx:
            (row,) = tx.execute(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint > :x AS done",
                {"x": mark["x"]},
            )
        if row["done"]:
            return
        time.sleep(0.05)
    raise AssertionError("events did not settle: a write transaction stayed open")
