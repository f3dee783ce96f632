"""The read side of the events table (the outbox): events in position order, a page at a time,
and their retention. `storage.outbox` writes them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from greenroom.errors import InvalidInput, NotFound
from greenroom.model import Event
from greenroom.rules import check_text
from greenroom.storage.base import StoreBase
from greenroom.storage.codec import outbox_event_from_row

#: Every type greenroom writes (docs/events.md): a filter naming another is a mistake, not an
#: empty list.
EVENT_TYPES = (
    "run.succeeded",
    "run.failed",
    "run.cancelled",
    "run.retry_scheduled",
    "run.stalled",
    "run.cancel_requested",
    "run.retried",
    "pause.created",
    "pause.lifted",
    "integration.created",
    "integration.updated",
    "integration.deleted",
    "endpoint.disabled",
    "schedule.fired",
    "schedule.missed",
    "schedule.paused",
    "schedule.resumed",
    "integration.data_stale",
    "license.idle",
    "license.underused",
    "license.reclaimed",
    "license.digest",
    "seats.unassigned",
    "report.ready",
)
#: An event type (`run.failed`), or every type under a prefix (`run.*`).
TYPE_FILTERS = EVENT_TYPES + tuple(sorted({t.split(".")[0] + ".*" for t in EVENT_TYPES}))
TYPE_PATTERN = re.compile("(" + "|".join(re.escape(t) for t in TYPE_FILTERS) + ")")
#: Every type (subscriptions only: a reader leaves out `type` instead).
ANY_TYPE = "*"


def type_matches(patterns: Sequence[str], event_type: str) -> bool:
    """Whether an event of this type is one of these types, prefixes (`run.*`) or `*`."""
    return any(
        p in (ANY_TYPE, event_type) or (p.endswith(".*") and event_type.startswith(p[:-1]))
        for p in patterns
    )


#: Where a reader is in the events: (txid, id) of the last event it read.
Position = tuple[int, int]


@dataclass(frozen=True, kw_only=True)
class EventFilter:
    tenant: str | None = None
    #: Types, or prefixes as `run.*`: events of any of them.
    types: Sequence[str] = ()
    subject: str | None = None
    #: Events that occurred at or after this Unix time.
    since: float | None = None
    #: Events after this position (from `Events.position` or a page's last event).
    after: Position | None = None
    limit: int = 50


class Events(StoreBase):
    """Events as subscribers read them: every read scoped to a tenant unless a platform asks."""

    def list_events(self, event_filter: EventFilter) -> list[tuple[Event, Position]]:
        """Events in position order (the order their transactions committed), each with its
        position for the next page."""
        where, params = _filter_sql(event_filter)
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT * FROM events WHERE {where} AND {self.backend.settled_sql}"
                " ORDER BY txid, id LIMIT :limit",
                params,
            )
        return [(outbox_event_from_row(r), (r["txid"], r["id"])) for r in rows]

    def get(self, event_id: int, *, tenant: str | None = None) -> Event:
        scope = "" if tenant is None else " AND tenant = :tenant"
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT * FROM events WHERE id = :id{scope}", {"id": event_id, "tenant": tenant}
            )
        if not rows:
            raise NotFound(f"event {event_id} not found (or pruned)")
        return outbox_event_from_row(rows[0])

    def position(self, event_id: int, *, tenant: str | None = None) -> Position:
        """Where this event is, to read the events after it."""
        scope = "" if tenant is None else " AND tenant = :tenant"
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT txid, id FROM events WHERE id = :id{scope}",
                {"id": event_id, "tenant": tenant},
            )
        if not rows:
            raise NotFound(f"event {event_id} not found (or pruned)")
        return rows[0]["txid"], rows[0]["id"]

    def prune(self, *, older_than: float, tenant: str | None = None, batch: int = 5000) -> int:
        """Delete events that occurred more than `older_than` seconds ago; how many."""
        if older_than < 0:
            raise InvalidInput("older_than must not be negative")
        scope = "" if tenant is None else " AND tenant = :tenant"
        return self._delete_in_batches(
            "DELETE FROM events WHERE id IN (SELECT id FROM events"
            f" WHERE occurred_at < :cutoff{scope} LIMIT :batch)",
            {"cutoff": self.clock.now() - older_than, "tenant": tenant, "batch": batch},
        )


def _filter_sql(f: EventFilter) -> tuple[str, dict[str, Any]]:
    clauses = ["1 = 1"]
    params: dict[str, Any] = {"limit": f.limit}
    if f.tenant is not None:
        clauses.append("tenant = :tenant")
        params["tenant"] = check_text(f.tenant, "tenant", max_length=200)
    if f.subject is not None:
        clauses.append("subject = :subject")
        params["subject"] = check_text(f.subject, "subject", max_length=250)
    if f.since is not None:
        clauses.append("occurred_at >= :since")
        params["since"] = f.since
    if f.after is not None:
        clauses.append("(txid, id) > (:after_txid, :after_id)")
        params["after_txid"], params["after_id"] = f.after
    wanted_types: set[str] = set()
    for wanted in f.types:
        if not TYPE_PATTERN.fullmatch(wanted):
            raise InvalidInput(f"type {wanted!r} is not an event type or a prefix like run.*")
        # A prefix is the types of the catalogue under it: an IN list any index serves, the
        # same under every collation.
        wanted_types.update(t for t in EVENT_TYPES if type_matches([wanted], t))
    if wanted_types:
        names = [f"type_{i}" for i in range(len(wanted_types))]
        clauses.append(f"type IN ({', '.join(':' + n for n in names)})")
        params.update(zip(names, sorted(wanted_types), strict=True))
    return " AND ".join(clauses), params
