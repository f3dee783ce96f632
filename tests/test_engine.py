"""App + Worker in one process, on SQLite and PostgreSQL: steps, replay, retries, timeouts,
cancellation, session serialization and graceful shutdown."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import fast_app, wait_for_states, worker_running

from greenroom import (
    App,
    PermanentError,
    RetryPolicy,
    Run,
    RunContext,
    RunState,
    StepStatus,
    step,
)
from greenroom.model import NewRun
from greenroom.worker.active import StopReason

QUICK = RetryPolicy(max_attempts=1)


@pytest.fixture
def app(db_url: str) -> Iterator[App]:
    a = fast_app(db_url)
    yield a
    a.close()


async def run_to_end(
    app: App, workflow: str, input: dict[str, Any] | None = None, **kw: Any
) -> Run:
    """Enqueue one run, serve it with a worker, and return the finished run."""
    async with worker_running(app, **kw):
        run = await app.enqueue(workflow, input or {})
        (done,) = await wait_for_states(app.store, [run.id])
    return done


async def seed_steps(app: App, run_id: str, steps: list[tuple[str, Any]]) -> None:
    """Checkpoint steps for a run as another worker would have, then hand the run back."""
    store = app.store
    (lease,) = await asyncio.to_thread(store.runs.claim, "earlier-worker", ["default"], 1, 10.0)
    assert lease.run.id == run_id
    for position, (name, result) in enumerate(steps):
        await asyncio.to_thread(
            store.runs.save_step,
            lease,
            position=position,
            name=name,
            status=StepStatus.COMPLETED,
            result=json.dumps(result),
            error=None,
            attempts=1,
            started_at=store.clock.now(),
        )
    await asyncio.to_thread(store.runs.finish, lease, RunState.QUEUED, reason="worker went away")


# -- steps and replay ----------------------------------------------------------------------


async def test_multi_step_workflow_succeeds_and_stores_step_results(app: App) -> None:
    seen: dict[str, Any] = {}

    @step(name="double")
    async def double(x: int) -> int:
        return 2 * x

    @step(name="describe")
    async def describe(a: int, b: int) -> dict[str, int]:
        return {"a": a, "b": b}

    @app.workflow(name="math")
    async def math(ctx: RunContext, n: int) -> dict[str, Any]:
        seen.update(run_id=ctx.run_id, attempt=ctx.attempt, tenant=ctx.tenant)
        a = await double(n)
        b = await double(a)
        return await describe(a, b)

    done = await run_to_end(app, "math", {"n": 3})
    assert done.state is RunState.SUCCEEDED
    assert done.output == {"a": 6, "b": 12}
    assert seen == {"run_id": done.id, "attempt": 1, "tenant": "default"}
    steps = await asyncio.to_thread(app.store.runs.steps, done.id)
    assert [(s.position, s.name, s.status, s.result) for s in steps] == [
        (0, "double", StepStatus.COMPLETED, 6),
        (1, "double", StepStatus.COMPLETED, 12),
        (2, "describe", StepStatus.COMPLETED, {"a": 6, "b": 12}),
    ]
    assert done.started_at is not None and done.finished_at is not None
    events = await asyncio.to_thread(app.store.runs.events, done.id)
    assert [e.state for e in events] == [RunState.QUEUED, RunState.RUNNING, RunState.SUCCEEDED]


async def test_retried_run_replays_completed_steps_without_executing_them(app: App) -> None:
    executions: Counter[str] = Counter()

    @step(name="login")
    async def login() -> str:
        executions["login"] += 1
        return secrets.token_hex(4)  # a different value on every execution

    @step(name="fetch", retry=QUICK)
    async def fetch() -> int:
        executions["fetch"] += 1
        if executions["fetch"] == 1:
            raise ConnectionError("page did not load")
        return 42

    @step(name="save")
    async def save(token: str, n: int) -> str:
        executions["save"] += 1
        return f"{token}:{n}"

    @app.workflow(name="sync", retry=RetryPolicy(max_attempts=2, initial_delay=0.05, jitter=0))
    async def sync(ctx: RunContext) -> str:
        token = await login()
        return await save(token, await fetch())

    done = await run_to_end(app, "sync")
    assert done.state is RunState.SUCCEEDED and done.attempt == 2
    assert executions == {"login": 1, "fetch": 2, "save": 1}
    steps = await asyncio.to_thread(app.store.runs.steps, done.id)
    assert done.output == f"{steps[0].result}:42"


async def test_resumed_run_takes_checkpointed_results_from_storage(app: App) -> None:
    executions: Counter[str] = Counter()

    @step(name="login")
    async def login() -> str:
        executions["login"] += 1
        return "fresh"

    @step(name="fetch")
    async def fetch(who: str) -> list[str]:
        executions["fetch"] += 1
        return [who, "bob"]

    @app.workflow(name="sync")
    async def sync(ctx: RunContext) -> list[str]:
        return await fetch(await login())

    run = await app.enqueue("sync")
    await seed_steps(app, run.id, [("login", "from-storage")])
    async with worker_running(app):
        (done,) = await wait_for_states(app.store, [run.id])
    assert done.state is RunState.SUCCEEDED
    assert done.output == ["from-storage", "bob"]
    assert executions == {"fetch": 1}


async def test_steps_called_in_another_order_fail_the_run(app: App) -> None:
    executions: Counter[str] = Counter()

    @step(name="fetch")
    async def fetch() -> int:
        executions["fetch"] += 1
        return 1

    @app.workflow(name="sync", retry=RetryPolicy(max_attempts=3, initial_delay=0.01))
    async def sync(ctx: RunContext) -> int:
        return await fetch()

    run = await app.enqueue("sync")
    await seed_steps(app, run.id, [("login", "ok")])
    async with worker_running(app):
        (done,) = await wait_for_states(app.store, [run.id])
    assert done.state is RunState.FAILED
    assert done.attempt == 1, "non-determinism is not retried"
    assert done.error is not None and done.error["type"] == "NonDeterminismError"
    assert "'login'" in done.error["message"] and "'fetch'" in done.error["message"]
    assert executions == {}


async def test_non_json_step_result_fails_the_step_clearly(app: App) -> None:
    executions: Counter[str] = Counter()

    @step(name="stamp")
    async def stamp() -> dict[str, Any]:
        executions["stamp"] += 1
        return {"when": dt.datetime(2024, 1, 1)}

    @app.workflow(name="wf")
    async def wf(ctx: RunContext) -> None:
        await stamp()

    done = await run_to_end(app, "wf")
    assert done.state is RunState.FAILED
    assert done.error is not None and done.error["type"] == "NotSerializable"
    assert "result of step 'stamp' is not JSON-serializable" in done.error["message"]
    assert done.error["step"] == "stamp"
    assert executions["stamp"] == 1, "a serialization error is permanent: no step retry"
    (record,) = await asyncio.to_thread(app.store.runs.steps, done.id)
    assert record.status is StepStatus.FAILED and record.error is not None
    assert record.error["type"] == "NotSerializable"


async def test_non_json_workflow_output_fails_the_run(app: App) -> None:
    @app.workflow(name="wf")
    async def wf(ctx: RunContext) -> set[int]:
        return {1, 2}

    done = await run_to_end(app, "wf")
    assert done.state is RunState.FAILED and done.output is None
    assert done.error is not None and done.error["type"] == "NotSerializable"
    assert "output of workflow 'wf'" in done.error["message"]


# -- retries -------------------------------------------------------------------------------


async def test_step_retries_with_exponential_backoff(app: App) -> None:
    calls: list[float] = []

    @step(name="flaky", retry=RetryPolicy(max_attempts=3, initial_delay=0.1, jitter=0))
    async def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        return "ok"

    @app.workflow(name="wf")
    async def wf(ctx: RunContext) -> str:
        return await flaky()

    done = await run_to_end(app, "wf")
    assert done.state is RunState.SUCCEEDED and done.output == "ok" and done.attempt == 1
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert len(gaps) == 2 and gaps[0] >= 0.095 and gaps[1] >= 0.195, gaps
    (record,) = await asyncio.to_thread(app.store.runs.steps, done.id)
    assert record.attempts == 3 and record.status is StepStatus.COMPLETED


@pytest.mark.parametrize(
    ("error", "policy"),
    [
        (PermanentError("bad credentials"), RetryPolicy(max_attempts=5, initial_delay=0.01)),
        (KeyError("no such user"), RetryPolicy(max_attempts=5, no_retry_on=(KeyError,))),
        (ValueError("layout"), RetryPolicy(max_attempts=5, retry_on=(ConnectionError,))),
    ],
)
async def test_errors_the_policy_excludes_are_not_retried(
    app: App, error: Exception, policy: RetryPolicy
) -> None:
    calls: list[int] = []

    @step(name="login", retry=policy)
    async def login() -> None:
        calls.append(1)
        raise error

    @app.workflow(name="wf", retry=policy)
    async def wf(ctx: RunContext) -> None:
        await login()

    done = await run_to_end(app, "wf")
    assert done.state is RunState.FAILED and done.attempt == 1
    assert len(calls) == 1
    assert done.error is not None and done.error["type"] == type(error).__qualname__


async def test_workflow_retries_are_delayed_then_succeed(app: App) -> None:
    attempts: list[tuple[int, float]] = []

    @app.workflow(name="wf", retry=RetryPolicy(max_attempts=3, initial_delay=0.1, jitter=0))
    async def wf(ctx: RunContext) -> int:
        attempts.append((ctx.attempt, time.monotonic()))
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt}")
        return ctx.attempt

    done = await run_to_end(app, "wf")
    assert done.state is RunState.SUCCEEDED and done.output == 3 and done.attempt == 3
    assert [a for a, _ in attempts] == [1, 2, 3]
    assert attempts[1][1] - attempts[0][1] >= 0.095
    assert attempts[2][1] - attempts[1][1] >= 0.195
    events = await asyncio.to_thread(app.store.runs.events, done.id)
    delayed = [e for e in events if e.state is RunState.DELAYED]
    assert [e.reason for e in delayed] == [
        "attempt 1 failed: ConnectionError",
        "attempt 2 failed: ConnectionError",
    ]
    assert events[-1].state is RunState.SUCCEEDED


async def test_errors_are_stored_with_type_message_traceback_step_and_attempt(app: App) -> None:
    @step(name="explode", retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    async def explode(row: int) -> None:
        raise ValueError(f"bad row {row}")

    @app.workflow(name="wf", retry=RetryPolicy(max_attempts=2, initial_delay=0.05))
    async def wf(ctx: RunContext) -> None:
        await explode(7)

    done = await run_to_end(app, "wf")
    assert done.state is RunState.FAILED and done.attempt == 2
    error = done.error
    assert error is not None
    assert (error["type"], error["message"], error["step"], error["attempt"]) == (
        "ValueError",
        "bad row 7",
        "explode",
        2,
    )
    assert "ValueError: bad row 7" in error["traceback"]
    assert "in explode" in error["traceback"]
    (record,) = await asyncio.to_thread(app.store.runs.steps, done.id)
    assert record.status is StepStatus.FAILED and record.attempts == 2
    assert record.error is not None and record.error["message"] == "bad row 7"


async def test_a_run_of_an_unknown_workflow_fails(app: App) -> None:
    @app.workflow(name="known")
    async def known(ctx: RunContext) -> None: ...

    run, _ = await asyncio.to_thread(app.store.runs.enqueue, NewRun(workflow="ghost"))
    async with worker_running(app):
        (done,) = await wait_for_states(app.store, [run.id])
    assert done.state is RunState.FAILED
    assert done.error is not None and "ghost" in done.error["message"]


# -- timeouts and cancellation -------------------------------------------------------------


async def test_step_timeout_counts_as_a_failed_attempt(app: App) -> None:
    calls: list[int] = []

    @step(name="hang", timeout=0.2, retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    async def hang() -> None:
        calls.append(1)
        await asyncio.sleep(30)

    @app.workflow(name="wf")
    async def wf(ctx: RunContext) -> None:
        await hang()

    started = time.monotonic()
    done = await run_to_end(app, "wf")
    assert time.monotonic() - started < 5
    assert done.state is RunState.FAILED
    assert done.error is not None and done.error["type"] == "TimeoutError"
    assert len(calls) == 2
    (record,) = await asyncio.to_thread(app.store.runs.steps, done.id)
    assert record.status is StepStatus.FAILED and record.attempts == 2


async def test_run_timeout_fails_the_run(app: App) -> None:
    @step(name="quick")
    async def quick() -> int:
        return 1

    @step(name="hang")
    async def hang() -> None:
        await asyncio.sleep(30)

    @app.workflow(name="wf", timeout=0.3)
    async def wf(ctx: RunContext) -> None:
        await quick()
        await hang()

    started = time.monotonic()
    done = await run_to_end(app, "wf")
    assert time.monotonic() - started < 5
    assert done.state is RunState.FAILED
    assert done.error is not None and done.error["type"] == "TimeoutError"
    steps = await asyncio.to_thread(app.store.runs.steps, done.id)
    assert [(s.name, s.status) for s in steps] == [("quick", StepStatus.COMPLETED)]


async def test_cancelling_a_running_run_stops_it_at_its_next_await(app: App) -> None:
    entered = asyncio.Event()

    @step(name="hang")
    async def hang() -> None:
        entered.set()
        await asyncio.sleep(30)

    @app.workflow(name="slow")
    async def slow(ctx: RunContext) -> None:
        await hang()

    @app.workflow(name="fast")
    async def fast(ctx: RunContext) -> str:
        return "served"

    async with worker_running(app):
        run = await app.enqueue("slow")
        await asyncio.wait_for(entered.wait(), 10)
        asked = time.monotonic()
        await asyncio.to_thread(app.store.runs.cancel, run.id, actor="test", reason="test")
        (done,) = await wait_for_states(app.store, [run.id], timeout=5)
        assert time.monotonic() - asked < 1.0
        after = await app.enqueue("fast")
        (served,) = await wait_for_states(app.store, [after.id])
    assert done.state is RunState.CANCELLED and done.finished_at is not None
    events = await asyncio.to_thread(app.store.runs.events, run.id)
    assert events[-1].state is RunState.CANCELLED
    assert served.state is RunState.SUCCEEDED, "the worker goes on serving runs"


async def test_cancelling_waiting_runs_before_a_worker_sees_them(app: App) -> None:
    executed: list[str] = []

    @app.workflow(name="wf")
    async def wf(ctx: RunContext) -> None:
        executed.append(ctx.run_id)

    queued = await app.enqueue("wf")
    delayed = await app.enqueue("wf", delay=0.1)
    for run in (queued, delayed):
        await asyncio.to_thread(app.store.runs.cancel, run.id, actor="test", reason="test")
    async with worker_running(app):
        ok = await app.enqueue("wf")
        await wait_for_states(app.store, [ok.id])
        await asyncio.sleep(0.3)  # past the delay
    states = [
        (await asyncio.to_thread(app.store.runs.get_run, r.id)).state for r in (queued, delayed)
    ]
    assert states == [RunState.CANCELLED, RunState.CANCELLED]
    assert executed == [ok.id]


# -- sessions and shutdown -----------------------------------------------------------------


async def test_session_runs_never_overlap_and_sessions_run_in_parallel(app: App) -> None:
    spans: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}

    @app.workflow(name="visit", session="{tenant}:{account}")
    async def visit(ctx: RunContext, account: str) -> None:
        start = time.monotonic()
        await asyncio.sleep(0.15)
        spans[account].append((start, time.monotonic()))

    async with worker_running(app, concurrency=4):
        runs = [await app.enqueue("visit", {"account": acc}) for acc in "ababab"]
        done = await wait_for_states(app.store, [r.id for r in runs])
    assert all(r.state is RunState.SUCCEEDED for r in done)
    for account, intervals in spans.items():
        intervals.sort()
        assert len(intervals) == 3
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert start >= end, f"runs of session {account} overlapped"
    overlaps = [(a, b) for a in spans["a"] for b in spans["b"] if a[0] < b[1] and b[0] < a[1]]
    assert overlaps, "runs of different sessions should run in parallel"


async def test_graceful_stop_hands_the_run_back_for_another_worker(db_url: str) -> None:
    app = fast_app(db_url, shutdown_grace_seconds=0.1)
    executions: Counter[str] = Counter()
    entered = asyncio.Event()

    @step(name="prepare")
    async def prepare() -> str:
        executions["prepare"] += 1
        return "ready"

    @step(name="long")
    async def long() -> str:
        executions["long"] += 1
        if executions["long"] == 1:
            entered.set()
            await asyncio.sleep(30)
        return "done"

    @app.workflow(name="wf")
    async def wf(ctx: RunContext) -> list[str]:
        return [await prepare(), await long()]

    try:
        async with worker_running(app) as first:
            run = await app.enqueue("wf")
            await asyncio.wait_for(entered.wait(), 10)
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 2
        released = await asyncio.to_thread(app.store.runs.get_run, run.id)
        assert released.state is RunState.QUEUED
        assert (released.stalls, released.attempt, released.lease_owner) == (0, 1, None)
        assert first.stats.released == 1 and first.stats.failed == 0

        async with worker_running(app) as second:
            (done,) = await wait_for_states(app.store, [run.id])
        assert done.state is RunState.SUCCEEDED and done.output == ["ready", "done"]
        assert done.stalls == 0 and done.attempt == 1
        assert executions == {"prepare": 1, "long": 2}
        events = await asyncio.to_thread(app.store.runs.events, run.id)
        owners = [e.worker_id for e in events if e.state is RunState.RUNNING]
        assert owners == [first.id, second.id]
    finally:
        app.close()


async def test_a_run_stopped_between_its_claim_and_its_start_goes_back_to_the_queue(
    app: App,
) -> None:
    """A worker that stops a run it has just claimed (its liveness lock unconfirmed, say) before
    the run's task began hands it back: a task cancelled before it begins runs none of its code,
    and the run stayed `running` for ever, its lease renewed by every heartbeat."""

    @app.workflow(name="t.aside", queue="aside")
    async def aside(ctx: RunContext) -> str:
        return "done"

    run = app.enqueue_sync("t.aside", tenant="t1")
    async with worker_running(app, queues=["default"]) as worker:  # never claims "aside" itself
        [lease] = await asyncio.to_thread(app.store.runs.claim, worker.id, ["aside"], 1, 30.0)
        worker._start_run(lease)
        active = worker._active[run.id]
        worker._interrupt(active, StopReason.UNCONFIRMED)  # before the task's first step
        await asyncio.wait_for(active.task, timeout=10)
        assert run.id not in worker._active
        back = app.store.runs.get_run(run.id)
        assert back.state is RunState.QUEUED and back.stalls == 0
