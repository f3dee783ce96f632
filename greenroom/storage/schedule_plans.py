"""What a round of firing does with a due schedule's slots: which fire, which are skipped by
its overlap policy or missed outside its catch-up window, and the runs, prepared before the
transaction that fires them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from greenroom.errors import ConfigError, Conflict, InvalidInput, NotFound
from greenroom.model import FINISHED_STATES, NewRun, Overlap, Run, RunState, Schedule
from greenroom.schedules.spec import MAX_SLOTS, Spec
from greenroom.storage.backend import Row, Tx
from greenroom.storage.codec import dumps, schedule_from_row
from greenroom.storage.outbox import NewEvent

#: Makes a schedule's run for a slot (None: triggered by hand) with this idempotency key;
#: raises InvalidInput, NotFound or ConfigError when it cannot (its workflow is gone).
Prepare = Callable[[Schedule, "float | None", str], NewRun]
NOT_STARTED = frozenset({RunState.QUEUED, RunState.DELAYED, RunState.PAUSED})


def slot_key(schedule_id: str, slot: float) -> str:
    """The idempotency key of a slot's run: the same for every scheduler and for backfills."""
    return f"schedule:{schedule_id}:{slot:.3f}"


def spec_of(schedule: Schedule) -> Spec:
    return Spec(
        cron=schedule.cron,
        every=schedule.every_seconds,
        phase=schedule.phase_seconds,
        timezone=schedule.timezone,
        start_at=schedule.start_at,
        end_at=schedule.end_at,
        jitter=schedule.jitter_seconds,
    )


@dataclass
class Fired:
    """What a round of firing did: runs made, and runs to cancel (cancel_other)."""

    runs: list[Run] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    #: Schedules paused because their runs cannot be made (the workflow is gone).
    paused: list[str] = field(default_factory=list)
    #: Schedules the round took (fired, skipped, missed or paused): the limit when more wait.
    taken: int = 0
    #: Per run made for a slot, seconds from the slot to now (greenroom.metrics).
    lags: list[float] = field(default_factory=list)


@dataclass
class Plan:
    """One schedule's part of a round."""

    schedule: Schedule
    runs: list[tuple[float | None, NewRun]] = field(default_factory=list)
    skipped: list[float] = field(default_factory=list)
    missed: list[float] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    problem: str | None = None
    #: More slots up to now than one round lists (MAX_SLOTS): the next round takes them.
    more: bool = False


def plan_slots(
    s: Schedule, now: float, last_state: RunState | None, prepare: Prepare
) -> Plan | None:
    """What to do with the slots from the schedule's next one up to now, by its catch-up
    window and overlap policy; None to leave it for the next round (it changed since its runs
    were prepared)."""
    plan = Plan(s)
    assert s.next_slot is not None
    spec = spec_of(s)
    slots = [s.next_slot, *spec.slots(s.next_slot, now, limit=MAX_SLOTS - 1)]
    following = spec.slot_after(slots[-1]) if len(slots) >= MAX_SLOTS else None
    plan.more = following is not None and following <= now
    window_start = now - s.catchup_seconds
    plan.missed = [slot for slot in slots if slot < window_start]
    active = last_state is not None and last_state not in FINISHED_STATES
    waiting = last_state in NOT_STARTED
    recent = [slot for slot in slots if slot >= window_start]
    if s.overlap is Overlap.CANCEL_OTHER and recent:
        # Each would cancel the one before: only the latest slot's run is made.
        plan.skipped, recent = recent[:-1], recent[-1:]
        if active and s.last_run_id is not None:
            plan.cancel.append(s.last_run_id)
    for slot in recent:
        if active and (s.overlap is Overlap.SKIP or (s.overlap is Overlap.BUFFER_ONE and waiting)):
            plan.skipped.append(slot)
            continue
        try:
            new = prepare(s, slot, slot_key(s.id, slot))
        except NotPrepared:
            return None
        except (InvalidInput, NotFound, ConfigError) as exc:
            return Plan(s, problem=f"its runs cannot be made: {exc}")
        plan.runs.append((slot, new))
        active = waiting = True
    return plan


class NotPrepared(Exception):
    """A run `_prepared` did not make: its schedule changed since."""


def prepared(prepare: Prepare, wanted: Sequence[tuple[Schedule, float | None, str]]) -> Prepare:
    """`prepare` run now, before the write transaction, for these runs; the Prepare returned
    answers with what it made (or raises what it raised). Preparing a run reads the store (its
    integration): inside the transaction it would wait for itself on SQLite, whose one
    connection that transaction holds."""
    made: dict[tuple[str, float, str], NewRun | Exception] = {}
    for schedule, slot, key in wanted:
        try:
            made[schedule.id, schedule.updated_at, key] = prepare(schedule, slot, key)
        except (InvalidInput, NotFound, ConfigError) as exc:
            made[schedule.id, schedule.updated_at, key] = exc

    def answer(schedule: Schedule, slot: float | None, key: str) -> NewRun:
        found = made.get((schedule.id, schedule.updated_at, key))
        if found is None:
            raise NotPrepared(key)
        if isinstance(found, Exception):
            raise found
        return found

    return answer


def prepared_run(ready: Prepare, s: Schedule, slot: float | None, key: str) -> NewRun:
    """A prepared run; the schedule changed while it was prepared: a conflict to try again."""
    try:
        return ready(s, slot, key)
    except NotPrepared:
        raise Conflict(f"schedule {s.id} changed meanwhile: try again") from None


def due_runs(row: Row, now: float) -> list[tuple[Schedule, float | None, str]]:
    """The runs a due schedule may make this round: its slots within the catch-up window."""
    try:
        s = schedule_from_row(row)
    except (ValueError, TypeError, KeyError):
        return []  # paused as unreadable in the transaction
    assert s.next_slot is not None
    slots = [s.next_slot, *spec_of(s).slots(s.next_slot, now, limit=MAX_SLOTS - 1)]
    return [(s, t, slot_key(s.id, t)) for t in slots if t >= now - s.catchup_seconds]


def firing(
    s: Schedule,
    slot: float | None,
    now: float,
    outcome: str,
    run_id: str | None = None,
    *,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "schedule_id": s.id,
        "tenant": s.tenant,
        "slot": slot,
        "at": now,
        "outcome": outcome,
        "run_id": run_id,
        "detail": None if detail is None else dumps(detail),
    }


def insert_firings(tx: Tx, firings: list[dict[str, Any]]) -> None:
    if firings:
        tx.execute_many(
            "INSERT INTO schedule_firings (schedule_id, tenant, slot, at, outcome, run_id,"
            " detail) VALUES (:schedule_id, :tenant, :slot, :at, :outcome, :run_id, :detail)",
            firings,
        )


def new_event(s: Schedule, kind: str, payload: dict[str, Any]) -> NewEvent:
    return NewEvent(s.tenant, kind, f"schedule:{s.id}", payload)
