"""Rounds of firing: more slots due than one round lists (MAX_SLOTS), more schedules due than
one round takes (runner.BATCH)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from greenroom import App, ManualClock, RunContext
from greenroom.demo.setup import register_tenant
from greenroom.schedules import runner, service
from greenroom.schedules.service import ScheduleRequest
from greenroom.storage import schedule_plans as stored
from tests.helpers import fast_app


@pytest.fixture
def app(db_url: str, clock: ManualClock) -> Iterator[App]:
    # A long poll: a scheduler that waits for it between two rounds is seen waiting.
    app = fast_app(db_url, clock, poll_seconds=30.0)

    @app.workflow(name="tick")
    async def tick(ctx: RunContext) -> None:
        return None

    register_tenant(app.store, "acme")
    yield app
    app.close()


def test_slots_past_one_rounds_list_are_still_caught_up_or_counted(
    app: App, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Down for 100 slots while a round lists at most 50: the first round counts 50 missed;
    the next takes the rest, so the slots within the catch-up window still fire and every
    older slot is counted (none vanishes because the list was cut)."""
    monkeypatch.setattr(stored, "MAX_SLOTS", 50)
    req = ScheduleRequest(
        name="minutely", workflow="tick", every=60.0, overlap="allow_all", catchup_seconds=600.0
    )
    s = service.create(app, "acme", req, actor="test")
    assert s.next_slot is not None
    first = s.next_slot
    clock.advance(first - clock.now() + 99 * 60 + 1)  # slots first .. first + 99 min are due
    prepare = service.preparer(app)
    runs = []
    for _ in range(5):
        runs += app.store.schedules.fire_due(prepare).runs
    s = app.store.schedules.get(s.id)
    window_start = clock.now() - 600.0
    slots = [first + 60.0 * k for k in range(100)]
    recent = [x for x in slots if x >= window_start]
    assert len(recent) == 10
    assert s.missed == 90
    assert s.fired == 10
    keys = sorted(r.idempotency_key or "" for r in runs)
    assert keys == sorted(stored.slot_key(s.id, x) for x in recent)
    assert s.next_slot == first + 100 * 60.0


async def test_a_full_batch_of_skips_is_followed_by_the_next_round_at_once(
    app: App, clock: ManualClock
) -> None:
    """BATCH + 50 skip schedules due while their runs are still queued: the first round skips
    BATCH of them and makes no run; the scheduler goes on to the rest at once, not a poll
    later (it counted runs made, not schedules taken)."""
    count = runner.BATCH + 50
    for i in range(count):
        req = ScheduleRequest(name=f"s{i}", workflow="tick", every=60.0, overlap="skip")
        service.create(app, "acme", req, actor="test")
    clock.advance(60.0)
    prepare = service.preparer(app)
    assert len(app.store.schedules.fire_due(prepare, limit=count).runs) == count  # stay queued
    clock.advance(60.0)
    scheduler = runner.Scheduler(app)
    task = asyncio.create_task(scheduler.run())
    try:
        deadline = time.monotonic() + 10
        skipped = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            schedules = await asyncio.to_thread(app.store.schedules.list_schedules)
            skipped = sum(s.skipped for s in schedules)
            if skipped == count:
                break
        assert skipped == count, f"{skipped} of {count} skipped within 10 s (poll: 30 s)"
    finally:
        scheduler.stop()
        await task
