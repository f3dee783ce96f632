"""Event delivery end to end, on SQLite and PostgreSQL: a worker's dispatcher fans run events out
to subscriptions and sends them to real receivers on 127.0.0.1 (webhooks verified with the
`standardwebhooks` package as a receiver would, Slack-compatible webhooks, e-mail to aiosmtpd)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from standardwebhooks import Webhook

from greenroom import App, RunContext
from greenroom.crypto import load_keyring
from greenroom.delivery import subscriptions
from greenroom.delivery.address import AddressPolicy
from greenroom.demo.setup import register_tenant
from greenroom.model import Channel, DeliveryState, Subscription
from greenroom.storage.deliveries import DeliveryFilter
from greenroom.storage.subscriptions import SubscriptionSpec
from tests.helpers import fast_app, worker_running
from tests.test_delivery_email import Recorder, Server, _serve
from tests.webhook_receiver import Receiver, running_receiver

KEY = base64.b64encode(b"k" * 32).decode()


def delivering_app(db_url: str) -> App:
    """An app whose worker delivers events to receivers on 127.0.0.1: workflows `ok` and
    `boom`, tenants t1 and t2."""
    a = fast_app(
        db_url,
        secret_key=KEY,
        delivery_enabled=True,
        delivery_allow_http=True,
        delivery_allow_private=True,
        delivery_timeout_seconds=2.0,
    )

    @a.workflow(name="ok")
    async def ok(ctx: RunContext) -> int:
        return 1

    @a.workflow(name="boom")
    async def boom(ctx: RunContext) -> int:
        raise ValueError("boom")

    register_tenant(a.store, "t1")
    register_tenant(a.store, "t2")
    return a


@pytest.fixture
def app(db_url: str) -> Iterator[App]:
    a = delivering_app(db_url)
    yield a
    a.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def subscribe(
    app: App, url: str, tenant: str = "t1", channel: Channel = Channel.WEBHOOK, **spec: Any
) -> tuple[Subscription, str | None]:
    spec.setdefault("types", ["run.*"])
    return subscriptions.create(
        app.store,
        load_keyring(app.settings),
        AddressPolicy.of(app.settings),
        tenant=tenant,
        channel=channel,
        spec=SubscriptionSpec(url=url, **spec),
        actor=f"admin@{tenant}",
    )


async def until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(check)
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout}s")


def delivered(app: App, **kw: Any) -> list[Any]:
    found = app.store.deliveries.list_deliveries(DeliveryFilter(limit=500, **kw))
    return [d for d in found if d.state is DeliveryState.DELIVERED]


async def test_a_run_event_reaches_a_webhook_signed_for_any_standard_webhooks_library(
    app: App, receiver: Receiver
) -> None:
    sub, secret = subscribe(app, f"{receiver.url}/hook")
    assert secret is not None and secret.startswith("whsec_")
    subscribe(app, f"{receiver.url}/other", tenant="t2")
    run = await app.enqueue("ok", {}, tenant="t1")
    async with worker_running(app):
        (request,) = await until(lambda: receiver.received("/hook"))
        await until(lambda: delivered(app, subscription_id=sub.id))
    message = Webhook(secret).verify(request.body, request.headers)
    assert message["type"] == "run.succeeded"
    assert message["data"]["run_id"] == run.id and message["data"]["tenant"] == "t1"
    assert request.headers["webhook-id"].startswith("evt_")
    assert request.headers["content-type"] == "application/json"
    assert receiver.received("/other") == [], "t2 never hears of t1's runs"
    (d,) = delivered(app, subscription_id=sub.id)
    (attempt,) = app.store.deliveries.attempts(d.id)
    assert (attempt.outcome, attempt.status, attempt.response) == ("delivered", 200, "ok")
    assert app.store.subscriptions.get(sub.id).last_success_at is not None


async def test_during_a_rotation_both_secrets_verify(app: App, receiver: Receiver) -> None:
    sub, old = subscribe(app, f"{receiver.url}/hook")
    rotated, new = subscriptions.rotate_secret(
        app.store, load_keyring(app.settings), sub.id, actor="a", tenant="t1"
    )
    assert new != old and rotated.previous_until is not None
    await app.enqueue("ok", {}, tenant="t1")
    async with worker_running(app):
        (request,) = await until(lambda: receiver.received("/hook"))
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(request.body, request.headers)
    with pytest.raises(Exception, match="signature"):
        Webhook(base64.b64encode(b"x" * 32).decode()).verify(request.body, request.headers)


async def test_a_failing_receiver_gets_the_event_again_with_the_same_id(
    app: App, receiver: Receiver
) -> None:
    answers = iter([500])
    receiver.answer = lambda request: next(answers, 200)
    subscribe(app, f"{receiver.url}/hook", types=["run.failed"])
    subscribe(app, f"{receiver.url}/hook", types=["run.failed"])
    await app.enqueue("boom", {}, tenant="t1")
    async with worker_running(app):
        # one subscription fails once and gets it 5 s later; the other succeeds at once
        await until(lambda: len(delivered(app)) == 2, timeout=40)
    ids = receiver.ids("/hook")
    assert len(ids) == 3 and len(set(ids)) == 1, "one event, one webhook-id"
    attempts = [
        [(a.outcome, a.status, a.at) for a in app.store.deliveries.attempts(d.id)]
        for d in delivered(app)
    ]
    (retried,) = [a for a in attempts if len(a) == 2]
    assert [(o, s) for o, s, _ in retried] == [("retry", 500), ("delivered", 200)]
    assert retried[1][2] - retried[0][2] >= 4.5, "the schedule waits 5 s (±10 %)"


async def test_after_the_second_failure_the_next_attempt_waits_minutes(
    app: App, receiver: Receiver
) -> None:
    receiver.answer = lambda request: 500
    sub, _ = subscribe(app, f"{receiver.url}/hook", types=["run.failed"])
    await app.enqueue("boom", {}, tenant="t1")

    def waiting() -> list[Any]:
        found = app.store.deliveries.list_deliveries(DeliveryFilter(subscription_id=sub.id))
        return [d for d in found if d.attempts == 2 and d.state is DeliveryState.PENDING]

    async with worker_running(app):
        (d,) = await until(waiting, timeout=40)
    last = app.store.deliveries.attempts(d.id)[-1]
    assert 270 <= d.next_attempt_at - last.at <= 330, "5 min ±10 %"
    assert d.last_status == 500


async def test_a_gone_endpoint_is_disabled_and_the_tenant_is_told(
    app: App, receiver: Receiver
) -> None:
    receiver.answer = lambda request: 410 if request.path == "/gone" else 200
    gone, _ = subscribe(app, f"{receiver.url}/gone")
    subscribe(app, f"{receiver.url}/ops", types=["endpoint.disabled"])
    await app.enqueue("ok", {}, tenant="t1")
    async with worker_running(app):
        (notice,) = await until(lambda: receiver.received("/ops"))
    assert notice.json()["type"] == "endpoint.disabled"
    assert notice.json()["data"]["subscription_id"] == gone.id
    now = app.store.subscriptions.get(gone.id)
    assert not now.enabled and "410" in (now.disabled_reason or "")
    assert len(receiver.received("/gone")) == 1


async def test_slack_gets_a_sentence(app: App, receiver: Receiver) -> None:
    subscribe(app, f"{receiver.url}/slack", channel=Channel.SLACK, types=["run.failed"])
    await app.enqueue("boom", {}, tenant="t1")
    async with worker_running(app):
        (request,) = await until(lambda: receiver.received("/slack"))
    text = request.json()["text"]
    assert "boom" in text and "failed" in text
    assert "webhook-signature" not in request.headers


@pytest.fixture
def smtp() -> Iterator[Server]:
    yield from _serve(Recorder())


async def test_e_mail_reaches_an_smtp_server(db_url: str, smtp: Server) -> None:
    app = fast_app(
        db_url,
        secret_key=KEY,
        delivery_enabled=True,
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        smtp_security="none",
        smtp_from="greenroom@example.com",
    )

    @app.workflow(name="boom")
    async def boom(ctx: RunContext) -> int:
        raise ValueError("boom")

    register_tenant(app.store, "t1")
    subscribe(app, "ops@example.com", channel=Channel.EMAIL, types=["run.failed"])
    try:
        await app.enqueue("boom", {}, tenant="t1")
        async with worker_running(app):
            await until(lambda: smtp.handler.mails)
    finally:
        app.close()
    mail = smtp.handler.parsed()
    assert mail["To"] == "ops@example.com" and mail["From"] == "greenroom@example.com"
    assert "failed" in str(mail["Subject"])


async def test_a_digest_sends_one_mail_for_the_events_of_its_window(
    db_url: str, smtp: Server
) -> None:
    app = fast_app(
        db_url,
        secret_key=KEY,
        delivery_enabled=True,
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        smtp_security="none",
    )

    @app.workflow(name="boom")
    async def boom(ctx: RunContext) -> int:
        raise ValueError("boom")

    register_tenant(app.store, "t1")
    sub, _ = subscribe(
        app, "ops@example.com", channel=Channel.EMAIL, types=["run.failed"], digest_minutes=60
    )

    def waiting() -> bool:
        found = app.store.deliveries.list_deliveries(DeliveryFilter(subscription_id=sub.id))
        return len(found) == 3 and all(d.next_attempt_at > time.time() for d in found)

    def end_the_window() -> None:
        with app.store.backend.transaction() as tx:
            tx.execute("UPDATE deliveries SET next_attempt_at = 0")

    try:
        for _ in range(3):
            await app.enqueue("boom", {}, tenant="t1")
        async with worker_running(app):
            await until(waiting)
            await asyncio.sleep(0.5)
            assert smtp.handler.mails == [], "nothing before the window ends"
            await asyncio.to_thread(end_the_window)
            await until(lambda: len(delivered(app, subscription_id=sub.id)) == 3)
    finally:
        app.close()
    (mail,) = [smtp.handler.parsed(i) for i in range(len(smtp.handler.mails))]
    assert "3 events" in str(mail["Subject"])
    assert len(str(mail["X-Greenroom-Event-Ids"]).split(",")) == 3
