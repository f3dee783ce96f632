"""Queue controls with real workers, on SQLite and PostgreSQL: pauses that drain or stop at a
step boundary, combined concurrency caps, and (across worker processes) queue limits and rates."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import fast_app, wait_for_states, worker_running

from greenroom import App, RetryPolicy, RunContext, RunState, StepStatus, step
from greenroom.model import NewRun
from greenroom.storage import open_store
from greenroom.worker.worker import SETTINGS_REFRESH_SECONDS

ACTOR = "ops@example.com"
ONCE = RetryPolicy(max_attempts=1)
APPS = Path(__file__).parent / "apps"

EXECUTED: Counter[str] = Counter()
GATE: dict[str, asyncio.Event] = {}


@step(retry=ONCE)
async def first() -> int:
    EXECUTED["first"] += 1
    return 1


@step(retry=ONCE)
async def gated() -> int:
    EXECUTED["gated"] += 1
    await GATE["open"].wait()
    return 2


@step(retry=ONCE)
async def last() -> int:
    EXECUTED["last"] += 1
    return 3


@pytest.fixture
def app(db_url: str) -> Iterator[App]:
    EXECUTED.clear()
    GATE["open"] = asyncio.Event()
    a = fast_app(db_url)

    @a.workflow(name="three", queue="q")
    async def three(ctx: RunContext) -> int:
        return await first() + await gated() + await last()

    yield a
    a.close()


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_pause_without_drain_stops_a_run_at_its_next_step(app: App) -> None:
    store = app.store
    async with worker_running(app):
        run = await app.enqueue("three")
        await until(lambda: EXECUTED["gated"] == 1)
        store.controls.pause("queue", "q", drain=False, actor=ACTOR, reason="stop the vendor calls")
        await asyncio.sleep(0.5)  # a heartbeat or a maintenance tick brings the request
        GATE["open"].set()
        (paused,) = await wait_for_states(store, [run.id], {RunState.PAUSED})
        assert EXECUTED == {"first": 1, "gated": 1}, "the step in flight ends; the next waits"
        assert [(s.name, s.status) for s in store.runs.steps(run.id)] == [
            ("first", StepStatus.COMPLETED),
            ("gated", StepStatus.COMPLETED),
        ]
        assert paused.lease_owner is None and paused.attempt == 1
        await asyncio.sleep(0.3)
        assert store.runs.get_run(run.id).state is RunState.PAUSED, "a paused run is not claimed"
        store.controls.resume("queue", "q", actor=ACTOR, reason="vendor back")
        (done,) = await wait_for_states(store, [run.id])
    assert done.state is RunState.SUCCEEDED and done.output == 6
    assert EXECUTED == {"first": 1, "gated": 1, "last": 1}, "no step ran twice"
    states = [e.state for e in store.runs.events(run.id)]
    assert states == [
        RunState.QUEUED,
        RunState.RUNNING,
        RunState.PAUSED,
        RunState.QUEUED,
        RunState.RUNNING,
        RunState.SUCCEEDED,
    ]


async def test_pause_with_drain_lets_the_running_run_finish(app: App) -> None:
    store = app.store
    async with worker_running(app):
        running = await app.enqueue("three")
        await until(lambda: EXECUTED["gated"] == 1)
        store.controls.pause("workflow", "three", actor=ACTOR, reason="drain before deploy")
        waiting = await app.enqueue("three")
        assert waiting.state is RunState.PAUSED
        await asyncio.sleep(0.5)
        GATE["open"].set()
        (done,) = await wait_for_states(store, [running.id])
        assert done.state is RunState.SUCCEEDED
        await asyncio.sleep(0.3)
        assert store.runs.get_run(waiting.id).state is RunState.PAUSED
        assert EXECUTED == {"first": 1, "gated": 1, "last": 1}
        store.controls.resume("workflow", "three", actor=ACTOR, reason="deployed")
        (after,) = await wait_for_states(store, [waiting.id])
    assert after.state is RunState.SUCCEEDED


async def test_queue_retry_defaults_changed_at_run_time_reach_a_running_worker(
    db_url: str,
) -> None:
    app = fast_app(db_url)
    attempts: list[int] = []

    @app.workflow(name="flaky", queue="q")
    async def flaky(ctx: RunContext) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("vendor hiccup")
        return ctx.attempt

    try:
        async with worker_running(app):
            before = await app.enqueue("flaky")
            (failed,) = await wait_for_states(app.store, [before.id])
            assert failed.state is RunState.FAILED, "no retry policy yet"
            app.store.controls.set_queue(
                "q", actor=ACTOR, reason="retry hiccups", max_attempts=3, retry_initial_delay=0.01
            )
            await asyncio.sleep(SETTINGS_REFRESH_SECONDS + 0.3)
            after = await app.enqueue("flaky")
            (done,) = await wait_for_states(app.store, [after.id])
        assert after.max_attempts == 3
        assert done.state is RunState.SUCCEEDED and done.output == 2
        assert attempts == [1, 1, 2]
    finally:
        app.close()


# -- concurrency caps with workers -----------------------------------------------------------

SPANS: list[dict[str, Any]] = []  # tenant, session, start, end of every run


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end sorts before a start at the same time)."""
    points = sorted(itertools.chain(((s, 1) for s, _ in spans), ((e, -1) for _, e in spans)))
    now = peak = 0
    for _, delta in points:
        now += delta
        peak = max(peak, now)
    return peak


def overlap_of(**match: str) -> int:
    return max_overlap(
        [
            (span["start"], span["end"])
            for span in SPANS
            if all(span[k] == v for k, v in match.items())
        ]
    )


def capped_app(db_url: str) -> App:
    a = fast_app(db_url, lease_seconds=5.0, heartbeat_seconds=0.5)

    async def work(ctx: RunContext, account: str = "", seconds: float = 0.15) -> None:
        start = time.monotonic()
        await asyncio.sleep(seconds)
        span = {"tenant": ctx.tenant, "session": ctx.session_key or ""}
        SPANS.append({**span, "start": start, "end": time.monotonic()})

    a.workflow(name="free", queue="q")(work)
    a.workflow(name="capped", queue="capped")(work)
    a.workflow(name="solo", queue="q", session="{account}")(work)
    a.workflow(name="wide", queue="q", session="{account}", session_concurrency=2)(work)
    return a


@pytest.fixture
def apps(db_url: str) -> Iterator[tuple[App, App]]:
    """Two apps, each with its own store, as two worker machines would have."""
    SPANS.clear()
    one, two = capped_app(db_url), capped_app(db_url)
    yield one, two
    one.close()
    two.close()


async def run_all(
    apps: tuple[App, App], runs: list[tuple[str, dict[str, Any], str]], concurrency: int
) -> set[str]:
    """Serve the runs with a worker per app until all succeeded; the workers that ran them."""
    one, two = apps
    async with (
        worker_running(one, concurrency=concurrency),
        worker_running(two, concurrency=concurrency),
    ):
        ids = [(await one.enqueue(wf, input, tenant=tenant)).id for wf, input, tenant in runs]
        done = await wait_for_states(one.store, ids, timeout=30)
    assert {r.state for r in done} == {RunState.SUCCEEDED}
    assert len(SPANS) == len(runs), "every run ran once"
    return {
        e.worker_id or ""
        for run_id in ids
        for e in one.store.runs.events(run_id)
        if e.state is RunState.RUNNING
    }


async def test_worker_slots_cap_a_worker(apps: tuple[App, App]) -> None:
    one, _ = apps
    async with worker_running(one, concurrency=3):
        ids = [(await one.enqueue("free")).id for _ in range(9)]
        await wait_for_states(one.store, ids)
    assert overlap_of() == 3


async def test_queue_limit_holds_across_workers(apps: tuple[App, App]) -> None:
    apps[0].store.controls.set_queue("capped", actor=ACTOR, reason="vendor cap", concurrency=3)
    # 2 + 2 slots: reaching 3 at once takes both workers; more than 3 would break the cap.
    workers = await run_all(apps, [("capped", {}, f"t{i % 3}") for i in range(12)], 2)
    assert overlap_of() == 3
    assert len(workers) == 2


async def test_tenant_limit_holds_across_workers(apps: tuple[App, App]) -> None:
    apps[0].store.controls.set_tenant("t1", actor=ACTOR, reason="small plan", concurrency=2)
    runs = [("free", {}, "t1") for _ in range(8)] + [("free", {}, "t2") for _ in range(8)]
    workers = await run_all(apps, runs, 3)
    assert overlap_of(tenant="t1") == 2
    assert overlap_of(tenant="t2") >= 3, "the other tenant is not held back"
    assert len(workers) == 2


async def test_session_concurrency_allows_n_at_once_and_one_by_default(
    apps: tuple[App, App],
) -> None:
    runs = [("wide", {"account": "w"}, "t") for _ in range(6)]
    runs += [("solo", {"account": "s"}, "t") for _ in range(4)]
    runs += [("solo", {"account": f"other{i}"}, "t") for i in range(4)]
    await run_all(apps, runs, 5)
    assert overlap_of(session="w") == 2
    assert overlap_of(session="s") == 1
    assert overlap_of() >= 4, "different sessions run in parallel"


# -- across worker processes -----------------------------------------------------------------


def start_worker(db_url: str, concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, str(APPS / "controls_app.py"), db_url, str(concurrency)],
            cwd=APPS,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_queue_rate_and_limit_hold_across_worker_processes(db_url: str, tmp_path: Path) -> None:
    store = open_store(db_url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        store.controls.set_queue(
            "limited", actor=ACTOR, reason="5 logins/s", rate_limit=5, rate_period=1.0
        )
        store.controls.set_queue("capped", actor=ACTOR, reason="3 at once", concurrency=3)
        procs = [start_worker(db_url, 3, tmp_path / f"worker{i}.log") for i in range(2)]
        wait_until(lambda: len(store.runs.workers()) == 2, 30, "workers did not start")
        batch = [NewRun(workflow="tick", queue="limited") for _ in range(20)]
        batch += [NewRun(workflow="hold", queue="capped", input={"seconds": 0.3}) for _ in range(9)]
        runs = [run for run, _ in store.runs.enqueue_many(batch)]
        wait_until(
            lambda: all(store.runs.get_run(r.id).state.finished for r in runs),
            30,
            "runs unfinished",
        )
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=15)
        done = [store.runs.get_run(r.id) for r in runs] if procs else []
        store.backend.close()
    assert {r.state for r in done} == {RunState.SUCCEEDED}
    assert len({r.output["pid"] for r in done}) == 2, "both processes worked"
    starts = sorted(r.started_at or 0.0 for r in done if r.workflow == "tick")
    in_window = [sum(1 for t in starts if s <= t < s + 1.0) for s in starts]
    assert max(in_window) == 5, f"at most 5 starts in any second: {in_window}"
    assert 3.0 <= starts[-1] - starts[0] < 6.0, "the limit paces the starts without starving them"
    held = [(r.output["start"], r.output["end"]) for r in done if r.workflow == "hold"]
    assert max_overlap(held) == 3
