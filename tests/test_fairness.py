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
