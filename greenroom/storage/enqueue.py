"""Inserting new runs: idempotency keys, delays, pauses, and the ready bookkeeping."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from greenroom.model import NewRun, Pause, RunState
from greenroom.storage import ready
from greenroom.storage.backend import Backend, Row, Tx
from greenroom.storage.base import event_params, insert_events
from greenroom.storage.codec import dumps

_RUN_COLUMNS = (
    "id, tenant, workflow, queue, session_key, state, priority, input, labels, idempotency_key,"
    " attempt, max_attempts, timeout, stalls, cancel_requested, pause_requested, retry_of,"
    " request_hash, lease_token, available_at, created_at, updated_at"
)
_INSERT_RUN = (
    f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (:id, :tenant, :workflow, :queue, :session_key,"
    " :state, :priority, :input, :labels, :idempotency_key, 1, COALESCE(:max_attempts,"
    " (SELECT q.max_attempts FROM queues q WHERE q.name = :queue_name), 1), :timeout, 0, false,"
    " false, :retry_of, :request_hash, 0, :available_at, :now, :now)"
    " ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
    # Whether any pause exists, in the same round trip (there rarely is one).
    " RETURNING *, (SELECT COUNT(*) FROM pauses) AS pauses"
)
_REASONS = {
    RunState.QUEUED: "enqueued",
    RunState.DELAYED: "enqueued with a delay",
    RunState.PAUSED: "enqueued while paused",
}


def insert_runs(
    tx: Tx,
    b: Backend,
    batch: Sequence[NewRun],
    now: float,
    *,
    reason: str | None = None,
    known: ready.KnownRecords | None = None,
) -> list[tuple[Row, bool]]:
    """Insert runs; for a used idempotency key, the existing run and False. Queue and tenant
    records in `known` are not created again."""
    known = known or ready.KnownRecords()
    ready.ensure_records(
        tx,
        tenants=[n.tenant for n in batch if n.tenant not in known.tenants],
        queues=[n.queue for n in batch if n.queue not in known.queues],
        now=now,
    )
    pauses: list[Pause] | None = None  # read once a run says a pause exists
    out: list[tuple[Row, bool]] = []
    became_ready: list[Row] = []
    events: list[dict[str, Any]] = []
    for new in batch:
        available = new.available_at if new.available_at is not None else now
        params = {
            "id": str(uuid.uuid4()),
            "tenant": new.tenant,
            "workflow": new.workflow,
            "queue": new.queue,
            "session_key": new.session_key,
            "priority": new.priority,
            "input": dumps(new.input, "run input"),
            "labels": dumps(new.labels, "labels"),
            "idempotency_key": new.idempotency_key,
            "max_attempts": new.max_attempts,  # None: the queue's default, else 1
            "queue_name": new.queue,  # another name: PostgreSQL types each use of a parameter
            "timeout": new.timeout,
            "retry_of": new.retry_of,
            "request_hash": new.request_hash,
            "available_at": available,
            "now": now,
        }
        state = RunState.DELAYED if available > now else RunState.QUEUED
        rows = tx.execute(_INSERT_RUN, {**params, "state": state.value})
        if not rows:
            existing = tx.execute(
                "SELECT * FROM runs WHERE tenant = :tenant AND idempotency_key = :idempotency_key",
                params,
            )
            out.append((existing[0], False))
            continue
        row = rows[0]
        if state is RunState.QUEUED and row["pauses"]:
            pauses = ready.load_pauses(tx) if pauses is None else pauses
            if ready.waiting_state(row, pauses) is RunState.PAUSED:
                state = RunState.PAUSED
                row = tx.execute(
                    "UPDATE runs SET state = 'paused' WHERE seq = :seq RETURNING *",
                    {"seq": row["seq"]},
                )[0]
        events.append(event_params(row["id"], state, reason or _REASONS[state], now))
        if state is RunState.QUEUED:
            became_ready.append({**row, "max_active": new.session_concurrency})
        out.append((row, True))
    insert_events(tx, events)
    ready.enter_ready(tx, became_ready)
    for queue in sorted({r["queue"] for r in became_ready}):
        b.notify(tx, queue)
    return out
