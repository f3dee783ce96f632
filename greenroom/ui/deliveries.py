"""The console's event deliveries: subscriptions (their endpoints as the API shows them, never a
secret), deliveries a page at a time with the API's cursor, a delivery's attempts, and the admin
actions the API offers (send a delivery's event again; enable or disable a subscription; send
a subscription what it missed),
through the API's route functions so roles, tenant scoping and audit are the API's."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from greenroom.api.database import DatabaseRoute
from greenroom.api.delivery_schemas import RecoverIn, ReplayIn, SubscriptionUpdate
from greenroom.api.routes import subscriptions
from greenroom.api.schedule_schemas import unix_time
from greenroom.api.schemas import Id, RowId
from greenroom.errors import InvalidInput
from greenroom.model import Role
from greenroom.rules import Name
from greenroom.ui.access import Visitor, checked_form, require, ui_state, visitor
from greenroom.ui.pages import PAGE_SIZE, ROW_ID, RUN_ID, ListQuery, context
from greenroom.ui.render import page
from greenroom.ui.session import PATH

router = APIRouter(route_class=DatabaseRoute, include_in_schema=False)
Who = Annotated[Visitor, Depends(visitor)]


class DeliveriesQuery(ListQuery):
    """The deliveries list's filters."""

    subscription: Id | None = None
    event: RowId | None = None
    failed: bool = False
    tenant: Name | None = None
    cursor: RowId | None = None


@router.get("/deliveries")
async def deliveries_list(request: Request, who: Who) -> Response:
    """Subscriptions, then deliveries newest first, filtered as GET /v1/deliveries filters."""
    state = ui_state(request).api
    query = DeliveriesQuery.of(request)
    subs = await run_in_threadpool(
        subscriptions.list_subscriptions, state, who.caller, query.tenant
    )
    found = await subscriptions.list_deliveries(
        state,
        who.caller,
        subscription=query.subscription,
        event=query.event,
        failed=query.failed,
        tenant=query.tenant,
        cursor=query.cursor,
        limit=PAGE_SIZE,
    )
    return page(
        request,
        "deliveries.html",
        context(
            who,
            tenant=query.tenant,
            query=query,
            subscriptions=subs,
            page=found,
            admin=who.may(Role.ADMIN),
        ),
    )


@router.get("/deliveries/{delivery_id}")
async def delivery_detail(request: Request, delivery_id: str, who: Who) -> Response:
    """A delivery's attempts: when, the answer's status and start, or the error."""
    wanted = ROW_ID.validate_python(delivery_id, strict=False)
    found = await run_in_threadpool(
        subscriptions.delivery_attempts, wanted, ui_state(request).api, who.caller
    )
    return page(
        request,
        "delivery.html",
        context(who, delivery_id=wanted, attempts=found, admin=who.may(Role.ADMIN)),
    )


@router.post("/deliveries/{delivery_id}/redeliver")
async def redeliver(request: Request, delivery_id: str, who: Who) -> Response:
    """Send the delivery's event again to its subscription, with the same webhook-id: the
    API's replay of that event to that subscription (admins; audited)."""
    await checked_form(request, who)
    require(who, Role.ADMIN)
    state = ui_state(request).api
    wanted = ROW_ID.validate_python(delivery_id, strict=False)
    found = await run_in_threadpool(state.store.deliveries.get, wanted, tenant=who.caller.tenant)
    body = ReplayIn.model_validate({"subscription": found.subscription_id})
    await run_in_threadpool(subscriptions.replay, found.event_id, state, body, who.caller)
    return RedirectResponse(
        f"{PATH}/deliveries?{urlencode({'subscription': found.subscription_id})}",
        status_code=303,
    )


async def _switch(request: Request, subscription_id: str, who: Visitor, on: bool) -> Response:
    await checked_form(request, who)
    require(who, Role.ADMIN)
    body = SubscriptionUpdate.model_validate({"enabled": on})
    await run_in_threadpool(
        subscriptions.update_subscription,
        RUN_ID.validate_python(subscription_id),
        body,
        ui_state(request).api,
        who.caller,
    )
    return RedirectResponse(f"{PATH}/deliveries", status_code=303)


@router.post("/subscriptions/{subscription_id}/enable")
async def enable(request: Request, subscription_id: str, who: Who) -> Response:
    """Enable a subscription again (one disabled for a gone or failing endpoint, say): it
    hears of events from now on; what it missed is POST /v1/deliveries/recover's."""
    return await _switch(request, subscription_id, who, True)


@router.post("/subscriptions/{subscription_id}/disable")
async def disable(request: Request, subscription_id: str, who: Who) -> Response:
    return await _switch(request, subscription_id, who, False)


@router.post("/subscriptions/{subscription_id}/recover")
async def recover(request: Request, subscription_id: str, who: Who) -> Response:
    """Send a subscription what it did not receive of the events since a time (failed
    deliveries, events while it was disabled): the API's recover, for admins; audited."""
    form = await checked_form(request, who)
    require(who, Role.ADMIN)
    wanted = RUN_ID.validate_python(subscription_id)
    try:
        since = unix_time(form.get("since", ""))
    except ValueError:
        raise InvalidInput("since: not a time (UTC)") from None
    body = RecoverIn.model_validate(
        {"since": since, "subscription": wanted, "tenant": form.get("tenant") or None}
    )
    await run_in_threadpool(subscriptions.recover, body, ui_state(request).api, who.caller)
    return RedirectResponse(
        f"{PATH}/deliveries?{urlencode({'subscription': wanted})}", status_code=303
    )
