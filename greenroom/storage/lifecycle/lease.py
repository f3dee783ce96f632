"""The CLAIM move: chosen ready runs leased to a worker, with the claim's accounting.

`storage.claim` decides which runs; this writes the move. On PostgreSQL the claim function
(migrations/sql/0019_claim.sql) makes the same move and accounting in one statement.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from greenroom.model import RunState
from greenroom.storage.backend import Backend, Row, Tx
from greenroom.storage.base import event_params, insert_events
from greenroom.storage.lifecycle import summaries
from greenroom.storage.lifecycle.moves import hold_paused
from greenroom.storage.lifecycle.states import Move, check

#: Seconds that rate-limit start records are kept beyond their window.
START_RECORD_MARGIN = 60.0


@dataclass(frozen=True, kw_only=True)
class Leasing:
    """What the claim decided besides the runs: for whom, for how long, and what it counts."""

    worker_id: str
    #: Lease seconds by queue, where the queue sets its own.
    lease_seconds: dict[str, float | None]
    default_seconds: float
    #: Queues and tenants with a concurrency limit: their runs take a slot.
    limited_queues: set[str]
    limited_tenants: list[str]
    #: Queues with a rate limit: their period in seconds.
    rate_periods: dict[str, float]
    #: How far each served tenant's turn moves on (runs taken / weight).
    advance: dict[str, float]


def lease(tx: Tx, backend: Backend, chosen: list[Row], leasing: Leasing, now: float) -> list[Row]:
    """Lease the chosen runs (queued, by seq); the leased rows, best first."""
    check(Move.CLAIM, RunState.QUEUED, RunState.RUNNING)
    rows = _lease(tx, backend, chosen, leasing, now)
    rows, held = _hold_paused(tx, backend, rows, now)
    _account(tx, backend, chosen, rows, leasing, now)
    summaries.leave_ready(tx, held)
    insert_events(
        tx,
        [event_params(r["id"], RunState.RUNNING, "leased", now, leasing.worker_id) for r in rows],
    )
    return sorted(rows, key=lambda r: (-r["priority"], r["seq"]))


def _lease(tx: Tx, backend: Backend, chosen: list[Row], leasing: Leasing, now: float) -> list[Row]:
    by_lease: dict[float, list[int]] = {}
    for row in chosen:
        seconds = leasing.lease_seconds.get(row["queue"]) or leasing.default_seconds
        by_lease.setdefault(seconds, []).append(row["seq"])
    rows: list[Row] = []
    for seconds, seqs in by_lease.items():
        rows += tx.execute(
            "UPDATE runs SET state = 'running', lease_owner = :worker,"
            " lease_token = lease_token + 1, lease_expires_at = :expires,"
            " lease_seconds = :seconds, started_at = COALESCE(started_at, :now), updated_at = :now,"
            f" holds_queue_slot = {backend.member('queue', 'limited_queues')},"
            f" holds_tenant_slot = {backend.member('tenant', 'limited_tenants')}"
            f" WHERE {backend.member('seq', 'seqs')} AND state = 'queued'"
            # Whether any pause exists, in the same round trip (there rarely is one).
            " RETURNING *, (SELECT COUNT(*) FROM pauses) AS pauses",
            {
                "worker": leasing.worker_id,
                "expires": now + seconds,
                "seconds": seconds,
                "now": now,
                "seqs": backend.list_param(seqs),
                "limited_queues": backend.list_param(sorted(leasing.limited_queues)),
                "limited_tenants": backend.list_param(leasing.limited_tenants),
            },
        )
    return rows


def _hold_paused(
    tx: Tx, backend: Backend, rows: list[Row], now: float
) -> tuple[list[Row], list[Row]]:
    """A run enqueued while its pause was being created can still be ready: never start it
    (the HOLD move)."""
    if not any(r["pauses"] for r in rows):
        return rows, []
    check(Move.HOLD, RunState.QUEUED, RunState.PAUSED)
    held = hold_paused(tx, backend, rows)
    insert_events(tx, [event_params(r["id"], RunState.PAUSED, "paused", now) for r in held])
    seqs = {r["seq"] for r in held}
    return [r for r in rows if r["seq"] not in seqs], held


def _account(
    tx: Tx, backend: Backend, chosen: list[Row], rows: list[Row], leasing: Leasing, now: float
) -> None:
    """Move lanes, queues and tenants on by what was leased (lock order: lanes, queues, tenants)."""
    leased = summaries.lane_counts(rows)
    # A head that was no longer ready (it should not happen) is repaired on the way.
    stale = dict.fromkeys(summaries.lane_counts(chosen), 0)
    summaries.refresh_lanes(tx, {**stale, **leased})
    per_queue = Counter(r["queue"] for r in rows)
    for queue in sorted(per_queue):
        # Counted where the limit stands now: a limit set after this claim read the queue
        # (unlocked, as it was unlimited) counts these runs too.
        counted = tx.execute(
            "UPDATE queues SET active = active + :n WHERE name = :queue"
            " AND concurrency IS NOT NULL RETURNING name",
            {"n": per_queue[queue], "queue": queue},
        )
        if counted and queue not in leasing.limited_queues:
            _hold_slots(tx, backend, "queue", [r for r in rows if r["queue"] == queue])
        if queue in leasing.rate_periods:
            tx.execute_many(
                "INSERT INTO queue_starts (queue, at) VALUES (:queue, :now)",
                [{"queue": queue, "now": now}] * per_queue[queue],
            )
    for queue, period in leasing.rate_periods.items():
        # Keep a margin: a claim that read its clock earlier, then waited for the queue's lock,
        # still counts the starts of its own window.
        tx.execute(
            "DELETE FROM queue_starts WHERE queue = :queue AND at <= :before",
            {"queue": queue, "before": now - period - START_RECORD_MARGIN},
        )
    per_tenant = Counter(r["tenant"] for r in rows)
    for tenant in sorted(leasing.advance):
        # Relative moves: a claim that waited for a queue lock may have read an older pass.
        (row,) = tx.execute(
            "UPDATE tenants SET pass = pass + :advance, ready = ready - :n,"
            " active = active + CASE WHEN concurrency IS NULL THEN 0 ELSE :n END"
            " WHERE name = :tenant RETURNING concurrency",
            {"advance": leasing.advance[tenant], "n": per_tenant[tenant], "tenant": tenant},
        )
        if row["concurrency"] is not None and tenant not in leasing.limited_tenants:
            _hold_slots(tx, backend, "tenant", [r for r in rows if r["tenant"] == tenant])


def _hold_slots(tx: Tx, backend: Backend, kind: str, rows: list[Row]) -> None:
    """A limit set while this claim ran: its runs take a slot of it."""
    if rows:
        tx.execute(
            f"UPDATE runs SET holds_{kind}_slot = true WHERE {backend.member('seq', 'seqs')}",
            {"seqs": backend.list_param([r["seq"] for r in rows])},
        )
