"""What a webhook receiver is sent for an event: the Standard Webhooks body and id."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from greenroom.model import Event


def message_id(event: Event) -> str:
    """The `webhook-id`: the same for every attempt and replay of the event, so a receiver
    that saw it already can drop it."""
    return f"evt_{event.id}"


def event_url(event: Event, public_url: str | None) -> str | None:
    """Where the event can be read through the API, if the API's address is known."""
    return f"{public_url.rstrip('/')}/v1/events/{event.id}" if public_url else None


def webhook_body(event: Event, *, max_bytes: int, public_url: str | None = None) -> bytes:
    """`{"type", "timestamp", "data"}`; `data` holds the event's id, tenant, subject and
    payload fields. A body over `max_bytes` carries no payload but `truncated` and a link."""
    data = {"event_id": event.id, "tenant": event.tenant, "subject": event.subject}
    body = _encode(event, {**data, **event.payload})
    if len(body) <= max_bytes:
        return body
    version = event.payload.get("version")
    return _encode(
        event,
        {**data, "version": version, "truncated": True, "url": event_url(event, public_url)},
    )


def _encode(event: Event, data: dict[str, object]) -> bytes:
    timestamp = datetime.fromtimestamp(event.occurred_at, UTC).isoformat().replace("+00:00", "Z")
    document = {"type": event.type, "timestamp": timestamp, "data": data}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
