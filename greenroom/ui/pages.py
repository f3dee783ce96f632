"""The console's pages: views over the same route functions the API serves (so the same store
calls, tenant scoping and redaction), rendered as HTML."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Self
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, StringConstraints, TypeAdapter
from starlette.concurrency import run_in_threadpool

from greenroom.api.database import DatabaseRoute
from greenroom.api.routes import controls, integrations, observe, runs
from greenroom.api.schemas import Id, LabelFilter, Page, RowId, RunOut
from greenroom.model import Role, RunState
from greenroom.rules import Name, Text
from greenroom.ui import charts, live
from greenroom.ui.access import Visitor, ui_state, visitor
from greenroom.ui.render import page
from greenroom.ui.tenant import tenant_of

router = APIRouter(route_class=DatabaseRoute, include_in_schema=False)
Who = Annotated[Visitor, Depends(visitor)]
PAGE_SIZE = 50
RUN_ID = TypeAdapter(Id)
ROW_ID = TypeAdapter(RowId)
LIVE = ("queued", "delayed", "running", "paused")
ENDED = ("succeeded", "failed", "cancelled")
AUDIT_CURSOR = TypeAdapter(Annotated[str, StringConstraints(pattern=r"^[0-9]{1,18}$")] | None)


class ListQuery(BaseModel):
    """A list page's filters from its query string, with the API's types (empty form fields
    are left out)."""

    model_config = ConfigDict(extra="ignore")

    @classmethod
    def of(cls, request: Request) -> Self:
        return cls.model_validate({k: v for k, v in request.query_params.items() if v.strip()})

    def link(self, **changes: Any) -> str:
        """This query string with `changes` (None drops a field); defaults are left out."""
        fields = self.model_dump(mode="json", exclude_defaults=True)
        fields.update(changes)
        return urlencode(
            {
                k: str(v).lower() if isinstance(v, bool) else v
                for k, v in fields.items()
                if v is not None
            }
        )


class RunsQuery(ListQuery):
    """The runs list's filters."""

    state: RunState | None = None
    workflow: Text | None = None
    tenant: Name | None = None
    integration: Id | None = None
    label: LabelFilter | None = None
    error_group: Text | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    cursor: runs.Cursor | None = None


def context(who: Visitor, **more: Any) -> dict[str, Any]:
    """What every page's template is given: the caller, the CSRF token and its powers."""
    return {
        "who": who.caller,
        "csrf": who.csrf,
        "operator": who.may(Role.OPERATOR),
        **more,
    }


@router.get("/")
async def overview(request: Request, who: Who) -> Response:
    """Runs not ended by state, the last day's ends, the last hours' ends as sparklines,
    queues, workers and the latest error groups."""
    state = ui_state(request).api
    tenant = tenant_of(request, who)
    queues = await run_in_threadpool(controls.list_queues, state, who.caller, tenant)
    totals: dict[str, int] = {s.value: 0 for s in RunState}
    for q in queues:
        for name, count in q.counts.items():
            totals[name] = totals.get(name, 0) + count
    ended = await run_in_threadpool(controls.throughput, state, who.caller, 6, tenant)
    workers = (
        await run_in_threadpool(observe.list_workers, state, who.caller, False)
        if who.caller.platform
        else None
    )
    groups = await run_in_threadpool(observe.list_error_groups, state, who.caller, tenant, 5)
    return page(
        request,
        "overview.html",
        context(
            who,
            tenant=tenant,
            live={s: totals[s] for s in LIVE},
            ended={s: totals[s] for s in ENDED},
            sparks=charts.sparks(ended),
            queues=queues,
            workers=workers,
            groups=groups,
            now=state.store.clock.now(),
        ),
    )


async def _runs_page(request: Request, who: Visitor) -> tuple[RunsQuery, Page[RunOut]]:
    query = RunsQuery.of(request)
    query = query.model_copy(update={"tenant": tenant_of(request, who)})
    found = await runs.list_runs(
        ui_state(request).api,
        who.caller,
        run_state=None if query.state is None else [query.state],
        workflow=query.workflow,
        integration=query.integration,
        label=query.label,
        error_group=query.error_group,
        created_after=query.created_after,
        created_before=query.created_before,
        tenant=query.tenant,
        cursor=query.cursor,
        limit=PAGE_SIZE,
    )
    return query, found


@router.get("/runs")
async def runs_list(request: Request, who: Who) -> Response:
    """Runs, newest first, filtered; the first page's rows refresh themselves."""
    query, found = await _runs_page(request, who)
    marker = (  # an older page does not change: it has no stream
        None
        if query.cursor
        else await run_in_threadpool(live.runs_marker, request, who, query.tenant)
    )
    return page(
        request,
        "runs.html",
        context(
            who,
            query=query,
            page=found,
            states=[s.value for s in RunState],
            live=live.live_url(marker, tenant=query.tenant),
        ),
    )


@router.get("/runs/rows")
async def runs_rows(request: Request, who: Who) -> Response:
    """The rows alone, for the list's polling."""
    query, found = await _runs_page(request, who)
    return page(request, "_run_rows.html", context(who, query=query, page=found))


@router.get("/runs/{run_id}")
async def run_detail(request: Request, run_id: str, who: Who) -> Response:
    """A run: state, steps, input and output (redacted as the API returns them), error,
    screenshots, artifacts and the actions the key's role allows."""
    run_id = RUN_ID.validate_python(run_id)
    marker = await run_in_threadpool(live.run_marker, request, who, run_id)  # before the read
    detail = await runs.get_run(run_id, ui_state(request).api, who.caller)
    shots = [a for a in detail.artifacts if a.kind == "screenshot"]
    return page(
        request,
        "run.html",
        context(
            who,
            run=detail,
            screenshots=shots,
            text_kinds=TEXT_KINDS,
            live=live.live_url(marker, run=run_id),
        ),
    )


@router.get("/runs/{run_id}/artifacts/{artifact_id}")
async def artifact(request: Request, run_id: str, artifact_id: str, who: Who) -> Response:
    """One artifact of a run the key may see (404 for another tenant's), as the API's
    download: screenshots show inline in <img>, other files download."""
    return await run_in_threadpool(
        runs.download_artifact,
        RUN_ID.validate_python(run_id),
        ROW_ID.validate_python(artifact_id, strict=False),
        ui_state(request).api,
        who.caller,
    )


#: Artifacts that read as text: shown escaped in a page, never rendered.
TEXT_KINDS = frozenset({"html", "log"})
#: The most of an artifact a page shows (artifacts are capped when saved, too).
MAX_SHOWN = 512 * 1024


@router.get("/runs/{run_id}/artifacts/{artifact_id}/text")
async def artifact_text(request: Request, run_id: str, artifact_id: str, who: Who) -> Response:
    """A saved page's (redacted) HTML or a console log, as text in a page: what the browser
    saw at the failure, without rendering it."""
    found = await run_in_threadpool(
        runs.download_artifact,
        RUN_ID.validate_python(run_id),
        ROW_ID.validate_python(artifact_id, strict=False),
        ui_state(request).api,
        who.caller,
    )
    text = bytes(found.body[:MAX_SHOWN]).decode("utf-8", errors="replace")
    return page(
        request,
        "artifact.html",
        context(
            who, run_id=run_id, artifact_id=artifact_id, text=text, cut=len(found.body) > MAX_SHOWN
        ),
    )


@router.get("/errors")
async def errors(request: Request, who: Who) -> Response:
    """Failures grouped by fingerprint, latest first, with bulk retry for operators."""
    state = ui_state(request).api
    tenant = tenant_of(request, who)
    groups = await run_in_threadpool(observe.list_error_groups, state, who.caller, tenant, 100)
    return page(request, "errors.html", context(who, tenant=tenant, groups=groups))


@router.get("/pauses")
async def pauses(request: Request, who: Who) -> Response:
    """Pauses in force (a tenant sees its own and the platform's), with resume and a form to
    pause a queue, tenant, workflow, session or label for operators."""
    found = await run_in_threadpool(controls.list_pauses, ui_state(request).api, who.caller)
    return page(request, "pauses.html", context(who, pauses=found))


@router.get("/audit")
async def audit(request: Request, who: Who) -> Response:
    """Admin actions, newest first: who, when, what, why; a page at a time."""
    tenant = tenant_of(request, who)
    cursor = AUDIT_CURSOR.validate_python(request.query_params.get("cursor") or None)
    found = await run_in_threadpool(
        observe.audit_log, ui_state(request).api, who.caller, tenant, cursor, PAGE_SIZE
    )
    return page(request, "audit.html", context(who, tenant=tenant, page=found))


@router.get("/integrations")
async def integrations_list(request: Request, who: Who) -> Response:
    """Each integration's connector, status and settings, and when its credentials were last
    set (they are never shown: admins may replace them)."""
    tenant = tenant_of(request, who)
    found = await run_in_threadpool(
        integrations.list_integrations, ui_state(request).api, who.caller, None, tenant
    )
    return page(
        request,
        "integrations.html",
        context(who, tenant=tenant, integrations=found, admin=who.may(Role.ADMIN)),
    )
