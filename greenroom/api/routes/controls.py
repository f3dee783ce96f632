"""/v1/queues and /v1/pauses: queue settings and counts, pause and resume at any scope.

A tenant key's pauses hold only its tenant's runs; a platform key's hold every tenant's (or one
tenant's, if it names it). Queue settings are shared by all tenants: only platform keys set them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from greenroom.api.auth import Caller, Operator, Platform, Viewer
from greenroom.api.database import DatabaseRoute
from greenroom.api.problems import ApiError, responses
from greenroom.api.routes.runs import scope
from greenroom.api.schemas import (
    EndedOut,
    PauseCreate,
    PauseOut,
    QueueOut,
    QueuePause,
    QueueResume,
    QueueUpdate,
    ResumeOut,
    RowId,
    ThroughputOut,
)
from greenroom.api.state import ApiState, get_state
from greenroom.model import ALL_TENANTS, PauseScope
from greenroom.rules import Name, text

router = APIRouter(prefix="/v1", tags=["queues and pauses"], route_class=DatabaseRoute)
State = Annotated[ApiState, Depends(get_state)]
NOT_FOUND = responses(404)
QueueName = Annotated[str, text(200, 1)]
TenantQuery = Annotated[Name | None, Query(description="platform keys: count one tenant")]


def _pause_tenant(who: Caller, tenant: str | None) -> str:
    """Whose runs a new pause holds."""
    if who.tenant is None:
        return tenant or ALL_TENANTS
    return who.acting_for(tenant)


@router.get("/queues", response_model=list[QueueOut], tags=["queues and pauses"])
def list_queues(
    state: State,
    who: Caller = Viewer,
    tenant: TenantQuery = None,
) -> list[QueueOut]:
    """Every queue: its settings, runs by state (the caller's tenant's), throughput, pause."""
    return [QueueOut.of(q) for q in state.store.controls.queues(tenant=scope(who, tenant))]


#: Stretches a throughput answer has, whatever its span.
STRETCHES = 60


@router.get("/throughput", response_model=ThroughputOut)
def throughput(
    state: State,
    who: Caller = Viewer,
    hours: Annotated[int, Query(ge=1, le=24, description="how far back")] = 6,
    tenant: TenantQuery = None,
) -> ThroughputOut:
    """Runs ended by outcome (the caller's tenant's) in 60 stretches of the last `hours`,
    read from the index on end time: what the console's sparklines draw."""
    width = hours * 3600 / STRETCHES
    now = state.store.clock.now()
    since = (now // width + 1) * width - hours * 3600  # whole stretches, the last one now's
    ended = state.store.controls.ended(
        since=since, width=width, count=STRETCHES, tenant=scope(who, tenant)
    )
    return ThroughputOut(
        since=since,
        width=width,
        stretches=[EndedOut.model_validate(e, from_attributes=True) for e in ended],
    )


@router.get("/queues/{name}", response_model=QueueOut, responses=NOT_FOUND)
def get_queue(
    name: QueueName,
    state: State,
    who: Caller = Viewer,
    tenant: TenantQuery = None,
) -> QueueOut:
    return QueueOut.of(state.store.controls.queue(name, tenant=scope(who, tenant)))


@router.patch("/queues/{name}", response_model=QueueOut)
def update_queue(
    name: QueueName, body: QueueUpdate, state: State, who: Caller = Platform
) -> QueueOut:
    """Change a queue's limits, retry defaults or lock tuning, at run time (audited); a queue
    set before its runs come is created, so that they find their limits in place."""
    changes = body.model_dump(exclude_unset=True, exclude={"reason"})
    state.store.controls.set_queue(name, actor=who.actor, reason=body.reason, **changes)
    return QueueOut.of(state.store.controls.queue(name, tenant=who.tenant))


@router.post("/queues/{name}/pause", response_model=PauseOut, responses=NOT_FOUND)
def pause_queue(
    name: QueueName, body: QueuePause, state: State, who: Caller = Operator
) -> PauseOut:
    state.store.controls.queue(name)
    pause = state.store.controls.pause(
        PauseScope.QUEUE,
        name,
        actor=who.actor,
        reason=body.reason,
        tenant=_pause_tenant(who, None),
        drain=body.drain,
    )
    return PauseOut.of(pause)


@router.post("/queues/{name}/resume", response_model=ResumeOut, responses=NOT_FOUND)
def resume_queue(
    name: QueueName, body: QueueResume, state: State, who: Caller = Operator
) -> ResumeOut:
    resumed = state.store.controls.resume(
        PauseScope.QUEUE,
        name,
        actor=who.actor,
        reason=body.reason,
        tenant=_pause_tenant(who, None),
    )
    return ResumeOut(resumed=resumed)


@router.get("/pauses", response_model=list[PauseOut])
def list_pauses(state: State, who: Caller = Viewer) -> list[PauseOut]:
    """Pauses in force; a tenant sees its own and the platform's."""
    return [PauseOut.of(p) for p in state.store.controls.pauses(tenant=who.tenant)]


@router.post("/pauses", status_code=201, response_model=PauseOut)
def create_pause(body: PauseCreate, state: State, who: Caller = Operator) -> PauseOut:
    """Hold every matching run that has not started (drain) or also stop running ones at their
    next step (drain=false). Pausing what is already paused returns the existing pause."""
    if body.scope == "tenant" and who.tenant is not None and body.value != who.tenant:
        raise ApiError(403, f"this key acts for tenant {who.tenant!r} only")
    pause = state.store.controls.pause(
        body.scope,
        body.value,
        actor=who.actor,
        reason=body.reason,
        label=body.label,
        tenant=_pause_tenant(who, body.tenant),
        drain=body.drain,
    )
    return PauseOut.of(pause)


@router.post("/pauses/{pause_id}/resume", response_model=ResumeOut, responses=NOT_FOUND)
def resume_pause(
    pause_id: RowId, body: QueueResume, state: State, who: Caller = Operator
) -> ResumeOut:
    """Lift a pause: the runs it held (and no other pause holds) go back in their order."""
    for pause in state.store.controls.pauses(tenant=who.tenant):
        if pause.id == pause_id:
            if who.tenant is not None and pause.tenant != who.tenant:
                raise ApiError(403, "a platform pause is lifted by a platform key")
            resumed = state.store.controls.resume(
                pause.scope,
                pause.value,
                actor=who.actor,
                reason=body.reason,
                label=pause.label,
                tenant=pause.tenant,
            )
            return ResumeOut(resumed=resumed)
    raise ApiError(404, f"pause {pause_id} not found")
