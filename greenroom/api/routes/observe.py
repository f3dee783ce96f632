"""/v1/errors, /v1/audit and /v1/workers: what failed, who did what, who is working."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from greenroom.api.auth import Caller, Platform, Viewer
from greenroom.api.database import DatabaseRoute
from greenroom.api.routes.runs import scope
from greenroom.api.schemas import AuditOut, ErrorGroupOut, Page, WorkerOut
from greenroom.api.state import ApiState, get_state
from greenroom.rules import Name

router = APIRouter(prefix="/v1", route_class=DatabaseRoute)
State = Annotated[ApiState, Depends(get_state)]


@router.get("/errors", response_model=list[ErrorGroupOut], tags=["errors"])
def list_error_groups(
    state: State,
    who: Caller = Viewer,
    tenant: Annotated[Name | None, Query(description="platform keys: one tenant")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[ErrorGroupOut]:
    """Failures grouped by fingerprint (error type, step, normalized message), latest first."""
    groups = state.store.admin.error_groups(tenant=scope(who, tenant), limit=limit)
    return [ErrorGroupOut.of(g) for g in groups]


@router.get("/audit", response_model=Page[AuditOut], tags=["audit"])
def audit_log(
    state: State,
    who: Caller = Viewer,
    tenant: Annotated[Name | None, Query(description="platform keys: one tenant")] = None,
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{1,18}$", description="next_cursor of the previous page"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Page[AuditOut]:
    """Admin actions, newest first: who, when, what, why."""
    before = None if cursor is None else int(cursor)
    entries = state.store.admin.audit_log(
        tenant=scope(who, tenant), limit=limit + 1, before_id=before
    )
    more = len(entries) > limit
    entries = entries[:limit]
    return Page(
        items=[AuditOut.of(e) for e in entries],
        next_cursor=str(entries[-1].id) if more else None,
    )


@router.get("/workers", response_model=list[WorkerOut], tags=["workers"])
def list_workers(
    state: State,
    who: Caller = Platform,
    include_gone: bool = False,
) -> list[WorkerOut]:
    """Worker processes, shared by every tenant (so platform keys only)."""
    return [WorkerOut.of(w) for w in state.store.runs.workers(include_gone=include_gone)]
