"""Deliveries: events fanned out to the subscriptions that want them, claimed by workers under a
lease, finished with an attempt logged.

Fan-out reads the events in position order from one cursor row, which a worker locks while it
fans out, and writes the cursor with the deliveries it made: each event gets one delivery per
subscription, once. Claims lock delivery rows (SKIP LOCKED on PostgreSQL), then the
subscriptions they are for, so a subscription's in-flight limit and rate hold across workers.
A worker that dies leaves its deliveries `sending` until their lease ends; then any worker
claims them again, and the receiver sees the same webhook-id twice (at least once).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from greenroom.errors import InvalidInput, NotFound
from greenroom.model import (
    Channel,
    Delivery,
    DeliveryAttempt,
    Event,
    Subscription,
)
from greenroom.storage.backend import Column, Row, Tx
from greenroom.storage.base import ROWS_CHUNK, StoreBase, retry_conflicts
from greenroom.storage.codec import (
    delivery_attempt_from_row,
    delivery_from_row,
    outbox_event_from_row,
    subscription_from_row,
)
from greenroom.storage.events import type_matches

T = TypeVar("T")


#: A delivery to send now: due, or in flight with a lease that ended.
@dataclass(frozen=True, kw_only=True)
class DeliveryFilter:
    tenant: str | None = None
    subscription_id: str | None = None
    event_id: int | None = None
    #: Only deliveries whose last attempt failed: given up, or waiting for a retry.
    failed: bool = False
    #: Deliveries with a smaller id (the next page).
    before: int | None = None
    limit: int = 50


class Deliveries(StoreBase):
    # -- operators ------------------------------------------------------------------------

    def list_deliveries(self, delivery_filter: DeliveryFilter) -> list[Delivery]:
        """Newest first."""
        f = delivery_filter
        clauses = ["1 = 1"]
        params: dict[str, Any] = {
            "tenant": f.tenant,
            "subscription": f.subscription_id,
            "event": f.event_id,
            "before": f.before,
            "limit": f.limit,
        }
        if f.tenant is not None:
            clauses.append("tenant = :tenant")
        if f.subscription_id is not None:
            clauses.append("subscription_id = :subscription")
        if f.event_id is not None:
            clauses.append("event_id = :event")
        if f.failed:
            clauses.append("(state = 'failed' OR (state = 'pending' AND attempts > 0))")
        if f.before is not None:
            clauses.append("id < :before")
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT * FROM deliveries WHERE {' AND '.join(clauses)} ORDER BY id DESC"
                " LIMIT :limit",
                params,
            )
        return [delivery_from_row(r) for r in rows]

    def get(self, delivery_id: int, *, tenant: str | None = None) -> Delivery:
        scope = "" if tenant is None else " AND tenant = :tenant"
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT * FROM deliveries WHERE id = :id{scope}",
                {"id": delivery_id, "tenant": tenant},
            )
        if not rows:
            raise NotFound(f"delivery {delivery_id} not found")
        return delivery_from_row(rows[0])

    def attempts(self, delivery_id: int, *, tenant: str | None = None) -> list[DeliveryAttempt]:
        """A delivery's attempts, oldest first (until pruned)."""
        self.get(delivery_id, tenant=tenant)
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT * FROM delivery_attempts WHERE delivery_id = :id ORDER BY id",
                {"id": delivery_id},
            )
        return [delivery_attempt_from_row(r) for r in rows]

    @retry_conflicts
    def replay(
        self,
        event_id: int,
        *,
        actor: str,
        tenant: str | None = None,
        subscription_id: str | None = None,
    ) -> list[Delivery]:
        """Send an event again, with its webhook-id, to one subscription or every enabled one
        of its tenant that wants it (a delivery in flight is left to finish)."""
        now = self.clock.now()
        with self.backend.transaction() as tx:
            scope = "" if tenant is None else " AND tenant = :tenant"
            rows = tx.execute(
                f"SELECT * FROM events WHERE id = :id{scope}", {"id": event_id, "tenant": tenant}
            )
            if not rows or rows[0]["tenant"] is None:
                raise NotFound(f"event {event_id} not found (or pruned)")
            event = outbox_event_from_row(rows[0])
            assert event.tenant is not None
            targets = self._targets(tx, event.tenant, subscription_id)
            if subscription_id is None:
                targets = [s for s in targets if s.enabled and wants(s, event)]
            made = _reset(tx, [new_delivery(event, s, now, digest=False) for s in targets], now)
            self._audit(
                tx,
                tenant=event.tenant,
                actor=actor,
                action="delivery.replay",
                target=f"event:{event_id}",
                reason="replayed",
                detail={"subscriptions": [s.id for s in targets], "deliveries": len(made)},
            )
            return [delivery_from_row(r) for r in made]

    @retry_conflicts
    def recover(
        self,
        *,
        since: float,
        actor: str,
        tenant: str,
        subscription_id: str | None = None,
        limit: int = 100_000,
    ) -> int:
        """Send again every event since `since` that a subscription wants and did not receive:
        its delivery failed, or it was made while the subscription was disabled (or before
        it existed). How many deliveries were made or restarted."""
        now = self.clock.now()
        with self.backend.transaction() as tx:
            targets = [s for s in self._targets(tx, tenant, subscription_id) if s.enabled]
            rows = tx.execute(
                "SELECT * FROM events WHERE tenant = :tenant AND occurred_at >= :since"
                " ORDER BY id LIMIT :limit",
                {"tenant": tenant, "since": since, "limit": limit},
            )
            wanted = [
                new_delivery(event, s, now, digest=False)
                for event in map(outbox_event_from_row, rows)
                for s in targets
                if wants(s, event)
            ]
            made = _reset(tx, wanted, now, delivered_too=False)
            self._audit(
                tx,
                tenant=tenant,
                actor=actor,
                action="delivery.recover",
                target=subscription_id or f"tenant:{tenant}",
                reason=f"recover since {since}",
                detail={"subscriptions": [s.id for s in targets], "deliveries": len(made)},
            )
            return len(made)

    def _targets(self, tx: Tx, tenant: str, subscription_id: str | None) -> list[Subscription]:
        clause = "" if subscription_id is None else " AND id = :id"
        rows = tx.execute(
            f"SELECT * FROM subscriptions WHERE tenant = :tenant{clause} ORDER BY id",
            {"tenant": tenant, "id": subscription_id},
        )
        if subscription_id is not None and not rows:
            raise NotFound(f"subscription {subscription_id} not found")
        return [subscription_from_row(r) for r in rows]

    def prune(self, *, older_than: float, batch: int = 5000) -> int:
        """Delete attempts, and ended deliveries, older than `older_than` seconds; how many
        rows."""
        if older_than < 0:
            raise InvalidInput("older_than must not be negative")
        params = {"cutoff": self.clock.now() - older_than, "batch": batch}
        return self._delete_in_batches(
            "DELETE FROM delivery_attempts WHERE id IN (SELECT id FROM delivery_attempts"
            " WHERE at < :cutoff LIMIT :batch)",
            params,
        ) + self._delete_in_batches(
            "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries WHERE state IN"
            " ('delivered', 'failed') AND updated_at < :cutoff LIMIT :batch)",
            params,
        )


def readable(rows: Sequence[Row], convert: Callable[[Row], T]) -> list[T]:
    """The rows that convert: a row greenroom cannot read (written by hand, or by a bug) is
    left out, so it never stops fan-out for every other tenant."""
    found = []
    for row in rows:
        try:
            found.append(convert(row))
        except (ValueError, TypeError, KeyError):
            continue
    return found


def wants(subscription: Subscription, event: Event) -> bool:
    """Whether the subscription wants this event: one of its types, and every label it
    names with the value it names (events without labels have none)."""
    if not type_matches(subscription.types, event.type):
        return False
    labels = event.payload.get("labels") or {}
    return all(labels.get(k) == v for k, v in subscription.labels.items())


def new_delivery(
    event: Event, subscription: Subscription, now: float, *, digest: bool = True
) -> dict[str, Any]:
    due = now
    minutes = subscription.digest_minutes
    if digest and minutes and subscription.channel is Channel.EMAIL:
        window = minutes * 60.0
        due = (math.floor(now / window) + 1) * window  # the end of the digest's window
    return {
        "tenant": event.tenant,
        "subscription_id": subscription.id,
        "event_id": event.id,
        "due": due,
    }


_NEW: list[Column] = [
    ("tenant", "text"),
    ("subscription_id", "text"),
    ("event_id", "bigint"),
    ("due", "double precision"),
]
_NEW_NAMES = ", ".join(name for name, _ in _NEW)
_INSERT = (
    "INSERT INTO deliveries (tenant, subscription_id, event_id, state, attempts,"
    " next_attempt_at, created_at, updated_at) SELECT tenant, subscription_id, event_id,"
    " 'pending', 0, due, :now, :now FROM w WHERE true"
)


def insert_new(tx: Tx, made: Sequence[dict[str, Any]], now: float) -> None:
    """New deliveries; one an event already has for a subscription stays as it is."""
    for start in range(0, len(made), ROWS_CHUNK):
        params: dict[str, Any] = {"now": now}
        rows = tx.rows(_NEW, made[start : start + ROWS_CHUNK], params)
        tx.execute(
            f"WITH w({_NEW_NAMES}) AS ({rows}) {_INSERT}"
            " ON CONFLICT (subscription_id, event_id) DO NOTHING",
            params,
        )


def _reset(
    tx: Tx, made: Sequence[dict[str, Any]], now: float, *, delivered_too: bool = True
) -> list[Row]:
    """These deliveries, due now: made where missing, restarted (a fresh retry schedule)
    where they exist and are not in flight (nor delivered, unless `delivered_too`)."""
    restartable = "'pending', 'failed', 'delivered'" if delivered_too else "'pending', 'failed'"
    rows: list[Row] = []
    for start in range(0, len(made), ROWS_CHUNK):
        params: dict[str, Any] = {"now": now}
        values = tx.rows(_NEW, made[start : start + ROWS_CHUNK], params)
        rows += tx.execute(
            f"WITH w({_NEW_NAMES}) AS ({values}) {_INSERT}"
            " ON CONFLICT (subscription_id, event_id) DO UPDATE SET state = 'pending',"
            " attempts = 0, next_attempt_at = excluded.next_attempt_at, last_error = NULL,"
            " last_status = NULL, delivered_at = NULL, updated_at = excluded.updated_at"
            f" WHERE deliveries.state IN ({restartable}) RETURNING *",
            params,
        )
    return rows
