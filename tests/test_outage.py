"""A worker's database connections dropped while it runs: PostgreSQL terminates them
(`pg_terminate_backend`, as a failover or a restarted pooler would), and runs go on."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter

import psycopg
import pytest
from helpers import fast_app, wait_for_states, worker_running
from structlog.testing import capture_logs

from greenroom import RunContext, RunState, step
from greenroom.storage import open_store

pytestmark = pytest.mark.postgres

#: The worker's pool connections: not its liveness lock nor its listener, whose loss is a
#: different story (the worker would look dead, or deaf, for a moment).
_VICTIMS = (
    "SELECT pg_terminate_backend(pid, 1000) AS killed FROM pg_stat_activity"
    " WHERE datname = current_database() AND application_name = 'outage-victim'"
    " AND pid <> pg_backend_pid() AND query NOT LIKE 'LISTEN%'"
    " AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')"
)


def _terminate_connections(url: str, stop: threading.Event, killed: list[int]) -> None:
    """Eight rounds, each dropping all of the worker's connections at once, as a server restart
    or a failover would, 0.2 to 0.5 s apart."""
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(8):
            if stop.wait(random.uniform(0.2, 0.5)):
                return
            killed.append(sum(1 for row in conn.execute(_VICTIMS) if row[0]))


async def test_runs_ride_out_dropped_connections_without_failing_or_repeating_steps(
    pg_url: str,
) -> None:
    # A lease long enough that heartbeats failing for a moment lose no run: what is tested is
    # that each write is tried again, not recovery.
    app = fast_app(
        pg_url + "?application_name=outage-victim", lease_seconds=10.0, heartbeat_seconds=1.0
    )
    executed: Counter[tuple[str, int]] = Counter()

    @step(name="add")
    async def add(run_id: str, i: int) -> int:
        executed[run_id, i] += 1
        await asyncio.sleep(0.02)
        return i

    @app.workflow(name="outage.sum")
    async def total(ctx: RunContext) -> int:
        return sum([await add(ctx.run_id, i) for i in range(10)])

    observer = open_store(pg_url)  # polls on connections that are not terminated
    stop = threading.Event()
    killed: list[int] = []
    runs = [await app.enqueue("outage.sum") for _ in range(40)]
    terminator = threading.Thread(target=_terminate_connections, args=(pg_url, stop, killed))
    try:
        with capture_logs() as logs:
            async with worker_running(app, concurrency=5):
                terminator.start()
                done = await wait_for_states(observer, [r.id for r in runs], timeout=60)
                stop.set()
    finally:
        stop.set()
        if terminator.is_alive():
            terminator.join()
        observer.backend.close()
        app.close()
    assert sum(killed) > 0, "the test only means something if connections were dropped"
    retried = [e for e in logs if e["event"] == "writing runs failed; retrying"]
    assert retried, "and if some were dropped under the writer"
    assert [(r.state, r.output) for r in done] == [(RunState.SUCCEEDED, 45)] * 40
    assert executed == {(r.id, i): 1 for r in runs for i in range(10)}


def test_after_the_server_drops_connections_only_the_first_transaction_fails(
    pg_url: str,
) -> None:
    store = open_store(pg_url + "?application_name=outage-victim")
    try:

        def hold() -> None:
            with store.backend.transaction() as tx:
                tx.execute("SELECT pg_sleep(0.2)")

        threads = [threading.Thread(target=hold) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            killed = sum(1 for row in conn.execute(_VICTIMS) if row[0])
        assert killed >= 3, "the pool held several connections, all dropped now"
        with pytest.raises(psycopg.OperationalError):
            store.runs.count_by_state()
        # The failed transaction tested the idle connections: none of the dead ones is reused.
        assert store.runs.count_by_state() == {}
    finally:
        store.backend.close()
