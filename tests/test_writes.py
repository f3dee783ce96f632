"""Fenced batched writes (`RunStore.runs.write`, `greenroom.storage.writes`) and the worker's group
commit (`RunWriter`), on SQLite and PostgreSQL (the `db_url` fixture)."""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from helpers import fast_app, wait_for_states, worker_running

from greenroom import LeaseLost, ManualClock, RunContext, RunState, StepStatus, step
from greenroom.errors import NotSerializable
from greenroom.failures import fingerprint
from greenroom.model import Lease, NewRun, Run
from greenroom.storage import RunStore
from greenroom.storage.sqlite import SQLiteBackend
from greenroom.storage.writes import Checkpoint, End, Written
from greenroom.worker.writer import RunWriter

LEASE = 10.0
ACTOR = "ops@example.com"
#: The error fields a timeline event keeps (not the traceback).
EVENT_KEYS = ("type", "message", "step", "attempt", "class")


def enqueue(store: RunStore, workflow: str = "wf", **kw: Any) -> Run:
    return store.runs.enqueue(NewRun(workflow=workflow, **kw))[0]


def claim(
    store: RunStore, worker: str = "w1", limit: int = 10, queues: Sequence[str] = ("default",)
) -> list[Lease]:
    return store.runs.claim(worker, list(queues), limit, LEASE)


def by_run(leases: list[Lease]) -> dict[str, Lease]:
    return {lease.run.id: lease for lease in leases}


def checkpoint(
    lease: Lease,
    position: int,
    result: Any = None,
    *,
    status: StepStatus = StepStatus.COMPLETED,
    error: dict[str, Any] | None = None,
    name: str | None = None,
    started_at: float = 0.0,
    finished_at: float = 0.0,
) -> Checkpoint:
    return Checkpoint(
        lease=lease,
        position=position,
        name=f"step{position}" if name is None else name,
        status=status,
        result=None if status is StepStatus.FAILED else json.dumps(result),
        error=error,
        attempts=1,
        started_at=started_at,
        finished_at=finished_at,
    )


def steps_of(store: RunStore, run_id: str) -> list[tuple[int, str, StepStatus, Any]]:
    return [(s.position, s.name, s.status, s.result) for s in store.runs.steps(run_id)]


def expire_and_reclaim(
    store: RunStore, clock: ManualClock, stale: Run, keep: list[Run], thief: str = "w2"
) -> Lease:
    """Let `stale`'s lease expire while w1 renews `keep`; another worker recovers and claims
    `stale`. Its new lease."""
    clock.advance(LEASE - 1)
    assert store.runs.heartbeat("w1", LEASE, [r.id for r in keep]).held == {r.id for r in keep}
    clock.advance(2)
    assert store.runs.recover(thief, max_stalls=3).requeued == [stale.id]
    (new,) = claim(store, thief)
    assert new.run.id == stale.id
    return new


async def db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


class CountingWrites:
    """Wraps a store's `write` (the real one runs): the batches it was called with."""

    def __init__(self, store: RunStore, failures: Sequence[Exception] = ()) -> None:
        self.real = store.runs.write
        self.batches: list[tuple[list[Checkpoint], list[End]]] = []
        self.failures = list(failures)  # raised by the first calls, one each

    def __call__(self, checkpoints: Sequence[Checkpoint], ends: Sequence[End]) -> Written:
        self.batches.append((list(checkpoints), list(ends)))
        if self.failures:
            raise self.failures.pop(0)
        return self.real(checkpoints, ends)


# -- fencing a batch -----------------------------------------------------------------------


def test_a_stale_run_is_refused_as_a_whole_and_the_rest_of_the_batch_applies(
    store: RunStore, clock: ManualClock
) -> None:
    a, b, c = (enqueue(store, session_key=f"s{i}") for i in range(3))
    old = by_run(claim(store, "w1"))
    assert set(old) == {a.id, b.id, c.id}
    store.runs.save_step(
        old[c.id],
        position=0,
        name="step0",
        status=StepStatus.COMPLETED,
        result=json.dumps("by w1"),
        error=None,
        attempts=1,
        started_at=clock.now(),
    )
    new = expire_and_reclaim(store, clock, c, keep=[a, b])
    before = (store.runs.get_run(c.id), store.runs.steps(c.id), store.runs.events(c.id))
    assert before[0].lease_token == new.token > old[c.id].token

    error = {"type": "ValueError", "message": "bad row 7", "step": "step1", "class": "permanent"}
    written = store.runs.write(
        [
            checkpoint(old[a.id], 0, "a0"),
            checkpoint(old[b.id], 0, "b0"),
            checkpoint(old[c.id], 0, "stale overwrite"),
            checkpoint(old[c.id], 1, "stale"),
        ],
        [
            End(
                lease=old[a.id],
                state=RunState.SUCCEEDED,
                reason="completed",
                output='"A"',
                checkpoint=checkpoint(old[a.id], 1, "a1"),
            ),
            End(lease=old[b.id], state=RunState.FAILED, reason="failed: ValueError", error=error),
            End(
                lease=old[c.id],
                state=RunState.SUCCEEDED,
                reason="stale end",
                output='"stale"',
                checkpoint=checkpoint(old[c.id], 2, "stale carried"),
            ),
        ],
    )

    assert written.refused == {(c.id, old[c.id].token)}
    assert written.states == {a.id: RunState.SUCCEEDED, b.id: RunState.FAILED}
    # The refused run: row, steps and timeline exactly as they were.
    assert (store.runs.get_run(c.id), store.runs.steps(c.id), store.runs.events(c.id)) == before
    assert steps_of(store, c.id) == [(0, "step0", StepStatus.COMPLETED, "by w1")]
    # The others: every checkpoint and end applied.
    got_a, got_b = store.runs.get_run(a.id), store.runs.get_run(b.id)
    assert (got_a.state, got_a.output, got_a.finished_at) == (RunState.SUCCEEDED, "A", clock.now())
    assert steps_of(store, a.id) == [
        (0, "step0", StepStatus.COMPLETED, "a0"),
        (1, "step1", StepStatus.COMPLETED, "a1"),
    ]
    assert (got_b.state, got_b.error) == (RunState.FAILED, error)
    assert steps_of(store, b.id) == [(0, "step0", StepStatus.COMPLETED, "b0")]
    assert [g.last_run_id for g in store.admin.error_groups()] == [b.id]
    # Lanes of the ended runs are free, the stale run's lane is still held by w2.
    for key in ("s0", "s1"):
        enqueue(store, session_key=key)
    enqueue(store, session_key="s2")
    assert {lease.run.session_key for lease in claim(store, "w3")} == {"s0", "s1"}
    # The new holder is unaffected and can still finish its run.
    assert store.runs.finish(new, RunState.SUCCEEDED, reason="done", output='"w2"') is (
        RunState.SUCCEEDED
    )
    assert store.runs.get_run(c.id).output == "w2"


def test_writes_for_a_run_that_is_no_longer_running_are_refused(store: RunStore) -> None:
    done, live = enqueue(store), enqueue(store)
    leases = by_run(claim(store))
    store.runs.finish(leases[done.id], RunState.CANCELLED, reason="cancelled while running")
    written = store.runs.write(
        [checkpoint(leases[done.id], 0, "late"), checkpoint(leases[live.id], 0, "ok")],
        [End(lease=leases[done.id], state=RunState.SUCCEEDED, reason="late", output="1")],
    )
    assert written == Written(refused={(done.id, leases[done.id].token)}, states={})
    assert store.runs.get_run(done.id).state is RunState.CANCELLED
    assert store.runs.steps(done.id) == []
    assert steps_of(store, live.id) == [(0, "step0", StepStatus.COMPLETED, "ok")]
    assert store.runs.write([], []) == Written(refused=set(), states={})


def test_a_stale_token_is_refused_even_beside_a_current_one_for_the_same_run(
    store: RunStore, clock: ManualClock
) -> None:
    run = enqueue(store)
    (old,) = claim(store, "w1")
    new = expire_and_reclaim(store, clock, run, keep=[], thief="w1")
    assert new.token > old.token
    written = store.runs.write([checkpoint(old, 0, "stale"), checkpoint(new, 1, "current")], [])
    assert written.refused == {(run.id, old.token)}
    assert [s.position for s in store.runs.steps(run.id)] == [1], "the stale token wrote step 0"


# -- every kind of end ---------------------------------------------------------------------


def test_one_batch_applies_every_kind_of_end(store: RunStore, clock: ManualClock) -> None:
    runs = {
        kind: enqueue(store, workflow=f"wf-{kind.removesuffix('_too')}", max_attempts=3)
        for kind in ("succeeded", "failed", "failed_too", "delayed", "cancelled", "queued")
    }
    earlier = {"type": "TimeoutError", "message": "slow", "step": None, "class": "transient"}
    # The run that succeeds had a failed attempt: its error must be cleared.
    (first,) = claim(store, limit=1)
    assert first.run.id == runs["succeeded"].id
    store.runs.finish(first, RunState.DELAYED, reason="attempt 1 failed", error=earlier)
    assert store.runs.get_run(runs["succeeded"].id).error == earlier
    clock.advance(1)
    assert store.runs.promote_delayed() == 1
    leases = by_run(claim(store, "w1"))
    lease = {kind: leases[run.id] for kind, run in runs.items()}
    clock.advance(5)
    now = clock.now()
    boom = {
        "type": "ValueError",
        "message": "no row 42",
        "step": "fetch",
        "attempt": 1,
        "class": "permanent",
        "traceback": "Traceback ...",
    }
    retry = {"type": "ConnectionError", "message": "reset", "step": "fetch", "class": "transient"}
    ends = [
        End(lease=lease["succeeded"], state=RunState.SUCCEEDED, reason="completed", output="[1]"),
        End(lease=lease["failed"], state=RunState.FAILED, reason="failed: ValueError", error=boom),
        End(lease=lease["failed_too"], state=RunState.FAILED, reason="failed too", error=boom),
        End(
            lease=lease["delayed"],
            state=RunState.DELAYED,
            reason="attempt 1 failed: ConnectionError",
            error=retry,
            retry_at=now + 30,
        ),
        End(lease=lease["cancelled"], state=RunState.CANCELLED, reason="cancelled while running"),
        End(lease=lease["queued"], state=RunState.QUEUED, reason="released: worker shutting down"),
    ]
    written = store.runs.write([], ends)
    expected = {
        "succeeded": RunState.SUCCEEDED,
        "failed": RunState.FAILED,
        "failed_too": RunState.FAILED,
        "delayed": RunState.DELAYED,
        "cancelled": RunState.CANCELLED,
        "queued": RunState.QUEUED,
    }
    assert written.refused == set()
    assert written.states == {runs[k].id: state for k, state in expected.items()}

    got = {kind: store.runs.get_run(run.id) for kind, run in runs.items()}
    for kind, run in got.items():
        assert run.state is expected[kind], kind
        assert (run.lease_owner, run.lease_expires_at) == (None, None), kind
    succeeded, failed = got["succeeded"], got["failed"]
    assert (succeeded.output, succeeded.error) == ([1], None)
    assert (succeeded.finished_at, succeeded.attempt) == (now, 2)
    assert (failed.output, failed.error, failed.finished_at, failed.attempt) == (None, boom, now, 1)
    assert (
        failed.error_group
        == got["failed_too"].error_group
        == fingerprint("ValueError", "no row 42", "fetch")
    )
    delayed = got["delayed"]
    assert (delayed.attempt, delayed.available_at) == (2, now + 30)
    assert (delayed.finished_at, delayed.error) == (None, retry)
    cancelled = got["cancelled"]
    assert (cancelled.finished_at, cancelled.attempt, cancelled.error) == (now, 1, None)
    queued = got["queued"]
    assert (queued.attempt, queued.finished_at) == (1, None)
    assert queued.available_at == runs["queued"].available_at
    for kind in ("succeeded", "delayed", "cancelled", "queued"):
        assert got[kind].error_group is None, kind

    for end in ends:
        event = store.runs.events(end.lease.run.id)[-1]
        assert (event.state, event.reason, event.worker_id, event.at) == (
            written.states[end.lease.run.id],
            end.reason,
            "w1",
            now,
        )
        wanted = {} if end.error is None else {k: end.error.get(k) for k in EVENT_KEYS}
        assert event.detail == wanted
    assert "traceback" not in store.runs.events(runs["failed"].id)[-1].detail

    (group,) = store.admin.error_groups()
    assert (group.fingerprint, group.workflow, group.step, group.type, group.message) == (
        failed.error_group,
        "wf-failed",
        "fetch",
        "ValueError",
        "no row 42",
    )
    assert (group.error_class, group.occurrences, group.first_seen, group.last_seen) == (
        "permanent",
        2,
        now,
        now,
    )
    assert group.last_run_id in {runs["failed"].id, runs["failed_too"].id}

    # Only the handed-back run is ready again; the delayed one once its time has come.
    assert [x.run.id for x in claim(store, "w2")] == [runs["queued"].id]
    clock.advance(30)
    assert store.runs.promote_delayed() == 1
    assert [x.run.id for x in claim(store, "w2")] == [runs["delayed"].id]
    assert claim(store, "w2") == []


def test_a_delayed_end_without_retry_at_is_due_now(store: RunStore, clock: ManualClock) -> None:
    run = enqueue(store)
    (lease,) = claim(store)
    clock.advance(3)
    written = store.runs.write([], [End(lease=lease, state=RunState.DELAYED, reason="retry")])
    assert written.states == {run.id: RunState.DELAYED}
    got = store.runs.get_run(run.id)
    assert (got.available_at, got.attempt) == (clock.now(), 2)
    assert store.runs.promote_delayed() == 1
    assert [x.run.id for x in claim(store)] == [run.id]


# -- queued ends: pauses and lanes ---------------------------------------------------------


def test_a_queued_end_held_by_a_pause_becomes_paused_and_frees_its_lane(
    store: RunStore, clock: ManualClock
) -> None:
    held = enqueue(store, session_key="s", labels={"app": "acme"})
    free = enqueue(store, queue="other", labels={"app": "globex"})
    leases = by_run(claim(store, queues=["default", "other"]))
    behind = enqueue(store, session_key="s", labels={"app": "globex"})
    store.controls.pause("label", "acme", label="app", actor=ACTOR, reason="layout change")
    clock.advance(1)
    written = store.runs.write(
        [],
        [
            End(lease=leases[held.id], state=RunState.QUEUED, reason="stopped for a pause"),
            End(lease=leases[free.id], state=RunState.QUEUED, reason="released"),
        ],
    )
    assert written.states == {held.id: RunState.PAUSED, free.id: RunState.QUEUED}
    got = store.runs.get_run(held.id)
    assert (got.state, got.attempt, got.lease_owner) == (RunState.PAUSED, 1, None)
    assert store.runs.get_run(free.id).state is RunState.QUEUED
    last = store.runs.events(held.id)[-1]
    assert (last.state, last.reason) == (RunState.PAUSED, "stopped for a pause")
    assert store.runs.events(free.id)[-1].state is RunState.QUEUED
    # The paused run left the session's lane: the run behind it moves up; the paused one waits.
    assert {x.run.id for x in claim(store, "w2", queues=["default", "other"])} == {
        free.id,
        behind.id,
    }
    assert store.controls.resume("label", "acme", label="app", actor=ACTOR, reason="fixed") == 1
    assert store.runs.get_run(held.id).state is RunState.QUEUED


def test_queued_and_succeeded_ends_of_session_runs_free_their_lane(store: RunStore) -> None:
    first = enqueue(store, session_key="acme:okta")
    (lease,) = claim(store)
    assert lease.run.id == first.id
    urgent = enqueue(store, session_key="acme:okta", priority=5)
    assert claim(store, "w2") == [], "the session's lane is busy"

    written = store.runs.write([], [End(lease=lease, state=RunState.QUEUED, reason="handed back")])
    assert written.states == {first.id: RunState.QUEUED}
    (next_lease,) = claim(store, "w2")
    assert next_lease.run.id == urgent.id, "the lane is free and the session's best run is next"
    assert claim(store, "w3") == [], "one run of a session at a time"

    written = store.runs.write(
        [], [End(lease=next_lease, state=RunState.SUCCEEDED, reason="completed", output="1")]
    )
    assert written.states == {urgent.id: RunState.SUCCEEDED}
    (again,) = claim(store, "w3")
    assert (again.run.id, again.run.attempt) == (first.id, 1)
    assert again.token > lease.token
    store.runs.finish(again, RunState.SUCCEEDED, reason="completed", output="2")
    assert store.runs.count_by_state() == {RunState.SUCCEEDED: 2}


# -- checkpoints carried by ends -----------------------------------------------------------


def test_an_end_commits_its_checkpoint_with_it(store: RunStore, clock: ManualClock) -> None:
    run = enqueue(store)
    (lease,) = claim(store)
    clock.advance(2)
    carried = checkpoint(
        lease, 0, {"rows": 3}, started_at=clock.now() - 1, finished_at=clock.now() - 0.5
    )
    written = store.runs.write(
        [],
        [
            End(
                lease=lease,
                state=RunState.SUCCEEDED,
                reason="completed",
                output="3",
                checkpoint=carried,
            )
        ],
    )
    assert written.states == {run.id: RunState.SUCCEEDED}
    (record,) = store.runs.steps(run.id)
    assert (record.status, record.result, record.started_at, record.finished_at) == (
        StepStatus.COMPLETED,
        {"rows": 3},
        clock.now() - 1,
        clock.now() - 0.5,  # when the step completed, not when its checkpoint committed
    )
    assert store.runs.get_run(run.id).finished_at == clock.now()


def test_an_end_that_cannot_be_written_leaves_its_checkpoint_unwritten(
    store: RunStore,
) -> None:
    """One transaction: the checkpoint is written first, then the end fails: both roll back."""
    run = enqueue(store)
    (lease,) = claim(store)
    broken = End(
        lease=lease,
        state=RunState.FAILED,
        reason="failed",
        error={"type": "X", "message": "m", "bad": object()},
        checkpoint=checkpoint(lease, 0, "carried"),
    )
    with pytest.raises(NotSerializable):
        store.runs.write([checkpoint(lease, 1, "also")], [broken])
    assert store.runs.steps(run.id) == []
    assert store.runs.get_run(run.id).state is RunState.RUNNING
    assert [e.state for e in store.runs.events(run.id)] == [RunState.QUEUED, RunState.RUNNING]
    store.runs.write([], [End(lease=lease, state=RunState.SUCCEEDED, reason="ok", output="1")])
    assert store.runs.get_run(run.id).state is RunState.SUCCEEDED


def test_a_completed_step_is_never_overwritten(store: RunStore, clock: ManualClock) -> None:
    run = enqueue(store)
    (lease,) = claim(store)
    store.runs.write(
        [checkpoint(lease, 0, "first"), checkpoint(lease, 1, status=StepStatus.FAILED)], []
    )
    committed = store.runs.steps(run.id)
    clock.advance(5)
    # The same position again, also within one batch (the last write of a step wins).
    failure = {"type": "E", "message": "late"}
    store.runs.write(
        [
            checkpoint(lease, 0, "second", name="renamed"),
            checkpoint(lease, 1, status=StepStatus.FAILED, error=failure),
            checkpoint(lease, 1, "retried ok", finished_at=clock.now()),
        ],
        [],
    )
    records = store.runs.steps(run.id)
    assert records[0] == committed[0], "a completed step stays as first committed"
    assert (records[1].status, records[1].result, records[1].finished_at) == (
        StepStatus.COMPLETED,
        "retried ok",
        clock.now(),
    ), "a failed step is replaced"
    clock.advance(5)
    store.runs.write(
        [],
        [
            End(
                lease=lease,
                state=RunState.SUCCEEDED,
                reason="completed",
                output="1",
                checkpoint=checkpoint(lease, 1, "from the end"),
            )
        ],
    )
    assert store.runs.steps(run.id) == records
    assert store.runs.get_run(run.id).state is RunState.SUCCEEDED


# -- the worker's group commit -------------------------------------------------------------


async def test_writer_groups_concurrent_writes_into_few_transactions(
    store: RunStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 20
    runs = [enqueue(store, session_key=f"s{i}") for i in range(n)]
    leases = by_run(claim(store, "w1", limit=n + 5))
    assert len(leases) == n
    stale_run = runs[7]
    current = await asyncio.to_thread(
        expire_and_reclaim, store, clock, stale_run, [r for r in runs if r is not stale_run]
    )
    counting = CountingWrites(store)
    monkeypatch.setattr(store.runs, "write", counting)
    writer = RunWriter(store.runs, db)

    async def one_run(run: Run) -> RunState:
        lease = leases[run.id]
        await writer.checkpoint(checkpoint(lease, 0, run.id))
        return await writer.end(
            End(lease=lease, state=RunState.SUCCEEDED, reason="completed", output=f'"{run.id}"')
        )

    results = await asyncio.gather(*(one_run(r) for r in runs), return_exceptions=True)

    for run, result in zip(runs, results, strict=True):
        if run is stale_run:
            assert isinstance(result, LeaseLost), result
        else:
            assert result is RunState.SUCCEEDED, result
    assert 1 <= len(counting.batches) < n, "writes that fall due together share a transaction"
    assert sum(len(cps) + len(ends) for cps, ends in counting.batches) == 2 * n - 1
    # Submission order: each run's checkpoint is committed in a batch before its end.
    cp_at = {cp.lease.run.id: i for i, (cps, _) in enumerate(counting.batches) for cp in cps}
    ends_at = {e.lease.run.id: i for i, (_, ends) in enumerate(counting.batches) for e in ends}
    assert set(ends_at) == {r.id for r in runs} - {stale_run.id}
    assert all(cp_at[run_id] < i for run_id, i in ends_at.items())

    monkeypatch.undo()
    for run in runs:
        got = await asyncio.to_thread(store.runs.get_run, run.id)
        records = await asyncio.to_thread(steps_of, store, run.id)
        if run is stale_run:
            assert (got.state, got.lease_token) == (RunState.RUNNING, current.token)
            assert records == []
        else:
            assert (got.state, got.output) == (RunState.SUCCEEDED, run.id)
            assert records == [(0, "step0", StepStatus.COMPLETED, run.id)]


async def test_writer_puts_writes_handed_in_during_a_commit_into_the_next_batch(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [enqueue(store) for _ in range(6)]
    claimed = by_run(claim(store))
    leases = [claimed[r.id] for r in runs]
    counting = CountingWrites(store)
    monkeypatch.setattr(store.runs, "write", counting)
    writer = RunWriter(store.runs, db)
    # Handed in together, without yielding: one batch.
    first = [writer.checkpoint(checkpoint(lease, 0, "a")) for lease in leases[:3]]
    await asyncio.sleep(0)  # the batch is committing now
    second = [writer.checkpoint(checkpoint(lease, 0, "b")) for lease in leases[3:]]
    ends = [
        asyncio.ensure_future(
            writer.end(End(lease=lease, state=RunState.SUCCEEDED, reason="done", output="1"))
        )
        for lease in leases
    ]
    await asyncio.gather(*first, *second)
    states = await asyncio.gather(*ends)
    assert states == [RunState.SUCCEEDED] * 6
    sizes = [(len(cps), len(es)) for cps, es in counting.batches]
    assert sizes == [(3, 0), (3, 6)], sizes


def outage(store: RunStore) -> Exception:
    """The error the backend raises for a dropped connection or a locked database."""
    if isinstance(store.backend, SQLiteBackend):
        return sqlite3.OperationalError("database is locked")
    return psycopg.OperationalError("server closed the connection unexpectedly")


async def test_a_bad_write_fails_alone_and_outages_are_tried_again(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = (enqueue(store) for _ in range(3))
    leases = by_run(claim(store))
    writer = RunWriter(store.runs, db, retry_delays=(0.01, 0.01))
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    counting = CountingWrites(store)
    monkeypatch.setattr(store.runs, "write", counting)

    # A real constraint violation (steps.name is NOT NULL) fails its batch at once (trying
    # again would fail the same way); the batch is then written a write at a time, so only the
    # bad write fails. The end's task is scheduled first so that it hands its end in before
    # the batch is taken.
    end_b = asyncio.ensure_future(
        writer.end(End(lease=leases[b.id], state=RunState.SUCCEEDED, reason="done", output="1"))
    )
    good = writer.checkpoint(checkpoint(leases[a.id], 0, "a0"))
    nameless = replace(checkpoint(leases[c.id], 0, "c0"), name=None)  # type: ignore[arg-type]
    bad = writer.checkpoint(nameless)
    await good
    assert await end_b is RunState.SUCCEEDED
    with pytest.raises(Exception) as raised:
        await bad
    assert not isinstance(raised.value, LeaseLost)
    assert not store.backend.is_transient(raised.value)
    assert [(len(cps), len(es)) for cps, es in counting.batches] == [
        (2, 1),
        (1, 0),
        (1, 0),
        (0, 1),
    ]
    assert await asyncio.to_thread(steps_of, store, a.id) == [
        (0, "step0", StepStatus.COMPLETED, "a0")
    ]
    assert await asyncio.to_thread(store.runs.steps, c.id) == []

    # An outage shorter than the tries: the batch commits at its second try.
    counting = CountingWrites(store, [outage(store)])
    monkeypatch.setattr(store.runs, "write", counting)
    await writer.checkpoint(checkpoint(leases[c.id], 0, "c0"))
    assert [(len(cps), len(es)) for cps, es in counting.batches] == [(1, 0)] * 2
    assert await asyncio.to_thread(steps_of, store, c.id) == [
        (0, "step0", StepStatus.COMPLETED, "c0")
    ]

    # An outage longer than the tries: that batch fails, the next one commits.
    counting = CountingWrites(store, [outage(store)] * 3)
    monkeypatch.setattr(store.runs, "write", counting)
    ended = asyncio.ensure_future(
        writer.end(End(lease=leases[a.id], state=RunState.SUCCEEDED, reason="done", output="1"))
    )
    unawaited = writer.checkpoint(checkpoint(leases[c.id], 1, "c1"))
    while not (ended.done() and unawaited.done()):
        await asyncio.sleep(0.01)
    failure = ended.exception()
    assert failure is not None and store.backend.is_transient(failure)
    assert [(len(cps), len(es)) for cps, es in counting.batches] == [(1, 1)] * 3
    # Nobody awaits the checkpoint (its run's end would carry it): no "never retrieved" report.
    collected = weakref.ref(unawaited)
    del ended, unawaited, failure, bad, raised
    gc.collect()
    await asyncio.sleep(0)
    assert unhandled == [], "a failed checkpoint nobody awaits must not be reported"
    assert collected() is None, "the check above only means something once it is collected"

    done = [
        writer.end(End(lease=leases[r.id], state=RunState.SUCCEEDED, reason="done", output="1"))
        for r in (a, c)
    ]
    assert await asyncio.gather(*done) == [RunState.SUCCEEDED] * 2
    assert len(counting.batches) == 4
    monkeypatch.undo()
    assert store.runs.count_by_state() == {RunState.SUCCEEDED: 3}


async def test_an_end_whose_commit_was_not_acknowledged_is_not_reported_lost(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = enqueue(store)
    (lease,) = claim(store)
    real = store.runs.write
    calls: list[int] = []

    def commit_then_lose_the_answer(
        checkpoints: Sequence[Checkpoint], ends: Sequence[End]
    ) -> Written:
        calls.append(len(ends))
        written = real(checkpoints, ends)
        if len(calls) == 1:  # committed, but the connection drops before the reply
            raise outage(store)
        return written

    monkeypatch.setattr(store.runs, "write", commit_then_lose_the_answer)
    writer = RunWriter(store.runs, db, retry_delays=(0.01,))
    end = End(lease=lease, state=RunState.SUCCEEDED, reason="done", output="1")
    assert await writer.end(end) is RunState.SUCCEEDED
    assert calls == [1, 1], "tried again, and refused: the run is no longer leased"
    assert store.runs.get_run(run.id).state is RunState.SUCCEEDED


async def test_a_refused_checkpoint_nobody_awaits_is_not_reported(
    store: RunStore, clock: ManualClock
) -> None:
    run = enqueue(store)
    (old,) = claim(store, "w1")
    await asyncio.to_thread(expire_and_reclaim, store, clock, run, [])
    unhandled: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _l, ctx: unhandled.append(ctx))
    writer = RunWriter(store.runs, db)
    # As the worker does at a run's end: the last checkpoint is also carried by the end.
    carried = checkpoint(old, 0, "last")
    unawaited = writer.checkpoint(carried)
    with pytest.raises(LeaseLost):
        await writer.end(
            End(lease=old, state=RunState.SUCCEEDED, reason="done", output="1", checkpoint=carried)
        )
    assert unawaited.done()
    collected = weakref.ref(unawaited)
    del unawaited
    gc.collect()
    await asyncio.sleep(0)
    assert [c.get("message") for c in unhandled] == []
    assert collected() is None, "the check above only means something once it is collected"


# -- through a worker ----------------------------------------------------------------------


async def test_a_step_starts_only_once_the_one_before_is_committed(db_url: str) -> None:
    app = fast_app(db_url)
    counting = CountingWrites(app.store)
    app.store.runs.write = counting  # type: ignore[method-assign]
    seen: dict[str, dict[int, list[int]]] = {}

    async def committed(run_id: str) -> list[int]:
        steps = await asyncio.to_thread(app.store.runs.steps, run_id)
        return [s.position for s in steps if s.status is StepStatus.COMPLETED]

    @step(name="first")
    async def first(ctx: RunContext) -> int:
        seen.setdefault(ctx.run_id, {})[0] = await committed(ctx.run_id)
        return 1

    @step(name="second")
    async def second(ctx: RunContext, x: int) -> int:
        seen[ctx.run_id][1] = await committed(ctx.run_id)
        return x + 1

    @step(name="third")
    async def third(ctx: RunContext, x: int) -> int:
        seen[ctx.run_id][2] = await committed(ctx.run_id)
        return x + 1

    @app.workflow(name="chain")
    async def chain(ctx: RunContext) -> int:
        return await third(ctx, await second(ctx, await first(ctx)))

    try:
        async with worker_running(app, concurrency=4):
            runs = [await app.enqueue("chain") for _ in range(4)]
            done = await wait_for_states(app.store, [r.id for r in runs])
        assert [r.state for r in done] == [RunState.SUCCEEDED] * 4
        assert [r.output for r in done] == [3] * 4
        # Each step saw every step before it committed when it started.
        assert seen == {r.id: {0: [], 1: [0], 2: [0, 1]} for r in runs}
        for r in done:
            records = await asyncio.to_thread(app.store.runs.steps, r.id)
            assert [(s.position, s.name, s.result) for s in records] == [
                (0, "first", 1),
                (1, "second", 2),
                (2, "third", 3),
            ]
            assert all(s.status is StepStatus.COMPLETED for s in records)
            assert all(s.finished_at <= r.finished_at for s in records if r.finished_at)
        # The last step's record is committed no later than its run's end (or with it).
        for r in done:
            (end_batch,) = [
                i
                for i, (_, ends) in enumerate(counting.batches)
                for e in ends
                if e.lease.run.id == r.id
            ]
            carried = [
                e.checkpoint.position
                for e in counting.batches[end_batch][1]
                if e.lease.run.id == r.id and e.checkpoint is not None
            ]
            before = [
                cp.position
                for cps, _ in counting.batches[: end_batch + 1]
                for cp in cps
                if cp.lease.run.id == r.id
            ]
            assert 2 in carried + before
    finally:
        app.close()


async def test_a_run_keeps_its_lease_while_its_end_waits_for_the_database(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = fast_app(db_url)  # leases of 1 s, renewed every 0.2 s
    try:

        @app.workflow(name="writes.one")
        async def one(ctx: RunContext) -> int:
            return 1

        real = app.store.runs.write

        def slow_ends(checkpoints: Sequence[Checkpoint], ends: Sequence[End]) -> Written:
            if ends:
                time.sleep(2.5)  # the database answers after more than a lease
            return real(checkpoints, ends)

        monkeypatch.setattr(app.store.runs, "write", slow_ends)
        run = await app.enqueue("writes.one")
        async with worker_running(app) as worker:
            (done,) = await wait_for_states(app.store, [run.id])
        assert (done.state, done.output, done.stalls) == (RunState.SUCCEEDED, 1, 0)
        assert (worker.stats.succeeded, worker.stats.lost) == (1, 0)
    finally:
        app.close()


# -- lanes under concurrent moves ----------------------------------------------------------


def _waiting_on_locks(url: str, n: int) -> None:
    """Until `n` other sessions of the database wait for a lock."""
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            (waiting,) = conn.execute(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            ).fetchone()  # type: ignore[misc]
            if waiting >= n:
                return
            time.sleep(0.01)
    raise AssertionError(f"{n} sessions never waited for a lock")


@pytest.mark.postgres
def test_an_end_racing_a_new_run_of_its_lane_leaves_the_new_run_startable(
    pg_url: str, clock: ManualClock
) -> None:
    """The end of a session's run recomputes its lane's head. Were that computed before the end
    waited for the lane (locked by an enqueue offering its new run), it would not see the new
    run, and the lane would stay headless with the run queued: never claimed."""
    from greenroom.storage import open_store

    store = open_store(pg_url, clock=clock)
    try:
        first = enqueue(store, session_key="acme:okta")
        (lease,) = claim(store)
        with psycopg.connect(pg_url) as blocker:
            # The enqueue offers its run to the lane, then waits for the tenant's row.
            blocker.execute("SELECT 1 FROM tenants WHERE name = %s FOR UPDATE", (first.tenant,))
            with ThreadPoolExecutor(2) as pool:
                enqueued = pool.submit(enqueue, store, session_key="acme:okta")
                _waiting_on_locks(pg_url, 1)
                ended = pool.submit(
                    store.runs.finish, lease, RunState.SUCCEEDED, reason="completed"
                )
                _waiting_on_locks(pg_url, 2)  # the end waits for the lane the enqueue holds
                blocker.commit()
                second = enqueued.result(timeout=10)
                assert ended.result(timeout=10) is RunState.SUCCEEDED
        (started,) = claim(store, "w2")
        assert started.run.id == second.id
    finally:
        store.backend.close()
