"""The outbox (storage.outbox, storage.events): every declared move and admin action writes its
event in its own transaction, on SQLite and on PostgreSQL (the `db_url` fixture)."""

from __future__ import annotations

from typing import Any

import pytest

from greenroom import InvalidInput, ManualClock, NotFound, RunState
from greenroom.model import Event, Lease, NewRun, PauseScope, Run
from greenroom.storage import RunStore
from greenroom.storage.events import EventFilter
from greenroom.storage.lifecycle.states import EVENTS, Move, allows
from greenroom.storage.writes import End, write
from tests.helpers import settle_events
from tests.test_bad_rows import store_unreadable_labels

LEASE = 10.0


def enqueue(store: RunStore, **kw: Any) -> Run:
    return store.runs.enqueue(NewRun(workflow="wf", **kw))[0]


def claim(store: RunStore, worker: str = "w1") -> Lease:
    (lease,) = store.runs.claim(worker, ["default"], 1, LEASE)
    return lease


def events(store: RunStore, **kw: Any) -> list[Event]:
    settle_events(store)
    return [e for e, _ in store.events.list_events(EventFilter(limit=500, **kw))]


def types(store: RunStore, **kw: Any) -> list[str]:
    return [e.type for e in events(store, **kw)]


def test_the_declared_events_are_of_moves_the_table_allows() -> None:
    sources = [None, *RunState]
    for move, target in EVENTS:
        assert any(allows(move, s, target) for s in sources), (move, target)
    assert not any(move in (Move.ENQUEUE, Move.CLAIM) for move, _ in EVENTS)


def test_runs_that_end_write_their_event(store: RunStore) -> None:
    ok, bad, gone = (enqueue(store, tenant="t1") for _ in range(3))
    store.runs.finish(claim(store), RunState.SUCCEEDED, reason="done", output='"x"')
    error = {"type": "ValueError", "message": "boom", "step": "s1"}
    store.runs.finish(claim(store), RunState.FAILED, reason="failed", error=error)
    store.runs.finish(claim(store), RunState.CANCELLED, reason="cancelled while running")
    got = events(store)
    assert [e.type for e in got] == ["run.succeeded", "run.failed", "run.cancelled"]
    assert [e.subject for e in got] == [f"run:{r.id}" for r in (ok, bad, gone)]
    assert all(e.tenant == "t1" for e in got)
    assert got[0].payload == {
        "version": 1,
        "run_id": ok.id,
        "workflow": "wf",
        "queue": "default",
        "state": "succeeded",
        "reason": "done",
        "detail": None,
        "labels": {},
    }
    assert got[1].payload["detail"]["message"] == "boom"
    assert [e.id for e in got] == sorted(e.id for e in got)


def test_enqueues_claims_and_hand_backs_write_none(store: RunStore, clock: ManualClock) -> None:
    enqueue(store)
    enqueue(store, available_at=clock.now() + 1)
    store.runs.finish(claim(store), RunState.QUEUED, reason="shutdown")
    clock.advance(2)
    store.runs.promote_delayed()
    claim(store)
    assert types(store) == []


def test_a_retry_after_a_delay_and_stalls_write_theirs(store: RunStore, clock: ManualClock) -> None:
    run = enqueue(store)
    error = {"type": "ValueError", "message": "boom"}
    state = store.runs.finish(
        claim(store), RunState.DELAYED, reason="retry", error=error, retry_at=clock.now()
    )
    assert state is RunState.DELAYED
    store.runs.promote_delayed()
    claim(store)
    clock.advance(LEASE + 1)
    store.runs.recover("w2", max_stalls=2)
    claim(store)
    clock.advance(LEASE + 1)
    store.runs.recover("w2", max_stalls=2)
    assert types(store) == ["run.retry_scheduled", "run.stalled", "run.failed"]
    assert {e.subject for e in events(store)} == {f"run:{run.id}"}


def test_a_cancel_caught_by_a_stall_and_a_quarantine_write_theirs(
    store: RunStore, clock: ManualClock
) -> None:
    asked, unreadable = enqueue(store), enqueue(store)
    claim(store)
    store.runs.cancel(asked.id, actor="op", reason="stop it")
    clock.advance(LEASE + 1)
    store.runs.recover("w2", max_stalls=3)
    store_unreadable_labels(store, unreadable.id)
    store.repair.quarantine_unreadable()
    got = [(e.type, e.subject) for e in events(store)]
    assert got == [
        ("run.cancel_requested", f"run:{asked.id}"),
        ("run.cancelled", f"run:{asked.id}"),
        ("run.failed", f"run:{unreadable.id}"),
    ]


def test_operator_cancels_write_theirs(store: RunStore) -> None:
    running = enqueue(store)
    waiting = enqueue(store)
    assert claim(store).run.id == running.id
    store.runs.cancel(running.id, actor="op", reason="stop it")
    store.runs.cancel(waiting.id, actor="op", reason="stop it")
    got = {e.subject: e for e in events(store)}
    assert got[f"run:{running.id}"].type == "run.cancel_requested"
    assert got[f"run:{running.id}"].payload["actor"] == "op"
    assert got[f"run:{waiting.id}"].type == "run.cancelled"


def test_a_retry_writes_run_retried(store: RunStore) -> None:
    run = enqueue(store, tenant="t1")
    store.runs.finish(claim(store), RunState.FAILED, reason="failed", error={"type": "E"})
    new = store.admin.retry_run(run.id, actor="op", reason="fixed")
    (event,) = events(store, types=["run.retried"])
    assert event.tenant == "t1" and event.subject == f"run:{run.id}"
    assert event.payload["new_run_id"] == new.id and event.payload["reason"] == "fixed"


def test_pauses_write_theirs(store: RunStore) -> None:
    store.controls.pause(PauseScope.QUEUE, "default", actor="op", reason="maintenance")
    store.controls.pause(PauseScope.QUEUE, "q2", actor="op", reason="m", tenant="t1")
    store.controls.resume(PauseScope.QUEUE, "default", actor="op", reason="done")
    got = events(store)
    assert [e.type for e in got] == ["pause.created", "pause.created", "pause.lifted"]
    assert [e.tenant for e in got] == [None, "t1", None]
    assert got[0].payload["reason"] == "maintenance" and got[0].subject == got[2].subject
    assert types(store, tenant="t1") == ["pause.created"]


def test_integration_changes_write_theirs_without_secrets(store: RunStore) -> None:
    store.accounts.create_tenant("t1", actor="op")
    store.accounts.add_integration(
        tenant="t1",
        connector="demo",
        name="crm",
        settings={"region": "eu"},
        integration_id="i1",
        sealed=("k1", "sealed-secret"),
        actor="op",
    )
    store.accounts.update_integration("i1", actor="op", status="disabled", sealed=("k1", "s2"))
    store.accounts.delete_integration("i1", actor="op")
    got = events(store, subject="integration:i1")
    assert [e.type for e in got] == [
        "integration.created",
        "integration.updated",
        "integration.deleted",
    ]
    assert got[1].payload["changed"] == ["credentials", "status"]
    assert all("secret" not in str(e.payload) and "eu" not in str(e.payload) for e in got)


# -- atomicity ---------------------------------------------------------------------------------


def _end(store: RunStore, lease: Lease) -> End:
    return End(lease=lease, state=RunState.SUCCEEDED, reason="done", output=None, error=None)


def test_a_transaction_that_rolls_back_emits_nothing(store: RunStore) -> None:
    run = enqueue(store)
    lease = claim(store)
    with pytest.raises(RuntimeError), store.backend.transaction() as tx:
        assert write(tx, store.backend, [], [_end(store, lease)], store.clock.now()).states
        raise RuntimeError("the transaction fails after the end was written")
    assert types(store) == []
    assert store.runs.get_run(run.id).state is RunState.RUNNING
    store.runs.finish(lease, RunState.SUCCEEDED, reason="done")
    assert types(store) == ["run.succeeded"]


@pytest.mark.postgres
def test_a_run_end_and_its_event_are_seen_together(pg_url: str, clock: ManualClock) -> None:
    from greenroom.storage import open_store

    store = open_store(pg_url, clock=clock)
    try:
        run = enqueue(store)
        lease = claim(store)
        with store.backend.transaction() as tx:
            write(tx, store.backend, [], [_end(store, lease)], clock.now())
            # Another connection sees neither until the commit.
            assert store.runs.get_run(run.id).state is RunState.RUNNING
            assert store.events.list_events(EventFilter()) == []
        assert store.runs.get_run(run.id).state is RunState.SUCCEEDED
        assert types(store) == ["run.succeeded"]
    finally:
        store.backend.close()


@pytest.mark.postgres
def test_an_event_waits_for_older_open_transactions(pg_url: str, clock: ManualClock) -> None:
    """A reader never pages past an event whose transaction commits later: events of newer
    transactions wait until every older one is done, then come after its events."""
    from greenroom.storage import open_store

    store = open_store(pg_url, clock=clock)
    try:
        first, second = enqueue(store), enqueue(store)
        leases = [claim(store), claim(store)]
        with store.backend.transaction() as older:
            older.execute("SELECT pg_current_xact_id()")  # it is older: it has its id first
            store.runs.finish(leases[1], RunState.SUCCEEDED, reason="done")
            assert store.events.list_events(EventFilter()) == []
            write(older, store.backend, [], [_end(store, leases[0])], clock.now())
        got = events(store)
        assert [e.subject for e in got] == [f"run:{first.id}", f"run:{second.id}"]
        assert got[0].id > got[1].id, "ordered by commit, not by id"
    finally:
        store.backend.close()


# -- reading -----------------------------------------------------------------------------------


def _finish_many(store: RunStore, tenant: str, n: int) -> None:
    for _ in range(n):
        enqueue(store, tenant=tenant)
    for _ in range(n):
        store.runs.finish(claim(store), RunState.SUCCEEDED, reason="done")


def test_reads_are_tenant_scoped(store: RunStore) -> None:
    _finish_many(store, "t1", 2)
    _finish_many(store, "t2", 1)
    assert len(events(store, tenant="t1")) == 2
    assert {e.tenant for e in events(store, tenant="t2")} == {"t2"}
    assert len(events(store)) == 3
    (mine,) = events(store, tenant="t2")
    with pytest.raises(NotFound):
        store.events.position(mine.id, tenant="t1")


def test_pages_follow_positions(store: RunStore) -> None:
    _finish_many(store, "t1", 5)
    seen: list[int] = []
    after = None
    while page := store.events.list_events(EventFilter(tenant="t1", after=after, limit=2)):
        seen += [e.id for e, _ in page]
        after = page[-1][1]
    assert seen == [e.id for e in events(store)] and len(seen) == 5
    second = store.events.position(seen[1], tenant="t1")
    assert [e.id for e, _ in store.events.list_events(EventFilter(after=second))] == seen[2:]


def test_type_since_and_subject_filters(store: RunStore, clock: ManualClock) -> None:
    _finish_many(store, "t1", 1)
    clock.advance(10)
    store.controls.pause(PauseScope.QUEUE, "default", actor="op", reason="m", tenant="t1")
    assert types(store, types=["run.*"]) == ["run.succeeded"]
    assert types(store, types=["pause.created", "run.failed"]) == ["pause.created"]
    assert types(store, since=clock.now()) == ["pause.created"]
    for bad in ("RUN.*", "run.", "*", "run.*.x", "run;drop", "ru.*", "run.unknown", "false"):
        with pytest.raises(InvalidInput):
            events(store, types=[bad])


def test_prune_deletes_events_older_than_the_retention(store: RunStore, clock: ManualClock) -> None:
    _finish_many(store, "t1", 2)
    clock.advance(100)
    _finish_many(store, "t2", 1)
    assert store.events.prune(older_than=50, tenant="t2") == 0
    assert store.events.prune(older_than=50, batch=1) == 2
    assert types(store) == ["run.succeeded"]
    with pytest.raises(InvalidInput):
        store.events.prune(older_than=-1)


def test_every_type_the_lifecycle_writes_is_in_the_catalogue() -> None:
    from greenroom.storage.events import EVENT_TYPES
    from greenroom.storage.lifecycle.states import EVENTS

    assert set(EVENTS.values()) <= set(EVENT_TYPES)
