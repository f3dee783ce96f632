"""Schedules with real worker processes whose schedulers race and die, on both backends.

Every slot of every schedule must be handled exactly once: checked from the runs table (the
slot's idempotency key, the `schedule` label) and schedule_firings, never from the scheduler's
own counters alone (those are checked against the records too).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from greenroom import App
from greenroom.demo.setup import register_tenant
from greenroom.model import Overlap, Schedule
from greenroom.schedules import service
from greenroom.schedules.service import ScheduleRequest
from greenroom.storage.schedule_plans import spec_of
from tests.apps.durable_app import TICK, build_app
from tests.procs import WorkerPool, WorkerProcess, wait_for

# The scheduler polls every `poll` seconds; lease and heartbeat as in production.
DEFAULTS = {"lease": 10.0, "heartbeat": 2.0, "poll": 0.25}
TENANTS = ("sched-a", "sched-b")
#: A slot is within a millisecond of what the spec says (keys carry three decimals).
EPS = 1e-3


@dataclass
class Env:
    app: App
    pool: WorkerPool

    def start(self, name: str) -> WorkerProcess:
        proc = self.pool.start(name)

        def registered() -> bool:
            assert proc.alive(), f"worker {name} exited:\n{proc.log()}"
            return any(w.id == name for w in self.app.store.runs.workers())

        wait_for(registered, 20, f"worker {name} to register")
        return proc

    def schedule(self, tenant: str, name: str, **req: Any) -> Schedule:
        return service.create(
            self.app,
            tenant,
            ScheduleRequest(name=name, workflow=TICK, **req),
            actor="test",
        )


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> Iterator[Env]:
    app = build_app(db_url, schedule_min_interval_seconds=1.0)
    for tenant in TENANTS:
        register_tenant(app.store, tenant)
    pool = WorkerPool(db_url, tmp_path, settings=dict(DEFAULTS))
    try:
        yield Env(app, pool)
    finally:
        pool.close()
        app.close()


@dataclass
class Records:
    """What the database holds about the schedules' slots."""

    schedules: dict[str, Schedule]
    #: schedule id -> slot -> run ids whose idempotency key names that slot
    runs_by_slot: dict[str, dict[float, list[str]]]
    #: schedule id -> run ids labelled with it (any key)
    labelled: dict[str, list[str]]
    #: schedule id -> (outcome, slot, run id, at, detail) of every firing record
    firings: dict[str, list[tuple[str, float | None, str | None, float, dict[str, Any] | None]]]
    #: run id -> when it finished (None: not yet)
    finished_at: dict[str, float | None]


def read_records(app: App) -> Records:
    store = app.store
    schedules = {s.id: s for s in store.schedules.list_schedules()}
    runs_by_slot: dict[str, dict[float, list[str]]] = defaultdict(lambda: defaultdict(list))
    labelled: dict[str, list[str]] = defaultdict(list)
    firings: dict[str, list[Any]] = defaultdict(list)
    finished_at: dict[str, float | None] = {}
    with store.backend.transaction(write=False) as tx:
        for row in tx.execute(
            "SELECT id, idempotency_key, labels, finished_at FROM runs WHERE workflow = :wf",
            {"wf": TICK},
        ):
            finished_at[row["id"]] = row["finished_at"]
            labels = json.loads(row["labels"])
            if service.SCHEDULE_LABEL in labels:
                labelled[labels[service.SCHEDULE_LABEL]].append(row["id"])
            key = row["idempotency_key"] or ""
            if key.startswith("schedule:"):
                _, schedule_id, slot = key.split(":")
                runs_by_slot[schedule_id][float(slot)].append(row["id"])
        for row in tx.execute(
            "SELECT schedule_id, outcome, slot, run_id, at, detail FROM schedule_firings"
            " ORDER BY id"
        ):
            detail = json.loads(row["detail"]) if row["detail"] else None
            firings[row["schedule_id"]].append(
                (row["outcome"], row["slot"], row["run_id"], row["at"], detail)
            )
    return Records(schedules, runs_by_slot, labelled, firings, finished_at)


def expected_slots(s: Schedule, first: float) -> list[float]:
    """The schedule's slots from `first` up to (not including) its next unhandled one."""
    assert s.next_slot is not None
    return [round(x, 3) for x in spec_of(s).slots(first - EPS, s.next_slot - EPS)]


def check_exactly_once(s: Schedule, first: float, rec: Records) -> dict[str, int]:
    """Each slot from `first` to the last handled one is fired or skipped exactly once (or
    counted missed), each fired slot has exactly one run, and the counters agree."""
    slots = expected_slots(s, first)
    assert slots, f"{s.name}: no slot handled at all"
    firings = rec.firings[s.id]
    fired = Counter(round(f[1], 3) for f in firings if f[0] == "fired" and f[1] is not None)
    skipped = Counter(round(f[1], 3) for f in firings if f[0] == "skipped" and f[1] is not None)
    missed = [f for f in firings if f[0] == "missed"]
    assert not missed, f"{s.name}: slots missed with a one-hour window: {missed}"
    doubles = {k: n for k, n in (fired + skipped).items() if n > 1}
    assert not doubles, f"{s.name}: slots handled more than once: {doubles}"
    handled = set(fired) | set(skipped)
    gaps = sorted(set(slots) - handled)
    assert not gaps, f"{s.name}: slots never handled: {gaps[:10]} ({len(gaps)} of {len(slots)})"
    extra = sorted(handled - set(slots))
    assert not extra, f"{s.name}: slots handled that are not its slots: {extra[:10]}"
    runs = rec.runs_by_slot[s.id]
    for slot in slots:
        ids = runs.get(slot, [])
        want = 1 if slot in fired else 0
        assert len(ids) == want, f"{s.name}: slot {slot} has {len(ids)} runs ({ids})"
    by_slot = {round(f[1], 3): f[2] for f in firings if f[0] == "fired" and f[1] is not None}
    assert all(runs[slot] == [run_id] for slot, run_id in by_slot.items()), (
        f"{s.name}: a firing names another run than its slot's"
    )
    labelled = sorted(rec.labelled[s.id])
    keyed = sorted(r for ids in runs.values() for r in ids)
    assert labelled == keyed, f"{s.name}: runs with its label but another key"
    assert (s.fired, s.skipped, s.missed) == (len(fired), len(skipped), 0), (
        f"{s.name}: counters {s.fired, s.skipped, s.missed} != records"
        f" {len(fired), len(skipped), 0}"
    )
    return {"slots": len(slots), "fired": len(fired), "skipped": len(skipped)}


@pytest.mark.timeout(150)
def test_every_slot_fired_once_while_schedulers_race_and_die(env: Env) -> None:
    """20 schedules of 1 s and 2 s slots, 3 workers racing to fire them, one SIGKILLed every
    2-4 s and replaced, for 30 s: no slot fired twice, none left out."""
    rng = random.Random()
    first: dict[str, float] = {}
    overlap: dict[str, str] = {}
    for i in range(20):
        tenant = TENANTS[i % 2]
        policy = Overlap.SKIP if i % 5 == 4 else Overlap.ALLOW_ALL
        # skip schedules run longer than their slots, so some slots really are skipped.
        s = env.schedule(
            tenant,
            f"race-{i}",
            every=1.0 if i % 2 == 0 else 2.0,
            phase=round(rng.uniform(0, 0.9), 3),
            overlap=policy.value,
            input={"seconds": 1.5} if policy is Overlap.SKIP else {},
        )
        assert s.next_slot is not None
        first[s.id], overlap[s.id] = s.next_slot, policy.value

    workers = [env.start(f"w{n}") for n in range(3)]
    started = time.monotonic()
    kills, n = 0, 3
    while time.monotonic() - started < 30:
        time.sleep(rng.uniform(2.0, 4.0))
        victim = rng.choice(workers)
        victim.kill()
        kills += 1
        workers.remove(victim)
        workers.append(env.pool.start(f"w{n}"))  # not waited for: the others go on firing
        n += 1
    stopped_at = time.time()
    for proc in workers:
        assert proc.alive(), f"worker {proc.name} exited:\n{proc.log()}"
        proc.kill()

    rec = read_records(env.app)
    assert set(rec.schedules) == set(first)
    totals: Counter[str] = Counter()
    for schedule_id, s in rec.schedules.items():
        counts = check_exactly_once(s, first[schedule_id], rec)
        totals.update(counts)
        assert s.next_slot is not None
        # The schedulers kept up: nothing older than a slot and a few polls is unhandled.
        assert s.next_slot > stopped_at - 2.0 - 1.5, (
            f"{s.name}: fell behind: next slot {s.next_slot:.3f}, stopped at {stopped_at:.3f}"
        )
        if overlap[schedule_id] == Overlap.ALLOW_ALL.value:
            assert counts["skipped"] == 0, f"{s.name}: allow_all skipped slots"
    assert kills >= 7
    # Each skip schedule's run takes 1.5 s of its 1 s or 2 s slots: some slots are skipped.
    assert totals["skipped"] > 0
    assert totals["fired"] >= 20 * 15  # ~30 per 1 s schedule and ~15 per 2 s over 30 s, less skips


@pytest.mark.timeout(120)
def test_slots_missed_while_no_worker_runs_are_caught_up_by_the_window(env: Env) -> None:
    """All workers down for ~10 s of 1 s slots with a 5 s catch-up window: when one comes
    back, the slots within the window are fired by each policy, older ones counted missed."""
    policies = [
        Overlap.ALLOW_ALL,
        Overlap.ALLOW_ALL,
        Overlap.BUFFER_ALL,
        Overlap.SKIP,
        Overlap.BUFFER_ONE,
        Overlap.CANCEL_OTHER,
    ]
    first: dict[str, float] = {}
    for i, policy in enumerate(policies):
        s = env.schedule(
            TENANTS[i % 2],
            f"catchup-{i}",
            every=1.0,
            phase=0.1 * i,
            overlap=policy.value,
            catchup_seconds=5.0,
        )
        assert s.next_slot is not None
        first[s.id] = s.next_slot

    worker = env.start("before")
    wait_for(
        lambda: all(s.fired >= 2 for s in env.app.store.schedules.list_schedules()),
        20,
        "every schedule to fire twice",
    )
    down_at = worker.kill()
    time.sleep(10)
    back_at = time.time()
    worker = env.start("after")
    wait_for(
        lambda: all(s.missed > 0 for s in env.app.store.schedules.list_schedules()),
        20,
        "the missed slots to be counted",
    )
    time.sleep(2.5)  # a couple more slots after the catch-up, fired as usual
    worker.kill()

    rec = read_records(env.app)
    for schedule_id, s in rec.schedules.items():
        firings = rec.firings[schedule_id]
        (missed,) = [f for f in firings if f[0] == "missed"]
        _, last_missed, _, at, detail = missed
        assert detail is not None and last_missed is not None
        assert back_at < at < back_at + 5, "the catch-up round is the first after the restart"
        window_start = at - s.catchup_seconds
        # The slots before the catch-up round that the first worker left unhandled.
        before = [f for f in firings if f[3] < at]
        done_before = max(f[1] for f in before if f[1] is not None)
        assert done_before <= down_at + EPS
        gap = [round(x, 3) for x in spec_of(s).slots(done_before, at)]
        want_missed = [x for x in gap if x < window_start]
        want_recent = [x for x in gap if x >= window_start]
        assert len(want_missed) >= 3 and len(want_recent) >= 4, (gap, window_start)
        assert detail["count"] == len(want_missed) == s.missed
        assert round(detail["first"], 3) == want_missed[0]
        assert round(last_missed, 3) == want_missed[-1]
        # What the catch-up round did with the slots within the window, by policy.
        round_ = [f for f in firings if f[3] == at and f[0] != "missed"]
        outcome = {round(f[1], 3): f[0] for f in round_ if f[1] is not None}
        assert sorted(outcome) == want_recent, (s.name, outcome, want_recent)
        fired = [x for x in want_recent if outcome[x] == "fired"]
        # The run of the last slot before the kill may not have ended when the worker died:
        # then it is still `running` (or queued) at the catch-up round, until it is recovered.
        last_run = max((f for f in before if f[0] == "fired"), key=lambda f: f[1] or 0.0)[2]
        assert last_run is not None
        ended = rec.finished_at[last_run]
        previous_ended = ended is not None and ended < at
        if s.overlap in (Overlap.ALLOW_ALL, Overlap.BUFFER_ALL):
            assert fired == want_recent
        elif s.overlap is Overlap.CANCEL_OTHER:
            assert fired == want_recent[-1:]  # each would cancel the one before
        elif s.overlap is Overlap.SKIP:  # the first fires if the previous run had ended
            assert fired == (want_recent[:1] if previous_ended else []), (s.name, outcome)
        else:  # buffer_one: the first fires unless the previous run had not started either
            assert fired == want_recent[:1] or (not previous_ended and not fired), s.name
        # Missed slots have no run; the whole history is still each slot once.
        runs = rec.runs_by_slot[schedule_id]
        assert not any(x in runs for x in want_missed)
        assert all(len(runs[x]) == 1 for x in fired)
        handled = Counter(round(f[1], 3) for f in firings if f[0] != "missed" and f[1] is not None)
        handled.update(want_missed)
        slots = expected_slots(s, first[schedule_id])
        assert sorted(handled) == slots and set(handled.values()) == {1}, s.name
        assert s.fired == sum(1 for f in firings if f[0] == "fired")
        assert s.skipped == sum(1 for f in firings if f[0] == "skipped")
