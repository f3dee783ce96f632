"""/v1/report-subscriptions and /v1/reports: who gets which report when, and the reports made
(docs/reports.md)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from greenroom.api.auth import Admin, Caller, Operator, Viewer
from greenroom.api.database import DatabaseRoute
from greenroom.api.problems import ApiError, responses
from greenroom.api.report_schemas import (
    CURSOR_PATTERN,
    FileName,
    ReportOut,
    ReportRunIn,
    ReportRunOut,
    ReportSubscriptionCreate,
    ReportSubscriptionCreated,
    ReportSubscriptionOut,
    ReportSubscriptionUpdate,
    ReportType,
    ResendIn,
    decode_cursor,
    encode_cursor,
    parse_at,
)
from greenroom.api.routes.runs import scope
from greenroom.api.schemas import Id, Page
from greenroom.api.state import ApiState, get_state
from greenroom.delivery.address import AddressPolicy
from greenroom.model import Channel, Role
from greenroom.reports import service
from greenroom.rules import Name

router = APIRouter(prefix="/v1", tags=["reports"], route_class=DatabaseRoute)
State = Annotated[ApiState, Depends(get_state)]
TenantQuery = Annotated[Name | None, Query(description="platform keys: one tenant")]
NO_SUBSCRIPTION = responses(c404="no such report subscription (or another tenant's)")
NO_REPORT = responses(c404="no such report (or another tenant's)")


@router.get("/report-subscriptions", response_model=list[ReportSubscriptionOut])
def list_report_subscriptions(
    state: State, who: Caller = Viewer, tenant: TenantQuery = None
) -> list[ReportSubscriptionOut]:
    found = state.store.reports.subscriptions(tenant=scope(who, tenant))
    return [ReportSubscriptionOut.of(s) for s in found]


@router.post(
    "/report-subscriptions",
    status_code=201,
    response_model=ReportSubscriptionCreated,
    responses=responses(c404="no such registered tenant"),
)
def create_report_subscription(
    body: ReportSubscriptionCreate, state: State, who: Caller = Admin
) -> ReportSubscriptionCreated:
    """Subscribe e-mail addresses and webhooks to a report, made on a schedule in the tenant's
    time zone. Webhooks' signing secrets are in this answer only. Audited."""
    made = service.subscribe(
        state.app,
        state.keyring if any(c.channel == "webhook" for c in body.channels) else None,
        AddressPolicy.of(state.app.settings),
        tenant=who.acting_for(body.tenant),
        report_type=body.report_type,
        period=body.period,
        timezone=body.timezone,
        cron=body.cron,
        destinations=[
            service.Destination(channel=Channel(c.channel), url=c.url) for c in body.channels
        ],
        actor=who.actor,
    )
    shown = ReportSubscriptionOut.of(made.subscription).model_dump()
    return ReportSubscriptionCreated(**shown, secrets=made.secrets)


@router.get(
    "/report-subscriptions/{subscription_id}",
    response_model=ReportSubscriptionOut,
    responses=NO_SUBSCRIPTION,
)
def get_report_subscription(
    subscription_id: Id, state: State, who: Caller = Viewer
) -> ReportSubscriptionOut:
    found = state.store.reports.subscription(subscription_id, tenant=who.tenant)
    return ReportSubscriptionOut.of(found)


@router.patch(
    "/report-subscriptions/{subscription_id}",
    response_model=ReportSubscriptionOut,
    responses=NO_SUBSCRIPTION,
)
def update_report_subscription(
    subscription_id: Id, body: ReportSubscriptionUpdate, state: State, who: Caller = Admin
) -> ReportSubscriptionOut:
    """Disable (its schedule pauses) or enable it again. Audited."""
    updated = service.set_enabled(
        state.store, subscription_id, body.enabled, actor=who.actor, tenant=who.tenant
    )
    return ReportSubscriptionOut.of(updated)


@router.delete(
    "/report-subscriptions/{subscription_id}", status_code=204, responses=NO_SUBSCRIPTION
)
def delete_report_subscription(subscription_id: Id, state: State, who: Caller = Admin) -> Response:
    """Remove it with its schedule and event subscriptions; its reports stay. Audited."""
    service.unsubscribe(state.store, subscription_id, actor=who.actor, tenant=who.tenant)
    return Response(status_code=204)


@router.get("/reports", response_model=Page[ReportOut])
def list_reports(
    state: State,
    who: Caller = Viewer,
    report_type: Annotated[ReportType | None, Query(alias="type")] = None,
    tenant: TenantQuery = None,
    cursor: Annotated[
        str | None, Query(max_length=80, pattern=CURSOR_PATTERN, description="next_cursor")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Page[ReportOut]:
    """Newest period first."""
    found, after = state.store.reports.list_reports(
        tenant=scope(who, tenant),
        report_type=report_type,
        after=None if cursor is None else decode_cursor(cursor),
        limit=limit,
    )
    return Page(
        items=[ReportOut.of(r) for r in found],
        next_cursor=None if after is None else encode_cursor(after),
    )


@router.post("/reports", status_code=202, response_model=ReportRunOut)
def run_report(body: ReportRunIn, state: State, who: Caller = Operator) -> ReportRunOut:
    """Make a period's report now (a run on the reports queue). Its subscribers hear of a
    period once: `again` makes it again after a data fix, and tells nobody; `force_resend`
    (admins, with a reason: audited) tells them again."""
    resend = None
    if body.force_resend:
        if not who.role.allows(Role.ADMIN):
            raise ApiError(403, "force_resend needs an admin key")
        if body.reason is None:
            raise ApiError(422, "force_resend needs a reason (it goes to the audit log)")
        resend = (who.actor, body.reason)
    run = service.run_report(
        state.app,
        tenant=who.acting_for(body.tenant),
        report_type=body.report_type,
        period=body.period,
        timezone=body.timezone,
        at=time.time() if body.at is None else parse_at(body.at),
        again=body.again,
        resend=resend,
    )
    return ReportRunOut(run_id=run.id)


@router.get("/reports/{report_id}", response_model=ReportOut, responses=NO_REPORT)
def get_report(report_id: Id, state: State, who: Caller = Viewer) -> ReportOut:
    return ReportOut.of(state.store.reports.get(report_id, tenant=who.tenant))


@router.get(
    "/reports/{report_id}/files/{name}",
    response_class=Response,
    responses={
        **NO_REPORT,
        200: {"content": {"text/html": {}, "text/csv": {}}, "description": "the file"},
    },
)
def download_report_file(
    report_id: Id, name: FileName, state: State, who: Caller = Viewer
) -> Response:
    found, body = state.store.reports.file(report_id, name, tenant=who.tenant)
    return Response(
        body,
        media_type=found.content_type,
        headers={
            "content-disposition": f'attachment; filename="{found.name}"',
            "x-content-type-options": "nosniff",
            "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'",
        },
    )


@router.post("/reports/{report_id}/resend", response_model=ReportOut, responses=NO_REPORT)
def resend_report(report_id: Id, body: ResendIn, state: State, who: Caller = Admin) -> ReportOut:
    """Tell the report's subscribers again (a new report.ready event). Audited, with the
    reason."""
    resent = state.store.reports.resend(
        report_id,
        actor=who.actor,
        reason=body.reason,
        tenant=who.tenant,
        public_url=state.app.settings.public_url,
    )
    return ReportOut.of(resent)
