"""Request and response bodies of schedules (greenroom.schedules): what the schema can state of
a spec (shapes, lengths, ranges); cron semantics, time zones and the shortest interval (a
setting) are checked by greenroom.schedules.spec and answered naming the body field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field, StringConstraints, field_validator

from greenroom.api.schemas import Body, Id
from greenroom.model import Run, Schedule, ScheduleFiring
from greenroom.rules import (
    MAX_NAME,
    MAX_REASON,
    MAX_SECONDS,
    MAX_UNIX_TIME,
    JsonObject,
    Labels,
    Name,
    text,
)
from greenroom.schedules import service
from greenroom.schedules.service import MAX_CATCHUP, ScheduleRequest
from greenroom.schedules.spec import invalid
from greenroom.storage.schedule_plans import spec_of

if TYPE_CHECKING:
    from greenroom.app import App

#: Upcoming slots each schedule shows.
NEXT_FIRINGS = 5
#: Five fields of cron characters, or a nickname (@daily); the fields' ranges are checked
#: beyond what this says.
CRON_PATTERN = r"^\s*(@[A-Za-z]+|[0-9A-Za-z*?,/#-]+( +[0-9A-Za-z*?,/#-]+){4})\s*$"
Cron = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=CRON_PATTERN)]
DURATION_PATTERN = r"^[0-9]{1,9}(\.[0-9]{1,6})?[smhd]?$"
Every = (
    Annotated[float, Field(gt=0, le=MAX_SECONDS)]
    | Annotated[str, StringConstraints(max_length=20, pattern=DURATION_PATTERN)]
)
TimeZone = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_+/-]*$")
]
#: ISO 8601 (UTC without an offset): its fields' ranges are checked beyond what this says.
ISO_PATTERN = (
    r"^(19[7-9][0-9]|20[0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?)?"
    r"(Z|[+-](0[0-9]|1[0-3]):?[0-5][0-9])?$"
)
UnixTime = Annotated[float, Field(ge=0, le=MAX_UNIX_TIME)]
Moment = UnixTime | Annotated[str, StringConstraints(max_length=40, pattern=ISO_PATTERN)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
OverlapName = Literal["skip", "buffer_one", "buffer_all", "cancel_other", "allow_all"]


def unix_time(value: float | str) -> float:
    """ISO 8601 (UTC if it has no offset) or Unix time, as Unix time."""
    if not isinstance(value, str):
        return float(value)
    moment = datetime.fromisoformat(value)
    found = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if not 0 <= found <= MAX_UNIX_TIME:
        raise ValueError(f"must be from 1970 to {MAX_UNIX_TIME:.0f} (Unix time)")
    return found


def checked_moment(value: Any) -> Any:
    if isinstance(value, str):
        try:
            unix_time(value)
        except ValueError as exc:
            raise ValueError(f"not a valid ISO 8601 time: {exc}") from None
    return value


class ScheduleUpdate(Body):
    """Fields left out stay as they are; a new `cron` replaces an interval and a new `every`
    a cron expression."""

    name: Annotated[str, text(MAX_NAME, 1)] | None = None
    workflow: Annotated[str, text(200, 1)] | None = Field(
        None, examples=["demo.sync_users"], description="one of the app's workflows"
    )
    integration: Id | None = Field(None, description="runs for this integration")
    cron: Cron | None = Field(
        None,
        examples=["0 8 * * mon-fri"],
        description="five fields (minute hour day-of-month month day-of-week) or @daily …;"
        " not with every",
    )
    every: Every | None = Field(
        None,
        examples=["15m"],
        description="an interval: seconds, or 90s, 15m, 1h, 1d (at least a setting's"
        " minimum, 60 s by default); not with cron",
    )
    phase: Seconds | None = Field(
        None, description="seconds after the interval's slots from the Unix epoch"
    )
    timezone: TimeZone | None = Field(
        None, examples=["Europe/Berlin"], description="an IANA time zone (cron's); default UTC"
    )
    start_at: Moment | None = Field(None, description="no slot before: ISO 8601 or Unix time")
    end_at: Moment | None = Field(None, description="no slot after: ISO 8601 or Unix time")
    jitter: Seconds | None = Field(
        None, description="seconds at most a firing is delayed (less than half the interval)"
    )
    input: JsonObject | None = Field(
        None, description="the runs' input; {slot} and {schedule} in strings are filled in"
    )
    labels: Labels | None = None
    overlap: OverlapName | None = Field(
        None, description="what a slot does while the previous run has not finished"
    )
    catchup_seconds: Annotated[float, Field(ge=0, le=MAX_CATCHUP)] | None = Field(
        None, description="slots missed by downtime are fired if found within this long"
    )

    @field_validator("start_at", "end_at")
    @classmethod
    def _moment(cls, value: Any) -> Any:
        return checked_moment(value)

    def request(self) -> ScheduleRequest:
        given = self.model_dump(exclude_unset=True, exclude={"tenant"})
        for key in ("start_at", "end_at"):
            if given.get(key) is not None:
                given[key] = unix_time(given[key])
        return ScheduleRequest(**given)


class ScheduleCreate(ScheduleUpdate):
    name: Annotated[str, text(MAX_NAME, 1)]
    workflow: Annotated[str, text(200, 1)] = Field(
        examples=["demo.sync_users"], description="one of the app's workflows"
    )
    tenant: Name | None = Field(None, description="platform keys only")


class NextFiring(BaseModel):
    at: str = Field(description="ISO 8601 in the schedule's time zone")
    unix: float


class ScheduleOut(BaseModel):
    id: str
    tenant: str
    name: str
    workflow: str
    integration: str | None
    cron: str | None
    every_seconds: float | None
    phase_seconds: float
    timezone: str
    start_at: float | None
    end_at: float | None
    jitter_seconds: float
    input: dict[str, Any]
    labels: dict[str, str]
    overlap: str
    catchup_seconds: float
    paused: bool
    pause_note: str | None
    paused_by: str | None
    paused_at: float | None
    next_slot: float | None = Field(description="the first slot not handled yet")
    next_due: float | None = Field(description="when it fires: the slot plus its jitter")
    next_firings: list[NextFiring] = Field(
        description=f"the next {NEXT_FIRINGS} slots (none while paused or once ended)"
    )
    last_slot: float | None
    last_fired_at: float | None
    last_run_id: str | None
    fired: int
    skipped: int
    missed: int
    origin: str = Field(description="api: made by an admin; app: declared by a workflow")
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, s: Schedule) -> ScheduleOut:
        fields = {k: v for k, v in vars(s).items() if k != "overlap"}
        return cls(**fields, overlap=s.overlap.value, next_firings=next_firings(s))


def shown(moment: float, timezone: str) -> str:
    return datetime.fromtimestamp(moment, ZoneInfo(timezone)).isoformat()


def next_firings(s: Schedule, count: int = NEXT_FIRINGS) -> list[NextFiring]:
    """The schedule's next slots from the first one not handled yet."""
    if s.paused or s.next_slot is None:
        return []
    slots = [s.next_slot, *spec_of(s).slots(s.next_slot, MAX_UNIX_TIME, limit=count - 1)]
    return [NextFiring(at=shown(slot, s.timezone), unix=slot) for slot in slots]


class ScheduleFiringOut(BaseModel):
    id: int
    schedule_id: str
    slot: float | None = Field(description="none for a run triggered by hand")
    at: float
    outcome: str = Field(
        description="fired, skipped, missed (count in detail), triggered, backfilled"
    )
    run_id: str | None
    detail: dict[str, Any] | None

    @classmethod
    def of(cls, f: ScheduleFiring) -> ScheduleFiringOut:
        return cls.model_validate(f, from_attributes=True)


class SchedulePause(Body):
    note: Annotated[str, text(MAX_REASON, 1)] = Field(
        examples=["vendor maintenance until Monday"], description="why; audited"
    )


class BackfillIn(Body):
    start: Moment = Field(description="ISO 8601 (UTC without an offset) or Unix time")
    end: Moment = Field(description="ISO 8601 or Unix time; slots after now are left out")
    dry_run: bool = Field(True, description="only list the slots and the runs they have")

    @field_validator("start", "end")
    @classmethod
    def _moment(cls, value: Any) -> Any:
        return checked_moment(value)


class BackfillSlot(BaseModel):
    slot: float
    at: str = Field(description="ISO 8601 in the schedule's time zone")
    run_id: str | None = Field(description="its run (none in a dry run for a slot without one)")
    new: bool = Field(description="made by this backfill (or, in a dry run, would be)")


class BackfillOut(BaseModel):
    dry_run: bool
    slots: list[BackfillSlot]


def run_backfill(
    app: App, schedule_id: str, body: BackfillIn, *, actor: str, tenant: str | None
) -> BackfillOut:
    """A backfill as the API answers it (and the command line's local operations): which
    slots are new is what a dry run found without a run."""
    start, end = unix_time(body.start), unix_time(body.end)
    app.store.schedules.get(schedule_id, tenant=tenant)  # another tenant's: 404 first
    if end < start:
        raise invalid("end", "must not be before start")
    store, prepare = app.store.schedules, service.preparer(app)

    def slots(dry_run: bool) -> list[tuple[float, Run | None]]:
        return store.backfill(
            schedule_id,
            prepare,
            start=start,
            end=end,
            actor=actor,
            tenant=tenant,
            dry_run=dry_run,
        )

    before = slots(True)
    had = {slot for slot, run in before if run is not None}
    done = before if body.dry_run else slots(False)
    timezone = store.get(schedule_id, tenant=tenant).timezone
    return BackfillOut(
        dry_run=body.dry_run,
        slots=[
            BackfillSlot(
                slot=slot,
                at=shown(slot, timezone),
                run_id=None if run is None else run.id,
                new=slot not in had,
            )
            for slot, run in done
        ],
    )
