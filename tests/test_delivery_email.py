"""Events rendered for people, and notification mail sent to a real SMTP server (aiosmtpd, in
its own thread on an ephemeral port)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import SecretStr

from greenroom.delivery import render
from greenroom.delivery.email import MailResult, SmtpConfig, send_email
from greenroom.delivery.render import email_message, slack_body, subject_line, text
from greenroom.errors import ConfigError
from greenroom.model import Event
from greenroom.settings import Settings
from greenroom.storage.events import EVENT_TYPES

RUN_ID = "1234abcd-5d4b-4a57-9f0e-3b2c1f7a9d10"
NEW_RUN_ID = "9f0e3b2c-5d4b-4a57-9f0e-3b2c1f7a9d10"
FAILURE = {"type": "TimeoutError", "message": "upload took 30 s", "step": "upload"}
_RUN = {"run_id": RUN_ID, "workflow": "demo.sync_users", "queue": "default"}
_PAUSE = {"scope": "queue", "value": "default", "label": "", "drain": True, "actor": "ops"}
_INTEGRATION = {"integration_id": 7, "connector": "crm", "name": "acme-crm", "status": "active"}
_LICENSE = {
    "license_id": "lic_1",
    "integration_id": "int_7",
    "user_id": "u-0042",
    "email": "ada@acme.example",
    "finding_id": "fnd_1",
    "verdict": "idle",
    "action": "reclaim",
    "confidence": "high",
    "reason": "users of this app return within 9 days; this one has been idle for 41",
    "monthly_savings": 30.0,
    "currency": "USD",
    "realizable_at": 1_700_000_000.0,
    "episode_start": 1_696_000_000.0,
}
#: A payload of every type, as greenroom writes them (docs/events.md).
PAYLOADS: dict[str, dict[str, Any]] = {
    "run.succeeded": _RUN | {"state": "succeeded", "reason": "finished", "detail": None},
    "run.failed": _RUN
    | {"state": "failed", "reason": "failed", "detail": FAILURE | {"class": "transient"}},
    "run.cancelled": _RUN | {"state": "cancelled", "reason": "cancelled by ops", "detail": None},
    "run.retry_scheduled": _RUN
    | {"state": "delayed", "reason": "retry in 5 s", "detail": FAILURE | {"attempt": 2}},
    "run.stalled": _RUN
    | {"state": "queued", "reason": "stalled: lease of worker w1 expired", "detail": None},
    "run.cancel_requested": _RUN | {"actor": "ops", "reason": "wrong input"},
    "run.retried": _RUN
    | {"new_run_id": NEW_RUN_ID, "from_scratch": True, "actor": "ops", "reason": "fixed"},
    "pause.created": _PAUSE | {"reason": "site maintenance"},
    "pause.lifted": _PAUSE | {"reason": "maintenance over"},
    "integration.created": _INTEGRATION | {"actor": "ops"},
    "integration.updated": _INTEGRATION | {"actor": "ops", "changed": ["credentials", "name"]},
    "integration.deleted": _INTEGRATION | {"actor": "ops"},
    "schedule.fired": {"schedule_id": "s1", "name": "nightly sync", "slot": 1_700_000_000.0}
    | {"run_id": RUN_ID, "how": "fired"},
    "schedule.missed": {"schedule_id": "s1", "name": "nightly sync", "count": 7}
    | {"first": 1_700_000_000.0, "last": 1_700_005_400.0},
    "schedule.paused": {"schedule_id": "s1", "name": "nightly sync", "workflow": "sync"}
    | {"note": "vendor maintenance", "actor": "ops"},
    "schedule.resumed": {"schedule_id": "s1", "name": "nightly sync", "workflow": "sync"}
    | {"actor": "ops"},
    "integration.data_stale": {"integration_id": "int_7", "last_synced_at": 1_700_000_000.0}
    | {"expected_every_hours": 24.0},
    "license.idle": _LICENSE,
    "license.underused": _LICENSE
    | {"verdict": "underused", "action": "downgrade", "reason": "active on 4 of the last 30 days"},
    "license.reclaimed": _LICENSE,
    "license.digest": {"day": "2026-12-07", "open_findings": 12, "by_state": {"notified": 12}}
    | {"by_verdict": {"idle": 12}, "monthly_savings_available": {"USD": 360.0}},
    "seats.unassigned": {"integration_id": "int_7", "tier": "pro", "purchased": 50}
    | {"assigned": 42, "unassigned": 8, "monthly_savings": 240.0, "currency": "USD"},
    "report.ready": {"report_id": "r1", "report_type": "health", "title": "the week of 2026-11-30"},
    "endpoint.disabled": {
        "subscription_id": 12,
        "url": "https://hooks.slack.com/services/T000/B000/s3cr3tT0ken",
        "reason": "HTTP 404 for 5 days",
        "failing_since": 1_700_000_000.0,
    },
}
#: What each type's sentence must say.
EXPECTED: dict[str, list[str]] = {
    "run.succeeded": ["Run 1234abcd (workflow demo.sync_users, queue default) succeeded"],
    "run.failed": [
        "Run 1234abcd (workflow demo.sync_users, queue default) failed at step upload:"
        " TimeoutError: upload took 30 s"
    ],
    "run.cancelled": ["was cancelled: cancelled by ops"],
    "run.retry_scheduled": ["will be retried", "on attempt 2", "TimeoutError"],
    "run.stalled": ["stalled and is queued again", "worker w1"],
    "run.cancel_requested": ["ops asked to cancel Run 1234abcd", "wrong input"],
    "run.retried": ["retried from scratch as run 9f0e3b2c by ops: fixed"],
    "pause.created": ["ops paused queue default", "site maintenance"],
    "pause.lifted": ["ops lifted the pause on queue default: maintenance over"],
    "integration.created": ["ops created integration acme-crm (connector crm, status active)"],
    "integration.updated": ["ops updated integration acme-crm", "changed credentials, name"],
    "integration.deleted": ["ops deleted integration acme-crm"],
    "schedule.fired": ["Schedule nightly sync fired for 2023-11-14T22:13:20Z: run 1234abcd"],
    "schedule.missed": ["Schedule nightly sync missed 7 slots from 2023-11-14T22:13:20Z"],
    "schedule.paused": ["ops paused Schedule nightly sync: vendor maintenance"],
    "schedule.resumed": ["ops resumed Schedule nightly sync"],
    "integration.data_stale": ["Integration int_7 has no fresh data", "every 24.0 hours"],
    "license.idle": [
        "The license of ada@acme.example goes unused: users of this app return within 9 days;"
        " this one has been idle for 41; high confidence, reclaim it (30.00 USD a month)"
    ],
    "license.underused": ["ada@acme.example is underused", "downgrade it"],
    "license.reclaimed": ["The license of ada@acme.example was reclaimed (30.00 USD a month)"],
    "license.digest": ["12 licenses to act on (2026-12-07); 360.0 USD a month to save"],
    "seats.unassigned": [
        "8 of 50 pro seats of integration int_7 are assigned to nobody (240.00 USD a month)"
    ],
    "report.ready": ["The health report of the week of 2026-11-30 is ready"],
    "endpoint.disabled": [
        "https://hooks.slack.com/…",
        "subscription 12",
        "2023-11-14T22:13:20Z",
        "HTTP 404 for 5 days",
    ],
}
SENDER = "greenroom@example.com"
RECIPIENT = "ops@example.com"


def event(kind: str, event_id: int = 1, **payload: Any) -> Event:
    subject = "pause:3" if kind.startswith("pause") else f"run:{RUN_ID}"
    body = {"version": 1, **PAYLOADS.get(kind, {}), **payload}
    return Event(
        id=event_id,
        tenant="acme",
        type=kind,
        occurred_at=1_700_000_000.0 + event_id,
        subject=subject,
        payload=body,
    )


def link(e: Event) -> str:
    return f"https://greenroom.example.com/v1/events?after={e.id - 1}"


# -- rendering --------------------------------------------------------------------------------


def test_every_type_has_a_sentence() -> None:
    assert set(PAYLOADS) == set(EVENT_TYPES) | {"endpoint.disabled"}
    assert set(PAYLOADS) <= render.KNOWN_TYPES


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_sentence_of_each_type(kind: str) -> None:
    sentence, subject = text(event(kind)), subject_line(event(kind))
    for part in EXPECTED[kind]:
        assert part in sentence
    assert "\n" not in sentence and "{" not in sentence, "no payload dumped"
    assert subject.startswith("greenroom: ") and len(subject) <= render.SUBJECT_MAX
    assert "\n" not in subject and "\r" not in subject


def test_failure_without_detail_says_the_reason() -> None:
    stalled = event("run.failed", detail=None, reason="stalled 3 times; max_stalls reached")
    assert text(stalled).endswith("failed: stalled 3 times; max_stalls reached")


def test_stalled_run_that_a_pause_holds_is_paused() -> None:
    assert "stalled and is paused again" in text(event("run.stalled", state="paused"))


def test_pauses_of_labels_and_without_drain() -> None:
    sentence = text(event("pause.created", scope="label", label="region", value="eu", drain=False))
    assert "paused label region=eu (running runs stop at their next step)" in sentence


def test_endpoint_disabled_hides_the_url_path() -> None:
    """A Slack webhook's path is its secret."""
    sentence = text(event("endpoint.disabled"))
    assert "s3cr3tT0ken" not in sentence and "T000" not in sentence
    bad = text(event("endpoint.disabled", url="https://user:pw@h.example:8443/x?token=t"))
    assert "https://h.example:8443/…" in bad and "pw" not in bad and "token" not in bad
    assert "Deliveries to ? " in text(event("endpoint.disabled", url="javascript:alert(1)"))


def test_unknown_type_falls_back_to_type_subject_and_payload() -> None:
    unknown = event("thing.happened", tally=3, why="because\r\nBcc: x@y")
    sentence = text(unknown)
    assert sentence.startswith(f"thing.happened on run:{RUN_ID}: ")
    assert '"tally":3' in sentence and "version" not in sentence
    assert "\n" not in sentence and "\r" not in sentence
    assert len(text(event("thing.happened", big="x" * 5000))) < 700


def test_control_characters_are_neutralized() -> None:
    hostile = "demo\r\nBcc: x@y\x1b[31m\x00\u2028\u202eevil"
    e = event("run.failed", workflow=hostile, detail=FAILURE | {"message": "a\nb\tc"})
    for rendered in (text(e), subject_line(e)):
        assert not any(c in rendered for c in "\r\n\x1b\x00\u2028\u202e\t")
    assert "workflow demo Bcc: x@y [31m evil" in text(e)
    assert "TimeoutError: a b c" in text(e)


def test_subject_is_capped() -> None:
    e = event("run.failed", detail=FAILURE | {"message": "x" * 1000})
    subject = subject_line(e)
    assert len(subject) == render.SUBJECT_MAX and subject.endswith("…")
    assert len(text(e)) < 1000, "each payload string is capped in the sentence too"


def test_missing_or_odd_payload_fields_never_raise() -> None:
    for kind in PAYLOADS:
        bare = Event(id=1, tenant=None, type=kind, occurred_at=0.0, subject="x:1", payload={})
        assert text(bare) and subject_line(bare)
    odd = event("integration.updated", changed="everything", name=None, status=3)
    assert "integration ? (connector crm, status 3)" in text(odd)
    assert text(event("run.failed", detail={}, reason="why")).endswith("failed: why")
    for since in (1e300, float("nan"), True, "yesterday"):
        assert "failing since " in text(event("endpoint.disabled", failing_since=since))
    not_a_dict: Any = [1]
    listed = Event(
        id=1, tenant=None, type="x.y", occurred_at=0.0, subject="x:1", payload=not_a_dict
    )
    assert text(listed) == "x.y on x:1: [1]"


def test_slack_body_escapes_mentions_and_links() -> None:
    message = "<!channel> see <https://evil.example|your bank> & pay"
    body = json.loads(slack_body(event("run.failed", detail=FAILURE | {"message": message})))
    assert set(body) == {"text"}
    assert "&lt;!channel&gt; see &lt;https://evil.example|your bank&gt; &amp; pay" in body["text"]
    assert "<!channel>" not in body["text"] and "<https://evil" not in body["text"]


def test_slack_body_links_to_the_event() -> None:
    body = json.loads(slack_body(event("run.succeeded", 5), lambda e: "https://g.example/?a=1&b=2"))
    assert body["text"].endswith(" <https://g.example/?a=1&amp;b=2|details>")
    assert json.loads(slack_body(event("run.succeeded"), lambda e: None))["text"].endswith(
        "succeeded"
    )


# -- the mail ---------------------------------------------------------------------------------


def test_digest_subject_counts_types() -> None:
    events = [event("run.failed", 1), event("run.succeeded", 2), event("run.failed", 3)]
    message = email_message(events, sender=SENDER, recipient=RECIPIENT)
    assert message["Subject"] == "greenroom: 3 events (2 run.failed, 1 run.succeeded)"
    assert message["X-Greenroom-Event-Ids"] == "1, 2, 3"
    many = [event(f"custom.type_{i:03}", i) for i in range(50)]
    subject = email_message(many, sender=SENDER, recipient=RECIPIENT)["Subject"]
    assert subject.startswith("greenroom: 50 events (1 custom.type_000, ")
    assert len(subject) <= render.SUBJECT_MAX


def test_message_id_is_stable_per_events_and_recipient() -> None:
    def mid(events: list[Event], recipient: str = RECIPIENT) -> str:
        return str(email_message(events, sender=SENDER, recipient=recipient)["Message-ID"])

    a, b = event("run.failed", 1), event("run.succeeded", 2)
    assert mid([a, b]) == mid([a, b]) == mid([b, a])
    assert mid([a, b]) != mid([a]) != mid([b])
    assert mid([a]) != mid([a], "other@example.com")
    assert mid([a]).startswith("<greenroom.") and mid([a]).endswith("@example.com>")


def test_mail_needs_events_and_one_address_each() -> None:
    with pytest.raises(ValueError, match="at least one event"):
        email_message([], sender=SENDER, recipient=RECIPIENT)
    with pytest.raises(ValueError, match="one address"):
        email_message([event("run.failed")], sender=SENDER, recipient="a@x.example, b@y.example")


def test_duplicate_events_are_listed_once() -> None:
    e = event("run.failed", 4)
    message = email_message([e, e], sender=SENDER, recipient=RECIPIENT)
    assert message["X-Greenroom-Event-Ids"] == "4"
    assert message["Subject"] == subject_line(e)


def test_smtp_config_from_settings() -> None:
    settings = Settings(
        smtp_host="mail.example.com",
        smtp_port=587,
        smtp_security="starttls",
        smtp_username="greenroom",
        smtp_password=SecretStr("hunter2"),
        smtp_from="noreply@example.com",
        delivery_timeout_seconds=4.0,
    )
    config = SmtpConfig.of(settings)
    assert (config.host, config.port, config.security) == ("mail.example.com", 587, "starttls")
    assert (config.username, config.sender) == ("greenroom", "noreply@example.com")
    assert config.timeout == 4.0
    assert config.password is not None and config.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(config) and "hunter2" not in str(config)
    assert config.tls_options() == (False, True)
    options = {s: SmtpConfig(host="h", security=s).tls_options() for s in ("auto", "tls", "none")}
    assert options == {"auto": (False, None), "tls": (True, False), "none": (False, False)}


async def test_sending_without_smtp_host_is_a_config_error() -> None:
    message = email_message([event("run.failed")], sender=SENDER, recipient=RECIPIENT)
    with pytest.raises(ConfigError, match="smtp_host"):
        await send_email(SmtpConfig(host=None), message)


# -- against a real SMTP server ---------------------------------------------------------------


@dataclass
class Recorder:
    """An aiosmtpd handler that keeps each mail, and refuses recipients with `refuse`."""

    refuse: str | None = None
    #: Refuse mail from a client that has not logged in (aiosmtpd's own auth_required warns
    #: without TLS).
    need_auth: bool = False
    #: DATA's answer, when not the acceptance.
    data_reply: str | None = None
    #: Seconds DATA takes to answer (a slow server).
    delay: float = 0.0
    mails: list[Envelope] = field(default_factory=list)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.need_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.refuse is not None:
            return self.refuse
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.data_reply is not None:
            return self.data_reply
        self.mails.append(envelope)
        return "250 Message accepted for delivery"

    def parsed(self, i: int = -1) -> EmailMessage:
        content = (self.mails[i].original_content or b"").replace(b"\r\n", b"\n")
        parsed = message_from_bytes(content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    handler: Recorder
    port: int

    def config(self, **kw: Any) -> SmtpConfig:
        return SmtpConfig(**{"host": "127.0.0.1", "port": self.port, "timeout": 10.0} | kw)


def _serve(handler: Recorder, **smtp: Any) -> Iterator[Server]:
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=30, **smtp)
    controller.start()
    try:
        yield Server(handler, port)
    finally:
        controller.stop()
        controller.loop.close()


@pytest.fixture
def smtp() -> Iterator[Server]:
    yield from _serve(Recorder())


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"gr", b"s3cret")
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535


@pytest.fixture
def smtp_auth() -> Iterator[Server]:
    yield from _serve(Recorder(need_auth=True), authenticator=_authenticate, auth_require_tls=False)


def _mail(events: list[Event]) -> EmailMessage:
    return email_message(events, sender=SENDER, recipient=RECIPIENT, link=link)


async def test_one_event_arrives(smtp: Server) -> None:
    e = event("run.failed", 41)
    result = await send_email(smtp.config(security="none"), _mail([e]))
    assert result.ok and result.error is None and not result.permanent
    assert "accepted" in result.response and result.latency_ms > 0
    envelope = smtp.handler.mails[0]
    assert (envelope.mail_from, envelope.rcpt_tos) == (SENDER, [RECIPIENT])
    got = smtp.handler.parsed()
    assert got["Subject"] == subject_line(e) and got["From"] == SENDER and got["To"] == RECIPIENT
    assert got["Message-ID"] == _mail([e])["Message-ID"]
    assert got["X-Greenroom-Event-Ids"] == "41"
    assert got["Date"] and got["Auto-Submitted"] == "auto-generated"
    body = got.get_content()
    assert body.startswith(text(e) + "\n") and "Details: " + link(e) in body
    assert "Occurred: 2023-11-14T22:14:01Z" in body
    assert got.get_content_type() == "text/plain" and got.get_content_charset() == "utf-8"


async def test_digest_arrives_and_a_resend_has_the_same_message_id(smtp: Server) -> None:
    events = [event("run.succeeded", 3), event("run.failed", 1), event("pause.created", 2)]
    for _ in range(2):
        assert (await send_email(smtp.config(security="auto"), _mail(events))).ok
    first, second = smtp.handler.parsed(0), smtp.handler.parsed(1)
    assert first["Message-ID"] == second["Message-ID"]
    kinds = "1 pause.created, 1 run.failed, 1 run.succeeded"
    assert first["Subject"] == f"greenroom: 3 events ({kinds})"
    body = first.get_content()
    lines = [line for line in body.splitlines() if line.startswith("2023-")]
    oldest_first = sorted(events, key=lambda e: e.occurred_at)
    assert [line.split("  ", 1)[1] for line in lines] == [text(e) for e in oldest_first]
    assert lines[0].startswith("2023-11-14T22:13:21Z  ")
    for e in events:
        assert link(e) in body


async def test_refused_recipient_550_is_permanent(smtp: Server) -> None:
    smtp.handler.refuse = "550 5.1.1 mailbox unavailable"
    result = await send_email(smtp.config(security="none"), _mail([event("run.failed")]))
    assert not result.ok and result.permanent
    assert result.error is not None and result.error.startswith("550")
    assert "mailbox unavailable" in result.response
    assert smtp.handler.mails == []


@pytest.mark.parametrize(("reply", "permanent"), [("554 5.7.1 spam", True), ("452 full", False)])
async def test_refused_message(smtp: Server, reply: str, permanent: bool) -> None:
    smtp.handler.data_reply = reply
    result = await send_email(smtp.config(security="none"), _mail([event("run.failed")]))
    assert not result.ok and result.permanent is permanent and result.response == reply


async def test_refused_recipient_451_is_temporary(smtp: Server) -> None:
    smtp.handler.refuse = "451 4.3.0 try again later"
    result = await send_email(smtp.config(), _mail([event("run.failed")]))
    assert not result.ok and not result.permanent
    assert result.error is not None and result.error.startswith("451")


async def test_server_down_is_temporary() -> None:
    config = SmtpConfig(host="127.0.0.1", port=free_port(), timeout=10.0)
    result = await send_email(config, _mail([event("run.failed")]))
    assert not result.ok and not result.permanent and result.error


async def test_silent_server_times_out_within_bound() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # never greets
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        config = SmtpConfig(host="127.0.0.1", port=port, timeout=0.5)
        result = await send_email(config, _mail([event("run.failed")]))
        elapsed = time.monotonic() - started
    finally:
        server.close()
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        await server.wait_closed()
    assert not result.ok and not result.permanent
    assert result.error is not None and "timed out" in result.error.lower()
    assert 0.4 <= elapsed < 10, elapsed


async def test_slow_data_times_out_within_bound(smtp: Server) -> None:
    smtp.handler.delay = 30.0
    started = time.monotonic()
    result = await send_email(smtp.config(timeout=0.5), _mail([event("run.failed")]))
    assert time.monotonic() - started < 10 and 400 <= result.latency_ms < 10_000
    assert not result.ok and not result.permanent
    assert result.error is not None and "timed out" in result.error.lower()


async def test_starttls_required_but_not_offered_is_temporary(smtp: Server) -> None:
    result = await send_email(smtp.config(security="starttls"), _mail([event("run.failed")]))
    assert not result.ok and not result.permanent and "STARTTLS" in (result.error or "")
    assert smtp.handler.mails == [], "never sent in clear text when TLS is required"


async def test_login_with_username_and_password(smtp_auth: Server) -> None:
    config = smtp_auth.config(security="none", username="gr", password=SecretStr("s3cret"))
    assert (await send_email(config, _mail([event("run.failed")]))).ok
    assert len(smtp_auth.handler.mails) == 1


async def test_wrong_password_is_temporary_and_not_echoed(smtp_auth: Server) -> None:
    config = smtp_auth.config(security="none", username="gr", password=SecretStr("wrong-pw"))
    result = await send_email(config, _mail([event("run.failed")]))
    assert not result.ok and not result.permanent, "a login refusal is the operator's to fix"
    assert result.error is not None and result.error.startswith("535")
    assert "wrong-pw" not in repr(result)
    assert smtp_auth.handler.mails == []


async def test_without_login_an_auth_server_refuses(smtp_auth: Server) -> None:
    result = await send_email(smtp_auth.config(security="none"), _mail([event("run.failed")]))
    assert not result.ok and result.error is not None and result.error.startswith("530")
    assert not result.permanent, "a refused sender is the server's configuration, not the mail"


async def test_header_injection_makes_no_header(smtp: Server) -> None:
    hostile = event("run.failed", workflow="demo\r\nBcc: victim@evil.example\r\nX-Evil: 1")
    result = await send_email(smtp.config(security="none"), _mail([hostile]))
    assert result.ok
    envelope = smtp.handler.mails[0]
    assert envelope.rcpt_tos == [RECIPIENT]
    got = smtp.handler.parsed()
    assert got["Bcc"] is None and got["X-Evil"] is None
    assert "Bcc: victim@evil.example" in got["Subject"]
    raw = envelope.original_content or b""
    assert b"\nBcc:" not in raw and b"\nX-Evil:" not in raw


def test_results_are_plain_values() -> None:
    result = MailResult(ok=True, latency_ms=1.0, response="250 OK")
    assert result.error is None and not result.permanent
