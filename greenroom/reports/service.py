"""Report subscriptions as admins make them, out of parts greenroom already has: a schedule
(cron in the tenant's time zone) that makes the report's runs, and one event subscription per
channel (e-mail, webhook) that hears of report.ready for its report type and period."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from greenroom.crypto import KeyRing
from greenroom.delivery import subscriptions
from greenroom.delivery.address import AddressPolicy
from greenroom.errors import Conflict, InvalidInput, NotFound
from greenroom.model import Channel, Run
from greenroom.reports.period import DEFAULT_CRON, PeriodKind
from greenroom.reports.records import PERIOD_LABEL, REPORT_LABEL, ReportSubscription, ReportType
from greenroom.reports.workflows import (
    DEFAULT_CONCURRENCY,
    REPORT_WORKFLOW,
    REPORTS_QUEUE,
    period_of,
    run_key,
)
from greenroom.schedules import service as schedules
from greenroom.schedules.service import ScheduleRequest
from greenroom.schedules.spec import zone
from greenroom.storage.base import require_reason
from greenroom.storage.subscriptions import SubscriptionSpec

if TYPE_CHECKING:
    from greenroom.app import App
    from greenroom.storage import RunStore

#: Firings of one slot are spread over this many seconds: a platform's tenants subscribed to
#: Monday 07:00 do not all enqueue in the same instant.
JITTER_SECONDS = 300.0
#: Channels a report is delivered by.
CHANNELS = (Channel.EMAIL, Channel.WEBHOOK)


@dataclass(frozen=True, kw_only=True)
class Destination:
    channel: Channel
    #: An e-mail address, or an https URL.
    url: str


@dataclass(frozen=True, kw_only=True)
class Subscribed:
    subscription: ReportSubscription
    #: Webhooks' signing secrets by event subscription id, shown once.
    secrets: dict[str, str]


def check(report_type: str, period: str, timezone: str) -> tuple[ReportType, PeriodKind]:
    try:
        kind = ReportType(report_type)
    except ValueError:
        raise InvalidInput("report_type: must be health or savings") from None
    try:
        span = PeriodKind(period)
    except ValueError:
        raise InvalidInput("period: must be day, week or month") from None
    zone(timezone)
    return kind, span


def subscribe(
    app: App,
    ring: KeyRing | None,
    policy: AddressPolicy,
    *,
    tenant: str,
    report_type: str,
    period: str,
    timezone: str,
    destinations: Sequence[Destination],
    actor: str,
    cron: str | None = None,
) -> Subscribed:
    """Subscribe the tenant's destinations to a report; its schedule fires `cron` (by default
    07:00 local after each period) in `timezone`. Parts made before a refusal are removed."""
    kind, span = check(report_type, period, timezone)
    app.get_workflow(REPORT_WORKFLOW)  # the app must make reports (reports.add_reports)
    if not 1 <= len(destinations) <= 10:
        raise InvalidInput("channels: give 1 to 10 destinations")
    if any(d.channel not in CHANNELS for d in destinations):
        raise InvalidInput("channels: a report goes by email or webhook")
    made: list[str] = []
    secrets: dict[str, str] = {}
    schedule_id = None
    try:
        for d in destinations:
            created, secret = subscriptions.create(
                app.store,
                ring,
                policy,
                tenant=tenant,
                channel=d.channel,
                spec=SubscriptionSpec(
                    url=d.url,
                    types=["report.ready"],
                    labels={REPORT_LABEL: kind.value, PERIOD_LABEL: span.value},
                    description=f"{kind.value} report every {span.value}",
                ),
                actor=actor,
            )
            made.append(created.id)
            if secret is not None:
                secrets[created.id] = secret
        schedule = schedules.create(
            app,
            tenant,
            ScheduleRequest(
                name=f"report-{kind.value}-{span.value}-{made[0][:8]}",
                workflow=REPORT_WORKFLOW,
                cron=cron or DEFAULT_CRON[span],
                timezone=timezone,
                jitter=JITTER_SECONDS,
                input={
                    "report_type": kind.value,
                    "period": span.value,
                    "timezone": timezone,
                    "at": "{slot}",
                },
            ),
            actor=actor,
        )
        schedule_id = schedule.id
        limit_queue(app)
        subscription = app.store.reports.subscribe(
            tenant=tenant,
            report_type=kind.value,
            period=span.value,
            timezone=timezone,
            schedule_id=schedule.id,
            subscription_ids=made,
            actor=actor,
        )
    except BaseException:
        _remove(app.store, tenant, schedule_id, made, actor)
        raise
    return Subscribed(subscription=subscription, secrets=secrets)


def run_report(
    app: App,
    *,
    tenant: str,
    report_type: str,
    period: str,
    timezone: str,
    at: float,
    again: bool = False,
    resend: tuple[str, str] | None = None,
) -> Run:
    """A run that makes the report of the period `at` is after (its last complete one). The
    same period asked again is the same run; `again` makes a new run (after a data fix), whose
    report keeps its id and tells nobody, unless `resend` (actor, reason: an admin's audited
    action) asks that it tell the subscribers again."""
    check(report_type, period, timezone)
    if resend is not None:
        require_reason(resend[1])
    span = period_of(report_type, period, timezone, at)
    key = run_key(tenant, report_type, span)
    if again or resend is not None:
        key += f":again:{app.store.clock.now():.6f}"
    return app.enqueue_sync(
        REPORT_WORKFLOW,
        {
            "report_type": report_type,
            "period": period,
            "timezone": timezone,
            "at": datetime.fromtimestamp(at, UTC).isoformat(),
            **({"resend_actor": resend[0], "resend_reason": resend[1]} if resend else {}),
        },
        tenant=tenant,
        idempotency_key=key,
    )


def limit_queue(app: App) -> None:
    """Give the reports queue a concurrency limit if it has none, so reports never take every
    worker's slots (an operator changes it with `greenroom queues set reports`)."""
    current = app.store.controls.queue_settings().get(REPORTS_QUEUE)
    if current is None or current.concurrency is None:
        app.store.controls.set_queue(
            REPORTS_QUEUE,
            actor="greenroom",
            reason="reports run beside ordinary runs, at most this many at once",
            concurrency=DEFAULT_CONCURRENCY,
        )


def set_enabled(
    store: RunStore, subscription_id: str, enabled: bool, *, actor: str, tenant: str | None
) -> ReportSubscription:
    """Pause or resume the subscription's schedule (its past reports stay)."""
    current = store.reports.subscription(subscription_id, tenant=tenant)
    with contextlib.suppress(NotFound, Conflict):  # gone, or already so
        if enabled:
            store.schedules.resume(current.schedule_id, actor=actor, tenant=current.tenant)
        else:
            store.schedules.pause(
                current.schedule_id,
                note="report subscription disabled",
                actor=actor,
                tenant=current.tenant,
            )
    return store.reports.set_enabled(current.id, enabled, actor=actor, tenant=tenant)


def unsubscribe(store: RunStore, subscription_id: str, *, actor: str, tenant: str | None) -> None:
    """Remove the subscription with its schedule and event subscriptions (reports stay)."""
    current = store.reports.subscription(subscription_id, tenant=tenant)
    _remove(store, current.tenant, current.schedule_id, current.subscription_ids, actor)
    store.reports.unsubscribe(current.id, actor=actor, tenant=tenant)


def _remove(
    store: RunStore,
    tenant: str,
    schedule_id: str | None,
    subscription_ids: Sequence[str],
    actor: str,
) -> None:
    if schedule_id is not None:
        with contextlib.suppress(NotFound):
            store.schedules.delete(schedule_id, actor=actor, tenant=tenant)
    for sid in subscription_ids:
        with contextlib.suppress(NotFound):
            store.subscriptions.delete(sid, actor=actor, tenant=tenant)
