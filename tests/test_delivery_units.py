"""The pure parts of delivery: signatures as Standard Webhooks libraries verify them, the retry
schedule, the webhook body and its size cap, what an attempt's answer leads to."""

from __future__ import annotations

import json
import random
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from greenroom.delivery.message import message_id, webhook_body
from greenroom.delivery.schedule import MAX_RETRY_AFTER, RETRY_DELAYS, next_delay
from greenroom.delivery.send import Sent, finished
from greenroom.delivery.signing import headers, new_secret
from greenroom.model import Channel, Delivery, DeliveryState, Event, Subscription
from greenroom.storage.dispatch import Claimed

EVENT = Event(
    id=42,
    tenant="acme",
    type="run.failed",
    occurred_at=1_700_000_000.5,
    subject="run:r1",
    payload={"version": 1, "run_id": "r1", "labels": {"integration": "crm"}},
)


def test_signatures_verify_with_the_standard_webhooks_library() -> None:
    secret = new_secret()
    body = webhook_body(EVENT, max_bytes=10_000)
    now = int(time.time())
    signed = headers(message_id(EVENT), now, body, [secret])
    assert Webhook(secret).verify(body, signed)["data"]["run_id"] == "r1"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, signed)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", signed)
    stale = headers(message_id(EVENT), now - 3600, body, [secret])
    with pytest.raises(WebhookVerificationError):  # receivers refuse old timestamps (replays)
        Webhook(secret).verify(body, stale)
    old, new = new_secret(), new_secret()
    both = headers(message_id(EVENT), now, body, [new, old])
    assert len(both["webhook-signature"].split()) == 2
    for s in (old, new):
        Webhook(s).verify(body, both)


def test_the_body_is_the_event_and_a_large_one_is_a_link() -> None:
    document = json.loads(webhook_body(EVENT, max_bytes=10_000))
    assert document["type"] == "run.failed"
    assert document["timestamp"] == "2023-11-14T22:13:20.500000Z"
    assert document["data"] == {
        "event_id": 42,
        "tenant": "acme",
        "subject": "run:r1",
        "version": 1,
        "run_id": "r1",
        "labels": {"integration": "crm"},
    }
    big = Event(**{**EVENT.__dict__, "payload": {"version": 1, "blob": "x" * 300_000}})
    body = webhook_body(big, max_bytes=256 * 1024, public_url="https://gr.example/")
    assert len(body) < 1024
    data = json.loads(body)["data"]
    assert data["truncated"] is True and "blob" not in data
    assert data["url"] == "https://gr.example/v1/events/42"
    assert message_id(big) == message_id(EVENT) == "evt_42"


def test_the_schedule_spreads_retries_and_honours_retry_after() -> None:
    rng = random.Random(7)
    assert RETRY_DELAYS == (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    for attempts, base in enumerate(RETRY_DELAYS):
        delays = [next_delay(attempts, rng=rng) or 0.0 for _ in range(200)]
        assert all(base * 0.9 <= d <= base * 1.1 for d in delays)
        if base:
            assert len(set(delays)) > 100, "jittered"
    assert next_delay(len(RETRY_DELAYS)) is None, "eight attempts, then it failed"
    assert next_delay(1, retry_after=60.0, rng=rng) == 60.0
    assert 270 <= (next_delay(2, retry_after=60.0, rng=rng) or 0) <= 330, "never sooner"
    assert next_delay(1, retry_after=10**9) == MAX_RETRY_AFTER


def _claimed(attempts: int) -> Claimed:
    delivery = Delivery(
        id=1,
        tenant="acme",
        subscription_id="s",
        event_id=42,
        state=DeliveryState.SENDING,
        attempts=attempts,
        next_attempt_at=0.0,
        last_status=None,
        last_error=None,
        created_at=0.0,
        updated_at=0.0,
        delivered_at=None,
    )
    subscription = Subscription(
        id="s",
        tenant="acme",
        channel=Channel.WEBHOOK,
        url="https://x.example",
        description="",
        types=["*"],
        labels={},
        enabled=True,
        disabled_reason=None,
        key_id=None,
        secret=None,
        previous_key_id=None,
        previous_secret=None,
        previous_until=None,
        digest_minutes=None,
        max_in_flight=10,
        rate_per_second=None,
        failing_since=None,
        last_success_at=None,
        created_at=0.0,
        updated_at=0.0,
    )
    return Claimed(delivery, EVENT, subscription)


def test_what_an_answer_leads_to() -> None:
    now = 1000.0
    assert finished(_claimed(1), Sent(ok=True, status=204), now).outcome == "delivered"
    gone = finished(_claimed(1), Sent(ok=False, status=410, gone=True), now)
    assert gone.outcome == "disabled"
    retry = finished(_claimed(1), Sent(ok=False, status=500), now, random.Random(1))
    assert retry.outcome == "retry" and 4.5 <= (retry.next_attempt_at or 0) - now <= 5.5
    assert retry.attempt == 1 and retry.status == 500
    last = finished(_claimed(len(RETRY_DELAYS)), Sent(ok=False, error="timed out"), now)
    assert (last.outcome, last.next_attempt_at) == ("failed", None)
    refused = finished(_claimed(1), Sent(ok=False, permanent=True, error="550"), now)
    assert refused.outcome == "failed", "a permanent refusal is not retried"
