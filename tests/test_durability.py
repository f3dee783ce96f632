"""Durability with real worker processes, SIGKILLed, frozen and terminated, on both backends.

The workflows (tests/apps/durable_app.py) append every execution to a record file; the
guarantees are checked against that record and the database, never against the engine's own
bookkeeping alone.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from greenroom import App, Run, RunRequest, RunState
from greenroom.model import FINISHED_STATES
from greenroom.storage import RunStore
from tests.apps.durable_app import CHAIN, SESSION_CHAIN, build_app
from tests.procs import (
    WorkerPool,
    WorkerProcess,
    checkpoint_proofs,
    executions,
    overlaps,
    read_records,
    records_of,
    wait_for,
)

# Production-like timing: recovery after a SIGKILL must come from the liveness lock, since
# the lease (10 s) cannot expire within the one second the test allows.
DEFAULTS = {"lease": 10.0, "heartbeat": 2.0, "poll": 0.25}


@dataclass
class Env:
    app: App
    pool: WorkerPool
    record: Path

    @property
    def store(self) -> RunStore:
        return self.app.store

    def enqueue(self, **input: Any) -> Run:
        return self.app.enqueue_sync(CHAIN, {"record": str(self.record), **input})

    def records(self, **match: Any) -> list[dict[str, Any]]:
        return records_of(read_records(self.record), **match)

    def start(self, name: str, **settings: Any) -> WorkerProcess:
        """A worker process, returned once it has registered (it is then idle or working)."""
        proc = self.pool.start(name, **settings)

        def registered() -> bool:
            assert proc.alive(), f"worker {name} exited:\n{proc.log()}"
            return any(w.id == name for w in self.store.runs.workers())

        wait_for(registered, 20, f"worker {name} to register")
        return proc

    def wait_started(self, run: Run, position: int, worker: str) -> dict[str, Any]:
        found = wait_for(
            lambda: self.records(run=run.id, ev="start", pos=position, worker=worker),
            20,
            f"worker {worker} to start step {position} of run {run.id}",
        )
        return found[0]

    def wait_finished(self, run: Run, timeout: float = 20) -> Run:
        def finished() -> Run | None:
            current = self.store.runs.get_run(run.id)
            return current if current.state in FINISHED_STATES else None

        try:
            return wait_for(finished, timeout, f"run {run.id} to finish", interval=0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.pool.logs()}") from None

    def step_workers(self, run: Run) -> list[str]:
        return [s.result["by"] for s in self.store.runs.steps(run.id)]


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Iterator[Env]:
    app = build_app(db_url)
    app.store.runs.count_by_state()  # migrate now, before workers race to do it
    pool = WorkerPool(db_url, tmp_path)
    try:
        yield Env(app=app, pool=pool, record=tmp_path / "record.jsonl")
    finally:
        pool.close()
        app.close()


def starts(env: Env, run: Run, position: int) -> list[str]:
    """Which workers started this step, in order."""
    return [r["worker"] for r in env.records(run=run.id, ev="start", pos=position)]


def test_sigkill_mid_step_resumes_on_another_worker_within_a_second(env: Env) -> None:
    env.pool.settings = DEFAULTS
    a = env.start("A")
    run = env.enqueue(steps=5, slow_at=3, slow_on="A", slow_seconds=60)
    env.wait_started(run, 3, "A")
    env.start("B")
    time.sleep(0.3)  # B idles through a maintenance tick

    killed_at = a.kill()
    first_b = wait_for(
        lambda: env.records(run=run.id, worker="B"), 5, "worker B to resume the run"
    )[0]
    recovery = first_b["t"] - killed_at
    final = env.wait_finished(run)

    assert final.state is RunState.SUCCEEDED, final.error
    assert recovery < 1.0, f"resumed {recovery:.3f}s after the SIGKILL"
    assert first_b["ev"] == "begin"
    for position in range(3):  # checkpointed before the kill: replayed, never executed again
        assert starts(env, run, position) == ["A"]
    assert starts(env, run, 3) == ["A", "B"]  # in flight at the kill: runs again
    assert starts(env, run, 4) == ["B"]
    assert env.step_workers(run) == ["A", "A", "A", "B", "B"]
    assert final.output["by"] == "B"
    reasons = [e.reason for e in env.store.runs.events(run.id)]
    assert any("worker A lost its liveness lock" in r for r in reasons), reasons
    assert not any("expired" in r for r in reasons), reasons
    assert final.stalls == 1
    states = {w.id: w.state for w in env.store.runs.workers(include_gone=True)}
    assert states["A"] == "dead"


def freeze(env: Env, worker: WorkerProcess) -> None:
    """SIGSTOP a worker at a moment it holds no SQLite write lock.

    A worker frozen inside a write transaction (a heartbeat) holds the one SQLite writer lock,
    and nobody can write until it thaws: an SQLite database serves one machine, where a frozen
    process is the operator's to resume or kill. PostgreSQL has no such lock to hold.
    """
    for _ in range(50):
        worker.send(signal.SIGSTOP)
        time.sleep(0.05)
        if not env.pool.db_url.startswith("sqlite:///") or _writable(env.pool.db_url):
            return
        worker.send(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"worker {worker.name} always froze inside a write transaction")


def _writable(url: str) -> bool:
    connection = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.rollback()
        return True
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        return False
    finally:
        connection.close()


def test_frozen_worker_cannot_write_after_another_took_over(env: Env) -> None:
    env.pool.settings = {"lease": 1.0, "heartbeat": 0.3, "poll": 0.1}
    a = env.start("A")
    run = env.enqueue(steps=5, slow_at=2, slow_on="A", slow_seconds=1.0)
    slow = env.wait_started(run, 2, "A")
    freeze(env, a)
    assert not env.records(run=run.id, ev="end", pos=2), "SIGSTOP came after the slow step"
    env.start("B")
    final = env.wait_finished(run)

    assert final.state is RunState.SUCCEEDED, final.error
    assert final.output["by"] == "B"
    assert env.step_workers(run) == ["A", "A", "B", "B", "B"]
    reasons = [e.reason for e in env.store.runs.events(run.id)]
    assert any("lease of worker A expired" in r for r in reasons), reasons
    before = (
        env.store.runs.get_run(run.id),
        env.store.runs.steps(run.id),
        env.store.runs.events(run.id),
    )

    # Resume A only once its step is overdue: then it finishes the step and submits the
    # checkpoint before its first heartbeat can tell it that the lease is gone.
    time.sleep(max(0.0, slow["t"] + 1.0 + 0.2 - time.time()))
    a.send(signal.SIGCONT)
    wait_for(lambda: "lease lost" in a.log(), 10, "worker A to notice its lease is lost")
    time.sleep(1.0)  # a few more heartbeats and maintenance ticks of A

    assert a.alive(), a.log()
    # It tried to checkpoint, or it stopped the step first: its lease went unrenewed, or
    # (PostgreSQL) its lock unconfirmed, while it was frozen (docs/durability.md).
    tried = env.records(run=run.id, ev="end", pos=2, worker="A")
    assert tried or "stopping run" in a.log(), a.log()
    after = (
        env.store.runs.get_run(run.id),
        env.store.runs.steps(run.id),
        env.store.runs.events(run.id),
    )
    assert after == before
    assert not [r for r in env.records(run=run.id, worker="A", ev="start") if r["pos"] > 2]
    assert not env.records(run=run.id, worker="A", ev="return")
    a.send(signal.SIGTERM)
    assert a.wait(10) == 0, a.log()


def test_sigterm_releases_the_run_to_another_worker_at_once(env: Env) -> None:
    env.pool.settings = {**DEFAULTS, "grace": 0.5}
    a = env.start("A")
    run = env.enqueue(steps=5, slow_at=2, slow_on="A", slow_seconds=60)
    env.wait_started(run, 2, "A")
    env.start("B")
    time.sleep(0.3)

    terminated_at = a.send(signal.SIGTERM)
    assert a.wait(10) == 0, a.log()
    final = env.wait_finished(run)

    assert final.state is RunState.SUCCEEDED, final.error
    assert final.stalls == 0
    released = [
        e for e in env.store.runs.events(run.id) if e.state is RunState.QUEUED and e.worker_id
    ]
    assert len(released) == 1, released
    assert released[0].worker_id == "A"
    assert "shutting down" in released[0].reason
    assert released[0].at - terminated_at >= 0.45  # the in-flight step had its grace period
    first_b = env.records(run=run.id, worker="B")[0]
    assert first_b["ev"] == "begin"
    assert first_b["t"] - released[0].at < 1.0, "B did not resume the released run at once"
    assert starts(env, run, 0) == ["A"]
    assert starts(env, run, 1) == ["A"]
    assert starts(env, run, 2) == ["A", "B"]
    assert not env.records(run=run.id, worker="A", ev="end", pos=2)  # cancelled, not finished
    assert env.step_workers(run) == ["A", "A", "B", "B", "B"]
    states = {w.id: w.state for w in env.store.runs.workers(include_gone=True)}
    assert states["A"] == "stopped"


# -- chaos -----------------------------------------------------------------------------------

CHAOS_RUNS = 200
CHAOS_STEPS = 10
CHAOS_SESSIONS = 20
CHAOS_WORKERS = 3
CHAOS_KILLS = 25  # then the runs drain: as many kills, however slow a loaded machine is
CHAOS_STUCK_SECONDS = 60  # no run finished for this long: something is stuck
CHAOS_STEP_MS = [15, 45]  # long enough for the chaos to last ~15-20 s


def enqueue_chaos_runs(env: Env) -> list[Run]:
    """The runs of one session back to back: a FIFO claim that ignored sessions would take
    several of them at once."""
    per_session = CHAOS_RUNS // CHAOS_SESSIONS
    requests = [
        RunRequest(
            workflow=SESSION_CHAIN,
            input={"record": str(env.record), "steps": CHAOS_STEPS, "step_ms": CHAOS_STEP_MS},
            labels={"lane": f"s{i // per_session:02d}"},
        )
        for i in range(CHAOS_RUNS)
    ]
    return env.app.enqueue_many_sync(requests)


def kill_and_restart_until_done(env: Env, rng: random.Random) -> int:
    """SIGKILL a random worker and start a new one every 0.5-1 s, CHAOS_KILLS times or until no
    run is left; then let the runs drain.

    Only workers that have started serving are killed: one still importing holds nothing, and
    on a loaded machine killing those would only starve the run of workers.
    """
    slots = [env.pool.start(f"w{i}-0") for i in range(CHAOS_WORKERS)]
    kills = 0
    finished, progress_at = 0, time.monotonic()
    while True:
        time.sleep(rng.uniform(0.5, 1.0))
        counts = env.store.runs.count_by_state()
        if not any(counts.get(s) for s in (RunState.QUEUED, RunState.DELAYED, RunState.RUNNING)):
            break
        if counts.get(RunState.SUCCEEDED, 0) > finished:
            finished, progress_at = counts[RunState.SUCCEEDED], time.monotonic()
        stuck = time.monotonic() - progress_at
        assert stuck < CHAOS_STUCK_SECONDS, f"no run finished for {stuck:.0f} s: {counts}\n" + (
            env.pool.logs()
        )
        if kills >= CHAOS_KILLS:
            continue
        serving = {w.id for w in env.store.runs.workers()}
        ready = [i for i, proc in enumerate(slots) if proc.name in serving]
        if not ready:
            continue
        i = rng.choice(ready)
        slots[i].kill()
        kills += 1
        slots[i] = env.pool.start(f"w{i}-{kills}")
    names = {p.name for p in slots}

    def registered() -> bool:  # a worker stops cleanly once it has started up
        return names <= {w.id for w in env.store.runs.workers(include_gone=True)}

    wait_for(registered, 30, "the last workers to start")
    for proc in slots:
        proc.send(signal.SIGTERM)
    for proc in slots:
        assert proc.wait(15) == 0, proc.log()
    return kills


def steps_executed_after_checkpoint(
    env: Env, runs: list[Run], records: list[dict[str, Any]]
) -> list[str]:
    """Step executions that began after the step's result had been stored."""
    started: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    ended: set[tuple[str, int, int]] = set()
    for r in records:
        if r["ev"] == "start":
            started[r["run"], r["pos"]].append(r)
        elif r["ev"] == "end":
            ended.add((r["run"], r["pos"], r["pid"]))
    proofs = checkpoint_proofs(records)
    problems = []
    for run in runs:
        stored = env.store.runs.steps(run.id)
        assert [s.position for s in stored] == list(range(CHAOS_STEPS)), run.id
        for s in stored:
            checkpointed = min(s.finished_at, proofs.get((run.id, s.position), s.finished_at))
            late = [r for r in started[run.id, s.position] if r["t"] > checkpointed]
            if late:
                problems.append(
                    f"{run.id} step {s.position} checkpointed at {checkpointed}: {late}"
                )
            if (run.id, s.position, s.result["pid"]) not in ended:
                problems.append(f"{run.id} step {s.position}: stored result never ran to its end")
    return problems


@pytest.mark.slow
def test_chaos_random_sigkills_lose_nothing_and_never_overlap(env: Env) -> None:
    env.pool.settings = {**DEFAULTS, "max_stalls": 50, "concurrency": 2, "grace": 1.0}
    runs = enqueue_chaos_runs(env)
    rng = random.Random()
    kills = kill_and_restart_until_done(env, rng)

    finals = [env.store.runs.get_run(r.id) for r in runs]
    not_ok = {r.id: (r.state.value, r.error) for r in finals if r.state is not RunState.SUCCEEDED}
    assert not not_ok, not_ok
    records = read_records(env.record)
    assert not steps_executed_after_checkpoint(env, runs, records)

    done = executions(records, env.pool.killed())
    by_run: dict[str, list[Any]] = defaultdict(list)
    by_session: dict[str | None, list[Any]] = defaultdict(list)
    for e in done:
        by_run[e.run].append(e)
        by_session[e.session].append(e)
    assert set(by_run) == {r.id for r in runs}
    run_overlaps = [pair for items in by_run.values() for pair in overlaps(items)]
    assert not run_overlaps, f"one run was executed twice at once: {run_overlaps[:5]}"
    assert len(by_session) == CHAOS_SESSIONS
    session_overlaps = [pair for items in by_session.values() for pair in overlaps(items)]
    assert not session_overlaps, f"runs of one session overlapped: {session_overlaps[:5]}"

    # The chaos really hit runs in flight, and every one came back through a liveness lock,
    # not a lease expiry.
    recovered = sum(r.stalls for r in finals)
    assert kills >= 5
    assert recovered > 0
    stalls = [e.reason for r in runs for e in env.store.runs.events(r.id) if "stalled" in e.reason]
    assert len(stalls) == recovered
    gone = "lost its liveness lock"
    assert all(gone in reason for reason in stalls), [r for r in stalls if gone not in r]
    print(
        f"chaos: {kills} kills, {recovered} stalls recovered, {len(done)} executions "
        f"of {CHAOS_RUNS} runs, {len([r for r in records if r['ev'] == 'start'])} step executions"
    )
