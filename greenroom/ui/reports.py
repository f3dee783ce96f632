"""The console's reports: the reports made for the tenant (or, for a platform key, every tenant),
newest period first with the API's cursor, and their files to download, through the API's route
functions so roles and tenant scoping are the API's."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from greenroom.api.database import DatabaseRoute
from greenroom.api.report_schemas import CURSOR_PATTERN
from greenroom.api.routes import reports
from greenroom.rules import Name
from greenroom.ui.access import Visitor, ui_state, visitor
from greenroom.ui.pages import PAGE_SIZE, ListQuery, context
from greenroom.ui.render import page

router = APIRouter(route_class=DatabaseRoute, include_in_schema=False)
Who = Annotated[Visitor, Depends(visitor)]


class ReportsQuery(ListQuery):
    tenant: Name | None = None
    cursor: Annotated[str, Field(max_length=80, pattern=CURSOR_PATTERN)] | None = None


@router.get("/reports")
async def reports_list(request: Request, who: Who) -> Response:
    """Reports newest period first, each with its files."""
    state = ui_state(request).api
    query = ReportsQuery.of(request)
    found = await run_in_threadpool(
        reports.list_reports, state, who.caller, None, query.tenant, query.cursor, PAGE_SIZE
    )
    return page(request, "reports.html", context(who, tenant=query.tenant, query=query, page=found))


@router.get("/reports/{report_id}/files/{name}")
async def report_file(request: Request, report_id: str, name: str, who: Who) -> Response:
    """A report's file, as GET /v1/reports/{id}/files/{name} gives it."""
    state = ui_state(request).api
    return await run_in_threadpool(reports.download_report_file, report_id, name, state, who.caller)
