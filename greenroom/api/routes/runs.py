"""/v1/runs: start runs idempotently, list and follow them, cancel, retry, download artifacts."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import replace
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import JSONResponse
from pydantic import Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from greenroom.api.auth import Caller, Operator, Platform, Viewer
from greenroom.api.database import DatabaseRoute
from greenroom.api.filters import retry_filter, runs_filter
from greenroom.api.problems import ApiError, responses
from greenroom.api.schemas import (
    BulkRetryOut,
    BulkRetryRequest,
    CancelRequest,
    Id,
    LabelFilter,
    Page,
    PruneOut,
    PruneRequest,
    RetryRequest,
    RowId,
    RunCreate,
    RunDetail,
    RunOut,
)
from greenroom.api.state import ApiState, get_state
from greenroom.errors import InvalidInput
from greenroom.model import RunState
from greenroom.rules import MAX_NAME, Name, Text, text

router = APIRouter(prefix="/v1/runs", tags=["runs"], route_class=DatabaseRoute)
State = Annotated[ApiState, Depends(get_state)]
NOT_FOUND = responses(c404="no such run (or another tenant's)")


def request_hash(body: RunCreate, tenant: str) -> str:
    """What an idempotent create asked for; the same key with another request is a 409."""
    # Without a queue, the hash is the one of bodies from before `queue` existed: replays of
    # runs created then still match.
    left_out = {"tenant"} if body.queue is not None else {"tenant", "queue"}
    canonical = json.dumps(
        {"tenant": tenant, **body.model_dump(exclude=left_out)}, sort_keys=True, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def scope(who: Caller, tenant: str | None) -> str | None:
    """The tenant a read is limited to: a tenant key's own; a platform key's choice (or all)."""
    if who.tenant is None:
        return tenant
    if tenant is not None and tenant != who.tenant:
        raise ApiError(403, f"this key acts for tenant {who.tenant!r} only")
    return who.tenant


#: A time in a query: ISO 8601 or Unix time.
Moment = Annotated[
    Annotated[float, Field(allow_inf_nan=False)] | datetime | None,
    Query(description="ISO 8601 (UTC if it has no offset) or Unix time"),
]
#: A page cursor: base64url, as next_cursor gives it.
Cursor = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$")
]


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"seq": seq}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        doc = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        seq = doc["seq"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise InvalidInput("invalid cursor: pass next_cursor from the previous page") from None
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
        raise InvalidInput("invalid cursor: pass next_cursor from the previous page")
    return seq


@router.post(
    "",
    status_code=201,
    response_model=RunOut,
    responses={
        200: {"model": RunOut, "description": "replay: the run this Idempotency-Key created"},
        **responses(
            c404="no such integration (or another tenant's)",
            c409="the Idempotency-Key was used for another request",
        ),
    },
)
def create_run(
    body: RunCreate,
    state: State,
    who: Caller = Operator,
    idempotency_key: Annotated[
        Annotated[str, text(MAX_NAME, 1)] | None,
        Header(description="the same key and body answer the same run"),
    ] = None,
) -> Response:
    """Start a run. With an Idempotency-Key, repeating the same request returns the same run."""
    tenant = who.acting_for(body.tenant)
    wanted = request_hash(body, tenant)
    req = body.request(tenant, idempotency_key)
    run, created = state.store.runs.enqueue(replace(state.app.prepare(req), request_hash=wanted))
    if not created and run.request_hash != wanted:
        raise ApiError(409, "this Idempotency-Key was used for a different request")
    return JSONResponse(
        RunOut.of(run).model_dump(mode="json"),
        status_code=201 if created else 200,
        headers={"Location": f"/v1/runs/{run.id}"}
        | ({} if created else {"Idempotent-Replayed": "true"}),
    )


# The reads are async: their database call goes to the thread pool and the response is built
# on the event loop. A plain route would hand its response's validation to the pool as well,
# and every hand-off waits for a thread to be scheduled (finding 19 in bench/README.md).
@router.get("", response_model=Page[RunOut])
async def list_runs(
    state: State,
    who: Caller = Viewer,
    run_state: Annotated[list[RunState] | None, Query(alias="state", max_length=7)] = None,
    workflow: Text | None = None,
    queue: Text | None = None,
    integration: Annotated[Id | None, Query(description="not with label")] = None,
    label: Annotated[
        LabelFilter | None, Query(description="key=value; not with integration")
    ] = None,
    error_group: Text | None = None,
    created_after: Moment = None,
    created_before: Moment = None,
    finished_after: Moment = None,
    finished_before: Moment = None,
    tenant: Annotated[Name | None, Query(description="platform keys: one tenant")] = None,
    include_superseded: Annotated[
        bool, Query(description="also failed or cancelled runs that were retried")
    ] = False,
    cursor: Annotated[Cursor | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Page[RunOut]:
    """Runs, newest first, a page at a time."""
    f = runs_filter(
        tenant=scope(who, tenant),
        states=run_state,
        workflow=workflow,
        queue=queue,
        integration=integration,
        label=label,
        error_group=error_group,
        created_after=created_after,
        created_before=created_before,
        finished_after=finished_after,
        finished_before=finished_before,
        before_seq=None if cursor is None else decode_cursor(cursor),
        limit=limit + 1,
        include_superseded=include_superseded,
    )
    runs = await run_in_threadpool(state.store.runs.list_runs, f)
    more = len(runs) > limit
    runs = runs[:limit]
    return Page(
        items=[RunOut.of(r) for r in runs],
        next_cursor=encode_cursor(runs[-1].seq) if more else None,
    )


@router.get("/{run_id}", response_model=RunDetail, responses=NOT_FOUND)
async def get_run(run_id: Id, state: State, who: Caller = Viewer) -> RunDetail:
    """A run with its steps, its timeline and its diagnostic artifacts."""
    found = await run_in_threadpool(state.store.runs.run_detail, run_id, tenant=who.tenant)
    return RunDetail.of(found)


@router.post("/{run_id}/cancel", response_model=RunOut, responses=NOT_FOUND)
def cancel_run(run_id: Id, body: CancelRequest, state: State, who: Caller = Operator) -> RunOut:
    """Cancel a run: at once if it waits, at its next await if it runs."""
    run = state.store.runs.cancel(run_id, actor=who.actor, reason=body.reason, tenant=who.tenant)
    return RunOut.of(run)


@router.post(
    "/{run_id}/retry",
    status_code=201,
    response_model=RunOut,
    responses={**NOT_FOUND, **responses(c409="the run was retried already: retry its retry")},
)
def retry_run(run_id: Id, body: RetryRequest, state: State, who: Caller = Operator) -> RunOut:
    """A new run for a failed or cancelled one: from its failed step (its completed steps are
    kept) or from scratch, optionally with new input. A run retried already is refused (409,
    naming its retry) unless `force`. New input is checked against the workflow (422)."""
    new_input = body.input
    if new_input is not None:
        wf = state.app.workflows.get(state.store.runs.get_run(run_id, tenant=who.tenant).workflow)
        if wf is not None:
            # Inputs named like a setting are the store's to refuse, naming the integration.
            settings = (
                frozenset()
                if wf.connector is None
                else state.app.connectors[wf.connector].settings_fields()
            )
            if not settings & set(new_input):
                new_input = wf.inputs.check(new_input)
    run = state.store.admin.retry_run(
        run_id,
        actor=who.actor,
        reason=body.reason,
        tenant=who.tenant,
        from_scratch=body.from_scratch,
        input=new_input,
        force=body.force,
    )
    return RunOut.of(run)


@router.post("/retry", response_model=BulkRetryOut)
def retry_runs(body: BulkRetryRequest, state: State, who: Caller = Operator) -> BulkRetryOut:
    """Retry every failed (or cancelled) run matching a filter; dry_run (the default) only
    says how many and from which steps."""
    done = state.store.admin.retry_where(
        retry_filter(body, scope(who, body.tenant)),
        actor=who.actor,
        reason=body.reason,
        dry_run=body.dry_run,
        from_scratch=body.from_scratch,
    )
    return BulkRetryOut.of(done)


@router.post("/prune", response_model=PruneOut)
def prune_runs(body: PruneRequest, state: State, who: Caller = Platform) -> PruneOut:
    """Delete finished runs (their steps, timelines, artifacts and files) that finished more
    than older_than seconds ago, in small batches; dry_run (the default) only counts them.
    Platform keys only: retention is the platform's, across tenants."""
    deleted = state.store.admin.prune(
        older_than=body.older_than,
        states=[RunState(s) for s in body.state],
        delete_files=state.artifacts.delete_run,
        dry_run=body.dry_run,
    )
    return PruneOut(deleted=deleted, dry_run=body.dry_run)


@router.get(
    "/{run_id}/artifacts/{artifact_id}",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        **NOT_FOUND,
        **responses(c410="the artifact's file was removed (retention)"),
    },
)
def download_artifact(
    run_id: Id, artifact_id: RowId, state: State, who: Caller = Viewer
) -> Response:
    """One diagnostic file of a run: screenshot, page HTML, console log or Playwright trace."""
    run = state.store.runs.get_run(run_id, tenant=who.tenant)
    for artifact in state.store.sessions.artifacts(run.id):
        if artifact.id == artifact_id:
            try:
                data = state.artifacts.get(artifact.location)
            except OSError:
                raise ApiError(410, f"artifact {artifact_id} is no longer stored") from None
            filename = artifact.location.rsplit("/", 1)[-1]
            return Response(
                data,
                media_type=artifact.content_type,
                headers={"Content-Disposition": f'attachment; filename="{filename}"'},
            )
    raise ApiError(404, f"artifact {artifact_id} of run {run_id} not found")
