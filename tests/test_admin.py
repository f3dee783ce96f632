"""The admin retry framework on SQLite and PostgreSQL: retry from the failed step or from
scratch, bulk retry by filter, the audit log, error diagnostics and retention."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import fast_app, wait_for_states, worker_running

from greenroom import (
    App,
    InvalidInput,
    ManualClock,
    NotFound,
    PermanentError,
    RetryPolicy,
    RunContext,
    RunState,
    StepStatus,
    TransientError,
    step,
)
from greenroom.failures import ErrorClass, classify, describe_error
from greenroom.model import Lease, NewRun, Run
from greenroom.storage import RunFilter, RunStore

ACTOR = "admin@example.com"
ONCE = RetryPolicy(max_attempts=1)


class HttpError(Exception):
    def __init__(self, status_code: int, message: str = "http error") -> None:
        super().__init__(f"{message} ({status_code})")
        self.status_code = status_code


# -- retry of real runs (in-process worker) -------------------------------------------------

EXECUTED: Counter[str] = Counter()
BROKEN = {"apply": True}


@step(retry=ONCE)
async def login(user: str) -> str:
    EXECUTED["login"] += 1
    return f"token-for-{user}"


@step(retry=ONCE)
async def fetch(token: str) -> list[int]:
    EXECUTED["fetch"] += 1
    return [1, 2, 3]


@step(retry=ONCE)
async def apply(users: list[int], mode: str) -> int:
    EXECUTED["apply"] += 1
    if mode != "good" or BROKEN["apply"]:
        raise PermanentError(f"cannot apply in mode {mode}: layout changed")
    return len(users)


@pytest.fixture
def app(db_url: str) -> Iterator[App]:
    EXECUTED.clear()
    BROKEN["apply"] = True
    a = fast_app(db_url)

    @a.workflow(name="sync")
    async def sync(ctx: RunContext, user: str, mode: str = "good") -> dict[str, Any]:
        token = await login(user)
        users = await fetch(token)
        return {"token": token, "applied": await apply(users, mode)}

    yield a
    a.close()


async def run_once(app: App, run_id: str) -> Run:
    async with worker_running(app):
        (done,) = await wait_for_states(app.store, [run_id])
    return done


async def failed_sync(app: App, **input: Any) -> Run:
    run = await app.enqueue("sync", {"user": "ann", **input})
    failed = await run_once(app, run.id)
    assert failed.state is RunState.FAILED
    assert failed.error is not None and failed.error["step"] == "apply"
    return failed


async def test_retry_from_the_failed_step_keeps_completed_steps(app: App) -> None:
    old = await failed_sync(app)
    assert EXECUTED == {"login": 1, "fetch": 1, "apply": 1}
    BROKEN["apply"] = False
    new = app.store.admin.retry_run(old.id, actor=ACTOR, reason="connector fixed")
    assert new.retry_of == old.id and new.state is RunState.QUEUED and new.id != old.id
    assert [(s.name, s.status) for s in app.store.runs.steps(new.id)] == [
        ("login", StepStatus.COMPLETED),
        ("fetch", StepStatus.COMPLETED),
    ]
    done = await run_once(app, new.id)
    assert done.state is RunState.SUCCEEDED
    assert done.output == {"token": "token-for-ann", "applied": 3}
    assert EXECUTED == {"login": 1, "fetch": 1, "apply": 2}, "completed steps did not run again"
    last = app.store.runs.events(old.id)[-1]
    assert last.state is RunState.FAILED and "retried" in last.reason and new.id in last.reason
    assert app.store.runs.get_run(old.id).state is RunState.FAILED


async def test_retry_from_scratch_runs_every_step_again(app: App) -> None:
    old = await failed_sync(app)
    BROKEN["apply"] = False
    new = app.store.admin.retry_run(old.id, actor=ACTOR, reason="redo", from_scratch=True)
    assert app.store.runs.steps(new.id) == []
    assert (await run_once(app, new.id)).state is RunState.SUCCEEDED
    assert EXECUTED == {"login": 2, "fetch": 2, "apply": 2}


async def test_retry_with_edited_input(app: App) -> None:
    BROKEN["apply"] = False
    old = await failed_sync(app, mode="bad")
    new = app.store.admin.retry_run(
        old.id, actor=ACTOR, reason="typo in mode", input={"user": "ann", "mode": "good"}
    )
    assert new.input == {"user": "ann", "mode": "good"}
    assert app.store.runs.get_run(old.id).input == {"user": "ann", "mode": "bad"}
    done = await run_once(app, new.id)
    assert done.state is RunState.SUCCEEDED
    assert EXECUTED == {"login": 1, "fetch": 1, "apply": 2}
    with pytest.raises(InvalidInput, match="JSON object"):
        app.store.admin.retry_run(old.id, actor=ACTOR, reason="bad", input=[1])  # type: ignore[arg-type]


async def test_a_retry_of_a_retry_links_the_chain(app: App) -> None:
    first = await failed_sync(app)
    second = app.store.admin.retry_run(first.id, actor=ACTOR, reason="try again")
    assert (await run_once(app, second.id)).state is RunState.FAILED
    BROKEN["apply"] = False
    third = app.store.admin.retry_run(second.id, actor=ACTOR, reason="fixed now")
    assert third.retry_of == second.id
    assert (await run_once(app, third.id)).state is RunState.SUCCEEDED
    assert EXECUTED == {"login": 1, "fetch": 1, "apply": 3}


# -- store-level admin (manual clock) --------------------------------------------------------


def enqueue(store: RunStore, workflow: str = "sync", **kw: Any) -> Run:
    return store.runs.enqueue(NewRun(workflow=workflow, **kw))[0]


def lease_of(store: RunStore, run: Run) -> Lease:
    (lease,) = store.runs.claim("w1", [run.queue], 1, 30.0)
    assert lease.run.id == run.id
    return lease


def save(store: RunStore, lease: Lease, position: int, name: str, error: Any = None) -> None:
    store.runs.save_step(
        lease,
        position=position,
        name=name,
        status=StepStatus.COMPLETED if error is None else StepStatus.FAILED,
        result=None if error is not None else json.dumps(position),
        error=error,
        attempts=1,
        started_at=store.clock.now(),
    )


def fail(
    store: RunStore,
    done: list[str],
    failing: str | None,
    exc: Exception,
    **kw: Any,
) -> Run:
    """A run that completed the steps `done`, then failed in step `failing` with `exc`."""
    run = enqueue(store, **kw)
    lease = lease_of(store, run)
    for position, name in enumerate(done):
        save(store, lease, position, name)
    error = describe_error(exc, step=failing, attempt=1)
    if failing is not None:
        save(store, lease, len(done), failing, error)
    store.runs.finish(lease, RunState.FAILED, reason="failed", error=error)
    return store.runs.get_run(run.id)


def test_only_failed_or_cancelled_runs_can_be_retried(store: RunStore) -> None:
    queued = enqueue(store)
    with pytest.raises(InvalidInput, match="queued"):
        store.admin.retry_run(queued.id, actor=ACTOR, reason="r")
    lease = lease_of(store, queued)
    with pytest.raises(InvalidInput, match="running"):
        store.admin.retry_run(queued.id, actor=ACTOR, reason="r")
    store.runs.finish(lease, RunState.SUCCEEDED, reason="done", output="1")
    with pytest.raises(InvalidInput, match="succeeded"):
        store.admin.retry_run(queued.id, actor=ACTOR, reason="r")
    cancelled = enqueue(store)
    store.runs.cancel(cancelled.id, actor=ACTOR, reason="not needed")
    again = store.admin.retry_run(cancelled.id, actor=ACTOR, reason="needed after all")
    assert again.retry_of == cancelled.id and again.state is RunState.QUEUED
    assert [a.action for a in store.admin.audit_log()] == ["retry", "cancel"]


def test_retry_is_tenant_scoped_and_needs_a_reason(store: RunStore) -> None:
    run = fail(store, ["login"], "fetch", ValueError("boom"), tenant="t1")
    with pytest.raises(NotFound):
        store.admin.retry_run(run.id, tenant="t2", actor=ACTOR, reason="not mine")
    with pytest.raises(NotFound):
        store.admin.retry_run("no-such-run", actor=ACTOR, reason="r")
    with pytest.raises(InvalidInput, match="reason"):
        store.admin.retry_run(run.id, tenant="t1", actor=ACTOR, reason="  ")
    assert store.admin.audit_log() == []
    new = store.admin.retry_run(run.id, tenant="t1", actor=ACTOR, reason="mine")
    assert new.tenant == "t1" and new.retry_of == run.id


@pytest.fixture
def failures(store: RunStore, clock: ManualClock) -> dict[str, Run]:
    """Runs that failed in different ways at different times, and some that did not fail."""
    layout = "row 3 of table #users not found"
    runs = {
        "acme_1": fail(
            store, ["login"], "fetch", LookupError(layout), labels={"app": "acme"}, tenant="t1"
        ),
    }
    clock.advance(10)
    runs["acme_2"] = fail(
        store,
        ["login"],
        "fetch",
        LookupError("row 17 of table #users not found"),
        labels={"app": "acme"},
        tenant="t1",
    )
    runs["globex"] = fail(
        store, [], "login", HttpError(401, "bad password"), workflow="report", tenant="t1"
    )
    clock.advance(1000)
    runs["late"] = fail(store, ["login", "fetch"], "apply", ValueError("late"), tenant="t1")
    runs["other_tenant"] = fail(store, ["login"], "fetch", LookupError(layout), tenant="t2")
    ok = enqueue(store, tenant="t1")
    store.runs.finish(lease_of(store, ok), RunState.SUCCEEDED, reason="done", output="1")
    runs["succeeded"] = ok
    return runs


def test_bulk_retry_dry_run_reports_and_changes_nothing(
    store: RunStore, failures: dict[str, Run], clock: ManualClock
) -> None:
    before = store.runs.count_by_state()
    audited = len(store.admin.audit_log())
    plan = store.admin.retry_where(
        RunFilter(tenant="t1", workflow="sync"), actor=ACTOR, reason="layout fix"
    )
    assert plan.dry_run and plan.new_runs == []
    assert plan.matched == 3
    assert plan.rerun_from == {"fetch": 2, "apply": 1}
    scratch = store.admin.retry_where(
        RunFilter(tenant="t1"), actor=ACTOR, reason="all", from_scratch=True
    )
    assert scratch.matched == 4 and scratch.rerun_from == {"(from scratch)": 4}
    assert store.runs.count_by_state() == before
    assert len(store.admin.audit_log()) == audited
    assert {r.retry_of for r in store.runs.list_runs(RunFilter(limit=100))} == {None}


def test_bulk_retry_filters(store: RunStore, failures: dict[str, Run], clock: ManualClock) -> None:
    def matched(run_filter: RunFilter) -> int:
        return store.admin.retry_where(run_filter, actor=ACTOR, reason="check").matched

    group = failures["acme_1"].error_group
    assert group is not None and group == failures["acme_2"].error_group
    assert matched(RunFilter(label=("app", "acme"))) == 2
    assert matched(RunFilter(error_group=group, tenant="t1")) == 2
    assert matched(RunFilter(error_group=group)) == 3, "the other tenant's run is in its group"
    assert matched(RunFilter(workflow="report")) == 1
    assert matched(RunFilter(queue="default", tenant="t2")) == 1
    start = failures["acme_1"].finished_at
    assert start is not None
    window = RunFilter(tenant="t1", finished_after=start, finished_before=start + 500)
    assert matched(window) == 3
    assert matched(RunFilter(finished_after=clock.now() + 1)) == 0
    with pytest.raises(InvalidInput, match="failed or cancelled"):
        store.admin.retry_where(RunFilter(states=[RunState.SUCCEEDED]), actor=ACTOR, reason="no")
    with pytest.raises(InvalidInput, match="reason"):
        store.admin.retry_where(RunFilter(), actor=ACTOR, reason="")


def test_bulk_retry_creates_linked_runs_from_their_failed_steps(
    store: RunStore, failures: dict[str, Run]
) -> None:
    acme_t1 = RunFilter(tenant="t1", label=("app", "acme"))
    done = store.admin.retry_where(acme_t1, actor=ACTOR, reason="layout fixed", dry_run=False)
    assert not done.dry_run and done.matched == 2 and done.rerun_from == {"fetch": 2}
    new = [store.runs.get_run(i) for i in done.new_runs]
    assert {r.retry_of for r in new} == {failures["acme_1"].id, failures["acme_2"].id}
    assert {r.state for r in new} == {RunState.QUEUED}
    assert {r.labels["app"] for r in new} == {"acme"}
    for run in new:
        assert [(s.name, s.status) for s in store.runs.steps(run.id)] == [
            ("login", StepStatus.COMPLETED)
        ]
    actions = [(a.action, a.actor, a.reason) for a in store.admin.audit_log()]
    assert actions[0] == ("retry.bulk", ACTOR, "layout fixed")
    assert actions[1:3] == [("retry", ACTOR, "layout fixed")] * 2
    assert store.admin.audit_log()[0].detail["filter"]["label"] == ["app", "acme"]
    again = store.admin.retry_where(acme_t1, actor=ACTOR, reason="dry", dry_run=True)
    assert (again.matched, again.skipped_superseded) == (0, 2), "their retries stand for them"
    assert {store.runs.get_run(r.id).superseded_by for r in new} == {None}
    assert {
        store.runs.get_run(i).superseded_by for i in (failures["acme_1"].id, failures["acme_2"].id)
    } == set(done.new_runs)


def test_every_admin_action_lands_in_the_audit_log(store: RunStore, clock: ManualClock) -> None:
    failed = fail(store, ["login"], "fetch", ValueError("x"), tenant="t1")
    waiting = enqueue(store, tenant="t1")
    actions: list[tuple[str, Any]] = [
        ("cancel", lambda **kw: store.runs.cancel(waiting.id, **kw)),
        ("pause", lambda **kw: store.controls.pause("queue", "default", tenant="t1", **kw)),
        ("resume", lambda **kw: store.controls.resume("queue", "default", tenant="t1", **kw)),
        ("retry", lambda **kw: store.admin.retry_run(failed.id, **kw)),
        ("retry.bulk", lambda **kw: store.admin.retry_where(RunFilter(), dry_run=False, **kw)),
        ("queue.set", lambda **kw: store.controls.set_queue("default", concurrency=2, **kw)),
        ("tenant.set", lambda **kw: store.controls.set_tenant("t1", weight=2.0, **kw)),
    ]
    for _, act in actions:
        with pytest.raises(InvalidInput, match="reason"):
            act(actor="mallory", reason="")
    assert store.admin.audit_log() == [], "an action without a reason is refused before it acts"
    assert store.runs.get_run(waiting.id).state is RunState.QUEUED
    for i, (name, act) in enumerate(actions):
        clock.advance(1)
        act(actor=f"user{i}", reason=f"because {name}")
    log = list(reversed(store.admin.audit_log()))
    assert [e.action for e in log] == [
        "cancel",
        "pause",
        "resume",
        "retry",
        "retry.bulk",  # it retried nothing: the failed run was retried already
        "queue.set",
        "tenant.set",
    ]
    by_action = {e.action: e for e in log}
    assert by_action["cancel"].target == f"run {waiting.id}"
    assert by_action["cancel"].actor == "user0" and by_action["cancel"].reason == "because cancel"
    assert by_action["retry"].target == f"run {failed.id}"
    assert by_action["retry.bulk"].detail["skipped_superseded"] == 1
    assert "default" in by_action["pause"].target and "t1" in by_action["pause"].target
    assert by_action["queue.set"].target == "queue default"
    assert by_action["queue.set"].detail == {"concurrency": 2}
    assert by_action["tenant.set"].target == "tenant t1"
    assert [e.at for e in log] == sorted(e.at for e in log)
    assert log[0].at == clock.now() - 6
    assert {e.tenant for e in store.admin.audit_log(tenant="t1")} == {"t1"}


# -- error diagnostics -----------------------------------------------------------------------


class StatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def test_errors_are_classified() -> None:
    assert classify(TimeoutError()) is ErrorClass.TRANSIENT
    assert classify(ConnectionResetError()) is ErrorClass.TRANSIENT
    assert classify(HttpError(503)) is ErrorClass.TRANSIENT
    assert classify(StatusError(502)) is ErrorClass.TRANSIENT
    assert classify(HttpError(429)) is ErrorClass.TRANSIENT
    assert classify(TransientError("flaky page")) is ErrorClass.TRANSIENT
    assert classify(PermanentError("bad credentials")) is ErrorClass.PERMANENT
    assert classify(HttpError(401)) is ErrorClass.PERMANENT
    assert classify(HttpError(404)) is ErrorClass.PERMANENT
    assert classify(ValueError("?")) is ErrorClass.UNKNOWN
    assert classify(HttpError(302)) is ErrorClass.UNKNOWN


def test_retry_policies_do_not_retry_permanent_errors_by_default() -> None:
    policy = RetryPolicy(max_attempts=5)
    assert not policy.should_retry(PermanentError("auth"), 1)
    assert not policy.should_retry(HttpError(403), 1)
    assert policy.should_retry(HttpError(500), 1)
    assert policy.should_retry(TimeoutError(), 1)
    assert policy.should_retry(ValueError("?"), 1)
    assert not policy.should_retry(TimeoutError(), 5)
    strict = RetryPolicy(max_attempts=5, retry_classes=frozenset({"transient"}))
    assert not strict.should_retry(ValueError("?"), 1)
    assert strict.should_retry(ConnectionError(), 1)


async def test_workflow_retries_skip_permanent_errors(db_url: str) -> None:
    app = fast_app(db_url)
    calls: Counter[int] = Counter()

    @app.workflow(name="call", retry=RetryPolicy(max_attempts=3, initial_delay=0.01))
    async def call(ctx: RunContext, status: int) -> str:
        calls[status] += 1
        if ctx.attempt == 1:
            raise HttpError(status)
        return "ok"

    try:
        async with worker_running(app):
            runs = [await app.enqueue("call", {"status": s}) for s in (401, 503)]
            auth, server = await wait_for_states(app.store, [r.id for r in runs])
        assert auth.state is RunState.FAILED and auth.attempt == 1
        assert auth.error is not None and auth.error["class"] == "permanent"
        assert server.state is RunState.SUCCEEDED and server.attempt == 2
        assert calls == {401: 1, 503: 2}
    finally:
        app.close()


def test_failures_group_by_fingerprint_with_counts_and_times(
    store: RunStore, clock: ManualClock
) -> None:
    first = fail(store, [], "fetch", LookupError("user 1234 not found (req a1b2c3d4e5f6a7b8)"))
    clock.advance(30)
    second = fail(store, [], "fetch", LookupError("user 98 not found (req 0f0e0d0c0b0a09080706)"))
    clock.advance(30)
    other_step = fail(store, [], "login", LookupError("user 5 not found"))
    other_type = fail(store, [], "fetch", KeyError("user 5 not found"))
    assert first.error_group is not None and first.error_group == second.error_group
    groups = {g.fingerprint: g for g in store.admin.error_groups()}
    assert len(groups) == 3
    assert {other_step.error_group, other_type.error_group} <= set(groups)
    grouped = groups[first.error_group]
    assert grouped.occurrences == 2
    assert grouped.first_seen == clock.now() - 60 and grouped.last_seen == clock.now() - 30
    assert grouped.step == "fetch" and grouped.type == "LookupError"
    assert grouped.last_run_id == second.id and grouped.error_class == "unknown"
    assert groups[other_step.error_group].occurrences == 1
    listed = store.runs.list_runs(RunFilter(error_group=first.error_group))
    assert {r.id for r in listed} == {first.id, second.id}
    assert store.admin.error_groups(tenant="someone-else") == []


# -- retention -------------------------------------------------------------------------------


def test_prune_deletes_old_finished_runs_in_batches_and_keeps_the_rest(
    store: RunStore, clock: ManualClock
) -> None:
    old = [fail(store, ["login"], "fetch", ValueError("old")) for _ in range(5)]
    cancelled = enqueue(store)
    store.runs.cancel(cancelled.id, actor=ACTOR, reason="old")
    old.append(cancelled)
    old_waiting = enqueue(store, queue="idle")
    old_running = enqueue(store, queue="busy")
    lease_of(store, old_running)
    old_delayed = enqueue(store, available_at=clock.now() + 10_000)
    store.controls.pause("queue", "held", actor=ACTOR, reason="keep")
    old_paused = enqueue(store, queue="held")
    clock.advance(40 * 86400)
    recent = fail(store, ["login"], "fetch", ValueError("recent"))
    clock.advance(86400)
    assert store.admin.prune(older_than=30 * 86400, batch=2) == 6
    for run in old:
        with pytest.raises(NotFound):
            store.runs.get_run(run.id)
        assert store.runs.steps(run.id) == [] and store.runs.events(run.id) == []
    kept = [recent, old_waiting, old_running, old_delayed, old_paused]
    assert [store.runs.get_run(r.id).state for r in kept] == [
        RunState.FAILED,
        RunState.QUEUED,
        RunState.RUNNING,
        RunState.DELAYED,
        RunState.PAUSED,
    ]
    assert len(store.runs.steps(recent.id)) == 2 and store.runs.events(recent.id) != []
    assert store.admin.prune(older_than=30 * 86400) == 0


def test_prune_by_state(store: RunStore, clock: ManualClock) -> None:
    failed = fail(store, [], "login", ValueError("x"))
    ok = enqueue(store)
    store.runs.finish(lease_of(store, ok), RunState.SUCCEEDED, reason="done", output="1")
    clock.advance(100)
    assert store.admin.prune(older_than=10, states=[RunState.SUCCEEDED]) == 1
    assert store.runs.get_run(failed.id).state is RunState.FAILED
    with pytest.raises(NotFound):
        store.runs.get_run(ok.id)
    with pytest.raises(InvalidInput, match="finished"):
        store.admin.prune(older_than=10, states=[RunState.QUEUED])
    with pytest.raises(InvalidInput, match="negative"):
        store.admin.prune(older_than=-1)
