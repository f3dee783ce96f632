"""The console's licenses: what acting on findings saves (GET /v1/savings), the findings a page
at a time with the API's filters and cursor, and the admins' keep, snooze and reclaim, through
the API's route functions so roles, tenant scoping and audit are the API's."""

from __future__ import annotations

from typing import Annotated, get_args

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import StringConstraints
from starlette.concurrency import run_in_threadpool

from greenroom.api.database import DatabaseRoute
from greenroom.api.license_schemas import (
    CURSOR_PATTERN,
    FindingActionIn,
    FindingState,
    Sort,
    Verdict,
)
from greenroom.api.routes import integrations, licenses
from greenroom.api.schemas import Id
from greenroom.model import Role
from greenroom.rules import Name
from greenroom.ui.access import Visitor, checked_form, require, ui_state, visitor
from greenroom.ui.pages import PAGE_SIZE, RUN_ID, ListQuery, context
from greenroom.ui.render import page
from greenroom.ui.session import PATH

router = APIRouter(route_class=DatabaseRoute, include_in_schema=False)
Who = Annotated[Visitor, Depends(visitor)]
Cursor = Annotated[str, StringConstraints(max_length=80, pattern=CURSOR_PATTERN)]
VERDICTS = get_args(Verdict)
STATES = get_args(FindingState)


class FindingsQuery(ListQuery):
    """The findings list's filters."""

    integration: Id | None = None
    state: FindingState | None = None
    verdict: Verdict | None = None
    open: bool = True
    sort: Sort = "savings"
    tenant: Name | None = None
    cursor: Cursor | None = None


@router.get("/licenses")
async def licenses_page(request: Request, who: Who) -> Response:
    """Savings per currency and integration, then the findings, largest savings first."""
    state = ui_state(request).api
    query = FindingsQuery.of(request)
    savings = await run_in_threadpool(licenses.savings, state, who.caller, query.tenant)
    found = await run_in_threadpool(
        licenses.list_findings,
        state,
        who.caller,
        query.integration,
        query.state,
        query.verdict,
        query.open,
        query.tenant,
        query.sort,
        query.cursor,
        PAGE_SIZE,
    )
    names = await run_in_threadpool(
        integrations.list_integrations, state, who.caller, None, query.tenant
    )
    return page(
        request,
        "licenses.html",
        context(
            who,
            tenant=query.tenant,
            query=query,
            savings=savings,
            page=found,
            names={i.id: i.name for i in names},
            verdicts=VERDICTS,
            states=STATES,
            admin=who.may(Role.ADMIN),
        ),
    )


@router.post("/findings/{finding_id}/actions")
async def act(request: Request, finding_id: str, who: Who) -> Response:
    """Keep the license, snooze the finding until a time, or reclaim the license (its
    connector's deactivate run, once): admins, with an audited note, as in the API."""
    form = await checked_form(request, who)
    require(who, Role.ADMIN)
    body = FindingActionIn.model_validate(
        {
            "action": form.get("action", ""),
            "note": form.get("note", ""),
            "until": form.get("until") or None,
        }
    )
    done = await run_in_threadpool(
        licenses.act_on_finding,
        RUN_ID.validate_python(finding_id),
        body,
        ui_state(request).api,
        who.caller,
    )
    if done.action_run_id is not None and body.action == "reclaim":
        return RedirectResponse(f"{PATH}/runs/{done.action_run_id}", status_code=303)
    return RedirectResponse(f"{PATH}/licenses", status_code=303)
