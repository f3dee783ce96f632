"""/v1/events: what happened to runs, pauses and integrations, in commit order (docs/events.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import StringConstraints
from starlette.concurrency import run_in_threadpool

from greenroom.api.auth import Caller, Viewer
from greenroom.api.database import DatabaseRoute
from greenroom.api.filters import unix_time
from greenroom.api.problems import responses
from greenroom.api.routes.runs import Moment, scope
from greenroom.api.schemas import OutboxEventOut, Page
from greenroom.api.state import ApiState, get_state
from greenroom.errors import InvalidInput
from greenroom.rules import Name
from greenroom.storage.events import TYPE_PATTERN, EventFilter, Position

router = APIRouter(prefix="/v1/events", tags=["events"], route_class=DatabaseRoute)
State = Annotated[ApiState, Depends(get_state)]

EventType = Annotated[str, StringConstraints(max_length=60, pattern=f"^{TYPE_PATTERN.pattern}$")]
Subject = Annotated[
    str, StringConstraints(min_length=3, max_length=250, pattern=r"^[a-z]+:[A-Za-z0-9._-]+$")
]
#: A position, as next_cursor gives it: the transaction and the id of a page's last event.
Cursor = Annotated[str, StringConstraints(max_length=40, pattern=r"^[0-9]{1,19}-[0-9]{1,19}$")]
_MAX = 2**63 - 1


def encode_cursor(position: Position) -> str:
    return f"{position[0]}-{position[1]}"


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(message, errors=[{"field": f"query.{field}", "message": message}])


def decode_cursor(cursor: str) -> Position:
    txid, _, event_id = cursor.partition("-")
    if int(txid) > _MAX or int(event_id) > _MAX:
        raise _invalid("cursor", "invalid cursor: pass next_cursor from the previous page")
    return int(txid), int(event_id)


NOT_FOUND = responses(c404="no such event to read after (or another tenant's, or pruned)")


@router.get("", response_model=Page[OutboxEventOut], responses=NOT_FOUND)
async def list_events(
    state: State,
    who: Caller = Viewer,
    event_type: Annotated[
        list[EventType] | None,
        Query(alias="type", max_length=20, description="a type, or a prefix: run.*"),
    ] = None,
    subject: Annotated[Subject | None, Query(description="kind:id, as run:<run id>")] = None,
    since: Moment = None,
    after: Annotated[
        int | None, Query(ge=1, le=_MAX, description="the events after this event id")
    ] = None,
    tenant: Annotated[Name | None, Query(description="platform keys: one tenant")] = None,
    cursor: Annotated[Cursor | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Page[OutboxEventOut]:
    """Events in the order their transactions committed, a page at a time. Unlike other
    lists, next_cursor is set on the last page too: it is where to ask again for the events
    that come later (an empty page means none yet)."""
    tenant = scope(who, tenant)
    if after is not None and cursor is not None:
        raise _invalid("after", "pass after or cursor, not both")
    position = None if cursor is None else decode_cursor(cursor)
    if after is not None:
        position = await run_in_threadpool(state.store.events.position, after, tenant=tenant)
    f = EventFilter(
        tenant=tenant,
        types=event_type or (),
        subject=subject,
        since=None if since is None else unix_time(since),
        after=position,
        limit=limit,
    )
    found = await run_in_threadpool(state.store.events.list_events, f)
    last = found[-1][1] if found else position
    return Page(
        items=[OutboxEventOut.of(e) for e, _ in found],
        next_cursor=None if last is None else encode_cursor(last),
    )
