"""Schedules on a manual clock, on SQLite and PostgreSQL: slots across daylight-saving changes,
catch-up after downtime under each overlap policy, each slot once, bad specs refused naming the
field, a schedule whose workflow is gone paused with a note, trigger and backfill."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from greenroom import App, InvalidInput, ManualClock, RunContext, RunState
from greenroom.demo.setup import register_tenant
from greenroom.metrics import REGISTRY
from greenroom.model import Overlap, Schedule
from greenroom.schedules import service
from greenroom.schedules.service import ScheduleRequest
from greenroom.schedules.spec import Spec
from greenroom.storage.events import EventFilter
from greenroom.storage.schedule_plans import Fired, slot_key
from tests.helpers import fast_app, settle_events, wait_for_states, worker_running

T0 = 1_800_000_000.0  # a multiple of 900: 15-minute slots fall on it


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def app(db_url: str, clock: ManualClock) -> Iterator[App]:
    a = fast_app(db_url, clock=clock)

    @a.workflow(name="sync")
    async def sync(ctx: RunContext, note: str = "") -> int:
        return 1

    @a.workflow(name="report", schedule="every 15m")
    async def report(ctx: RunContext) -> int:
        return 1

    register_tenant(a.store, "t1")
    yield a
    a.close()


def make(app: App, **kw: Any) -> Schedule:
    kw.setdefault("name", f"s{len(app.store.schedules.list_schedules())}")
    kw.setdefault("workflow", "sync")
    return service.create(app, "t1", ScheduleRequest(**kw), actor="admin@t1")


def fire(app: App) -> Fired:
    return app.store.schedules.fire_due(service.preparer(app))


def finish_all(app: App) -> None:
    """Every queued run ends, as if a worker ran them."""
    store = app.store
    while leases := store.runs.claim("w", ["default"], 100, 30.0):
        for lease in leases:
            store.runs.finish(lease, RunState.SUCCEEDED, reason="done", output="1")


def local_slots(app: App, schedule: Schedule, tz: str) -> list[str]:
    """The slots the schedule's runs are for, as local times."""
    with app.store.backend.transaction(write=False) as tx:
        rows = tx.execute(
            "SELECT idempotency_key FROM runs WHERE idempotency_key LIKE :prefix",
            {"prefix": f"schedule:{schedule.id}:%"},
        )
    slots = [float(r["idempotency_key"].rsplit(":", 1)[1]) for r in rows]
    return sorted(datetime.fromtimestamp(slot, ZoneInfo(tz)).isoformat() for slot in slots)


def test_an_interval_fires_each_slot_once_with_its_input_and_label(
    app: App, clock: ManualClock
) -> None:
    s = make(app, every="15m", input={"note": "slot {slot} of {schedule}"})
    assert (s.next_slot, s.next_due) == (T0 + 900, T0 + 900)
    assert fire(app).runs == []
    clock.advance(900)
    (run,) = fire(app).runs
    assert run.idempotency_key == slot_key(s.id, T0 + 900)
    assert run.labels == {"schedule": s.id}
    assert run.input == {"note": f"slot 2027-01-15T08:15:00+00:00 of {s.name}"}
    assert fire(app).runs == [], "the slot is done"
    now = app.store.schedules.get(s.id)
    assert (now.next_slot, now.fired, now.last_run_id) == (T0 + 1800, 1, run.id)
    assert [f.outcome for f in app.store.schedules.firings(s.id)] == ["fired"]
    settle_events(app.store)
    (event,) = [e for e, _ in app.store.events.list_events(EventFilter(types=["schedule.fired"]))]
    assert event.payload["run_id"] == run.id and event.subject == f"schedule:{s.id}"


@pytest.mark.parametrize(
    ("tz", "start", "expected"),
    [
        # Spring forward: 02:30 does not exist that night; it fires once, at 03:00.
        (
            "America/New_York",
            (2027, 3, 13, 12),
            ["2027-03-14T03:00:00-04:00", "2027-03-15T02:30:00-04:00"],
        ),
        (
            "Europe/Berlin",
            (2027, 3, 27, 12),
            ["2027-03-28T03:00:00+02:00", "2027-03-29T02:30:00+02:00"],
        ),
        # Fall back: Berlin's 02:30 happens twice that night; it fires once, at the first.
        (
            "Europe/Berlin",
            (2027, 10, 30, 12),
            ["2027-10-31T02:30:00+02:00", "2027-11-01T02:30:00+01:00"],
        ),
        # New York turns back at 02:00 to 01:00: 02:30 happens once.
        (
            "America/New_York",
            (2027, 11, 6, 12),
            ["2027-11-07T02:30:00-05:00", "2027-11-08T02:30:00-05:00"],
        ),
    ],
)
def test_daylight_saving_days_fire_once(
    app: App, clock: ManualClock, tz: str, start: tuple[int, ...], expected: list[str]
) -> None:
    begin = datetime(*start, tzinfo=ZoneInfo(tz)).timestamp()  # type: ignore[misc]
    clock.advance(begin - clock.now())
    s = make(app, cron="30 2 * * *", timezone=tz, overlap="allow_all")
    for _ in range(48 * 4):  # two days, every 15 minutes
        clock.advance(900)
        fire(app)
    assert local_slots(app, s, tz) == expected


@pytest.mark.parametrize(
    ("policy", "fired", "skipped"),
    [
        (Overlap.SKIP, 1, 4),
        (Overlap.BUFFER_ONE, 1, 4),
        (Overlap.BUFFER_ALL, 5, 0),
        (Overlap.CANCEL_OTHER, 1, 4),
        (Overlap.ALLOW_ALL, 5, 0),
    ],
)
def test_catch_up_after_three_hours_down(
    app: App, clock: ManualClock, policy: Overlap, fired: int, skipped: int
) -> None:
    s = make(app, every="15m", overlap=policy.value, catchup_seconds=3600)
    clock.advance(3 * 3600)  # 12 slots; the last hour's 5 are within the window
    result = fire(app)
    assert len(result.runs) == fired
    now = app.store.schedules.get(s.id)
    assert (now.fired, now.skipped, now.missed) == (fired, skipped, 7)
    (missed,) = [f for f in app.store.schedules.firings(s.id) if f.outcome == "missed"]
    assert missed.detail == {"count": 7, "first": T0 + 900}
    assert now.next_slot == clock.now() + 900
    keys = [r.idempotency_key for r in result.runs]
    assert len(set(keys)) == len(keys)
    if policy is Overlap.CANCEL_OTHER:
        assert keys == [slot_key(s.id, clock.now())], "the latest slot"
    if policy in (Overlap.BUFFER_ALL, Overlap.BUFFER_ONE, Overlap.CANCEL_OTHER):
        assert {r.session_key for r in result.runs} == {f"schedule:{s.id}"}, "one at a time"


def test_overlap_with_a_run_still_going(app: App, clock: ManualClock) -> None:
    skip = make(app, every="15m", overlap="skip")
    cancel = make(app, every="15m", overlap="cancel_other")
    buffer_one = make(app, every="15m", overlap="buffer_one")
    clock.advance(900)
    first = {r.labels["schedule"]: r for r in fire(app).runs}
    clock.advance(900)  # nothing ran the first runs: each is still queued
    second = fire(app)
    assert {r.labels["schedule"] for r in second.runs} == {cancel.id}, (
        "skip and buffer_one (one waiting already) made none"
    )
    assert second.cancel == [first[cancel.id].id]
    assert len(app.store.runs.claim("w", ["default"], 10, 30.0)) == 3  # now they run
    clock.advance(900)
    third = fire(app)
    assert {r.labels["schedule"] for r in third.runs} == {cancel.id, buffer_one.id}, (
        "buffer_one's run started: one more may wait; skip's has not finished"
    )
    assert skip.id not in {r.labels["schedule"] for r in third.runs}


def test_bad_specs_are_refused_naming_the_field(app: App) -> None:
    cases = [
        ({"cron": "61 * * * *"}, "cron", "minute field: 61 is out of range 0-59"),
        ({"cron": "* * 32 * *"}, "cron", "day-of-month field: 32 is out of range 1-31"),
        ({"cron": "* * * *"}, "cron", "needs 5 fields"),
        ({"cron": "@fortnightly"}, "cron", "unknown nickname"),
        ({"cron": "0 8 * * 1", "timezone": "Mars/Olympus"}, "timezone", "IANA"),
        ({"every": "10s"}, "every", "at least 60"),
        ({"every": "soon"}, "every", "not a duration"),
        ({"every": "1h", "phase": 3600}, "phase", "less than the interval"),
        ({"every": "1h", "start_at": T0, "end_at": T0 - 1}, "end_at", "after start_at"),
        ({"every": "1h", "cron": "@daily"}, "cron", "one of them"),
        ({}, "cron", "one of them"),
        ({"every": "1h", "workflow": "nope"}, "workflow", "not a workflow"),
        ({"every": "1h", "overlap": "sometimes"}, "overlap", "must be one of"),
        ({"every": "1h", "input": {"surprise": 1}}, None, "surprise"),
    ]
    for spec, field, message in cases:
        with pytest.raises(InvalidInput) as caught:
            make(app, **spec)
        assert message in str(caught.value), (spec, caught.value)
        if field is not None:
            assert [e["field"] for e in caught.value.errors] == [field]
    assert app.store.schedules.list_schedules() == [], "nothing was made"


def test_a_schedule_whose_workflow_is_gone_is_paused_with_a_note(
    app: App, clock: ManualClock
) -> None:
    s = make(app, every="15m")
    other = make(app, every="15m", name="still fine")
    del app.workflows["sync"]

    @app.workflow(name="sync2")
    async def sync2(ctx: RunContext) -> int:
        return 1

    app.store.schedules.update(other.id, {"workflow": "sync2", "input": "{}"}, actor="a")
    clock.advance(900)
    result = fire(app)
    assert result.paused == [s.id]
    assert [r.workflow for r in result.runs] == ["sync2"], "the other schedule still fired"
    paused = app.store.schedules.get(s.id)
    assert paused.paused and paused.paused_by == "greenroom"
    assert "sync" in (paused.pause_note or "")
    clock.advance(900)
    assert fire(app).paused == [], "not retried"
    settle_events(app.store)
    found = app.store.events.list_events(EventFilter(subject=f"schedule:{s.id}"))
    assert [e.type for e, _ in found] == ["schedule.paused"]


def test_pause_resume_trigger_and_backfill(app: App, clock: ManualClock) -> None:
    s = make(app, every="15m")
    with pytest.raises(InvalidInput):
        app.store.schedules.pause(s.id, note="", actor="ops")
    app.store.schedules.pause(s.id, note="vendor maintenance", actor="ops")
    clock.advance(3600)
    assert fire(app).runs == []
    run = app.store.schedules.trigger(s.id, service.preparer(app), actor="ops")
    assert run.labels["schedule"] == s.id
    finish_all(app)  # else the next slot is skipped: its run has not finished (overlap skip)
    resumed = app.store.schedules.resume(s.id, actor="ops")
    assert resumed.next_slot == clock.now() + 900, "the paused slots are not caught up"
    clock.advance(900)
    (fired,) = fire(app).runs
    backfill = app.store.schedules.backfill
    prepare = service.preparer(app)
    dry = backfill(s.id, prepare, start=T0, end=clock.now(), actor="ops")
    assert [slot for slot, _ in dry] == [T0 + 900 * k for k in range(6)], "from start, inclusive"
    assert [r.id if r else None for _, r in dry][-1] == fired.id
    assert sum(r is None for _, r in dry) == 5
    made = backfill(s.id, prepare, start=T0, end=clock.now(), actor="ops", dry_run=False)
    assert all(r is not None for _, r in made)
    again = backfill(s.id, prepare, start=T0, end=clock.now(), actor="ops", dry_run=False)
    assert [r.id for _, r in again if r] == [r.id for _, r in made if r], "no new runs"
    actions = [a.action for a in app.store.admin.audit_log(tenant="t1")]
    for action in ("schedule.pause", "schedule.trigger", "schedule.resume", "schedule.backfill"):
        assert action in actions


def test_jitter_and_end(app: App, clock: ManualClock) -> None:
    s = make(app, every="15m", jitter=3600, end_at=T0 + 1800, overlap="allow_all")
    assert s.next_due is not None and T0 + 900 <= s.next_due <= T0 + 900 + 450
    spec = Spec.checked(every=900, jitter=3600)
    assert spec.due(s.id, T0 + 900) == s.next_due, "every scheduler computes the same"
    clock.advance(1800 + 450)  # past both slots and their jitter
    assert len(fire(app).runs) == 2
    ended = app.store.schedules.get(s.id)
    assert ended.next_slot is None and ended.next_due is None
    clock.advance(3600)
    assert fire(app).runs == []


def test_declared_schedules_are_made_once_and_paused_when_gone(app: App) -> None:
    service.sync_declared(app)
    service.sync_declared(app)
    (declared,) = app.store.schedules.list_schedules(tenant="default")
    assert (declared.name, declared.workflow, declared.every_seconds) == ("report", "report", 900)
    assert declared.origin == "app"
    app.workflows["report"] = app.workflows["report"].__class__(
        name="report", fn=app.workflows["report"].fn, schedule="0 8 * * 1"
    )
    service.sync_declared(app)
    assert app.store.schedules.get(declared.id).cron == "0 8 * * 1"
    del app.workflows["report"]
    service.sync_declared(app)
    gone = app.store.schedules.get(declared.id)
    assert gone.paused and gone.pause_note == "no longer declared by the app"


async def test_workers_fire_schedules_and_run_them(db_url: str) -> None:
    app = fast_app(db_url, schedules_enabled=True, schedule_min_interval_seconds=1.0)

    @app.workflow(name="tick")
    async def tick(ctx: RunContext) -> int:
        return 1

    register_tenant(app.store, "t1")
    lags = "greenroom_schedule_firing_lag_seconds_count"
    lags_before = REGISTRY.get_sample_value(lags) or 0
    try:
        s = service.create(
            app, "t1", ScheduleRequest(name="tick", workflow="tick", every=1.0), actor="a"
        )
        async with worker_running(app), worker_running(app):  # two schedulers racing
            deadline = time.monotonic() + 30
            while app.store.schedules.get(s.id).fired < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        fired = app.store.schedules.get(s.id)
        assert fired.fired >= 3
        with app.store.backend.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT id, idempotency_key FROM runs WHERE idempotency_key LIKE :p",
                {"p": f"schedule:{s.id}:%"},
            )
        keys = [r["idempotency_key"] for r in rows]
        assert len(keys) == len(set(keys)) == fired.fired
        assert (REGISTRY.get_sample_value(lags) or 0) - lags_before == fired.fired
        lag = REGISTRY.get_sample_value("greenroom_schedule_firing_lag_seconds_sum")
        assert lag is not None and lag / (lags_before + fired.fired) < 30
        done = await wait_for_states(app.store, [r["id"] for r in rows][:3], timeout=30)
        assert {r.state for r in done} == {RunState.SUCCEEDED}
    finally:
        app.close()


def test_the_minimum_interval_holds_for_cron_too(db_url: str) -> None:
    app = fast_app(db_url, schedule_min_interval_seconds=300.0)

    @app.workflow(name="sync")
    async def sync(ctx: RunContext) -> int:
        return 1

    register_tenant(app.store, "t1")
    try:
        with pytest.raises(InvalidInput, match="60 seconds apart: at least 300"):
            make(app, cron="* * * * *")
        assert make(app, cron="*/5 * * * *").cron == "*/5 * * * *"
        assert make(app, cron="0 8 * * 1", end_at=T0 + 86400).cron == "0 8 * * 1"
    finally:
        app.close()
