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
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

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
from greenroom.storage.outbox import NewEvent, emit

T = TypeVar("T")
#: A delivery to send now: due, or in flight with a lease that ended.
_DUE = (
    "d.state IN ('pending', 'sending') AND d.next_attempt_at <= :now"
    " AND (d.state = 'pending' OR d.lease_expires_at < :now)"
)
#: Enabled subscriptions with deliveries to send now (an index probe each).
_WAITING = (
    "SELECT s.* FROM subscriptions s WHERE s.enabled AND EXISTS (SELECT 1 FROM deliveries d"
    f" WHERE d.subscription_id = s.id AND {_DUE})"
)
#: The most events of one digest e-mail.
DIGEST_MAX = 500


@dataclass(frozen=True)
class Claimed:
    """A delivery a worker now holds, with what it needs to make it."""

    delivery: Delivery
    event: Event
    subscription: Subscription


@dataclass(frozen=True, kw_only=True)
class Finished:
    """How one attempt of a claimed delivery went, and what happens next."""

    delivery_id: int
    #: The delivery's `attempts` as claimed: a stale worker's result is logged, not applied.
    attempt: int
    #: delivered, retry, failed (the schedule ended) or disabled (the endpoint is gone).
    outcome: str
    status: int | None = None
    latency_ms: float = 0.0
    response: str = ""
    error: str | None = None
    #: For `retry`: when the next attempt is due.
    next_attempt_at: float | None = None


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
    # -- fan-out --------------------------------------------------------------------------

    @retry_conflicts
    def fan_out(self, *, limit: int = 500) -> int:
        """Make the deliveries of the next events (up to `limit`); how many events were read.
        0 when another worker is fanning out."""
        backend = self.backend
        with backend.transaction(write=False) as tx:  # most polls find nothing: no write lock
            if not tx.execute(
                "SELECT 1 FROM events, delivery_cursor c WHERE c.name = 'events' AND"
                f" (events.txid, events.id) > (c.txid, c.event_id) AND {backend.settled_sql}"
                " LIMIT 1"
            ):
                return 0
        with backend.transaction() as tx:
            cursor = tx.execute(
                f"SELECT txid, event_id FROM delivery_cursor WHERE name = 'events'"
                f" {backend.skip_locked}"
            )
            if not cursor:
                return 0
            rows = tx.execute(
                f"SELECT * FROM events WHERE (txid, id) > (:txid, :id) AND {backend.settled_sql}"
                " ORDER BY txid, id LIMIT :limit",
                {"txid": cursor[0]["txid"], "id": cursor[0]["event_id"], "limit": limit},
            )
            if not rows:
                return 0
            events = _readable(rows, outbox_event_from_row)
            subscriptions = self._enabled(tx, {e.tenant for e in events if e.tenant})
            now = self.clock.now()
            made = [
                _new_delivery(event, s, now)
                for event in events
                for s in subscriptions.get(event.tenant or "", ())
                if s.created_at <= event.occurred_at and wants(s, event)
            ]
            _insert(tx, made, now)
            tx.execute(
                "UPDATE delivery_cursor SET txid = :txid, event_id = :id WHERE name = 'events'",
                {"txid": rows[-1]["txid"], "id": rows[-1]["id"]},
            )
            return len(rows)

    def _enabled(self, tx: Tx, tenants: set[str]) -> dict[str, list[Subscription]]:
        found: dict[str, list[Subscription]] = defaultdict(list)
        if tenants:
            rows = tx.execute(
                "SELECT * FROM subscriptions WHERE enabled AND"
                f" {self.backend.member('tenant', 'tenants')}",
                {"tenants": self.backend.list_param(sorted(tenants))},
            )
            for subscription in _readable(rows, subscription_from_row):
                found[subscription.tenant].append(subscription)
        return found

    # -- claiming and finishing -----------------------------------------------------------

    @retry_conflicts
    def claim(self, worker_id: str, *, limit: int, lease_seconds: float) -> list[Claimed]:
        """Take up to `limit` due deliveries (and deliveries whose worker's lease ended), as
        their subscriptions' in-flight limits and rates allow, from subscriptions in random
        order: one endpoint's backlog never holds up another's. A digest subscription's due
        deliveries are taken together."""
        backend = self.backend
        now = self.clock.now()
        with backend.transaction(write=False) as tx:  # most polls find nothing: no write lock
            if not tx.execute(f"{_WAITING} LIMIT 1", {"now": now}):
                return []
        with backend.transaction() as tx:
            locked = tx.execute(
                f"{_WAITING} ORDER BY random() LIMIT :limit {backend.skip_locked}",
                {"now": now, "limit": limit},
            )
            if not locked:
                return []
            ids = backend.list_param([r["id"] for r in locked])
            in_flight = {
                r["subscription_id"]: r["n"]
                for r in tx.execute(
                    "SELECT subscription_id, COUNT(*) AS n FROM deliveries WHERE state ="
                    " 'sending' AND lease_expires_at >= :now AND"
                    f" {backend.member('subscription_id', 'ids')} GROUP BY subscription_id",
                    {"now": now, "ids": ids},
                )
            }
            readable = {s.id for s in _readable(locked, subscription_from_row)}
            taken: list[int] = []
            for row in locked:
                if row["id"] not in readable:
                    continue
                busy = in_flight.get(row["id"], 0)
                if row["digest_minutes"] and row["channel"] == Channel.EMAIL.value:
                    room = DIGEST_MAX if busy == 0 and len(taken) < limit else 0
                else:
                    room = min(row["max_in_flight"] - busy, limit - len(taken))
                    room = self._take_tokens(tx, row, max(0, room), now)
                if room > 0:
                    taken += self._due(tx, row["id"], room, now)
            if not taken:
                return []
            rows = tx.execute(
                "UPDATE deliveries SET state = 'sending', attempts = attempts + 1,"
                " leased_by = :worker, lease_expires_at = :until, updated_at = :now"
                f" WHERE {backend.member('id', 'ids')} RETURNING *",
                {
                    "worker": worker_id,
                    "until": now + lease_seconds,
                    "now": now,
                    "ids": backend.list_param(taken),
                },
            )
            return self._claimed(tx, rows)

    def _due(self, tx: Tx, subscription_id: str, limit: int, now: float) -> list[int]:
        """A subscription's oldest due deliveries, locked (skipping other claimers' rows)."""
        rows = tx.execute(
            f"SELECT d.id FROM deliveries d WHERE d.subscription_id = :id AND {_DUE}"
            f" ORDER BY d.next_attempt_at, d.id LIMIT :limit {self.backend.skip_locked}",
            {"id": subscription_id, "now": now, "limit": limit},
        )
        return [r["id"] for r in rows]

    def _take_tokens(self, tx: Tx, row: Row, wanted: int, now: float) -> int:
        """How many of `wanted` sends the subscription's rate allows now (a token bucket that
        holds a second's worth)."""
        if row["rate_per_second"] is None or wanted == 0:
            return wanted
        rate = float(row["rate_per_second"])
        burst = max(1.0, rate)
        tokens = min(burst, float(row["tokens"]) + (now - float(row["tokens_at"])) * rate)
        take = min(wanted, math.floor(tokens))
        tx.execute(
            "UPDATE subscriptions SET tokens = :tokens, tokens_at = :now WHERE id = :id",
            {"tokens": tokens - take, "now": now, "id": row["id"]},
        )
        return take

    def _claimed(self, tx: Tx, rows: Sequence[Row]) -> list[Claimed]:
        backend = self.backend
        found = tx.execute(
            f"SELECT * FROM events WHERE {backend.member('id', 'ids')}",
            {"ids": backend.list_param(sorted({r["event_id"] for r in rows}))},
        )
        events = {e.id: e for e in _readable(found, outbox_event_from_row)}
        subscriptions = {
            r["id"]: subscription_from_row(r)
            for r in tx.execute(
                f"SELECT * FROM subscriptions WHERE {backend.member('id', 'ids')}",
                {"ids": backend.list_param(sorted({r["subscription_id"] for r in rows}))},
            )
        }
        claimed = []
        for row in rows:
            delivery = delivery_from_row(row)
            event = events.get(delivery.event_id)
            if event is None:  # pruned while it waited (or unreadable)
                tx.execute(
                    "UPDATE deliveries SET state = 'failed', last_error = 'event pruned',"
                    " leased_by = NULL, lease_expires_at = NULL WHERE id = :id",
                    {"id": delivery.id},
                )
                continue
            claimed.append(Claimed(delivery, event, subscriptions[delivery.subscription_id]))
        return claimed

    @retry_conflicts
    def finish(self, worker_id: str, finished: Sequence[Finished], *, disable_after: float) -> int:
        """Log these attempts and apply them to deliveries this worker still holds; disable
        endpoints that are gone or failed for `disable_after` seconds without a success. How
        many were applied."""
        if not finished:
            return 0
        now = self.clock.now()
        applied = 0
        with self.backend.transaction() as tx:
            for start in range(0, len(finished), ROWS_CHUNK):
                applied += self._finish(tx, worker_id, finished[start : start + ROWS_CHUNK], now)
            self._endpoints_after(tx, finished, now, disable_after)
        return applied

    def _finish(self, tx: Tx, worker_id: str, finished: Sequence[Finished], now: float) -> int:
        columns: list[Column] = [
            ("id", "bigint"),
            ("attempt", "integer"),
            ("outcome", "text"),
            ("status", "integer"),
            ("latency_ms", "double precision"),
            ("response", "text"),
            ("error", "text"),
            ("next_at", "double precision"),
        ]
        params: dict[str, Any] = {"now": now, "worker": worker_id}
        values = tx.rows(
            columns,
            [
                {
                    "id": f.delivery_id,
                    "attempt": f.attempt,
                    "outcome": f.outcome,
                    "status": f.status,
                    "latency_ms": f.latency_ms,
                    "response": f.response,
                    "error": f.error,
                    "next_at": f.next_attempt_at if f.next_attempt_at is not None else now,
                }
                for f in finished
            ],
            params,
        )
        names = ", ".join(name for name, _ in columns)
        tx.execute(
            f"WITH w({names}) AS ({values}) INSERT INTO delivery_attempts (delivery_id, tenant,"
            " subscription_id, event_id, attempt, at, outcome, status, latency_ms, response,"
            " error, worker_id) SELECT w.id, d.tenant, d.subscription_id, d.event_id, w.attempt,"
            " :now, w.outcome, w.status, w.latency_ms, w.response, w.error, :worker FROM w"
            " JOIN deliveries d ON d.id = w.id",
            params,
        )
        applied = tx.execute(
            f"WITH w({names}) AS ({values}) UPDATE deliveries SET state = CASE w.outcome"
            " WHEN 'delivered' THEN 'delivered' WHEN 'retry' THEN 'pending' ELSE 'failed' END,"
            " last_status = w.status, last_error = w.error, next_attempt_at = w.next_at,"
            " delivered_at = CASE WHEN w.outcome = 'delivered' THEN :now END,"
            " leased_by = NULL, lease_expires_at = NULL, updated_at = :now FROM w"
            " WHERE deliveries.id = w.id AND deliveries.state = 'sending'"
            " AND deliveries.leased_by = :worker AND deliveries.attempts = w.attempt"
            " RETURNING deliveries.id",
            params,
        )
        return len(applied)

    def _endpoints_after(
        self, tx: Tx, finished: Sequence[Finished], now: float, disable_after: float
    ) -> None:
        """Each endpoint's streak: a success ends it, a failure starts it; a gone endpoint,
        or one failing too long, is disabled and the tenant's other subscriptions hear of it."""
        backend = self.backend
        by_id = {f.delivery_id: f for f in finished}
        rows = tx.execute(
            f"SELECT id, subscription_id FROM deliveries WHERE {backend.member('id', 'ids')}",
            {"ids": backend.list_param(sorted(by_id))},
        )
        outcomes: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            outcomes[row["subscription_id"]].append(by_id[row["id"]].outcome)
        for subscription_id, seen in sorted(outcomes.items()):
            if "delivered" in seen:
                tx.execute(
                    "UPDATE subscriptions SET failing_since = NULL, last_success_at = :now"
                    " WHERE id = :id",
                    {"now": now, "id": subscription_id},
                )
                continue
            found = tx.execute(
                f"SELECT * FROM subscriptions WHERE id = :id AND enabled {backend.for_update}",
                {"id": subscription_id},
            )
            if not found:
                continue
            current = subscription_from_row(found[0])
            since = current.failing_since or now
            if "disabled" in seen:
                reason = "the endpoint answered 410 Gone"
            elif now - since >= disable_after:
                reason = f"every attempt failed for {disable_after / 86400:g} days"
            else:
                if current.failing_since is None:
                    tx.execute(
                        "UPDATE subscriptions SET failing_since = :now WHERE id = :id",
                        {"now": now, "id": subscription_id},
                    )
                continue
            self._disable(tx, current, reason, since, now)

    def _disable(
        self, tx: Tx, subscription: Subscription, reason: str, since: float, now: float
    ) -> None:
        tx.execute(
            "UPDATE subscriptions SET enabled = false, disabled_reason = :reason,"
            " failing_since = :since, updated_at = :now WHERE id = :id",
            {"reason": reason, "since": since, "now": now, "id": subscription.id},
        )
        self._audit(
            tx,
            tenant=subscription.tenant,
            actor="greenroom",
            action="subscription.disable",
            target=subscription.id,
            reason=reason,
        )
        payload = {
            "subscription_id": subscription.id,
            "channel": subscription.channel.value,
            "url": _shown(subscription),
            "reason": reason,
            "failing_since": since,
        }
        emit(
            tx,
            self.backend,
            [
                NewEvent(
                    subscription.tenant,
                    "endpoint.disabled",
                    f"subscription:{subscription.id}",
                    payload,
                )
            ],
            now,
        )

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
            made = _reset(tx, [_new_delivery(event, s, now, digest=False) for s in targets], now)
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
                _new_delivery(event, s, now, digest=False)
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


def _readable(rows: Sequence[Row], convert: Callable[[Row], T]) -> list[T]:
    """The rows that convert: a row greenroom cannot read (written by hand, or by a bug) is
    left out, so it never stops fan-out for every other tenant."""
    found = []
    for row in rows:
        try:
            found.append(convert(row))
        except (ValueError, TypeError, KeyError):
            continue
    return found


def _shown(subscription: Subscription) -> str:
    """The endpoint as events show it: a Slack webhook's path is its secret."""
    if subscription.channel is not Channel.SLACK:
        return subscription.url
    parts = urlsplit(subscription.url)
    return f"{parts.scheme}://{parts.hostname}/…"


def wants(subscription: Subscription, event: Event) -> bool:
    """Whether the subscription wants this event: one of its types, and every label it
    names with the value it names (events without labels have none)."""
    if not type_matches(subscription.types, event.type):
        return False
    labels = event.payload.get("labels") or {}
    return all(labels.get(k) == v for k, v in subscription.labels.items())


def _new_delivery(
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


def _insert(tx: Tx, made: Sequence[dict[str, Any]], now: float) -> None:
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
