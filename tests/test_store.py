"""The storage contract: every test runs on SQLite and on PostgreSQL (the `db_url` fixture)."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from greenroom import (
    App,
    InvalidInput,
    LeaseLost,
    ManualClock,
    NotFound,
    NotSerializable,
    RunRequest,
    RunState,
    StepStatus,
)
from greenroom.model import Lease, NewRun, Run
from greenroom.storage import RunFilter, RunStore, open_store

LEASE = 10.0


@pytest.fixture
def app(db_url: str, clock: ManualClock) -> Iterator[App]:
    a = App(db=db_url, clock=clock)

    @a.workflow(name="sync", session="{tenant}:{integration}")
    async def sync(ctx: Any, integration: str) -> None: ...

    @a.workflow(name="plain")
    async def plain(ctx: Any, **input: Any) -> None: ...

    yield a
    a.close()


def enqueue(store: RunStore, workflow: str = "wf", **kw: Any) -> Run:
    return store.runs.enqueue(NewRun(workflow=workflow, **kw))[0]


def claim(store: RunStore, worker: str = "w1", limit: int = 10, **kw: Any) -> list[Lease]:
    return store.runs.claim(worker, kw.get("queues", ["default"]), limit, kw.get("lease", LEASE))


def claimed_ids(leases: list[Lease]) -> list[str]:
    return [lease.run.id for lease in leases]


def succeed(store: RunStore, lease: Lease, output: Any = None) -> None:
    store.runs.finish(lease, RunState.SUCCEEDED, reason="done", output=json.dumps(output))


def save_step(store: RunStore, lease: Lease, position: int, result: Any) -> None:
    store.runs.save_step(
        lease,
        position=position,
        name=f"step{position}",
        status=StepStatus.COMPLETED,
        result=json.dumps(result),
        error=None,
        attempts=1,
        started_at=store.clock.now(),
    )


def timeline(store: RunStore, run_id: str) -> list[RunState]:
    return [e.state for e in store.runs.events(run_id)]


# -- enqueue -------------------------------------------------------------------------------


def test_enqueue_round_trips_input_labels_and_options(store: RunStore) -> None:
    payload = {"a": 1, "nested": {"b": [1, 2.5, None, True]}, "text": "né 🌿"}
    run = enqueue(
        store,
        input=payload,
        labels={"env": "prod"},
        tenant="t1",
        queue="q1",
        priority=3,
        max_attempts=4,
        timeout=30.0,
    )
    got = store.runs.get_run(run.id)
    assert got == run
    assert got.state is RunState.QUEUED
    assert got.input == payload
    assert got.labels == {"env": "prod"}
    assert (got.tenant, got.queue, got.priority, got.attempt, got.max_attempts) == (
        "t1",
        "q1",
        3,
        1,
        4,
    )
    assert got.timeout == 30.0
    assert got.lease_owner is None
    assert timeline(store, run.id) == [RunState.QUEUED]


def test_enqueue_with_future_start_is_delayed(store: RunStore, clock: ManualClock) -> None:
    later = enqueue(store, available_at=clock.now() + 60)
    past = enqueue(store, available_at=clock.now() - 60)
    assert later.state is RunState.DELAYED
    assert later.available_at == clock.now() + 60
    assert past.state is RunState.QUEUED
    assert timeline(store, later.id) == [RunState.DELAYED]


def test_app_enqueue_renders_session_and_applies_delay(app: App, clock: ManualClock) -> None:
    run = app.enqueue_sync("sync", {"integration": "okta"}, tenant="acme", labels={"k": "v"})
    assert run.session_key == "acme:okta"
    assert run.state is RunState.QUEUED
    delayed = app.enqueue_sync("plain", delay=30)
    assert delayed.state is RunState.DELAYED
    assert delayed.available_at == pytest.approx(clock.now() + 30)
    at = app.enqueue_sync("plain", start_at=clock.now() + 5)
    assert at.state is RunState.DELAYED


@pytest.mark.parametrize(
    ("workflow", "input", "options", "error", "message"),
    [
        ("nope", {}, {}, InvalidInput, "unknown workflow 'nope'"),
        ("plain", {"x": object()}, {}, NotSerializable, "run input is not JSON-serializable"),
        ("plain", {"x": float("nan")}, {}, NotSerializable, "run input"),
        ("sync", {"other": 1}, {}, InvalidInput, "input.integration: missing"),
        ("plain", {}, {"delay": -1}, InvalidInput, "delay must not be negative"),
        ("plain", {}, {"tenant": ""}, InvalidInput, "tenant"),
        ("plain", {}, {"delay": 1, "start_at": 1.0}, InvalidInput, "either delay or start_at"),
    ],
)
def test_bad_enqueue_is_refused_and_stores_nothing(
    app: App,
    workflow: str,
    input: dict[str, Any],
    options: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")):
        app.enqueue_sync(workflow, input, **options)
    assert app.store.runs.count_by_state() == {}


def test_non_object_input_is_refused(app: App) -> None:
    with pytest.raises(InvalidInput, match="JSON object"):
        app.enqueue_sync("plain", [1, 2])  # type: ignore[arg-type]
    assert app.store.runs.count_by_state() == {}


def test_batch_with_one_bad_run_stores_nothing(app: App) -> None:
    good = RunRequest(workflow="plain")
    bad = RunRequest(workflow="plain", input={"when": object()})
    with pytest.raises(NotSerializable):
        app.enqueue_many_sync([good, bad])
    assert app.store.runs.count_by_state() == {}
    assert len(app.enqueue_many_sync([good, good])) == 2


def test_idempotent_enqueue_returns_the_same_run(store: RunStore) -> None:
    first, created = store.runs.enqueue(NewRun(workflow="wf", input={"v": 1}, idempotency_key="k"))
    again, created_again = store.runs.enqueue(
        NewRun(workflow="wf", input={"v": 2}, idempotency_key="k")
    )
    assert created and not created_again
    assert again.id == first.id
    assert again.input == {"v": 1}, "a repeated enqueue must not overwrite the first"
    other_tenant = enqueue(store, tenant="t2", idempotency_key="k")
    assert other_tenant.id != first.id
    assert len(store.runs.list_runs(RunFilter())) == 2
    assert timeline(store, first.id) == [RunState.QUEUED]


@pytest.mark.parametrize("records_known", [False, True])
def test_concurrent_enqueues_with_one_key_create_one_run(db_url: str, records_known: bool) -> None:
    """Also once each store knows the queue and tenant records: on PostgreSQL, an enqueue is
    then one statement (`insert_runs_at_once`), and a used key is looked up after it."""
    stores = [open_store(db_url) for _ in range(4)]  # separate connections
    if records_known:
        for s in stores:
            s.runs.enqueue(NewRun(workflow="warm-up"))
    barrier = threading.Barrier(100)

    def attempt(i: int) -> tuple[str, bool]:
        barrier.wait()
        run, created = stores[i % len(stores)].runs.enqueue(
            NewRun(workflow="wf", input={"i": i}, idempotency_key="once")
        )
        return run.id, created

    try:
        with ThreadPoolExecutor(max_workers=100) as pool:
            results = list(pool.map(attempt, range(100)))
        assert len({run_id for run_id, _ in results}) == 1
        assert sum(created for _, created in results) == 1
        assert len(stores[0].runs.list_runs(RunFilter(workflow="wf"))) == 1
    finally:
        for s in stores:
            s.backend.close()


# -- claim ---------------------------------------------------------------------------------


def test_claim_takes_higher_priority_first_then_fifo(store: RunStore) -> None:
    low1 = enqueue(store, priority=0)
    high1 = enqueue(store, priority=5)
    low2 = enqueue(store, priority=0)
    high2 = enqueue(store, priority=5, session_key="s1")
    mid = enqueue(store, priority=2, session_key="s2")
    order = [claimed_ids(claim(store, limit=1)) for _ in range(6)]
    assert order == [[high1.id], [high2.id], [mid.id], [low1.id], [low2.id], []]


def test_claim_returns_a_batch_in_priority_order(store: RunStore) -> None:
    runs = [enqueue(store, priority=p) for p in (1, 3, 2)]
    leases = claim(store, limit=2)
    assert claimed_ids(leases) == [runs[1].id, runs[2].id]
    lease = leases[0]
    assert lease.run.state is RunState.RUNNING
    assert lease.run.lease_owner == "w1" and lease.worker_id == "w1"
    assert lease.token == lease.run.lease_token >= 1
    assert lease.expires_at == pytest.approx(store.clock.now() + LEASE)
    assert claim(store, limit=0) == []


def test_claim_only_from_the_given_queues(store: RunStore) -> None:
    mine = enqueue(store, queue="mine")
    other = enqueue(store, queue="other", session_key="s")
    assert claimed_ids(claim(store, queues=["mine"])) == [mine.id]
    assert claim(store, queues=["mine"]) == []
    assert claimed_ids(claim(store, queues=["mine", "other"])) == [other.id]


def test_runs_of_one_session_are_never_leased_at_once(store: RunStore) -> None:
    first = enqueue(store, session_key="acme:okta")
    second = enqueue(store, session_key="acme:okta")
    other = enqueue(store, session_key="acme:slack")
    leases = claim(store, limit=10)
    assert sorted(claimed_ids(leases)) == sorted([first.id, other.id])
    assert claim(store, "w2", limit=10) == []
    succeed(store, next(lease for lease in leases if lease.run.id == first.id))
    assert claimed_ids(claim(store, "w2")) == [second.id]


def test_session_order_is_priority_then_fifo(store: RunStore) -> None:
    a = enqueue(store, session_key="s")
    b = enqueue(store, session_key="s", priority=9)
    c = enqueue(store, session_key="s")
    seen = []
    for _ in range(3):
        (lease,) = claim(store)
        seen.append(lease.run.id)
        store.runs.finish(lease, RunState.FAILED, reason="test")
    assert seen == [b.id, a.id, c.id]


def test_delayed_runs_wait_for_promotion_and_do_not_block_their_session(
    store: RunStore, clock: ManualClock
) -> None:
    delayed = enqueue(store, session_key="s", priority=9, available_at=clock.now() + 30)
    ready = enqueue(store, session_key="s")
    (lease,) = claim(store)
    assert lease.run.id == ready.id
    clock.advance(31)
    assert claim(store) == [], "a delayed run is not claimed before it is promoted"
    assert store.runs.promote_delayed() == 1
    assert store.runs.get_run(delayed.id).state is RunState.QUEUED
    assert claim(store) == [], "the session is still busy"
    succeed(store, lease)
    assert claimed_ids(claim(store)) == [delayed.id]
    assert timeline(store, delayed.id) == [RunState.DELAYED, RunState.QUEUED, RunState.RUNNING]


def test_claim_skips_blocked_sessions_without_scanning_them(store: RunStore) -> None:
    def timed_empty_claims() -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            assert claim(store, "probe") == []
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    empty = timed_empty_claims()
    batch = [
        NewRun(workflow="wf", session_key=f"s{i % 50}", priority=5, input={"i": i})
        for i in range(5000)
    ]
    store.runs.enqueue_many(batch)
    busy = claim(store, limit=100)
    assert len(busy) == 50 and len({lease.run.session_key for lease in busy}) == 50
    blocked = timed_empty_claims()
    free = enqueue(store, priority=0)
    assert claimed_ids(claim(store, limit=10)) == [free.id]
    # Loose: the claim must not cost in proportion to the 4,950 blocked runs.
    assert blocked < 20 * empty + 0.05, (empty, blocked)


def test_concurrent_claimers_lease_each_run_once_and_respect_sessions(db_url: str) -> None:
    setup = open_store(db_url)
    setup.runs.enqueue_many(
        [NewRun(workflow="wf") for _ in range(60)]
        + [NewRun(workflow="wf", session_key=f"s{i % 6}") for i in range(60)]
    )
    stores = [setup] + [open_store(db_url) for _ in range(2)]
    mutex = threading.Lock()
    busy_sessions: set[str] = set()
    leased: list[str] = []
    violations: list[str] = []

    def claimer(n: int) -> None:
        s = stores[n % len(stores)]
        idle = 0
        while idle < 20:
            leases = s.runs.claim(f"w{n}", ["default"], 3, LEASE)
            idle = 0 if leases else idle + 1
            with mutex:
                for lease in leases:
                    leased.append(lease.run.id)
                    key = lease.run.session_key
                    if key is not None:
                        if key in busy_sessions:
                            violations.append(key)
                        busy_sessions.add(key)
            for lease in leases:
                with mutex:
                    busy_sessions.discard(lease.run.session_key or "")
                succeed(s, lease)
            if not leases:
                time.sleep(0.005)

    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(claimer, range(6)))
        assert violations == []
        assert len(leased) == len(set(leased)) == 120
        assert setup.runs.count_by_state() == {RunState.SUCCEEDED: 120}
    finally:
        for s in stores:
            s.backend.close()


# -- fencing -------------------------------------------------------------------------------


def test_writes_with_a_stale_token_are_refused(store: RunStore, clock: ManualClock) -> None:
    run = enqueue(store)
    (old,) = claim(store, "w1")
    save_step(store, old, 0, "by w1")
    clock.advance(LEASE + 1)
    assert store.runs.recover("w2", max_stalls=3).requeued == [run.id]
    (new,) = claim(store, "w2")
    assert new.token > old.token

    with pytest.raises(LeaseLost):
        save_step(store, old, 1, "stale")
    with pytest.raises(LeaseLost):
        save_step(store, old, 0, "stale overwrite")
    with pytest.raises(LeaseLost):
        store.runs.finish(old, RunState.SUCCEEDED, reason="stale", output='"stale"')

    current = store.runs.get_run(run.id)
    assert current.state is RunState.RUNNING
    assert (current.lease_owner, current.lease_token) == ("w2", new.token)
    assert current.output is None
    assert [(s.position, s.result) for s in store.runs.steps(run.id)] == [(0, "by w1")]
    save_step(store, new, 1, "by w2")
    succeed(store, new, "ok")
    assert store.runs.get_run(run.id).output == "ok"


def test_a_finished_lease_can_no_longer_write(store: RunStore) -> None:
    run = enqueue(store)
    (lease,) = claim(store)
    succeed(store, lease, {"n": 1})
    with pytest.raises(LeaseLost):
        save_step(store, lease, 0, "late")
    with pytest.raises(LeaseLost):
        store.runs.finish(lease, RunState.FAILED, reason="late")
    got = store.runs.get_run(run.id)
    assert got.state is RunState.SUCCEEDED and got.output == {"n": 1}
    assert store.runs.steps(run.id) == []


def test_each_lease_gets_a_larger_token(store: RunStore) -> None:
    enqueue(store)
    tokens = []
    for _ in range(3):
        (lease,) = claim(store)
        tokens.append(lease.token)
        store.runs.finish(lease, RunState.QUEUED, reason="released")
    assert tokens == sorted(set(tokens))


# -- recovery ------------------------------------------------------------------------------


def test_expired_lease_is_requeued_and_counted_as_a_stall(
    store: RunStore, clock: ManualClock
) -> None:
    run = enqueue(store, session_key="s")
    blocked = enqueue(store, session_key="s")
    claim(store, "w1")
    clock.advance(LEASE - 1)
    assert store.runs.recover("w2", max_stalls=3).requeued == []
    clock.advance(2)
    recovery = store.runs.recover("w2", max_stalls=3)
    assert recovery.requeued == [run.id] and recovery.failed == []
    got = store.runs.get_run(run.id)
    assert got.state is RunState.QUEUED and got.stalls == 1 and got.lease_owner is None
    assert "expired" in store.runs.events(run.id)[-1].reason
    # The session lane was freed and the stalled run is still its head.
    assert claimed_ids(claim(store, "w2")) == [run.id]
    assert store.runs.get_run(blocked.id).state is RunState.QUEUED


def test_run_fails_after_max_stalls(store: RunStore, clock: ManualClock) -> None:
    run = enqueue(store)
    for _ in range(2):
        claim(store, "w1")
        clock.advance(LEASE + 1)
        recovery = store.runs.recover("w2", max_stalls=2)
    assert recovery.failed == [run.id]
    got = store.runs.get_run(run.id)
    assert got.state is RunState.FAILED and got.stalls == 2
    assert got.finished_at is not None
    assert got.error is not None and got.error["type"] == "Stalled"
    assert "max_stalls" in got.error["message"]
    assert claim(store) == []


def test_cancel_requested_run_of_an_expired_worker_is_cancelled(
    store: RunStore, clock: ManualClock
) -> None:
    run = enqueue(store)
    claim(store, "w1")
    store.runs.cancel(run.id, actor="test", reason="test")
    clock.advance(LEASE + 1)
    assert store.runs.recover("w2", max_stalls=3).failed == [run.id]
    assert store.runs.get_run(run.id).state is RunState.CANCELLED
    assert claim(store) == []


def test_dead_worker_is_found_by_its_liveness_lock(store: RunStore) -> None:
    run = enqueue(store, session_key="s")
    unwanted = enqueue(store)
    handle = store.backend.hold_liveness(4242, "doomed")
    store.runs.register_worker(
        "doomed", host="h", pid=1, queues=["default"], concurrency=2, lock_key=4242
    )
    assert len(claim(store, "doomed")) == 2
    store.runs.cancel(unwanted.id, actor="test", reason="test")
    try:
        assert store.runs.recover("w2", max_stalls=3).requeued == []
    finally:
        handle.close()
    # No clock advance: the lease is still valid, but its holder is gone.
    recovery = _recover_until_requeued(store, run.id)
    assert recovery.failed == [unwanted.id]
    assert store.runs.get_run(unwanted.id).state is RunState.CANCELLED
    assert store.runs.get_run(run.id).stalls == 1
    assert "doomed lost its liveness lock" in store.runs.events(run.id)[-1].reason
    [info] = [w for w in store.runs.workers(include_gone=True) if w.id == "doomed"]
    assert info.state == "dead"
    assert claimed_ids(claim(store, "w2")) == [run.id]


def _recover_until_requeued(store: RunStore, run_id: str, timeout: float = 5.0) -> Any:
    """The server may take a moment to drop a closed connection's locks; a worker found lost
    has its runs handed out after the backend's grace (the test's clock is moved over it)."""
    deadline = time.monotonic() + timeout
    while True:
        recovery = store.runs.recover("w2", max_stalls=3)
        if recovery.lost_workers and store.backend.liveness_grace:
            assert recovery.requeued == []
            assert recovery.next_due == store.clock.now() + store.backend.liveness_grace
            assert isinstance(store.clock, ManualClock)
            store.clock.advance(store.backend.liveness_grace)
            continue
        if run_id in recovery.requeued or time.monotonic() > deadline:
            assert recovery.requeued == [run_id]
            return recovery
        time.sleep(0.02)


_HOLDER = """
import sys, time
from greenroom.storage import open_store
store = open_store(sys.argv[1])
handle = store.backend.hold_liveness(777, "killed")
store.runs.register_worker(
    "killed", host="h", pid=0, queues=["default"], concurrency=1, lock_key=777
)
leases = store.runs.claim("killed", ["default"], 1, 3600.0)
print(len(leases), flush=True)
time.sleep(60)
"""


def test_sigkilled_worker_process_is_found_dead_at_once(store: RunStore, db_url: str) -> None:
    run = enqueue(store)
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, db_url],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "1"
            assert store.runs.get_run(run.id).lease_owner == "killed"
            assert store.runs.recover("w2", max_stalls=3).requeued == []
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    started = time.monotonic()
    _recover_until_requeued(store, run.id)
    assert time.monotonic() - started < 1.0


def test_workers_registry_lists_running_runs(store: RunStore) -> None:
    run = enqueue(store)
    store.runs.register_worker("w1", host="h", pid=12, queues=["a", "b"], concurrency=3, lock_key=9)
    claim(store, "w1")
    [info] = store.runs.workers()
    assert (info.id, info.host, info.pid, info.queues, info.concurrency) == (
        "w1",
        "h",
        12,
        ["a", "b"],
        3,
    )
    assert info.state == "alive" and info.running == [run.id]
    store.runs.stop_worker("w1")
    assert store.runs.workers() == []
    assert [w.state for w in store.runs.workers(include_gone=True)] == ["stopped"]


# -- heartbeat and cancel ------------------------------------------------------------------


def test_heartbeat_renews_every_lease_of_its_worker(store: RunStore, clock: ManualClock) -> None:
    mine = [enqueue(store) for _ in range(3)]
    claim(store, "w1", limit=3)
    theirs = enqueue(store)
    claim(store, "other")
    clock.advance(LEASE - 2)
    beat = store.runs.heartbeat("w1", LEASE, [r.id for r in mine])
    assert beat.held == {r.id for r in mine}
    assert beat.cancel_requested == set()
    clock.advance(4)  # past the first expiry, within the renewed one
    assert store.runs.recover("w2", max_stalls=3).requeued == [theirs.id]
    for r in mine:
        got = store.runs.get_run(r.id)
        assert got.state is RunState.RUNNING
        assert got.lease_expires_at == pytest.approx(clock.now() - 4 + LEASE)


def test_heartbeat_leaves_runs_the_worker_no_longer_executes_to_expire(
    store: RunStore, clock: ManualClock
) -> None:
    kept, forgotten = enqueue(store), enqueue(store)
    claim(store, "w1", limit=2)
    clock.advance(LEASE - 1)
    assert store.runs.heartbeat("w1", LEASE, [kept.id]).held == {kept.id}
    clock.advance(2)
    assert store.runs.recover("w2", max_stalls=3).requeued == [forgotten.id]
    assert store.runs.get_run(kept.id).state is RunState.RUNNING


def test_cancel_of_queued_and_delayed_runs_is_immediate(
    store: RunStore, clock: ManualClock
) -> None:
    queued = enqueue(store, session_key="s")
    behind = enqueue(store, session_key="s")
    delayed = enqueue(store, available_at=clock.now() + 5)
    for run in (queued, delayed):
        got = store.runs.cancel(run.id, actor="op", reason="operator said so")
        assert got.state is RunState.CANCELLED and got.finished_at == clock.now()
        assert store.runs.events(run.id)[-1].reason == "cancelled by op: operator said so"
    clock.advance(10)
    assert store.runs.promote_delayed() == 0
    assert claimed_ids(claim(store)) == [behind.id], "the session's next run moves up"


def test_cancel_of_a_running_run_asks_its_worker(store: RunStore) -> None:
    run = enqueue(store)
    (lease,) = claim(store, "w1")
    got = store.runs.cancel(run.id, actor="test", reason="test")
    assert got.state is RunState.RUNNING and got.cancel_requested
    assert store.runs.control_requests("w1").cancel_requested == {run.id}
    assert store.runs.control_requests("w2").cancel_requested == set()
    assert store.runs.heartbeat("w1", LEASE, [run.id]).cancel_requested == {run.id}
    store.runs.finish(lease, RunState.CANCELLED, reason="cancelled while running")
    assert store.runs.get_run(run.id).state is RunState.CANCELLED


def test_cancel_leaves_finished_runs_alone_and_is_tenant_scoped(store: RunStore) -> None:
    run = enqueue(store, tenant="t1")
    (lease,) = claim(store)
    succeed(store, lease, 1)
    assert store.runs.cancel(run.id, actor="test", reason="test").state is RunState.SUCCEEDED
    with pytest.raises(NotFound):
        store.runs.cancel(run.id, tenant="t2", actor="test", reason="test")
    with pytest.raises(NotFound):
        store.runs.get_run(run.id, tenant="t2")
    with pytest.raises(NotFound):
        store.runs.cancel("no-such-run", actor="test", reason="test")
    assert store.runs.get_run(run.id, tenant="t1").state is RunState.SUCCEEDED


# -- timeline ------------------------------------------------------------------------------


def test_every_transition_is_on_the_timeline(store: RunStore, clock: ManualClock) -> None:
    run = enqueue(store, available_at=clock.now() + 1)
    clock.advance(2)
    store.runs.promote_delayed()
    (lease,) = claim(store, "w1")
    clock.advance(1)
    store.runs.finish(
        lease,
        RunState.DELAYED,
        reason="attempt 1 failed: ValueError",
        error={"type": "ValueError", "message": "boom"},
        retry_at=clock.now() + 5,
    )
    retried = store.runs.get_run(run.id)
    assert retried.state is RunState.DELAYED and retried.attempt == 2
    assert retried.available_at == clock.now() + 5
    clock.advance(5)
    store.runs.promote_delayed()
    (lease,) = claim(store, "w2")
    succeed(store, lease, "done")

    events = store.runs.events(run.id)
    assert [e.state for e in events] == [
        RunState.DELAYED,
        RunState.QUEUED,
        RunState.RUNNING,
        RunState.DELAYED,
        RunState.QUEUED,
        RunState.RUNNING,
        RunState.SUCCEEDED,
    ]
    assert [e.worker_id for e in events if e.state is RunState.RUNNING] == ["w1", "w2"]
    assert all(e.reason for e in events)
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert store.runs.get_run(run.id).finished_at == clock.now()


def test_list_runs_filters(store: RunStore) -> None:
    a = enqueue(store, tenant="t1", workflow="x")
    b = enqueue(store, tenant="t2", workflow="y", session_key="s")
    c = enqueue(store, tenant="t1", workflow="y")
    store.runs.cancel(c.id, actor="test", reason="test")
    ids = lambda f: [r.id for r in store.runs.list_runs(f)]  # noqa: E731
    assert ids(RunFilter()) == [c.id, b.id, a.id]
    assert ids(RunFilter(tenant="t1")) == [c.id, a.id]
    assert ids(RunFilter(states=[RunState.QUEUED])) == [b.id, a.id]
    assert ids(RunFilter(workflow="y", session_key="s")) == [b.id]
    assert ids(RunFilter(before_seq=c.seq, limit=1)) == [b.id]


def test_many_rows_pass_to_one_statement_exactly(store: RunStore) -> None:
    """`Tx.rows`, which every batched write goes through: thousands of rows in one statement,
    text, numbers and NULLs back as they went in; text that is not valid Unicode refused."""
    columns = [("n", "bigint"), ("t", "text"), ("x", "double precision"), ("b", "boolean")]
    odd = ["é ü 漢字 🙂", "'quoted' \"double\"", "line\nbreak\ttab", "\u2028", "", "\\", "{}"]
    rows = [
        {
            "n": i - 1000,
            "t": None if i % 11 == 0 else odd[i % len(odd)] + str(i),
            "x": None if i % 13 == 0 else (i * 1_765_000.123456789) / 7,
            "b": i % 2 == 0,
        }
        for i in range(3000)
    ]
    names = ", ".join(name for name, _ in columns)
    with store.backend.transaction() as tx:
        params: dict[str, Any] = {}
        source = tx.rows(columns, rows, params)
        got = tx.execute(f"WITH w({names}) AS ({source}) SELECT {names} FROM w", params)
    assert [{**r, "b": bool(r["b"])} for r in got] == rows

    # A lone surrogate is refused, and nothing is stored that no later read could decode.
    with store.backend.transaction() as tx:
        tx.execute("CREATE TABLE odd_text (t text)")
    refused = pytest.raises((UnicodeEncodeError, psycopg.DataError))
    with refused, store.backend.transaction() as tx:
        params = {}
        source = tx.rows([("t", "text")], [{"t": "lone \ud800 surrogate"}], params)
        tx.execute(f"WITH w(t) AS ({source}) INSERT INTO odd_text (t) SELECT t FROM w", params)
    with store.backend.transaction() as tx:
        assert tx.execute("SELECT t FROM odd_text") == []
