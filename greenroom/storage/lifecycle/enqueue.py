"""The ENQUEUE move: new runs inserted queued, delayed or paused, with idempotency keys and the
ready bookkeeping."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from greenroom.model import NewRun, RunState
from greenroom.rules import check_keys, check_labels
from greenroom.storage.backend import Backend, Column, Row, Tx
from greenroom.storage.base import ROWS_CHUNK, event_params, insert_events
from greenroom.storage.codec import dumps
from greenroom.storage.lifecycle import moves, summaries
from greenroom.storage.lifecycle.states import Move, check
from greenroom.tracing import current_traceparent

_NEW_COLUMNS: list[Column] = [
    ("id", "text"),
    ("tenant", "text"),
    ("workflow", "text"),
    ("queue", "text"),
    ("session_key", "text"),
    ("state", "text"),
    ("priority", "integer"),
    ("input", "text"),
    ("labels", "text"),
    ("idempotency_key", "text"),
    ("max_attempts", "integer"),
    ("timeout", "double precision"),
    ("retry_of", "text"),
    ("request_hash", "text"),
    ("available_at", "double precision"),
    ("trace_parent", "text"),
]
_NEW_NAMES = ", ".join(name for name, _ in _NEW_COLUMNS)
_INSERT_RUNS = (
    "INSERT INTO runs (id, tenant, workflow, queue, session_key, state, priority, input, labels,"
    " idempotency_key, attempt, max_attempts, timeout, stalls, cancel_requested,"
    " pause_requested, retry_of, request_hash, lease_token, available_at, created_at,"
    " updated_at, trace_parent) SELECT id, tenant, workflow, queue, session_key, state,"
    " priority, input, labels, idempotency_key, 1, COALESCE(max_attempts, (SELECT"
    " q.max_attempts FROM queues q WHERE q.name = w.queue), 1), timeout, 0, false, false,"
    " retry_of, request_hash, 0, available_at, :now, :now, trace_parent"
    # A WHERE clause: SQLite needs one to read ON CONFLICT as the upsert clause.
    " FROM w WHERE {where}"
    " ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
    # Whether any pause exists, in the same round trip (there rarely is one).
    " RETURNING *, (SELECT COUNT(*) FROM pauses) AS pauses"
)
_REASONS = {
    RunState.QUEUED: "enqueued",
    RunState.DELAYED: "enqueued with a delay",
    RunState.PAUSED: "enqueued while paused",
}
# One tenant's new runs as one statement, where the database composes writes. While any pause
# exists nothing is inserted, and the general path runs. Lanes are locked before the tenant (the
# order every transaction keeps): the tenant's update reads the lanes' offer first.
_INSERT_AT_ONCE = (
    f"WITH w({_NEW_NAMES}, max_active) AS ({{rows}}),"
    " ins AS (" + _INSERT_RUNS.format(where="NOT EXISTS (SELECT 1 FROM pauses)") + "),"
    " ev AS (INSERT INTO run_events (run_id, at, state, reason) SELECT id, :now, state,"
    f" CASE WHEN state = 'queued' THEN '{_REASONS[RunState.QUEUED]}'"
    f" ELSE '{_REASONS[RunState.DELAYED]}' END FROM ins),"
    " queued AS (SELECT * FROM ins WHERE state = 'queued'),"
    " offered AS ("
    # A new lane's limit comes from its oldest run, as on the general path.
    + summaries.lane_offer(
        'SELECT DISTINCT ON (r.session_key COLLATE "C") r.tenant, r.session_key, 0,'
        " first_value(w.max_active) OVER (PARTITION BY r.session_key ORDER BY r.seq), r.seq,"
        " r.priority, r.queue FROM queued r JOIN w ON w.id = r.id WHERE r.session_key IS NOT NULL"
        ' ORDER BY r.session_key COLLATE "C", r.priority DESC, r.seq'
    )
    + " RETURNING 1), counted AS ("
    + summaries.tenant_ready("(SELECT COUNT(*) FROM queued)")
    + " AND (SELECT COUNT(*) FROM offered) >= 0 AND EXISTS (SELECT 1 FROM queued))"
    " SELECT ins.*, p.n AS pauses_found, p.notified FROM (SELECT COUNT(*) AS n,"
    " (SELECT COUNT({notify}) FROM (SELECT DISTINCT queue FROM queued) q) AS notified"
    " FROM pauses) p LEFT JOIN ins ON true"
)


def insert_runs(
    tx: Tx,
    backend: Backend,
    batch: Sequence[NewRun],
    now: float,
    *,
    reason: str | None = None,
    known: summaries.KnownRecords | None = None,
) -> list[tuple[Row, bool]]:
    """Insert runs; for a used idempotency key, the existing run and False. Queue and tenant
    records in `known` are not created again."""
    known = known or summaries.KnownRecords()
    summaries.ensure_records(
        tx,
        tenants=[n.tenant for n in batch if n.tenant not in known.tenants],
        queues=[n.queue for n in batch if n.queue not in known.queues],
        now=now,
    )
    ambient = current_traceparent()
    new_rows = [_new_row(new, now, ambient) for new in batch]
    inserted: dict[str, Row] = {}
    for start in range(0, len(new_rows), ROWS_CHUNK):
        params: dict[str, Any] = {"now": now}
        rows = tx.rows(_NEW_COLUMNS, new_rows[start : start + ROWS_CHUNK], params)
        for row in tx.execute(
            f"WITH w({_NEW_NAMES}) AS ({rows}) {_INSERT_RUNS.format(where='true')}", params
        ):
            inserted[row["id"]] = row
    ready_rows = [r for r in inserted.values() if r["state"] == RunState.QUEUED.value]
    held = {}
    if any(r["pauses"] for r in ready_rows):  # a pause exists: it may hold some of them
        held = {r["id"]: r for r in moves.hold_paused(tx, backend, ready_rows)}
    out: list[tuple[Row, bool]] = []
    became_ready: list[Row] = []
    events: list[dict[str, Any]] = []
    for new, values in zip(batch, new_rows, strict=True):
        if values["id"] not in inserted:  # its idempotency key was used
            out.append((_existing(tx, new), False))
            continue
        row = held.get(values["id"]) or inserted[values["id"]]
        state = RunState(row["state"])
        check(Move.ENQUEUE, None, state)
        events.append(event_params(row["id"], state, reason or _REASONS[state], now))
        if state is RunState.QUEUED:
            became_ready.append({**row, "max_active": new.session_concurrency})
        out.append((row, True))
    insert_events(tx, events)
    summaries.enter_ready(tx, backend, became_ready)
    return out


def insert_runs_at_once(
    backend: Backend, batch: Sequence[NewRun], now: float, known: summaries.KnownRecords
) -> list[tuple[Row, bool]] | None:
    """The common enqueue as one statement that is its own transaction, where the database
    composes writes: runs of one tenant whose queue and tenant records exist, while no pause
    exists. None when that does not hold, and nothing was written: take the general path."""
    tenants = {new.tenant for new in batch}
    if (
        not backend.composes_writes
        or len(tenants) != 1
        or len(batch) > ROWS_CHUNK
        or not tenants <= known.tenants
        or not {new.queue for new in batch} <= known.queues
    ):
        return None
    ambient = current_traceparent()
    new_rows = [_new_row(new, now, ambient) for new in batch]
    params: dict[str, Any] = {"now": now, "tenant": batch[0].tenant}
    with backend.single_statement() as tx:
        source = tx.rows(
            [*_NEW_COLUMNS, ("max_active", "integer")],
            [
                {**values, "max_active": new.session_concurrency}
                for new, values in zip(batch, new_rows, strict=True)
            ],
            params,
        )
        rows = tx.execute(
            _INSERT_AT_ONCE.format(rows=source, notify=backend.notify_sql("q.queue")), params
        )
    if rows[0]["pauses_found"]:
        return None
    inserted = {r["id"]: r for r in rows if r["id"] is not None}
    if len(inserted) == len(batch):
        return [(inserted[values["id"]], True) for values in new_rows]
    with backend.transaction(write=False) as tx:  # some idempotency keys were used: their runs
        return [
            (inserted[values["id"]], True)
            if values["id"] in inserted
            else (_existing(tx, new), False)
            for new, values in zip(batch, new_rows, strict=True)
        ]


def _existing(tx: Tx, new: NewRun) -> Row:
    """The run that holds this new run's idempotency key."""
    return tx.execute(
        "SELECT * FROM runs WHERE tenant = :tenant AND idempotency_key = :key",
        {"tenant": new.tenant, "key": new.idempotency_key},
    )[0]


def _new_row(new: NewRun, now: float, trace_parent: str | None) -> dict[str, Any]:
    """The row of a new run; `trace_parent` is the trace current where it is enqueued."""
    available = new.available_at if new.available_at is not None else now
    return {
        "id": str(uuid.uuid4()),
        "tenant": new.tenant,
        "workflow": new.workflow,
        "queue": new.queue,
        "session_key": new.session_key,
        "state": (RunState.DELAYED if available > now else RunState.QUEUED).value,
        "priority": new.priority,
        "input": dumps(check_keys(new.input, "run input"), "run input"),
        # Labels are read as JSON by the database: what it could not read never gets in.
        "labels": dumps(check_labels(new.labels), "labels"),
        "idempotency_key": new.idempotency_key,
        "max_attempts": new.max_attempts,  # None: the queue's default, else 1
        "timeout": new.timeout,
        "retry_of": new.retry_of,
        "request_hash": new.request_hash,
        "available_at": available,
        "trace_parent": trace_parent,
    }
