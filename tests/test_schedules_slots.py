"""Firing after a long downtime, with more slots than one round lists (MAX_SLOTS)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from greenroom import App, ManualClock, RunContext
from greenroom.demo.setup import register_tenant
from greenroom.schedules import service
from greenroom.schedules.service import ScheduleRequest
from greenroom.storage import schedules as stored
from tests.helpers import fast_app


@pytest.fixture
def app(db_url: str, clock: ManualClock) -> Iterator[App]:
    app = fast_app(db_url, clock)

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
