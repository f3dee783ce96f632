"""What the console's forms do: the API's own route functions (roles, tenant scoping, audit,
refusing a second retry of a run), after the CSRF token and the role are checked."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from greenroom.api.database import DatabaseRoute
from greenroom.api.routes import controls, integrations, runs
from greenroom.api.schemas import (
    BulkRetryRequest,
    CancelRequest,
    CredentialsIn,
    PauseCreate,
    QueueResume,
    RetryRequest,
)
from greenroom.errors import InvalidInput
from greenroom.model import Role
from greenroom.ui.access import Visitor, checked_form, require, ui_state, visitor
from greenroom.ui.pages import ROW_ID, RUN_ID
from greenroom.ui.render import page
from greenroom.ui.session import PATH

router = APIRouter(route_class=DatabaseRoute, include_in_schema=False)
Who = Annotated[Visitor, Depends(visitor)]


@router.post("/runs/{run_id}/cancel")
async def cancel(request: Request, run_id: str, who: Who) -> Response:
    form = await checked_form(request, who)
    require(who, Role.OPERATOR)
    body = CancelRequest.model_validate({"reason": form.get("reason", "")})
    run = await run_in_threadpool(
        runs.cancel_run, RUN_ID.validate_python(run_id), body, ui_state(request).api, who.caller
    )
    return RedirectResponse(f"{PATH}/runs/{run.id}", status_code=303)


def _new_input(text: str) -> Any:
    """The retry's new input: None (keep the run's) when the field is empty. Only what was
    typed is sent: the page shows the input redacted, and sending that back would lose secrets."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"the new input is not JSON: {exc}") from None


@router.post("/runs/{run_id}/retry")
async def retry(request: Request, run_id: str, who: Who) -> Response:
    """A new run from the failed step (its completed steps kept) or, with from_scratch, from
    the start; the page of the new run follows."""
    form = await checked_form(request, who)
    require(who, Role.OPERATOR)
    body = RetryRequest.model_validate(
        {
            "reason": form.get("reason", ""),
            "from_scratch": form.get("from_scratch") == "true",
            "input": _new_input(form.get("input", "")),
        }
    )
    run = await run_in_threadpool(
        runs.retry_run, RUN_ID.validate_python(run_id), body, ui_state(request).api, who.caller
    )
    return RedirectResponse(f"{PATH}/runs/{run.id}", status_code=303)


@router.post("/errors/retry")
async def retry_group(request: Request, who: Who) -> Response:
    """Retry an error group's failed runs from their failed steps: a dry run first (the
    preview says how many and from which steps), then the same form for real."""
    form = await checked_form(request, who)
    require(who, Role.OPERATOR)
    body = BulkRetryRequest.model_validate(
        {
            "error_group": form.get("error_group") or None,
            "tenant": form.get("tenant") or None,
            "reason": form.get("reason", ""),
            "dry_run": form.get("dry_run") != "false",
        }
    )
    done = await run_in_threadpool(runs.retry_runs, body, ui_state(request).api, who.caller)
    return page(
        request,
        "retry_preview.html",
        {
            "who": who.caller,
            "csrf": who.csrf,
            "operator": True,
            "body": body,
            "done": done,
        },
    )


@router.post("/pauses")
async def pause(request: Request, who: Who) -> Response:
    """Pause at any scope, with the API's rules (a tenant key pauses its own tenant only)."""
    form = await checked_form(request, who)
    require(who, Role.OPERATOR)
    body = PauseCreate.model_validate(
        {
            "scope": form.get("scope", ""),
            "value": form.get("value", ""),
            "label": form.get("label", ""),
            "drain": form.get("drain") != "false",
            "reason": form.get("reason", ""),
            "tenant": form.get("tenant") or None,
        }
    )
    await run_in_threadpool(controls.create_pause, body, ui_state(request).api, who.caller)
    return RedirectResponse(f"{PATH}/pauses", status_code=303)


@router.post("/pauses/{pause_id}/resume")
async def resume(request: Request, pause_id: str, who: Who) -> Response:
    form = await checked_form(request, who)
    require(who, Role.OPERATOR)
    body = QueueResume.model_validate({"reason": form.get("reason", "")})
    await run_in_threadpool(
        controls.resume_pause,
        ROW_ID.validate_python(pause_id, strict=False),
        body,
        ui_state(request).api,
        who.caller,
    )
    return RedirectResponse(f"{PATH}/pauses", status_code=303)


@router.post("/integrations/{integration_id}/credentials")
async def credentials(request: Request, integration_id: str, who: Who) -> Response:
    """Replace an integration's credentials (admins, as in the API): a JSON object, checked
    against the connector's credentials model and sealed; the page never shows them."""
    form = await checked_form(request, who)
    require(who, Role.ADMIN)
    try:
        given = json.loads(form.get("credentials", ""))
    except ValueError:
        raise InvalidInput("the credentials are not JSON") from None  # never echo them
    body = CredentialsIn.model_validate({"credentials": given})
    await run_in_threadpool(
        integrations.replace_credentials,
        RUN_ID.validate_python(integration_id),
        body,
        ui_state(request).api,
        who.caller,
    )
    return RedirectResponse(f"{PATH}/integrations", status_code=303)
