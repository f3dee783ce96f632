"""The write side of the events table (the transactional outbox): events go in with the
transaction of the change that causes them, so both commit or neither does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from greenroom.storage.backend import Backend, Column, Tx
from greenroom.storage.base import ROWS_CHUNK
from greenroom.storage.codec import dumps
from greenroom.tracing import current_traceparent

#: The schema version of every payload written now (docs/events.md); a change that removes or
#: retypes a field makes the next one.
PAYLOAD_VERSION = 1
_COLUMNS: list[Column] = [
    ("tenant", "text"),
    ("type", "text"),
    ("subject", "text"),
    ("payload", "text"),
    ("trace_parent", "text"),
]
_NAMES = ", ".join(name for name, _ in _COLUMNS)


@dataclass(frozen=True)
class NewEvent:
    tenant: str | None
    type: str
    #: `kind:id`, as `Event.subject`.
    subject: str
    #: The type's fields; `version` is added.
    payload: dict[str, Any]
    #: The trace it joins; None: the trace current where it is written, if any.
    trace_parent: str | None = None


def emit(tx: Tx, backend: Backend, events: Sequence[NewEvent], now: float) -> None:
    """Write these events in `tx`, in order."""
    ambient = current_traceparent()
    for start in range(0, len(events), ROWS_CHUNK):
        params: dict[str, Any] = {"now": now}
        rows = tx.rows(
            _COLUMNS,
            [
                {
                    "tenant": e.tenant,
                    "type": e.type,
                    "subject": e.subject,
                    "payload": dumps({"version": PAYLOAD_VERSION, **e.payload}, "payload"),
                    "trace_parent": e.trace_parent or ambient,
                }
                for e in events[start : start + ROWS_CHUNK]
            ],
            params,
        )
        tx.execute(
            f"WITH w({_NAMES}) AS ({rows}) INSERT INTO events (txid, occurred_at, {_NAMES})"
            f" SELECT {backend.txid_sql}, :now, {_NAMES} FROM w",
            params,
        )
