"""Deliveries as workers make them: events fanned out to the subscriptions that want them,
claimed under a lease, finished with an attempt logged.

Fan-out reads the events in position order from one cursor row, which a worker locks while it
fans out, and writes the cursor with the deliveries it made: each event gets one delivery per
subscription, once. Claims go by subscription (in random order, so one endpoint's backlog never
holds up another's): its row is locked, then its due deliveries (SKIP LOCKED on PostgreSQL), so
a subscription's in-flight limit and rate hold across workers. A worker that dies leaves its
deliveries `sending` until their lease ends; then any worker claims them again, and the
receiver sees the same webhook-id twice (at least once).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from greenroom.delivery.render import shown_endpoint
from greenroom.model import Channel, Delivery, Event, Subscription
from greenroom.storage.backend import Column, Row, Tx
from greenroom.storage.base import ROWS_CHUNK, StoreBase, retry_conflicts
from greenroom.storage.codec import (
    delivery_from_row,
    outbox_event_from_row,
    subscription_from_row,
)
from greenroom.storage.deliveries import insert_new, new_delivery, readable, wants
from greenroom.storage.outbox import NewEvent, emit

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


class Dispatch(StoreBase):
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
            if self._nobody_subscribed(tx):
                return 0
            # Positions and tenants first: the payloads of tenants nobody subscribed for (most,
            # often all) are never read.
            rows = tx.execute(
                "SELECT txid, id, tenant FROM events WHERE (txid, id) > (:txid, :id) AND"
                f" {backend.settled_sql} ORDER BY txid, id LIMIT :limit",
                {"txid": cursor[0]["txid"], "id": cursor[0]["event_id"], "limit": limit},
            )
            if not rows:
                return 0
            subscriptions = self._enabled(tx, {r["tenant"] for r in rows if r["tenant"]})
            wanted = [r["id"] for r in rows if r["tenant"] in subscriptions]
            events = readable(self._events(tx, wanted), outbox_event_from_row)
            now = self.clock.now()
            made = [
                new_delivery(event, s, now)
                for event in events
                for s in subscriptions.get(event.tenant or "", ())
                if s.created_at <= event.occurred_at and wants(s, event)
            ]
            insert_new(tx, made, now)
            tx.execute(
                "UPDATE delivery_cursor SET txid = :txid, event_id = :id WHERE name = 'events'",
                {"txid": rows[-1]["txid"], "id": rows[-1]["id"]},
            )
            return len(rows)

    def _nobody_subscribed(self, tx: Tx) -> bool:
        """With no subscription enabled, the cursor jumps to the last settled event in one
        statement: no event is read (the last event is read before the subscriptions, the order
        fan-out keeps, so one made meanwhile gets the events after it)."""
        last = tx.execute(
            f"SELECT txid, id FROM events WHERE {self.backend.settled_sql}"
            " ORDER BY txid DESC, id DESC LIMIT 1"
        )
        if not last or tx.execute("SELECT 1 FROM subscriptions WHERE enabled LIMIT 1"):
            return False
        tx.execute(
            "UPDATE delivery_cursor SET txid = :txid, event_id = :id WHERE name = 'events'",
            {"txid": last[0]["txid"], "id": last[0]["id"]},
        )
        return True

    def _events(self, tx: Tx, ids: list[int]) -> list[Row]:
        if not ids:
            return []
        return tx.execute(
            f"SELECT * FROM events WHERE {self.backend.member('id', 'ids')} ORDER BY txid, id",
            {"ids": self.backend.list_param(ids)},
        )

    def _enabled(self, tx: Tx, tenants: set[str]) -> dict[str, list[Subscription]]:
        found: dict[str, list[Subscription]] = defaultdict(list)
        if tenants:
            rows = tx.execute(
                "SELECT * FROM subscriptions WHERE enabled AND"
                f" {self.backend.member('tenant', 'tenants')}",
                {"tenants": self.backend.list_param(sorted(tenants))},
            )
            for subscription in readable(rows, subscription_from_row):
                found[subscription.tenant].append(subscription)
        return found

    # -- claiming and finishing -----------------------------------------------------------

    @retry_conflicts
    def claim(self, worker_id: str, *, limit: int, lease_seconds: float) -> list[Claimed]:
        """Take up to `limit` due deliveries (and deliveries whose worker's lease ended), as
        their subscriptions' in-flight limits and rates allow, from subscriptions in random
        order: one endpoint's backlog never holds up another's. A digest subscription's due
        deliveries are taken together."""
        now = self.clock.now()
        if not self._waiting(now):
            return []
        with self.backend.transaction() as tx:
            return self._claim(tx, worker_id, limit, lease_seconds, now)

    @retry_conflicts
    def exchange(
        self,
        worker_id: str,
        finished: Sequence[Finished],
        *,
        limit: int,
        lease_seconds: float,
        disable_after: float,
    ) -> list[Claimed]:
        """`finish` these results, then `claim` up to `limit`, in one transaction: a
        dispatcher's room under in-flight limits is taken again as soon as it is freed, for one
        commit instead of two."""
        now = self.clock.now()
        if not finished and (limit <= 0 or not self._waiting(now)):
            return []
        with self.backend.transaction() as tx:
            if finished:
                self._finish_all(tx, worker_id, finished, now, disable_after)
            return self._claim(tx, worker_id, limit, lease_seconds, now) if limit > 0 else []

    def _waiting(self, now: float) -> bool:
        """Whether any subscription has deliveries due, without a write lock (most polls find
        nothing)."""
        with self.backend.transaction(write=False) as tx:
            return bool(tx.execute(f"{_WAITING} LIMIT 1", {"now": now}))

    def _claim(
        self, tx: Tx, worker_id: str, limit: int, lease_seconds: float, now: float
    ) -> list[Claimed]:
        backend = self.backend
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
        usable = {s.id for s in readable(locked, subscription_from_row)}
        taken: list[int] = []
        for row in locked:
            if row["id"] not in usable:
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
        subscriptions = {r["id"]: subscription_from_row(r) for r in locked if r["id"] in usable}
        return self._claimed(tx, rows, subscriptions)

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

    def _claimed(
        self, tx: Tx, rows: Sequence[Row], subscriptions: dict[str, Subscription]
    ) -> list[Claimed]:
        """The claimed deliveries with their events, and their subscriptions as the claim
        read (and locked) them."""
        backend = self.backend
        found = tx.execute(
            f"SELECT * FROM events WHERE {backend.member('id', 'ids')}",
            {"ids": backend.list_param(sorted({r["event_id"] for r in rows}))},
        )
        events = {e.id: e for e in readable(found, outbox_event_from_row)}
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
        with self.backend.transaction() as tx:
            return self._finish_all(tx, worker_id, finished, self.clock.now(), disable_after)

    def _finish_all(
        self,
        tx: Tx,
        worker_id: str,
        finished: Sequence[Finished],
        now: float,
        disable_after: float,
    ) -> int:
        applied = 0
        outcomes: dict[str, list[str]] = defaultdict(list)
        for start in range(0, len(finished), ROWS_CHUNK):
            chunk = finished[start : start + ROWS_CHUNK]
            applied += self._finish(tx, worker_id, chunk, now, outcomes)
        self._endpoints_after(tx, outcomes, now, disable_after)
        return applied

    def _finish(
        self,
        tx: Tx,
        worker_id: str,
        finished: Sequence[Finished],
        now: float,
        outcomes: dict[str, list[str]],
    ) -> int:
        """Log the attempts and apply them; each subscription's outcomes go to `outcomes`."""
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
        logged = tx.execute(
            f"WITH w({names}) AS ({values}) INSERT INTO delivery_attempts (delivery_id, tenant,"
            " subscription_id, event_id, attempt, at, outcome, status, latency_ms, response,"
            " error, worker_id) SELECT w.id, d.tenant, d.subscription_id, d.event_id, w.attempt,"
            " :now, w.outcome, w.status, w.latency_ms, w.response, w.error, :worker FROM w"
            " JOIN deliveries d ON d.id = w.id RETURNING subscription_id, outcome",
            params,
        )
        for row in logged:
            outcomes[row["subscription_id"]].append(row["outcome"])
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
        self, tx: Tx, outcomes: dict[str, list[str]], now: float, disable_after: float
    ) -> None:
        """Each endpoint's streak: a success ends it, a failure starts it; a gone endpoint,
        or one failing too long, is disabled and the tenant's other subscriptions hear of it.

        A success is written at most once a second per endpoint: each write locks the
        subscription's row, which other dispatchers' claims then skip."""
        backend = self.backend
        succeeded = sorted(s for s, seen in outcomes.items() if "delivered" in seen)
        if succeeded:
            tx.execute(
                "UPDATE subscriptions SET failing_since = NULL, last_success_at = :now"
                f" WHERE {backend.member('id', 'ids')} AND (failing_since IS NOT NULL"
                " OR last_success_at IS NULL OR last_success_at < :recent)",
                {"now": now, "recent": now - 1.0, "ids": backend.list_param(succeeded)},
            )
        for subscription_id, seen in sorted(outcomes.items()):
            if "delivered" in seen:
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
            "url": shown_endpoint(subscription),
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
