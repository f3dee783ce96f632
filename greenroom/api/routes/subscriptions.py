"""/v1/subscriptions and /v1/deliveries: where a tenant's events go, and how each delivery went
(docs/events.md, "Delivery")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from starlette.concurrency import run_in_threadpool

from greenroom.api.auth import Admin, Caller, Viewer
from greenroom.api.database import DatabaseRoute
from greenroom.api.delivery_schemas import (
    DeliveryAttemptOut,
    DeliveryOut,
    RecoverIn,
    RecoverOut,
    ReplayIn,
    SubscriptionCreate,
    SubscriptionOut,
    SubscriptionUpdate,
    SubscriptionWithSecret,
)
from greenroom.api.problems import responses
from greenroom.api.routes.runs import scope
from greenroom.api.schemas import Id, OutboxEventOut, Page, RowId
from greenroom.api.state import ApiState, get_state
from greenroom.delivery import subscriptions
from greenroom.delivery.address import AddressPolicy
from greenroom.model import Channel, Subscription
from greenroom.rules import Name
from greenroom.storage.deliveries import DeliveryFilter

router = APIRouter(prefix="/v1", tags=["events"], route_class=DatabaseRoute)
State = Annotated[ApiState, Depends(get_state)]
NOT_FOUND = responses(c404="no such subscription (or another tenant's)")


def _policy(state: ApiState) -> AddressPolicy:
    return AddressPolicy.of(state.app.settings)


def _with_secret(subscription: Subscription, secret: str | None) -> SubscriptionWithSecret:
    shown = SubscriptionOut.of(subscription).model_dump()
    return SubscriptionWithSecret(**shown, secret=secret)


@router.get("/subscriptions", response_model=list[SubscriptionOut])
def list_subscriptions(
    state: State,
    who: Caller = Viewer,
    tenant: Annotated[Name | None, Query(description="platform keys: one tenant")] = None,
) -> list[SubscriptionOut]:
    found = state.store.subscriptions.list_subscriptions(tenant=scope(who, tenant))
    return [SubscriptionOut.of(s) for s in found]


@router.post(
    "/subscriptions",
    status_code=201,
    response_model=SubscriptionWithSecret,
    responses=responses(c404="no such registered tenant"),
)
def create_subscription(
    body: SubscriptionCreate, state: State, who: Caller = Admin
) -> SubscriptionWithSecret:
    """Subscribe an endpoint to event types (and labels). A webhook's signing secret is in
    this answer only: store it now. Audited."""
    channel = Channel(body.channel)
    created, secret = subscriptions.create(
        state.store,
        state.keyring if channel is Channel.WEBHOOK else None,
        _policy(state),
        tenant=who.acting_for(body.tenant),
        channel=channel,
        spec=body.spec(),
        actor=who.actor,
    )
    return _with_secret(created, secret)


@router.get("/subscriptions/{subscription_id}", response_model=SubscriptionOut, responses=NOT_FOUND)
def get_subscription(subscription_id: Id, state: State, who: Caller = Viewer) -> SubscriptionOut:
    return SubscriptionOut.of(state.store.subscriptions.get(subscription_id, tenant=who.tenant))


@router.patch(
    "/subscriptions/{subscription_id}", response_model=SubscriptionOut, responses=NOT_FOUND
)
def update_subscription(
    subscription_id: Id, body: SubscriptionUpdate, state: State, who: Caller = Admin
) -> SubscriptionOut:
    """Change what it receives, where, or how fast; enable it again after it was disabled
    (deliveries it missed meanwhile: POST /v1/deliveries/recover). Audited."""
    updated = subscriptions.update(
        state.store,
        _policy(state),
        subscription_id,
        body.spec(),
        actor=who.actor,
        tenant=who.tenant,
    )
    return SubscriptionOut.of(updated)


@router.delete("/subscriptions/{subscription_id}", status_code=204, responses=NOT_FOUND)
def delete_subscription(subscription_id: Id, state: State, who: Caller = Admin) -> Response:
    """Remove it, and the deliveries it still had to make. Audited."""
    state.store.subscriptions.delete(subscription_id, actor=who.actor, tenant=who.tenant)
    return Response(status_code=204)


@router.post(
    "/subscriptions/{subscription_id}/rotate-secret",
    response_model=SubscriptionWithSecret,
    responses=NOT_FOUND,
)
def rotate_secret(subscription_id: Id, state: State, who: Caller = Admin) -> SubscriptionWithSecret:
    """A new signing secret, in this answer only. For 24 hours messages carry a signature by
    each secret, so the receiver can switch without refusing one. Audited."""
    rotated, secret = subscriptions.rotate_secret(
        state.store, state.keyring, subscription_id, actor=who.actor, tenant=who.tenant
    )
    return _with_secret(rotated, secret)


@router.get("/deliveries", response_model=Page[DeliveryOut])
async def list_deliveries(
    state: State,
    who: Caller = Viewer,
    subscription: Annotated[Id | None, Query(description="one subscription's")] = None,
    event: Annotated[RowId | None, Query(description="one event's")] = None,
    failed: Annotated[
        bool, Query(description="only those whose last attempt failed (given up or retrying)")
    ] = False,
    tenant: Annotated[Name | None, Query(description="platform keys: one tenant")] = None,
    cursor: Annotated[RowId | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Page[DeliveryOut]:
    """Newest first."""
    f = DeliveryFilter(
        tenant=scope(who, tenant),
        subscription_id=subscription,
        event_id=event,
        failed=failed,
        before=cursor,
        limit=limit,
    )
    found = await run_in_threadpool(state.store.deliveries.list_deliveries, f)
    more = len(found) == limit
    return Page(
        items=[DeliveryOut.of(d) for d in found],
        next_cursor=str(found[-1].id) if more and found else None,
    )


@router.get(
    "/deliveries/{delivery_id}/attempts",
    response_model=list[DeliveryAttemptOut],
    responses=responses(c404="no such delivery (or another tenant's)"),
)
def delivery_attempts(
    delivery_id: RowId, state: State, who: Caller = Viewer
) -> list[DeliveryAttemptOut]:
    """Each attempt: when, the answer's status, latency and start, or the error."""
    found = state.store.deliveries.attempts(delivery_id, tenant=who.tenant)
    return [DeliveryAttemptOut.of(a) for a in found]


@router.post(
    "/deliveries/recover",
    response_model=RecoverOut,
    responses=NOT_FOUND,
)
def recover(body: RecoverIn, state: State, who: Caller = Admin) -> RecoverOut:
    """Send again what a tenant's subscriptions (or one) did not receive of the events since
    `since`: failed deliveries, and events while a subscription was disabled. Audited."""
    made = state.store.deliveries.recover(
        since=body.since,
        actor=who.actor,
        tenant=who.acting_for(body.tenant),
        subscription_id=body.subscription,
    )
    return RecoverOut(deliveries=made)


@router.get(
    "/events/{event_id}",
    response_model=OutboxEventOut,
    responses=responses(c404="no such event (or another tenant's, or pruned)"),
)
def get_event(event_id: RowId, state: State, who: Caller = Viewer) -> OutboxEventOut:
    """One event: where a delivery too large for its payload links to."""
    return OutboxEventOut.of(state.store.events.get(event_id, tenant=who.tenant))


@router.post(
    "/events/{event_id}/replay",
    response_model=list[DeliveryOut],
    responses=responses(c404="no such event or subscription (or another tenant's)"),
)
def replay(
    event_id: RowId, state: State, body: ReplayIn | None = None, who: Caller = Admin
) -> list[DeliveryOut]:
    """Send an event again, with the same webhook-id, to one subscription or to every enabled
    one that wants it. Audited."""
    made = state.store.deliveries.replay(
        event_id,
        actor=who.actor,
        tenant=who.tenant,
        subscription_id=None if body is None else body.subscription,
    )
    return [DeliveryOut.of(d) for d in made]
