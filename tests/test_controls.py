"""Queue controls at the store level, on SQLite and PostgreSQL: queue records and their settings,
pauses at every scope, priorities and delays, concurrency caps and rate limits."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from greenroom import InvalidInput, ManualClock, NotFound, RunState
from greenroom.model import Lease, NewRun, PauseScope, Run
from greenroom.storage import RunStore, open_store
from greenroom.storage.lifecycle.check import check_summaries
from greenroom.storage.writes import End

LEASE = 30.0
ACTOR = "ops@example.com"


def enqueue(store: RunStore, workflow: str = "wf", **kw: Any) -> Run:
    return store.runs.enqueue(NewRun(workflow=workflow, **kw))[0]


def claim(
    store: RunStore, limit: int = 10, queues: list[str] | None = None, worker: str = "w1"
) -> list[Lease]:
    return store.runs.claim(worker, queues or ["default"], limit, LEASE)


def ids(leases: list[Lease]) -> list[str]:
    return [lease.run.id for lease in leases]


def succeed(store: RunStore, lease: Lease) -> None:
    store.runs.finish(lease, RunState.SUCCEEDED, reason="done", output=json.dumps(None))


def state(store: RunStore, run_id: str) -> RunState:
    return store.runs.get_run(run_id).state


# -- queues as records ---------------------------------------------------------------------


def test_a_queue_is_created_on_its_first_enqueue(store: RunStore) -> None:
    assert "reports" not in [q.name for q in store.controls.queues()]
    enqueue(store, queue="reports")
    enqueue(store, queue="reports")
    info = store.controls.queue("reports")
    assert info.counts == {"queued": 2}
    assert info.concurrency is None and info.rate_limit is None and not info.paused
    with pytest.raises(NotFound):
        store.controls.queue("never-used")


def test_concurrent_first_enqueues_create_one_queue_record(db_url: str) -> None:
    stores = [open_store(db_url, pool_size=1) for _ in range(20)]
    barrier = threading.Barrier(len(stores))

    def first_enqueue(s: RunStore) -> str:
        barrier.wait()
        return enqueue(s, queue="brand-new", tenant="newcomer").id

    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            run_ids = list(pool.map(first_enqueue, stores))
        names = [q.name for q in stores[0].controls.queues()]
        assert names.count("brand-new") == 1
        assert stores[0].controls.queue("brand-new").counts == {"queued": 20}
        assert [t.name for t in stores[0].controls.tenants()].count("newcomer") == 1
        assert len(set(run_ids)) == 20
        assert len(claim(stores[0], limit=50, queues=["brand-new"])) == 20
    finally:
        for s in stores:
            s.backend.close()


BAD_QUEUE_SETTINGS: list[tuple[dict[str, Any], str]] = [
    ({"concurrency": 0}, "concurrency"),
    ({"concurrency": 2.5}, "concurrency"),
    ({"concurrency": "ten"}, "concurrency"),
    ({"concurrency": True}, "concurrency"),
    ({"max_attempts": -1}, "max_attempts"),
    ({"rate_period": 0}, "rate_period"),
    ({"retry_backoff": 0.5}, "retry_backoff"),
    ({"lease_seconds": float("nan")}, "lease_seconds"),
    ({"rate_limit": 5}, "rate_period"),
    ({"rate_period": 1.0}, "rate_limit"),
    ({"lease_seconds": 2.0, "heartbeat_seconds": 1.0}, "heartbeat_seconds"),
    ({"colour": "blue"}, "colour"),
]


def test_bad_queue_settings_are_refused_naming_the_field(store: RunStore) -> None:
    store.controls.set_queue("q", actor=ACTOR, reason="baseline", concurrency=4)
    audited = len(store.admin.audit_log())
    for changes, field in BAD_QUEUE_SETTINGS:
        with pytest.raises(InvalidInput, match=field):
            store.controls.set_queue("q", actor=ACTOR, reason="tune", **changes)
    after = store.controls.queue("q")
    assert after.concurrency == 4
    assert after.rate_limit is None and after.rate_period is None
    assert after.lease_seconds is None and after.heartbeat_seconds is None
    assert len(store.admin.audit_log()) == audited, "a refused change is not applied nor audited"


def test_heartbeat_must_stay_under_half_the_queue_lease(store: RunStore) -> None:
    store.controls.set_queue(
        "q", actor=ACTOR, reason="tune", lease_seconds=4.0, heartbeat_seconds=1.0
    )
    with pytest.raises(InvalidInput, match="heartbeat_seconds"):
        store.controls.set_queue("q", actor=ACTOR, reason="shorter lease", lease_seconds=2.0)
    assert store.controls.queue("q").lease_seconds == 4.0
    info = store.controls.set_queue(
        "q", actor=ACTOR, reason="clear", rate_limit=None, rate_period=None
    )
    assert info.heartbeat_seconds == 1.0


def test_the_heartbeat_rule_holds_against_the_stored_settings(store: RunStore) -> None:
    """A heartbeat alone was once accepted whatever its value: the rule was only checked when
    the same change set the lease."""
    with pytest.raises(InvalidInput, match="needs the queue's lease_seconds"):
        store.controls.set_queue("q", actor=ACTOR, reason="tune", heartbeat_seconds=1.0)
    store.controls.set_queue("q", actor=ACTOR, reason="tune", lease_seconds=4.0)
    for beat in (2.0, 1e9):
        with pytest.raises(InvalidInput, match="heartbeat_seconds"):
            store.controls.set_queue("q", actor=ACTOR, reason="tune", heartbeat_seconds=beat)
    store.controls.set_queue("q", actor=ACTOR, reason="tune", heartbeat_seconds=1.0)
    with pytest.raises(InvalidInput, match="needs the queue's lease_seconds"):
        store.controls.set_queue("q", actor=ACTOR, reason="no lease", lease_seconds=None)
    cleared = store.controls.set_queue(
        "q", actor=ACTOR, reason="both", lease_seconds=None, heartbeat_seconds=None
    )
    assert cleared.lease_seconds is None and cleared.heartbeat_seconds is None
    with pytest.raises(InvalidInput, match="lease_seconds must be at most 86400"):
        store.controls.set_queue("q", actor=ACTOR, reason="tune", lease_seconds=1e308)


def test_queue_settings_can_be_cleared_and_need_a_reason(store: RunStore) -> None:
    store.controls.set_queue("q", actor=ACTOR, reason="limit", rate_limit=5, rate_period=60.0)
    with pytest.raises(InvalidInput, match="reason"):
        store.controls.set_queue("q", actor=ACTOR, reason=" ", concurrency=1)
    info = store.controls.set_queue(
        "q", actor=ACTOR, reason="lift", rate_limit=None, rate_period=None
    )
    assert info.rate_limit is None and info.rate_period is None and info.concurrency is None


def test_lowering_a_queue_limit_while_runs_wait_applies_to_the_next_claims(
    store: RunStore,
) -> None:
    store.controls.set_queue("q", actor=ACTOR, reason="cap", concurrency=3)
    for _ in range(12):
        enqueue(store, queue="q")
    first = claim(store, queues=["q"])
    assert len(first) == 3
    store.controls.set_queue("q", actor=ACTOR, reason="app is struggling", concurrency=1)
    assert claim(store, queues=["q"]) == []
    succeed(store, first[0])
    succeed(store, first[1])
    assert claim(store, queues=["q"]) == [], "one run still holds the only slot"
    succeed(store, first[2])
    assert len(claim(store, queues=["q"])) == 1
    store.controls.set_queue("q", actor=ACTOR, reason="recovered", concurrency=4)
    assert len(claim(store, queues=["q"])) == 3
    store.controls.set_queue("q", actor=ACTOR, reason="no limit", concurrency=None)
    assert len(claim(store, queues=["q"])) == 5


def test_running_counts_give_back_exactly_the_slots_claims_took(
    store: RunStore, clock: ManualClock
) -> None:
    """A limit set, lifted or set again while runs run never leaves the count off by them."""

    def active() -> tuple[int, int]:
        with store.backend.transaction(write=False) as tx:
            (queue,) = tx.execute("SELECT active FROM queues WHERE name = 'q'")
        tenant = next(t for t in store.controls.tenants() if t.name == "t1")
        return queue["active"], tenant.active

    for _ in range(8):
        enqueue(store, queue="q", tenant="t1")
    unlimited = claim(store, queues=["q"], limit=2)  # before any limit: they hold no slot
    store.controls.set_queue("q", actor=ACTOR, reason="cap", concurrency=5)
    store.controls.set_tenant("t1", actor=ACTOR, reason="cap", concurrency=5)
    assert active() == (2, 2), "runs already running count from the moment a limit is set"
    limited = claim(store, queues=["q"], limit=2)
    assert active() == (4, 4)
    succeed(store, unlimited[0])
    assert active() == (3, 3)
    store.controls.set_queue("q", actor=ACTOR, reason="lift", concurrency=None)
    succeed(store, limited[0])  # held a slot of a limit that is gone: gives nothing back
    store.controls.set_queue("q", actor=ACTOR, reason="cap again", concurrency=5)
    assert active() == (2, 2)
    clock.advance(60)  # the rest stall: recovery gives their slots back
    store.runs.recover("w2", max_stalls=3)
    assert active() == (0, 0)
    assert len(claim(store, queues=["q"], limit=10)) == 5
    assert active() == (5, 5)


# Races between a claim and a concurrent change exist on PostgreSQL only (a SQLite claim holds
# the write lock throughout). A row lock held from another connection stops a claim where it
# waits for that row, after it read what the race is about.


@contextmanager
def _row_locked(url: str, sql: str) -> Iterator[Callable[[int], None]]:
    """Hold the row lock `sql` takes until the block ends; yields a function that waits until
    that many transactions wait for a lock."""
    with psycopg.connect(url) as conn:
        conn.execute(sql)
        watcher = psycopg.connect(url, autocommit=True)

        def wait_blocked(n: int) -> None:
            deadline = time.monotonic() + 10
            while (
                watcher.execute("SELECT COUNT(*) FROM pg_locks WHERE NOT granted").fetchone()[0] < n
            ):
                assert time.monotonic() < deadline, "the claims never waited for the lock"
                time.sleep(0.01)

        try:
            yield wait_blocked
        finally:
            watcher.close()
            conn.commit()


def test_a_limit_set_while_a_claim_runs_counts_that_claims_runs(pg_url: str) -> None:
    store = open_store(pg_url)
    for _ in range(6):
        enqueue(store, queue="q")
    # With a tenant limit, the claim locks the tenant after it read the queue as unlimited.
    store.controls.set_tenant("default", actor=ACTOR, reason="a lock to wait for", concurrency=100)
    with ThreadPoolExecutor(1) as pool:
        with _row_locked(pg_url, "SELECT 1 FROM tenants WHERE name = 'default' FOR UPDATE") as (
            wait_blocked
        ):
            claiming = pool.submit(claim, store, 4, ["q"])
            wait_blocked(1)
            store.controls.set_queue("q", actor=ACTOR, reason="cap", concurrency=2)
        assert len(claiming.result()) == 4
    assert claim(store, queues=["q"]) == [], "4 runs run under a limit of 2: no room"
    with store.backend.transaction(write=False) as tx:
        (queue,) = tx.execute("SELECT active FROM queues WHERE name = 'q'")
        held = tx.execute("SELECT COUNT(*) AS n FROM runs WHERE holds_queue_slot")
    assert queue["active"] == 4
    assert held[0]["n"] == 4, "their ends give the slots back"
    store.backend.close()


def test_concurrent_claims_both_move_their_tenants_on(pg_url: str) -> None:
    """A claim that read the passes, then waited for a lock, adds to them: never overwrites."""
    store = open_store(pg_url)
    for tenant in ("t1", "t2"):
        for _ in range(10):
            enqueue(store, queue="q", tenant=tenant)
        # With a limit, claims lock the tenants after reading their passes.
        store.controls.set_tenant(tenant, actor=ACTOR, reason="a lock to wait for", concurrency=100)
    with ThreadPoolExecutor(2) as pool:
        with _row_locked(pg_url, "SELECT 1 FROM tenants WHERE name = 't1' FOR UPDATE") as (
            wait_blocked
        ):
            a = pool.submit(claim, store, 4, ["q"], "w1")
            b = pool.submit(claim, store, 2, ["q"], "w2")
            wait_blocked(2)
        assert (len(a.result()), len(b.result())) == (4, 2)
    # Equal weights: 6 runs moved the two tenants on by 3 each.
    assert {t.name: t.ready for t in store.controls.tenants()} == {"t1": 7, "t2": 7}
    with store.backend.transaction(write=False) as tx:
        passes = tx.execute("SELECT name, pass FROM tenants ORDER BY name")
    assert [(r["name"], r["pass"]) for r in passes] == [("t1", 3.0), ("t2", 3.0)]
    store.backend.close()


def test_queue_defaults_apply_to_new_runs_and_leases(store: RunStore) -> None:
    before = enqueue(store, queue="q")
    store.controls.set_queue("q", actor=ACTOR, reason="tune", max_attempts=4, lease_seconds=7.0)
    after = enqueue(store, queue="q")
    own = enqueue(store, queue="q", max_attempts=2)
    assert [before.max_attempts, after.max_attempts, own.max_attempts] == [1, 4, 2]
    leases = claim(store, queues=["q"])
    assert {lease.seconds for lease in leases} == {7.0}
    assert {lease.expires_at for lease in leases} == {store.clock.now() + 7.0}


# -- pause and resume ------------------------------------------------------------------------

TARGET = {
    "queue": "q1",
    "tenant": "t1",
    "workflow": "wf1",
    "session_key": "s1",
    "labels": {"app": "acme"},
}
OTHER = {
    "queue": "q2",
    "tenant": "t2",
    "workflow": "wf2",
    "session_key": "s2",
    "labels": {"app": "globex"},
}
SCOPES = [
    ("queue", "q1", ""),
    ("tenant", "t1", ""),
    ("workflow", "wf1", ""),
    ("session", "s1", ""),
    ("label", "acme", "app"),
]


def enqueue_as(store: RunStore, attrs: dict[str, Any], **kw: Any) -> Run:
    fields = {**attrs, **kw}
    return store.runs.enqueue(NewRun(**fields))[0]


def claim_all(store: RunStore, limit: int = 20) -> list[Lease]:
    return claim(store, limit=limit, queues=["q1", "q2"])


@pytest.mark.parametrize(("scope", "value", "label"), SCOPES)
def test_pause_holds_matching_runs_at_every_scope(
    store: RunStore, scope: str, value: str, label: str
) -> None:
    held = enqueue_as(store, TARGET)
    free = enqueue_as(store, OTHER)
    pause = store.controls.pause(scope, value, label=label, actor=ACTOR, reason="vendor outage")
    assert pause.scope is PauseScope(scope)
    late = enqueue_as(store, TARGET)
    assert late.state is RunState.PAUSED, "a run enqueued while paused is paused"
    assert state(store, held.id) is RunState.PAUSED
    assert [e.state for e in store.runs.events(held.id)] == [RunState.QUEUED, RunState.PAUSED]
    leases = claim_all(store)
    assert ids(leases) == [free.id]
    succeed(store, leases[0])
    assert store.controls.resume(scope, value, label=label, actor=ACTOR, reason="fixed") == 2
    assert state(store, held.id) is RunState.QUEUED
    leases = claim_all(store, limit=1)
    assert ids(leases) == [held.id]
    succeed(store, leases[0])
    assert ids(claim_all(store)) == [late.id]
    assert store.controls.pauses() == []


def test_delayed_runs_whose_time_comes_while_paused_become_paused(
    store: RunStore, clock: ManualClock
) -> None:
    run = enqueue(store, queue="q", available_at=clock.now() + 10)
    assert run.state is RunState.DELAYED
    store.controls.pause("queue", "q", actor=ACTOR, reason="maintenance")
    assert state(store, run.id) is RunState.DELAYED, "it still waits for its time"
    clock.advance(11)
    assert store.runs.promote_delayed() == 1
    assert state(store, run.id) is RunState.PAUSED
    assert claim(store, queues=["q"]) == []
    store.controls.resume("queue", "q", actor=ACTOR, reason="done")
    assert ids(claim(store, queues=["q"])) == [run.id]


def test_resume_restores_priority_then_fifo_order(store: RunStore) -> None:
    before = [enqueue(store, priority=p) for p in (0, 5, 0, 5, 1)]
    store.controls.pause("queue", "default", actor=ACTOR, reason="hold")
    during = [enqueue(store, priority=p) for p in (5, 0, 9)]
    store.controls.resume("queue", "default", actor=ACTOR, reason="go")
    runs = before + during
    expected = [r.id for r in sorted(runs, key=lambda r: (-r.priority, r.seq))]
    order = []
    for _ in runs:
        (lease,) = claim(store, limit=1)
        order.append(lease.run.id)
        succeed(store, lease)
    assert order == expected


def test_resume_restores_the_order_within_a_session(store: RunStore) -> None:
    runs = [enqueue(store, session_key="s", priority=p) for p in (0, 2, 0, 2)]
    store.controls.pause("session", "s", actor=ACTOR, reason="hold")
    store.controls.resume("session", "s", actor=ACTOR, reason="go")
    order = []
    for _ in runs:
        (lease,) = claim(store)
        order.append(lease.run.id)
        succeed(store, lease)
    assert order == [runs[1].id, runs[3].id, runs[0].id, runs[2].id]


def test_overlapping_pauses_each_hold_until_lifted(store: RunStore) -> None:
    run = enqueue_as(store, TARGET)
    other_tenant = enqueue_as(store, {**TARGET, "tenant": "t9"})
    store.controls.pause("queue", "q1", actor=ACTOR, reason="queue")
    store.controls.pause("tenant", "t1", actor=ACTOR, reason="tenant")
    assert store.controls.resume("queue", "q1", actor=ACTOR, reason="queue ok") == 1
    assert state(store, run.id) is RunState.PAUSED, "the tenant pause still holds it"
    assert state(store, other_tenant.id) is RunState.QUEUED
    assert [p.scope for p in store.controls.pauses()] == [PauseScope.TENANT]
    assert store.controls.resume("tenant", "t1", actor=ACTOR, reason="tenant ok") == 1
    assert state(store, run.id) is RunState.QUEUED


def test_a_tenant_scoped_pause_leaves_other_tenants_alone(store: RunStore) -> None:
    mine = [enqueue(store, queue="q", tenant="t1") for _ in range(2)]
    theirs = [enqueue(store, queue="q", tenant="t2") for _ in range(2)]
    pause = store.controls.pause("queue", "q", tenant="t1", actor=ACTOR, reason="t1 app broken")
    assert pause.tenant == "t1"
    assert {state(store, r.id) for r in mine} == {RunState.PAUSED}
    assert enqueue(store, queue="q", tenant="t1").state is RunState.PAUSED
    theirs.append(enqueue(store, queue="q", tenant="t2"))
    assert theirs[-1].state is RunState.QUEUED
    assert set(ids(claim(store, queues=["q"]))) == {r.id for r in theirs}
    assert store.controls.queue("q", tenant="t1").paused
    assert not store.controls.queue("q", tenant="t2").paused
    assert [p.tenant for p in store.controls.pauses(tenant="t2")] == []
    assert [p.tenant for p in store.controls.pauses(tenant="t1")] == ["t1"]
    with pytest.raises(NotFound):
        store.controls.resume("queue", "q", actor=ACTOR, reason="wrong scope")
    assert store.controls.resume("queue", "q", tenant="t1", actor=ACTOR, reason="fixed") == 3


def test_drain_lets_running_runs_finish(store: RunStore) -> None:
    running = enqueue(store, queue="q")
    (lease,) = claim(store, queues=["q"])
    waiting = enqueue(store, queue="q")
    store.controls.pause("queue", "q", actor=ACTOR, reason="drain")
    beat = store.runs.heartbeat("w1", LEASE, [running.id])
    assert beat.held == {running.id} and beat.pause_requested == set()
    succeed(store, lease)
    assert state(store, running.id) is RunState.SUCCEEDED
    assert state(store, waiting.id) is RunState.PAUSED


def test_pause_without_drain_asks_running_runs_to_stop_and_holds_them(store: RunStore) -> None:
    run = enqueue(store, queue="q")
    (lease,) = claim(store, queues=["q"])
    store.controls.pause("queue", "q", drain=False, actor=ACTOR, reason="stop now")
    assert store.runs.heartbeat("w1", LEASE, [run.id]).pause_requested == {run.id}
    assert store.runs.control_requests("w1").pause_requested == {run.id}
    assert store.runs.finish(lease, RunState.QUEUED, reason="stopped at a step") is RunState.PAUSED
    assert state(store, run.id) is RunState.PAUSED
    assert claim(store, queues=["q"]) == []
    store.controls.resume("queue", "q", actor=ACTOR, reason="go")
    (again,) = claim(store, queues=["q"])
    assert again.run.id == run.id and not again.run.pause_requested
    assert again.run.attempt == 1, "a pause does not use up an attempt"


def test_resume_withdraws_the_stop_request_of_running_runs(store: RunStore) -> None:
    run = enqueue(store, queue="q")
    claim(store, queues=["q"])
    store.controls.pause("queue", "q", drain=False, actor=ACTOR, reason="stop now")
    store.controls.resume("queue", "q", actor=ACTOR, reason="never mind")
    assert store.runs.heartbeat("w1", LEASE, [run.id]).pause_requested == set()
    assert state(store, run.id) is RunState.RUNNING


def test_pauses_are_listed_with_who_when_why_and_survive_reopening(
    db_url: str, store: RunStore, clock: ManualClock
) -> None:
    store.controls.pause("label", "acme", label="app", actor="alice", reason="layout change")
    clock.advance(5)
    store.controls.pause("tenant", "t1", drain=False, actor="bob", reason="contract ended")
    again = store.controls.pause("tenant", "t1", actor="carol", reason="twice")
    assert again.paused_by == "bob", "pausing what is paused returns the existing pause"
    reopened = open_store(db_url, clock=clock)
    try:
        listed = reopened.controls.pauses()
    finally:
        reopened.backend.close()
    assert [(p.scope, p.label, p.value, p.drain) for p in listed] == [
        (PauseScope.LABEL, "app", "acme", True),
        (PauseScope.TENANT, "", "t1", False),
    ]
    assert [(p.paused_by, p.reason) for p in listed] == [
        ("alice", "layout change"),
        ("bob", "contract ended"),
    ]
    assert [p.created_at for p in listed] == [clock.now() - 5, clock.now()]


def test_bad_pauses_are_refused(store: RunStore) -> None:
    bad: list[tuple[tuple[str, str], dict[str, Any], str]] = [
        (("planet", "x"), {}, "unknown pause scope"),
        (("label", "acme"), {}, "label"),
        (("queue", ""), {}, "1 to 500"),
        (("queue", "q"), {"reason": ""}, "reason"),
    ]
    for args, kw, words in bad:
        with pytest.raises(InvalidInput, match=words):
            store.controls.pause(*args, **{"actor": ACTOR, "reason": "why", **kw})
    assert store.controls.pauses() == []
    assert store.admin.audit_log() == []
    with pytest.raises(NotFound):
        store.controls.resume("queue", "nothing-paused", actor=ACTOR, reason="why")


# -- priorities and delays -----------------------------------------------------------------


def test_higher_priority_first_then_fifo_across_tenants(store: RunStore) -> None:
    low = enqueue(store, tenant="a", priority=0)
    high = [enqueue(store, tenant="a", priority=7) for _ in range(2)]
    order = []
    for _ in range(3):
        (lease,) = claim(store, limit=1)
        order.append(lease.run.id)
        succeed(store, lease)
    assert order == [high[0].id, high[1].id, low.id]


def test_a_run_waiting_for_its_retry_does_not_block_its_session(
    store: RunStore, clock: ManualClock
) -> None:
    first = enqueue(store, session_key="s", max_attempts=3)
    second = enqueue(store, session_key="s")
    (lease,) = claim(store)
    assert lease.run.id == first.id
    store.runs.finish(lease, RunState.DELAYED, reason="retry", retry_at=clock.now() + 60)
    (next_lease,) = claim(store)
    assert next_lease.run.id == second.id, "the ready run goes while the first waits"
    clock.advance(61)
    store.runs.promote_delayed()
    assert claim(store) == [], "the session is busy: runs of one session never overlap"
    succeed(store, next_lease)
    assert ids(claim(store)) == [first.id]


def test_a_run_delayed_at_enqueue_does_not_block_its_session(
    store: RunStore, clock: ManualClock
) -> None:
    later = enqueue(store, session_key="s", priority=10, available_at=clock.now() + 5)
    now = [enqueue(store, session_key="s") for _ in range(2)]
    for run in now:
        (lease,) = claim(store)
        assert lease.run.id == run.id
        succeed(store, lease)
    clock.advance(5)
    store.runs.promote_delayed()
    assert ids(claim(store)) == [later.id]


# -- concurrency caps ----------------------------------------------------------------------


def test_queue_and_tenant_limits_hold_across_stores(db_url: str) -> None:
    one, two = open_store(db_url), open_store(db_url)
    try:
        one.controls.set_queue("q", actor=ACTOR, reason="cap", concurrency=5)
        one.controls.set_tenant("t1", actor=ACTOR, reason="cap", concurrency=2)
        for tenant in ("t1", "t2"):
            for _ in range(6):
                enqueue(one, queue="q", tenant=tenant)
        got = claim(one, limit=1, queues=["q"]) + claim(two, limit=10, queues=["q"])
        got += claim(one, limit=10, queues=["q"])
        tenants = [lease.run.tenant for lease in got]
        assert len(got) == 5, "the queue limit holds across both stores"
        assert tenants.count("t1") == 2, "the tenant limit holds across both stores"
        succeed(two, next(lease for lease in got if lease.run.tenant == "t1"))
        more = claim(two, limit=10, queues=["q"])
        assert [lease.run.tenant for lease in more] == ["t1"]
        assert {t.name: t.active for t in one.controls.tenants()}["t1"] == 2
    finally:
        one.backend.close()
        two.backend.close()


def test_session_concurrency_allows_n_runs_of_a_session_at_once(store: RunStore) -> None:
    for _ in range(5):
        enqueue(store, session_key="wide", session_concurrency=3)
        enqueue(store, session_key="narrow")
    leases: list[Lease] = []
    for _ in range(6):  # a claim takes one run per lane; claims again fill the lane
        leases += claim(store, limit=20)
    keys = [lease.run.session_key for lease in leases]
    assert keys.count("wide") == 3 and keys.count("narrow") == 1
    succeed(store, next(lease for lease in leases if lease.run.session_key == "wide"))
    assert [lease.run.session_key for lease in claim(store)] == ["wide"]


def test_runs_of_one_lane_ended_in_one_write_free_a_slot_each(store: RunStore) -> None:
    """A worker batches the ends of runs that finish together: each frees its own slot."""
    for _ in range(4):
        enqueue(store, session_key="wide", session_concurrency=2)
    leases = claim(store) + claim(store)
    assert [lease.run.session_key for lease in leases] == ["wide", "wide"]
    done = [
        End(lease=lease, state=RunState.SUCCEEDED, reason="done", output=json.dumps(None))
        for lease in leases
    ]
    store.runs.write([], done)
    with store.backend.transaction() as tx:
        assert check_summaries(tx) == []
    assert len(claim(store) + claim(store)) == 2, "both slots are free again"


def test_a_new_lane_takes_its_limit_from_its_oldest_run(store: RunStore) -> None:
    """Also in one batch where a later run has a higher priority (on PostgreSQL, a batch of
    one tenant's runs is one statement once the queue and tenant records exist)."""
    enqueue(store)  # the records exist
    store.runs.enqueue_many(
        [
            NewRun(workflow="wf", session_key="s", session_concurrency=2),
            NewRun(workflow="wf", session_key="s", session_concurrency=1, priority=5),
        ]
    )
    assert sorted(str(lease.run.session_key) for lease in claim(store)) == ["None", "s"]
    assert [lease.run.session_key for lease in claim(store)] == ["s"], "the lane allows 2"


def test_tenant_limit_can_be_changed_and_lifted(store: RunStore) -> None:
    for _ in range(6):
        enqueue(store, tenant="t1")
    with pytest.raises(InvalidInput, match="concurrency"):
        store.controls.set_tenant("t1", actor=ACTOR, reason="cap", concurrency=0)
    with pytest.raises(InvalidInput, match="weight"):
        store.controls.set_tenant("t1", actor=ACTOR, reason="cap", weight=-1)
    store.controls.set_tenant("t1", actor=ACTOR, reason="cap", concurrency=1)
    assert len(claim(store)) == 1
    info = store.controls.set_tenant("t1", actor=ACTOR, reason="more", concurrency=3)
    assert (info.concurrency, info.active) == (3, 1)
    assert len(claim(store)) == 2
    store.controls.set_tenant("t1", actor=ACTOR, reason="lift", clear_concurrency=True)
    assert len(claim(store)) == 3


# -- rate limits ---------------------------------------------------------------------------


def test_rate_limit_counts_starts_in_a_sliding_window(store: RunStore, clock: ManualClock) -> None:
    store.controls.set_queue(
        "q", actor=ACTOR, reason="vendor limit", rate_limit=3, rate_period=10.0
    )
    for _ in range(10):
        enqueue(store, queue="q")
    first = claim(store, queues=["q"])
    assert len(first) == 3
    for lease in first:
        succeed(store, lease)
    clock.advance(4)
    assert claim(store, queues=["q"]) == [], "finishing runs does not free the rate"
    clock.advance(5.9)
    assert claim(store, queues=["q"]) == []
    clock.advance(0.2)
    assert len(claim(store, limit=2, queues=["q"])) == 2
    clock.advance(3)
    assert len(claim(store, queues=["q"])) == 1
    clock.advance(7.1)
    assert len(claim(store, queues=["q"])) == 2
