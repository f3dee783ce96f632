"""/v1/schedules: runs of a workflow at cron or interval slots, made and changed by admins,
triggered and backfilled by operators (as they start and retry runs), read by viewers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from greenroom.api.auth import Admin, Caller, Operator, Viewer
from greenroom.api.database import DatabaseRoute
from greenroom.api.problems import responses
from greenroom.api.routes.runs import scope
from greenroom.api.schedule_schemas import (
    BackfillIn,
    BackfillOut,
    ScheduleCreate,
    ScheduleFiringOut,
    ScheduleOut,
    SchedulePause,
    ScheduleUpdate,
    run_backfill,
)
from greenroom.api.schemas import Id, RunOut
from greenroom.api.state import ApiState, get_state
from greenroom.errors import InvalidInput
from greenroom.rules import Name
from greenroom.schedules import service

router = APIRouter(prefix="/v1/schedules", tags=["schedules"], route_class=DatabaseRoute)
State = Annotated[ApiState, Depends(get_state)]
NOT_FOUND = responses(c404="no such schedule (or another tenant's)")


@contextmanager
def body_fields() -> Iterator[None]:
    """The service names a request's fields (`cron`); the API names them where they were
    (`body.cron`), as its own validation does."""
    try:
        yield
    except InvalidInput as exc:
        if not exc.errors:
            raise
        errors = [{**e, "field": f"body.{e['field']}"} for e in exc.errors]
        raise InvalidInput(str(exc), errors=errors) from None


@router.get("", response_model=list[ScheduleOut])
def list_schedules(
    state: State,
    who: Caller = Viewer,
    tenant: Annotated[Name | None, Query(description="platform keys: one tenant")] = None,
    integration: Annotated[Id | None, Query(description="one integration's")] = None,
) -> list[ScheduleOut]:
    found = state.store.schedules.list_schedules(tenant=scope(who, tenant), integration=integration)
    return [ScheduleOut.of(s) for s in found]


@router.post(
    "",
    status_code=201,
    response_model=ScheduleOut,
    responses=responses(
        c404="no such integration (or another tenant's)",
        c409="the tenant has a schedule of this name",
    ),
)
def create_schedule(body: ScheduleCreate, state: State, who: Caller = Admin) -> ScheduleOut:
    """Run a workflow at cron or interval slots from the next one after now. Audited."""
    tenant = who.acting_for(body.tenant)
    with body_fields():
        made = service.create(state.app, tenant, body.request(), actor=who.actor)
    return ScheduleOut.of(made)


@router.get("/{schedule_id}", response_model=ScheduleOut, responses=NOT_FOUND)
def get_schedule(schedule_id: Id, state: State, who: Caller = Viewer) -> ScheduleOut:
    return ScheduleOut.of(state.store.schedules.get(schedule_id, tenant=who.tenant))


@router.patch(
    "/{schedule_id}",
    response_model=ScheduleOut,
    responses=responses(
        c404="no such schedule or integration (or another tenant's)",
        c409="the tenant has a schedule of this name",
    ),
)
def update_schedule(
    schedule_id: Id, body: ScheduleUpdate, state: State, who: Caller = Admin
) -> ScheduleOut:
    """Change it; a new spec fires from its next slot after now. Audited."""
    with body_fields():
        updated = service.update(
            state.app, schedule_id, body.request(), actor=who.actor, tenant=who.tenant
        )
    return ScheduleOut.of(updated)


@router.delete("/{schedule_id}", status_code=204, responses=NOT_FOUND)
def delete_schedule(schedule_id: Id, state: State, who: Caller = Admin) -> Response:
    """Remove it; the runs it made stay. Audited."""
    state.store.schedules.delete(schedule_id, actor=who.actor, tenant=who.tenant)
    return Response(status_code=204)


@router.post("/{schedule_id}/pause", response_model=ScheduleOut, responses=NOT_FOUND)
def pause_schedule(
    schedule_id: Id, body: SchedulePause, state: State, who: Caller = Admin
) -> ScheduleOut:
    """Stop firing, saying why; runs already made are not touched. Audited."""
    paused = state.store.schedules.pause(
        schedule_id, note=body.note, actor=who.actor, tenant=who.tenant
    )
    return ScheduleOut.of(paused)


@router.post("/{schedule_id}/resume", response_model=ScheduleOut, responses=NOT_FOUND)
def resume_schedule(schedule_id: Id, state: State, who: Caller = Admin) -> ScheduleOut:
    """Fire again from the next slot after now (the paused slots are not caught up). Audited."""
    resumed = state.store.schedules.resume(schedule_id, actor=who.actor, tenant=who.tenant)
    return ScheduleOut.of(resumed)


@router.post("/{schedule_id}/trigger", status_code=201, response_model=RunOut, responses=NOT_FOUND)
def trigger_schedule(schedule_id: Id, state: State, who: Caller = Operator) -> RunOut:
    """A run now, as the schedule makes them, whatever its slots and overlap policy. Audited."""
    run = state.store.schedules.trigger(
        schedule_id, service.preparer(state.app), actor=who.actor, tenant=who.tenant
    )
    return RunOut.of(run)


@router.post("/{schedule_id}/backfill", response_model=BackfillOut, responses=NOT_FOUND)
def backfill_schedule(
    schedule_id: Id, body: BackfillIn, state: State, who: Caller = Operator
) -> BackfillOut:
    """The slots from start to end (up to now) with their runs; unless dry_run, a run for each
    slot that has none. Idempotent: a slot's run is made once. Audited unless dry_run."""
    with body_fields():
        return run_backfill(
            state.app,
            schedule_id,
            body,
            actor=who.actor,
            tenant=who.tenant,
        )


@router.get("/{schedule_id}/firings", response_model=list[ScheduleFiringOut], responses=NOT_FOUND)
def schedule_firings(
    schedule_id: Id,
    state: State,
    who: Caller = Viewer,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[ScheduleFiringOut]:
    """The latest firings, skips and misses, newest first."""
    found = state.store.schedules.firings(schedule_id, tenant=who.tenant, limit=limit)
    return [ScheduleFiringOut.of(f) for f in found]
