"""Server-Sent Events for live pages: a stream watches a marker of the runs a page shows (the
caller's tenant's, or one run) and sends `change` when it moves; htmx's SSE extension then
fetches the part that changed. The store has no change feed for enqueues and claims, so each
stream reads the marker (a few index lookups) once a second; browsers fetch only on a change."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from greenroom.api.database import DatabaseRoute
from greenroom.api.routes.runs import scope
from greenroom.api.schemas import Id
from greenroom.errors import NotFound
from greenroom.rules import Name
from greenroom.ui.access import Visitor, ui_state, usable_key, visitor
from greenroom.ui.render import FINISHED

router = APIRouter(route_class=DatabaseRoute, include_in_schema=False)
log = logging.getLogger("greenroom.ui")
#: Seconds between two reads of a stream's marker.
TICK = 1.0
#: Reads between two checks that the session's key is still usable (revoked: the stream ends).
RECHECK = 10
#: A stream ends after this many seconds; the browser's EventSource connects again (signed in
#: again, its key checked as on any request).
LIFETIME = 300.0


def digest(marker: object) -> str:
    """A marker as pages carry it (`seen=`): short, and telling nothing of the runs."""
    return hashlib.sha256(repr(marker).encode()).hexdigest()[:16]


def live_url(marker: object, **params: str | None) -> str:
    """The stream a page listens to, with the marker the page was rendered at."""
    query = "&".join(f"{k}={v}" for k, v in params.items() if v)
    return f"/ui/live?{query}{'&' if query else ''}seen={digest(marker)}"


def runs_marker(request: Request, who: Visitor, tenant: str | None) -> object:
    return ui_state(request).api.store.watch.runs_marker(tenant=scope(who.caller, tenant))


def run_marker(request: Request, who: Visitor, run_id: str) -> object:
    store = ui_state(request).api.store
    found = store.watch.run_marker(run_id, tenant=who.caller.tenant)
    if found is None:
        raise NotFound(f"run {run_id!r} not found")
    return found


@router.get("/live")
async def live(
    request: Request,
    who: Annotated[Visitor, Depends(visitor)],
    run: Annotated[Id | None, Query()] = None,
    tenant: Annotated[Name | None, Query()] = None,
    seen: Annotated[str, Query(max_length=64)] = "",
) -> StreamingResponse:
    """`change` events while runs of the caller's tenant (or `run`) change; `end` once `run`
    has ended, after which the page closes the stream."""
    if run is not None:
        run_id = run
        read: Callable[[], object] = lambda: run_marker(request, who, run_id)  # noqa: E731
    else:
        read = lambda: runs_marker(request, who, tenant)  # noqa: E731
    first = await run_in_threadpool(read)  # 404 and 403 before the stream starts
    return StreamingResponse(
        _events(request, who, read, first, seen, one_run=run is not None),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _events(
    request: Request,
    who: Visitor,
    read: Callable[[], object],
    marker: object,
    seen: str,
    *,
    one_run: bool,
) -> AsyncIterator[str]:
    state = ui_state(request).api

    def ended() -> bool:
        return one_run and isinstance(marker, tuple) and marker[0] in FINISHED

    yield "retry: 2000\n\n"
    if digest(marker) != seen:  # it changed between the page and its stream
        yield "event: change\ndata: \n\n"
    ticks = 0
    while ticks * TICK < LIFETIME and not ended():
        await asyncio.sleep(TICK)
        ticks += 1
        if ticks % RECHECK == 0 and await run_in_threadpool(usable_key, state, who.session) is None:
            return
        try:
            now = await run_in_threadpool(read)
        except Exception as exc:  # the database is away: the browser reconnects later
            log.warning("live stream ended: %s", exc)
            return
        if now != marker:
            marker = now
            yield "event: change\ndata: \n\n"
    if ended():
        yield "event: end\ndata: \n\n"
