"""Tenant fairness on SQLite and PostgreSQL: a tenant's waiting time does not depend on another
tenant's backlog; weights share the slots; a tenant coming back gets its share, not a burst."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import fast_app, worker_running

from greenroom import App, RunContext, RunRequest, RunState, step
from greenroom.model import FINISHED_STATES, NewRun
from greenroom.storage import RunStore, open_store

ACTOR = "ops@example.com"


@step
async def touch() -> int:
    return 1


@pytest.fixture
def store(db_url: str) -> Iterator[RunStore]:
    s = open_store(db_url)
    yield s
    s.backend.close()


def add(store: RunStore, tenant: str, n: int) -> None:
    store.runs.enqueue_many([NewRun(workflow="noop", tenant=tenant) for _ in range(n)])


def take(store: RunStore, n: int, limit: int = 1) -> list[str]:
    """Claim and finish `n` runs, `limit` per claim; the tenant of each, in claim order."""
    tenants: list[str] = []
    while len(tenants) < n:
        leases = store.runs.claim("w1", ["default"], min(limit, n - len(tenants)), 30.0)
        assert leases, "there was work to claim"
        for lease in leases:
            tenants.append(lease.run.tenant)
            store.runs.finish(lease, RunState.SUCCEEDED, reason="done", output=json.dumps(None))
    return tenants


def waiting(app: App, tenant: str) -> int:
    return app.store.controls.queue("default", tenant=tenant).counts.get("queued", 0)


async def test_a_small_tenant_finishes_while_a_big_backlog_waits(db_url: str) -> None:
    # Long leases: under load, a lost lease is not what this test is about.
    app = fast_app(db_url, lease_seconds=10.0, heartbeat_seconds=1.0)

    @app.workflow(name="noop")
    async def noop(ctx: RunContext) -> int:
        return await touch()

    try:
        for _ in range(5):
            await app.enqueue_many([RunRequest(workflow="noop", tenant="a") for _ in range(1000)])
        small = await app.enqueue_many([RunRequest(workflow="noop", tenant="b") for _ in range(50)])
        assert len(small) == 50 and waiting(app, "a") == 5000
        started = time.monotonic()
        async with worker_running(app, concurrency=10):
            while True:
                b = await asyncio.to_thread(lambda: app.store.controls.queue("default", tenant="b"))
                if sum(b.counts.get(s.value, 0) for s in FINISHED_STATES) == 50:
                    break
                assert time.monotonic() - started < 60, f"b did not finish: {b.counts}"
                await asyncio.sleep(0.02)
            a_waiting = await asyncio.to_thread(waiting, app, "a")
        assert a_waiting > 4000, f"only {a_waiting} of a's runs still wait"
        assert app.store.controls.queue("default", tenant="b").counts == {"succeeded": 50}
    finally:
        app.close()


def test_weights_share_the_claims(store: RunStore) -> None:
    store.controls.set_tenant("heavy", actor=ACTOR, reason="premium plan", weight=3.0)
    add(store, "heavy", 200)
    add(store, "light", 200)
    claims = Counter(take(store, 80, limit=4))
    assert 52 <= claims["heavy"] <= 68, claims
    assert claims["heavy"] + claims["light"] == 80


def test_equal_weights_alternate(store: RunStore) -> None:
    for tenant in ("a", "b", "c"):
        add(store, tenant, 20)
    order = take(store, 30)
    for i in range(0, 30, 3):
        assert sorted(order[i : i + 3]) == ["a", "b", "c"], order


def interleaved(order: list[str], tenant: str) -> bool:
    """No more than two claims in a row for `tenant`."""
    run = longest = 0
    for t in order:
        run = run + 1 if t == tenant else 0
        longest = max(longest, run)
    return longest <= 2


def test_a_returning_tenant_gets_its_share_not_a_burst(store: RunStore) -> None:
    add(store, "busy", 400)
    add(store, "returning", 3)
    first = take(store, 150)
    assert first.count("returning") == 3, "it drained its runs early on"
    add(store, "returning", 30)
    back = take(store, 20)
    assert 7 <= back.count("returning") <= 13, back
    assert interleaved(back, "returning"), back


def test_a_new_tenant_gets_its_share_not_a_burst(store: RunStore) -> None:
    add(store, "busy", 300)
    take(store, 150, limit=5)
    add(store, "newcomer", 30)
    back = take(store, 20, limit=5)
    assert 7 <= back.count("newcomer") <= 13, back
    assert back.count("busy") >= 7


def test_a_tenant_limit_does_not_stall_other_tenants(store: RunStore) -> None:
    store.controls.set_tenant("capped", actor=ACTOR, reason="small plan", concurrency=2)
    add(store, "capped", 50)
    add(store, "free", 10)
    leases = store.runs.claim("w1", ["default"], 20, 30.0)
    got: Counter[Any] = Counter(lease.run.tenant for lease in leases)
    assert got == {"capped": 2, "free": 10}


# More tenants wait than one claim looks at (claim.TENANT_SCAN), every one of them on something
# that cannot start now: they must not hide a tenant whose run can.
CROWD = 70


def crowd(store: RunStore, **run: Any) -> None:
    """CROWD tenants with two runs each (`run`'s fields), and one run of each claimed."""
    store.runs.enqueue_many(
        [NewRun(workflow="noop", tenant=f"t{i:03}", **run) for i in range(CROWD) for _ in range(2)]
    )
    queues = [run.get("queue", "default")]
    taken = [
        lease.run.tenant for _ in range(CROWD) for lease in store.runs.claim("w0", queues, 1, 30.0)
    ]
    assert sorted(taken) == [f"t{i:03}" for i in range(CROWD)]


def test_a_full_queue_does_not_hide_other_queues_runs(store: RunStore) -> None:
    crowd(store, queue="reports")
    store.controls.set_queue("reports", actor=ACTOR, reason="full", concurrency=CROWD)
    add(store, "zz-late", 1)  # last in turn: every crowd tenant comes first
    leases = store.runs.claim("w1", ["default", "reports"], 10, 30.0)
    assert [(lease.run.tenant, lease.run.queue) for lease in leases] == [("zz-late", "default")]


def test_busy_sessions_do_not_hide_other_tenants_runs(store: RunStore) -> None:
    crowd(store, session_key="console")  # each tenant's second run waits for its first
    add(store, "zz-late", 1)
    leases = store.runs.claim("w1", ["default"], 10, 30.0)
    assert [lease.run.tenant for lease in leases] == ["zz-late"]


def test_tenants_at_their_limit_do_not_hide_other_tenants_runs(store: RunStore) -> None:
    for i in range(CROWD):
        store.controls.set_tenant(f"t{i:03}", actor=ACTOR, reason="one at a time", concurrency=1)
    crowd(store)
    add(store, "zz-late", 1)
    leases = store.runs.claim("w1", ["default"], 10, 30.0)
    assert [lease.run.tenant for lease in leases] == ["zz-late"]
