"""One login per session key at a time, across workers: runs of a session that may run side by
side (session_concurrency > 1) on different workers take turns in their login step."""

from __future__ import annotations

import asyncio
import time

from greenroom import RunContext, RunState, step
from tests.helpers import fast_app, wait_for_states, worker_running


async def test_logins_of_one_session_take_turns_across_workers(db_url: str) -> None:
    app = fast_app(db_url)
    spans: list[tuple[float, float]] = []

    @step(name="log_in", login=True)
    async def log_in() -> None:
        start = time.monotonic()
        await asyncio.sleep(0.4)
        spans.append((start, time.monotonic()))

    @app.workflow(name="sync", session="{tenant}:crm", session_concurrency=2)
    async def sync(ctx: RunContext) -> None:
        await log_in()

    runs = [await app.enqueue("sync") for _ in range(2)]
    async with worker_running(app, concurrency=1), worker_running(app, concurrency=1):
        done = await wait_for_states(app.store, [r.id for r in runs], timeout=20)
    app.close()
    assert {r.state for r in done} == {RunState.SUCCEEDED}
    first, second = sorted(spans)
    assert second[0] >= first[1]  # the second login began after the first ended


def test_a_login_held_by_a_run_that_lost_its_lease_is_taken_over(db_url: str) -> None:
    app = fast_app(db_url)

    @app.workflow(name="sync", session="{tenant}:crm", session_concurrency=2)
    async def sync(ctx: RunContext) -> None: ...

    store = app.store
    for _ in range(2):
        app.enqueue_sync("sync")
    [first] = store.runs.claim("w1", ["default"], 1, 30.0)
    [second] = store.runs.claim("w2", ["default"], 1, 30.0)
    assert store.sessions.take_login(first)
    assert not store.sessions.take_login(second)
    assert store.sessions.take_login(first)  # the holder may take it again
    store.runs.finish(first, RunState.SUCCEEDED, reason="done")  # ended without releasing it
    assert store.sessions.take_login(second)
    store.sessions.release_login(second)
    app.close()
