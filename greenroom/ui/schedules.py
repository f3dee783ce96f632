"""The console's schedules: the list, a schedule with its recent firings, and the operator
actions the API offers (trigger now, backfill with a dry run first; pause and resume for
admins), through the API's route functions so roles, tenant scoping and audit are the API's.
Creating and changing schedules stays in the API and the command line."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from greenroom.api.database import DatabaseRoute
from greenroom.api.routes import schedules
from greenroom.api.schedule_schemas import BackfillIn, SchedulePause
from greenroom.model import Role
from greenroom.ui.access import Visitor, checked_form, require, ui_state, visitor
from greenroom.ui.pages import RUN_ID, context
from greenroom.ui.render import page
from greenroom.ui.session import PATH
from greenroom.ui.tenant import tenant_of

router = APIRouter(route_class=DatabaseRoute, include_in_schema=False)
Who = Annotated[Visitor, Depends(visitor)]
#: Firings a schedule's page shows (the API's default page of them).
FIRINGS = 50


@router.get("/schedules")
async def schedules_list(request: Request, who: Who) -> Response:
    """Each schedule's workflow, spec and time zone, next due time, pause and last firing."""
    tenant = tenant_of(request, who)
    found = await run_in_threadpool(
        schedules.list_schedules, ui_state(request).api, who.caller, tenant, None
    )
    return page(request, "schedules.html", context(who, tenant=tenant, schedules=found))


@router.get("/schedules/{schedule_id}")
async def schedule_detail(request: Request, schedule_id: str, who: Who) -> Response:
    """A schedule, its next firings and its latest firings with the runs they made."""
    state = ui_state(request).api
    wanted = RUN_ID.validate_python(schedule_id)
    found = await run_in_threadpool(schedules.get_schedule, wanted, state, who.caller)
    firings = await run_in_threadpool(
        schedules.schedule_firings, wanted, state, who.caller, FIRINGS
    )
    return page(
        request,
        "schedule.html",
        context(who, schedule=found, firings=firings, admin=who.may(Role.ADMIN)),
    )


@router.post("/schedules/{schedule_id}/trigger")
async def trigger(request: Request, schedule_id: str, who: Who) -> Response:
    """A run now, as the schedule makes them (operators, as in the API); its page follows."""
    await checked_form(request, who)
    require(who, Role.OPERATOR)
    run = await run_in_threadpool(
        schedules.trigger_schedule,
        RUN_ID.validate_python(schedule_id),
        ui_state(request).api,
        who.caller,
    )
    return RedirectResponse(f"{PATH}/runs/{run.id}", status_code=303)


@router.post("/schedules/{schedule_id}/pause")
async def pause(request: Request, schedule_id: str, who: Who) -> Response:
    """Stop firing, with the note the API requires (admins, as in the API)."""
    form = await checked_form(request, who)
    require(who, Role.ADMIN)
    body = SchedulePause.model_validate({"note": form.get("note", "")})
    wanted = RUN_ID.validate_python(schedule_id)
    await run_in_threadpool(
        schedules.pause_schedule, wanted, body, ui_state(request).api, who.caller
    )
    return RedirectResponse(f"{PATH}/schedules/{wanted}", status_code=303)


@router.post("/schedules/{schedule_id}/resume")
async def resume(request: Request, schedule_id: str, who: Who) -> Response:
    """Fire again from the next slot after now (admins, as in the API)."""
    await checked_form(request, who)
    require(who, Role.ADMIN)
    wanted = RUN_ID.validate_python(schedule_id)
    await run_in_threadpool(schedules.resume_schedule, wanted, ui_state(request).api, who.caller)
    return RedirectResponse(f"{PATH}/schedules/{wanted}", status_code=303)


@router.post("/schedules/{schedule_id}/backfill")
async def backfill(request: Request, schedule_id: str, who: Who) -> Response:
    """The slots from a start to an end (UTC) with their runs: a dry run lists them and which
    are new; its button makes a run for each new slot (operators, as in the API)."""
    form = await checked_form(request, who)
    require(who, Role.OPERATOR)
    body = BackfillIn.model_validate(
        {
            "start": form.get("start", ""),
            "end": form.get("end", ""),
            "dry_run": form.get("dry_run", "true") != "false",
        }
    )
    wanted = RUN_ID.validate_python(schedule_id)
    done = await run_in_threadpool(
        schedules.backfill_schedule, wanted, body, ui_state(request).api, who.caller
    )
    return page(
        request,
        "backfill.html",
        context(
            who,
            schedule_id=wanted,
            done=done,
            start=form.get("start", ""),
            end=form.get("end", ""),
            new=sum(1 for s in done.slots if s.new),
        ),
    )
