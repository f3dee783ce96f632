"""Bookkeeping of ready and running runs that claims rely on.

A run is ready when its state is `queued`. Claims never scan runs: they read small summaries that
every transition keeps current here, in one place:
- lanes: per tenant and session key, how many runs run and the best ready run (the head);
- tenants: how many runs are ready (fairness picks among tenants with ready work) and, while a
  concurrency limit is set, how many run;
- queues: how many run, while a concurrency limit is set.
A run counts towards a limit while it holds that limit's slot (`holds_queue_slot`,
`holds_tenant_slot`, set by its claim): its end gives back exactly what its claim took.
Lock order, to stay free of deadlocks: lanes, then queues, then tenants (each sorted by key).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from greenroom.model import NewRun, Pause, PauseScope, RunState
from greenroom.storage.backend import Backend, Row, Tx

#: What ending a lease resets (the slots it held are given back by leave_running).
CLEAR_LEASE = (
    "lease_owner = NULL, lease_expires_at = NULL, pause_requested = false,"
    " holds_queue_slot = false, holds_tenant_slot = false"
)
LANE_HEAD = (
    "(SELECT r.seq, r.priority, r.queue FROM runs r WHERE r.tenant = lanes.tenant"
    " AND r.session_key = lanes.session_key AND r.state = 'queued'"
    " ORDER BY r.priority DESC, r.seq LIMIT 1)"
)


def lane_offer(source: str) -> str:
    """Offer ready runs as heads of their lanes, creating lanes on first use: `source` yields
    (tenant, session_key, active, max_active, seq, priority, queue), at most one per lane."""
    return (
        "INSERT INTO lanes (tenant, session_key, active, max_active, head_seq, head_priority,"
        f" head_queue) {source} ON CONFLICT (tenant, session_key) DO UPDATE"
        " SET head_seq = excluded.head_seq, head_priority = excluded.head_priority,"
        " head_queue = excluded.head_queue WHERE lanes.head_seq IS NULL"
        " OR excluded.head_priority > lanes.head_priority"
        " OR (excluded.head_priority = lanes.head_priority AND excluded.head_seq < lanes.head_seq)"
    )


_LANE_OFFER = lane_offer("VALUES (:tenant, :session_key, 0, :max_active, :seq, :priority, :queue)")


def lane_counts(rows: Iterable[Row]) -> Counter[tuple[str, str]]:
    """How many of these runs each lane holds (runs without a session key have none)."""
    return Counter((r["tenant"], r["session_key"]) for r in rows if r["session_key"] is not None)


def lock_lanes(tx: Tx, backend: Backend, rows: Iterable[Row]) -> None:
    """Lock the lanes of these runs, in key order, before locking the runs themselves."""
    for tenant, session_key in sorted(lane_counts(rows)):
        tx.execute(
            "SELECT active FROM lanes WHERE tenant = :tenant AND session_key = :session_key"
            f" {backend.for_update}",
            {"tenant": tenant, "session_key": session_key},
        )


def refresh_lanes(tx: Tx, deltas: Mapping[tuple[str, str], int]) -> None:
    """Recompute the heads of these lanes and move their running counts by `deltas` (one per
    run: a move may start or end several runs of one lane).

    The heads are read by a statement of their own, once the lanes are locked: a statement
    that waited for a lane (an enqueue offering its new run holds it) still reads the runs as
    they were when it began, and would miss that run and leave it out of the claim's reach."""
    lanes = sorted(deltas)
    for tenant, session_key in lanes:
        tx.execute(
            "UPDATE lanes SET active = active + :delta"
            " WHERE tenant = :tenant AND session_key = :session_key",
            {"delta": deltas[tenant, session_key], "tenant": tenant, "session_key": session_key},
        )
    for tenant, session_key in lanes:
        tx.execute(
            f"UPDATE lanes SET (head_seq, head_priority, head_queue) = {LANE_HEAD}"
            " WHERE tenant = :tenant AND session_key = :session_key",
            {"tenant": tenant, "session_key": session_key},
        )


def tenant_ready(n: str) -> str:
    """Move tenant :tenant's ready count on by SQL `n`. A tenant that starts to compete (new,
    or back from idle) starts at the lowest pass of the tenants already competing: no burst for
    the time it was away."""
    return (
        f"UPDATE tenants SET ready = ready + {n}, pass = CASE WHEN {n} > 0 AND ready = 0"
        " AND pass < (SELECT MIN(o.pass) FROM tenants o WHERE o.ready > 0 AND o.name <> :tenant)"
        " THEN (SELECT MIN(o.pass) FROM tenants o WHERE o.ready > 0 AND o.name <> :tenant)"
        " ELSE pass END WHERE name = :tenant"
    )


_TENANT_READY = tenant_ready(":n")


def _tenant_ready(tx: Tx, counts: Counter[str]) -> None:
    for tenant in sorted(counts):
        if counts[tenant]:
            tx.execute(_TENANT_READY, {"n": counts[tenant], "tenant": tenant})


def enter_ready(tx: Tx, backend: Backend, rows: Sequence[Row]) -> None:
    """These runs just became `queued` (a row may carry `max_active` for a new lane); idle
    workers of their queues are told."""
    for row in sorted(rows, key=lambda r: (r["tenant"], r["session_key"] or "", r["seq"])):
        if row["session_key"] is not None:
            tx.execute(
                _LANE_OFFER,
                {
                    "tenant": row["tenant"],
                    "session_key": row["session_key"],
                    "max_active": row.get("max_active", 1),
                    "seq": row["seq"],
                    "priority": row["priority"],
                    "queue": row["queue"],
                },
            )
    _tenant_ready(tx, Counter(r["tenant"] for r in rows))
    for queue in sorted({r["queue"] for r in rows}):
        backend.notify(tx, queue)


def leave_ready(tx: Tx, rows: Sequence[Row]) -> None:
    """These runs were `queued` and are not any more (cancelled, paused; not claimed)."""
    refresh_lanes(tx, dict.fromkeys(lane_counts(rows), 0))
    _tenant_ready(tx, Counter({t: -n for t, n in Counter(r["tenant"] for r in rows).items()}))


def leave_running(tx: Tx, rows: Sequence[Row]) -> None:
    """These runs stopped running: free their lane slots, and the queue and tenant slots they
    hold. A run that went back to `queued` is ready again: call enter_ready for it too.
    """
    refresh_lanes(tx, {lane: -n for lane, n in lane_counts(rows).items()})
    for table, key, flag in (
        ("queues", "queue", "holds_queue_slot"),
        ("tenants", "tenant", "holds_tenant_slot"),
    ):
        for name, n in sorted(Counter(r[key] for r in rows if r[flag]).items()):
            tx.execute(
                f"UPDATE {table} SET active = CASE WHEN active > :n THEN active - :n ELSE 0 END"
                " WHERE name = :name",
                {"n": n, "name": name},
            )


@dataclass(frozen=True)
class KnownRecords:
    """Queue and tenant records a store has seen committed: they are never deleted, so an
    enqueue need not create them again (two statements fewer per enqueue)."""

    queues: set[str] = field(default_factory=set)
    tenants: set[str] = field(default_factory=set)

    def add(self, batch: Iterable[NewRun]) -> None:
        for new in batch:
            self.queues.add(new.queue)
            self.tenants.add(new.tenant)


def ensure_records(tx: Tx, *, tenants: Iterable[str], queues: Iterable[str], now: float) -> None:
    """Queues and tenants are records created on first use; concurrent first uses make one."""
    for queue in sorted(set(queues)):
        tx.execute(
            "INSERT INTO queues (name, active, created_at, updated_at)"
            " VALUES (:name, 0, :now, :now) ON CONFLICT (name) DO NOTHING",
            {"name": queue, "now": now},
        )
    for tenant in sorted(set(tenants)):
        tx.execute(
            "INSERT INTO tenants (name, weight, active, ready, pass, created_at)"
            " VALUES (:name, 1, 0, 0, 0, :now) ON CONFLICT (name) DO NOTHING",
            {"name": tenant, "now": now},
        )


def load_pauses(tx: Tx) -> list[Pause]:
    from greenroom.storage.codec import pause_from_row

    return [pause_from_row(r) for r in tx.execute("SELECT * FROM pauses ORDER BY id")]


def run_fields(row: Row) -> dict[str, Any]:
    """A row as pauses match it: labels decoded."""
    labels = row["labels"]
    return {**row, "labels": json.loads(labels) if isinstance(labels, str) else labels}


def waiting_state(row: Row, pauses: Sequence[Pause]) -> RunState:
    """`paused` if a pause holds this run, else `queued`."""
    fields = run_fields(row)
    return RunState.PAUSED if any(p.matches(fields) for p in pauses) else RunState.QUEUED


def pause_predicate(
    backend: Backend, pause: Pause, prefix: str = "p"
) -> tuple[str, dict[str, Any]]:
    """SQL matching the runs a pause holds, with its parameters."""
    params: dict[str, Any] = {f"{prefix}_value": pause.value}
    if pause.scope is PauseScope.LABEL:
        params[f"{prefix}_label"] = pause.label
        sql = backend.label_equals(f"{prefix}_label", f"{prefix}_value")
    else:
        column = "session_key" if pause.scope is PauseScope.SESSION else pause.scope.value
        sql = f"{column} = :{prefix}_value"
    if pause.tenant != "*":
        sql += f" AND tenant = :{prefix}_tenant"
        params[f"{prefix}_tenant"] = pause.tenant
    return f"({sql})", params
