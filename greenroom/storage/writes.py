"""The leasing worker's fenced writes, many runs to a statement: step checkpoints and run ends.

A worker commits the writes of its runs that fall due together in one transaction (group commit,
`greenroom.worker.writer`). Each run's writes apply only while the run is still leased with the
writer's token; a run whose lease is gone is refused as a whole and the rest of the batch applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from greenroom.failures import fingerprint
from greenroom.model import Lease, RunState, StepStatus
from greenroom.storage.backend import Backend, Column, Row, Tx
from greenroom.storage.base import fence
from greenroom.storage.codec import dumps
from greenroom.storage.lifecycle import moves
from greenroom.storage.lifecycle.moves import Change
from greenroom.storage.lifecycle.states import Move

_EVENT_ERROR_KEYS = ("type", "message", "step", "attempt", "class")
_STEP_COLUMNS: list[Column] = [
    ("run_id", "text"),
    ("position", "integer"),
    ("name", "text"),
    ("status", "text"),
    ("result", "text"),
    ("error", "text"),
    ("attempts", "integer"),
    ("lease_token", "bigint"),
    ("started_at", "double precision"),
    ("finished_at", "double precision"),
]
_STEP_NAMES = ", ".join(name for name, _ in _STEP_COLUMNS)


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """A step's result, or its final failure."""

    lease: Lease
    position: int
    name: str
    status: StepStatus
    result: str | None
    error: dict[str, Any] | None
    attempts: int
    started_at: float
    finished_at: float


@dataclass(frozen=True, kw_only=True)
class End:
    """The end of a lease: succeeded, failed, cancelled, delayed for a retry at `retry_at`, or
    QUEUED: handed back without counting an attempt (shutdown, a pause); a pause that holds the
    run then makes it `paused`."""

    lease: Lease
    state: RunState
    reason: str
    output: str | None = None
    error: dict[str, Any] | None = None
    retry_at: float | None = None
    #: The run's last checkpoint while it may not be committed yet: it commits with the end.
    checkpoint: Checkpoint | None = None


@dataclass(frozen=True)
class Written:
    #: Leases (run id, token) no longer held: none of their writes applied.
    refused: set[tuple[str, int]]
    #: The state each applied end took.
    states: dict[str, RunState]


def _save_steps(tx: Tx, checkpoints: Sequence[Checkpoint]) -> None:
    # One row per step (a statement may not touch a row twice); the last write of a step wins.
    latest = {(c.lease.run.id, c.position): c for c in checkpoints}
    params: dict[str, Any] = {}
    rows = tx.rows(
        _STEP_COLUMNS,
        [
            {
                "run_id": c.lease.run.id,
                "position": c.position,
                "name": c.name,
                "status": c.status.value,
                "result": c.result,
                "error": None if c.error is None else dumps(c.error),
                "attempts": c.attempts,
                "lease_token": c.lease.token,
                "started_at": c.started_at,
                "finished_at": c.finished_at,
            }
            for c in latest.values()
        ],
        params,
    )
    tx.execute(
        f"WITH w({_STEP_NAMES}) AS ({rows}) INSERT INTO steps ({_STEP_NAMES})"
        # WHERE true: SQLite needs it to read ON CONFLICT as the upsert clause.
        f" SELECT {_STEP_NAMES} FROM w WHERE true"
        " ON CONFLICT (run_id, position) DO UPDATE SET name = excluded.name,"
        " status = excluded.status, result = excluded.result, error = excluded.error,"
        " attempts = excluded.attempts, lease_token = excluded.lease_token,"
        " started_at = excluded.started_at, finished_at = excluded.finished_at"
        # A checkpoint is final: nothing overwrites a completed step.
        " WHERE steps.status <> 'completed'",
        params,
    )


#: What an end writes besides the state: the output, the error, the time of a retry.
_END_COLUMNS: list[Column] = [
    ("output", "text"),
    ("error", "text"),
    ("retry_at", "double precision"),
]
_END_SETS = (
    "output = w.output,"
    # A success clears the error of earlier attempts; their errors stay in the timeline.
    " error = CASE WHEN w.target = 'succeeded' THEN NULL ELSE COALESCE(w.error, runs.error) END,"
    " attempt = CASE WHEN w.target = 'delayed' THEN runs.attempt + 1 ELSE runs.attempt END,"
    " available_at = CASE WHEN w.target = 'delayed'"
    " THEN CAST(w.retry_at AS DOUBLE PRECISION) ELSE runs.available_at END"
)


def _end_change(end: End, held: Row, now: float) -> Change:
    error = end.error
    return Change(
        row=held,
        to=end.state,
        reason=end.reason,
        worker_id=end.lease.worker_id,
        detail=None if error is None else {k: error.get(k) for k in _EVENT_ERROR_KEYS},
        values={
            "output": end.output,
            "error": None if error is None else dumps(error),
            "retry_at": (end.retry_at if end.retry_at is not None else now)
            if end.state is RunState.DELAYED
            else None,
        },
    )


def write(
    tx: Tx,
    backend: Backend,
    checkpoints: Sequence[Checkpoint],
    ends: Sequence[End],
    now: float,
) -> Written:
    """Apply the writes of the runs still leased with their tokens: checkpoints first, then ends
    with their timeline events and bookkeeping."""
    checkpoints = [*checkpoints, *(e.checkpoint for e in ends if e.checkpoint is not None)]
    writes: list[Checkpoint | End] = [*checkpoints, *ends]
    leases = {(w.lease.run.id, w.lease.token): w.lease for w in writes}
    held = fence(tx, backend, list(leases.values())) if leases else {}
    refused = {key for key in leases if key[0] not in held or held[key[0]]["token"] != key[1]}
    checkpoints = [c for c in checkpoints if (c.lease.run.id, c.lease.token) not in refused]
    ends = [e for e in ends if (e.lease.run.id, e.lease.token) not in refused]
    if checkpoints:
        _save_steps(tx, checkpoints)
    if not ends:
        return Written(refused=refused, states={})
    rows = moves.move(
        tx,
        backend,
        Move.END,
        [_end_change(e, held[e.lease.run.id], now) for e in ends],
        now,
        columns=_END_COLUMNS,
        sets=_END_SETS,
    )
    by_id = {e.lease.run.id: e for e in ends}
    failed = [(r, by_id[r["id"]].error) for r in rows if r["state"] == RunState.FAILED.value]
    groups = sorted((r["tenant"], _group(e), r["seq"], r, e) for r, e in failed if e is not None)
    for _, group, _, r, e in groups:  # in key order: concurrent batches never deadlock on them
        _record_error(tx, r, e, group, now)
    return Written(refused=refused, states={r["id"]: RunState(r["state"]) for r in rows})


def _group(error: dict[str, Any]) -> str:
    """A failure's error group: type + normalized message + step."""
    return str(
        error.get("fingerprint")
        or fingerprint(str(error.get("type")), str(error.get("message")), error.get("step"))
    )


def _record_error(tx: Tx, run: Row, error: dict[str, Any], group: str, now: float) -> None:
    """Count a run's final failure in its error group."""
    tx.execute(
        "INSERT INTO error_groups (tenant, fingerprint, workflow, step, type, message,"
        " error_class, occurrences, first_seen, last_seen, last_run_id) VALUES (:tenant,"
        " :fingerprint, :workflow, :step, :type, :message, :error_class, 1, :now, :now,"
        " :run_id) ON CONFLICT (tenant, fingerprint) DO UPDATE SET"
        " occurrences = error_groups.occurrences + 1, last_seen = :now,"
        " last_run_id = :run_id, message = :message",
        {
            "tenant": run["tenant"],
            "fingerprint": group,
            "workflow": run["workflow"],
            "step": error.get("step"),
            "type": str(error.get("type")),
            "message": str(error.get("message"))[:2000],
            "error_class": error.get("class") or "unknown",
            "now": now,
            "run_id": run["id"],
        },
    )
    tx.execute(
        "UPDATE runs SET error_group = :group WHERE seq = :seq",
        {"group": group, "seq": run["seq"]},
    )
