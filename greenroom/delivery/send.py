"""One attempt to tell a subscription of its events, by its channel, and what comes next."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind, Status, StatusCode

from greenroom import metrics, tracing
from greenroom.crypto import KeyRing, load_keyring
from greenroom.delivery import http, render
from greenroom.delivery.address import AddressPolicy
from greenroom.delivery.email import SmtpConfig, send_email
from greenroom.delivery.message import event_url, message_id, webhook_body
from greenroom.delivery.schedule import RETRY_DELAYS, next_delay
from greenroom.delivery.signing import headers
from greenroom.delivery.subscriptions import signing_secrets
from greenroom.errors import ConfigError
from greenroom.model import Channel, Event, Subscription
from greenroom.settings import Settings
from greenroom.storage.dispatch import Claimed, Finished

if TYPE_CHECKING:
    from greenroom.storage.reports import Reports

USER_AGENT = "greenroom-webhooks/1"


@dataclass(frozen=True, kw_only=True)
class Sent:
    """How an attempt went, whatever the channel."""

    ok: bool
    status: int | None = None
    latency_ms: float = 0.0
    response: str = ""
    error: str | None = None
    retry_after: float | None = None
    #: The endpoint is gone for good (410): disable it.
    gone: bool = False
    #: The receiver refused for good (an SMTP 5xx): no retry helps.
    permanent: bool = False


class Sender:
    """Sends by channel with one HTTP client (its connections reused) and the node's keys."""

    def __init__(self, settings: Settings, reports: Reports | None = None) -> None:
        """`reports`: where a report.ready mail finds the report it attaches."""
        self.settings = settings
        self.reports = reports
        self.policy = AddressPolicy.of(settings)
        self.client = http.Client(self.policy)
        self._ring: KeyRing | None = None

    @property
    def ring(self) -> KeyRing:
        """The node's keys, loaded at the first webhook: a worker that sends none needs none
        (a ConfigError says what is missing, as the attempt's error)."""
        if self._ring is None:
            self._ring = load_keyring(self.settings)
        return self._ring

    async def close(self) -> None:
        await self.client.close()

    async def send(self, subscription: Subscription, events: Sequence[Event]) -> Sent:
        """One attempt: a webhook or Slack message for one event, or one mail for several
        (a digest). Never raises for a receiver's failure."""
        started = time.perf_counter()
        sent = await self._send(subscription, events)
        channel = subscription.channel.value
        result = "ok" if sent.ok else "gone" if sent.gone else "failed"
        metrics.DELIVERIES.labels(channel, result).inc()
        metrics.DELIVERY_DURATION.labels(channel).observe(time.perf_counter() - started)
        return sent

    async def _send(self, subscription: Subscription, events: Sequence[Event]) -> Sent:
        try:
            if subscription.channel is Channel.EMAIL:
                return await self._email(subscription, events)
            (event,) = events
            if subscription.channel is Channel.SLACK:
                return await self._post(subscription, render.slack_body(event, self._link))
            return await self._webhook(subscription, event)
        except ConfigError as exc:
            return Sent(ok=False, error=f"not configured: {exc}")

    async def _webhook(self, subscription: Subscription, event: Event) -> Sent:
        body = webhook_body(
            event,
            max_bytes=self.settings.delivery_max_payload_bytes,
            public_url=self.settings.public_url,
        )
        now = time.time()
        signed = headers(
            message_id(event), int(now), body, signing_secrets(self.ring, subscription, now)
        )
        with tracing.run_span(
            f"webhook {event.type}",
            traceparent=event.trace_parent,
            run_id=event.subject.removeprefix("run:") if event.subject.startswith("run:") else None,
            kind=SpanKind.CLIENT,
            attributes={
                "greenroom.event.id": event.id,
                "greenroom.event.type": event.type,
                "greenroom.subscription.id": subscription.id,
                "greenroom.tenant": event.tenant,
            },
        ) as span:
            tracing.inject(signed)  # traceparent: the receiver's work joins the trace
            sent = await self._post(subscription, body, signed)
            if sent.status is not None:
                span.set_attribute("http.response.status_code", sent.status)
            if not sent.ok:
                span.set_status(Status(StatusCode.ERROR, sent.error or f"HTTP {sent.status}"))
        return sent

    async def _post(
        self, subscription: Subscription, body: bytes, extra: dict[str, str] | None = None
    ) -> Sent:
        answer = await self.client.post(
            subscription.url,
            body,
            {"content-type": "application/json", "user-agent": USER_AGENT, **(extra or {})},
            timeout=self.settings.delivery_timeout_seconds,
        )
        return Sent(
            ok=answer.ok,
            status=answer.status,
            latency_ms=answer.latency_ms,
            response=answer.excerpt,
            error=answer.error,
            retry_after=answer.retry_after,
            gone=answer.status == 410,
        )

    async def _email(self, subscription: Subscription, events: Sequence[Event]) -> Sent:
        config = SmtpConfig.of(self.settings)
        message = render.email_message(
            events, sender=config.sender, recipient=subscription.url, link=self._link
        )
        if self.reports is not None and len(events) == 1 and events[0].type == "report.ready":
            from greenroom.reports.mail import attach_report

            await asyncio.to_thread(attach_report, message, self.reports, events[0])
        result = await send_email(config, message)
        return Sent(
            ok=result.ok,
            latency_ms=result.latency_ms,
            response=result.response,
            error=result.error,
            permanent=result.permanent,
        )

    def _link(self, event: Event) -> str | None:
        return event_url(event, self.settings.public_url)


def finished(
    claimed: Claimed,
    sent: Sent,
    now: float,
    rng: random.Random | None = None,
    delays: Sequence[float] = RETRY_DELAYS,
) -> Finished:
    """The delivery's next state after this attempt: delivered, retried by the schedule
    (`delays`, the `delivery_retry_delays` setting), failed for good, or failed with its
    endpoint disabled (410)."""
    next_at = None
    if sent.ok:
        outcome = "delivered"
    elif sent.gone:
        outcome = "disabled"
    else:
        attempts = claimed.delivery.attempts
        delay = None if sent.permanent else next_delay(attempts, sent.retry_after, rng, delays)
        outcome = "failed" if delay is None else "retry"
        next_at = None if delay is None else now + delay
    return Finished(
        delivery_id=claimed.delivery.id,
        attempt=claimed.delivery.attempts,
        outcome=outcome,
        status=sent.status,
        latency_ms=sent.latency_ms,
        response=sent.response,
        error=sent.error,
        next_attempt_at=next_at,
    )
