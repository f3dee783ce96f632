"""Events as people read them: a sentence per type, for mail and Slack-compatible webhooks.

Payload strings (workflow names, error messages, reasons) come from users and from the sites
runs visit, so each is made one line and capped before it is shown: a crafted error message
cannot add a mail header, a line that looks like another event, or a Slack mention.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from greenroom.model import Channel, Event, Subscription

#: Subject lines are one line of at most this many characters (mail clients cut them anyway).
SUBJECT_MAX = 150
#: Any one payload string shown in a sentence; error messages may be long tracebacks' heads.
FIELD_MAX = 300
#: The fallback's compact JSON of an unknown type's payload.
FALLBACK_MAX = 500
#: Control characters, and line and paragraph separators: shown as a space.
_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
#: Bidirectional overrides and marks: they make text read differently than it is; dropped.
_BIDI = re.compile(r"[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SPACES = re.compile(r"\s+")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")

Link = Callable[[Event], str | None]


def clean(value: object, limit: int = FIELD_MAX) -> str:
    """A payload value as one line of at most `limit` characters ("?" when missing)."""
    if value is None or value == "":
        return "?"
    text = _BIDI.sub("", _BREAKS.sub(" ", str(value)))
    return cap(_SPACES.sub(" ", text).strip() or "?", limit)


def cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def iso(at: float) -> str:
    """A Unix time in UTC, ISO 8601 to the second."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- one sentence per type --------------------------------------------------------------------


def _run(p: Mapping[str, Any]) -> str:
    run_id = clean(p.get("run_id"), 36)
    return f"Run {run_id[:8]} (workflow {clean(p.get('workflow'))}, queue {clean(p.get('queue'))})"


def _error(detail: Any) -> str:
    """` at step upload on attempt 2: TimeoutError: message` from a failure's detail."""
    if not isinstance(detail, Mapping) or not (detail.get("type") or detail.get("message")):
        return ""
    where = f" at step {clean(detail['step'])}" if detail.get("step") else ""
    if detail.get("attempt"):
        where += f" on attempt {clean(detail['attempt'], 12)}"
    message = detail.get("message")
    what = clean(detail.get("type"), 100) + (f": {clean(message)}" if message else "")
    return f"{where}: {what}"


def _run_failed(p: Mapping[str, Any]) -> str:
    return f"{_run(p)} failed{_error(p.get('detail')) or ': ' + clean(p.get('reason'))}"


def _run_retry_scheduled(p: Mapping[str, Any]) -> str:
    why = _error(p.get("detail")) or ": " + clean(p.get("reason"))
    return f"{_run(p)} will be retried; it failed{why}"


def _run_stalled(p: Mapping[str, Any]) -> str:
    now = "paused" if p.get("state") == "paused" else "queued"
    return f"{_run(p)} stalled and is {now} again: {clean(p.get('reason'))}"


def _run_retried(p: Mapping[str, Any]) -> str:
    how = "from scratch" if p.get("from_scratch") else "from its last completed step"
    new = clean(p.get("new_run_id"), 36)[:8]
    return f"{_run(p)} was retried {how} as run {new} by {clean(p.get('actor'))}: " + clean(
        p.get("reason")
    )


def _paused(p: Mapping[str, Any]) -> str:
    scope, value = clean(p.get("scope"), 20), clean(p.get("value"))
    return f"label {clean(p.get('label'))}={value}" if scope == "label" else f"{scope} {value}"


def _pause_created(p: Mapping[str, Any]) -> str:
    how = (
        "runs not started yet wait; running ones finish"
        if p.get("drain", True)
        else "running runs stop at their next step"
    )
    return f"{clean(p.get('actor'))} paused {_paused(p)} ({how}): {clean(p.get('reason'))}"


def _pause_lifted(p: Mapping[str, Any]) -> str:
    return f"{clean(p.get('actor'))} lifted the pause on {_paused(p)}: {clean(p.get('reason'))}"


def _integration(p: Mapping[str, Any], done: str) -> str:
    return (
        f"{clean(p.get('actor'))} {done} integration {clean(p.get('name'))}"
        f" (connector {clean(p.get('connector'))}, status {clean(p.get('status'))})"
    )


def _integration_updated(p: Mapping[str, Any]) -> str:
    changed = p.get("changed")
    what = ", ".join(clean(c, 40) for c in changed) if isinstance(changed, list) else ""
    return _integration(p, "updated") + (f": changed {what}" if what else "")


def _when(value: object) -> str:
    """A payload's Unix time as ISO 8601; anything else as given."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return iso(value)
        except (OverflowError, OSError, ValueError):
            pass
    return clean(value, 40)


def _endpoint_disabled(p: Mapping[str, Any]) -> str:
    when = _when(p.get("failing_since"))
    return (
        f"Deliveries to {shown_url(p.get('url'))} (subscription {clean(p.get('subscription_id'))})"
        f" were disabled after failing since {when}: {clean(p.get('reason'))}"
    )


def shown_url(url: object) -> str:
    """Where an endpoint is, without its path, query or user: a Slack webhook's path is its
    secret, and a URL may carry a token."""
    try:
        parts = urlsplit(str(url))
        host, port = parts.hostname, parts.port
    except ValueError:
        return "?"
    if not host or parts.scheme not in ("http", "https"):
        return "?"
    return clean(f"{parts.scheme}://{host}" + (f":{port}" if port else "") + "/…", 100)


def shown_endpoint(subscription: Subscription) -> str:
    """A subscription's endpoint as others see it: a Slack webhook's path is its secret."""
    if subscription.channel is not Channel.SLACK:
        return subscription.url
    return shown_url(subscription.url)


def _schedule(p: Mapping[str, Any]) -> str:
    return f"Schedule {clean(p.get('name'))}"


def _schedule_fired(p: Mapping[str, Any]) -> str:
    how = {"triggered": "was triggered", "backfilled": "was backfilled"}.get(
        str(p.get("how")), "fired"
    )
    slot = "" if p.get("slot") is None else f" for {_when(p.get('slot'))}"
    return f"{_schedule(p)} {how}{slot}: run {clean(str(p.get('run_id'))[:8])}"


def _schedule_missed(p: Mapping[str, Any]) -> str:
    return (
        f"{_schedule(p)} missed {clean(p.get('count'))} slots from {_when(p.get('first'))}"
        f" to {_when(p.get('last'))}: no worker ran them within its catch-up window"
    )


def _license(p: Mapping[str, Any]) -> str:
    return f"The license of {clean(p.get('email') or p.get('user_id'))}"


def _savings(p: Mapping[str, Any]) -> str:
    amount, currency = p.get("monthly_savings"), p.get("currency")
    if not isinstance(amount, int | float) or isinstance(amount, bool) or not currency:
        return ""
    return f" ({amount:,.2f} {clean(currency, 3)} a month)"


def _license_found(p: Mapping[str, Any]) -> str:
    what = "is underused" if p.get("action") == "downgrade" else "goes unused"
    return (
        f"{_license(p)} {what}: {clean(p.get('reason'))}; {clean(p.get('confidence'))}"
        f" confidence, {clean(p.get('action'))} it{_savings(p)}"
    )


def _license_digest(p: Mapping[str, Any]) -> str:
    savings = p.get("monthly_savings_available")
    waiting = ""
    if isinstance(savings, Mapping) and savings:
        waiting = (
            "; "
            + ", ".join(f"{clean(v, 20)} {clean(c, 3)}" for c, v in sorted(savings.items()))
            + " a month to save"
        )
    return f"{clean(p.get('open_findings'))} licenses to act on ({clean(p.get('day'))}){waiting}"


def _data_stale(p: Mapping[str, Any]) -> str:
    return (
        f"Integration {clean(p.get('integration_id'))} has no fresh data: last synced"
        f" {_when(p.get('last_synced_at'))}, expected every {clean(p.get('expected_every_hours'))}"
        " hours; its licenses read as unknown until it syncs again"
    )


_SENTENCES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "run.succeeded": lambda p: f"{_run(p)} succeeded",
    "run.failed": _run_failed,
    "run.cancelled": lambda p: f"{_run(p)} was cancelled: {clean(p.get('reason'))}",
    "run.retry_scheduled": _run_retry_scheduled,
    "run.stalled": _run_stalled,
    "run.cancel_requested": lambda p: (
        f"{clean(p.get('actor'))} asked to cancel {_run(p)}: {clean(p.get('reason'))}"
    ),
    "run.retried": _run_retried,
    "pause.created": _pause_created,
    "pause.lifted": _pause_lifted,
    "integration.created": lambda p: _integration(p, "created"),
    "integration.updated": _integration_updated,
    "integration.deleted": lambda p: _integration(p, "deleted"),
    "endpoint.disabled": _endpoint_disabled,
    "schedule.fired": _schedule_fired,
    "schedule.missed": _schedule_missed,
    "schedule.paused": lambda p: (
        f"{clean(p.get('actor'))} paused {_schedule(p)}: {clean(p.get('note'))}"
    ),
    "schedule.resumed": lambda p: f"{clean(p.get('actor'))} resumed {_schedule(p)}",
    "integration.data_stale": _data_stale,
    "license.idle": _license_found,
    "license.underused": _license_found,
    "license.reclaimed": lambda p: f"{_license(p)} was reclaimed{_savings(p)}",
    "license.digest": _license_digest,
    "report.ready": lambda p: (
        f"The {clean(p.get('report_type'), 20)} report of {clean(p.get('title'), 100)} is ready"
        + (" (sent again)" if p.get("resend") else "")
    ),
    "seats.unassigned": lambda p: (
        f"{clean(p.get('unassigned'))} of {clean(p.get('purchased'))} {clean(p.get('tier'))}"
        f" seats of integration {clean(p.get('integration_id'))} are assigned to nobody"
        f"{_savings(p)}"
    ),
}
#: Every type with its own sentence; others get the fallback.
KNOWN_TYPES = frozenset(_SENTENCES)


def _fallback(event: Event) -> str:
    payload: Any = event.payload
    rest = (
        {k: v for k, v in payload.items() if k != "version"}
        if isinstance(payload, Mapping)
        else payload
    )
    compact = json.dumps(rest, separators=(",", ":"), sort_keys=True, default=str)
    return f"{clean(event.type, 100)} on {clean(event.subject)}: {clean(compact, FALLBACK_MAX)}"


def text(event: Event) -> str:
    """The event as one line a person reads."""
    sentence = _SENTENCES.get(event.type)
    if sentence is None or not isinstance(event.payload, Mapping):
        return _fallback(event)
    return sentence(event.payload)


def subject_line(event: Event) -> str:
    """A mail subject: one line, at most SUBJECT_MAX characters."""
    return cap(f"greenroom: {text(event)}", SUBJECT_MAX)


# -- Slack-compatible webhooks ----------------------------------------------------------------


def slack_escape(value: str) -> str:
    """Slack's three escapes: user text cannot make a mention (<!channel>) or a link."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_link(url: str) -> str:
    safe = clean(url, 2000).replace(" ", "%20").replace("|", "%7C")
    return f"<{slack_escape(safe)}|details>"


def slack_body(event: Event, link: Link | None = None) -> bytes:
    """The body of a Slack-compatible incoming webhook: `{"text": ...}`, escaped for mrkdwn."""
    body = slack_escape(text(event))
    url = link(event) if link is not None else None
    if url:
        body += " " + _slack_link(url)
    return json.dumps({"text": body}, ensure_ascii=False).encode()


# -- e-mail -----------------------------------------------------------------------------------


def digest_subject(events: Sequence[Event]) -> str:
    """`greenroom: 3 events (2 run.failed, 1 run.succeeded)`, most frequent types first."""
    counts = Counter(clean(e.type, 60) for e in events)
    kinds = ", ".join(f"{n} {t}" for t, n in sorted(counts.items(), key=lambda c: (-c[1], c[0])))
    return cap(f"greenroom: {len(events)} events ({kinds})", SUBJECT_MAX)


def message_id(events: Sequence[Event], *, sender: str, recipient: str) -> str:
    """The same events to the same recipient make the same Message-ID, so a receiver can drop
    a resent mail; another recipient's mail of them is another message."""
    ids = ",".join(str(i) for i in sorted({e.id for e in events}))
    digest = hashlib.sha256(f"{sender}\n{recipient}\n{ids}".encode()).hexdigest()[:32]
    domain = sender.rpartition("@")[2].strip(" >")
    if not _HOSTNAME.fullmatch(domain):
        domain = "greenroom.invalid"
    return f"<greenroom.{digest}@{domain}>"


def _entry(event: Event, link: Link | None) -> list[str]:
    lines = [f"{iso(event.occurred_at)}  {text(event)}"]
    url = link(event) if link is not None else None
    if url:
        lines.append(f"    {clean(url, 2000)}")
    return lines


def _body(events: Sequence[Event], link: Link | None) -> str:
    if len(events) == 1:
        event = events[0]
        lines = [text(event), ""]
        lines.append(f"Event: {clean(event.type, 100)} (id {event.id})")
        lines.append(f"Subject: {clean(event.subject)}")
        lines.append(f"Occurred: {iso(event.occurred_at)}")
        if event.tenant is not None:
            lines.append(f"Tenant: {clean(event.tenant)}")
        url = link(event) if link is not None else None
        if url:
            lines.append(f"Details: {clean(url, 2000)}")
    else:
        lines = [f"{len(events)} events, oldest first:", ""]
        for event in sorted(events, key=lambda e: (e.occurred_at, e.id)):
            lines.extend(_entry(event, link))
    lines += ["", "-- ", "Sent by greenroom for an e-mail subscription to its events."]
    return "\n".join(lines) + "\n"


def email_message(
    events: Sequence[Event],
    *,
    sender: str,
    recipient: str,
    link: Link | None = None,
    at: float | None = None,
) -> EmailMessage:
    """A plain-text mail of one event, or a digest of several. `at` is its Date (now if
    not given)."""
    if not events:
        raise ValueError("an e-mail needs at least one event")
    events = list({e.id: e for e in events}.values())  # each event once
    message = EmailMessage()
    message["Subject"] = subject_line(events[0]) if len(events) == 1 else digest_subject(events)
    message["From"] = sender
    message["To"] = recipient
    if len(message["To"].addresses) != 1 or len(message["From"].addresses) != 1:
        raise ValueError("sender and recipient must each be one address")
    message["Date"] = formatdate(at, usegmt=True)
    message["Message-ID"] = message_id(events, sender=sender, recipient=recipient)
    message["X-Greenroom-Event-Ids"] = ", ".join(str(e.id) for e in events)
    # RFC 3834: no vacation replies or other auto-responses to a notification.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(_body(events, link), charset="utf-8")
    return message
