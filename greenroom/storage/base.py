"""What every part of the store shares: the backend, the clock, timeline events, run lookup."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from greenroom.clock import Clock, SystemClock
from greenroom.errors import InvalidInput, LeaseLost, NotFound
from greenroom.model import Lease, RunState
from greenroom.rules import MAX_REASON, check_text
from greenroom.storage.backend import Backend, Column, Row, Tx
from greenroom.storage.codec import dumps, loads
from greenroom.storage.lifecycle import summaries

P = ParamSpec("P")
T = TypeVar("T")

#: Rows in one multi-row statement, at most: a bounded statement however many rows a call has.
ROWS_CHUNK = 500
CONFLICT_RETRIES = 5


def retry_conflicts(method: Callable[P, T]) -> Callable[P, T]:
    """Run a store method again when the database aborted it for a lock conflict (deadlock)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        store: StoreBase = args[0]  # type: ignore[assignment]
        for attempt in range(1, CONFLICT_RETRIES + 1):
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                if attempt == CONFLICT_RETRIES or not store.backend.is_conflict(exc):
                    raise
        raise AssertionError("unreachable")

    return wrapper


def event_params(
    run_id: str,
    state: RunState,
    reason: str,
    at: float,
    worker_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "at": at,
        "state": state.value,
        "reason": reason,
        "worker_id": worker_id,
        "detail": None if detail is None else dumps(detail),
    }


_EVENT_COLUMNS: list[Column] = [
    ("run_id", "text"),
    ("at", "double precision"),
    ("state", "text"),
    ("reason", "text"),
    ("worker_id", "text"),
    ("detail", "text"),
]
_EVENT_NAMES = ", ".join(name for name, _ in _EVENT_COLUMNS)
_FENCE_COLUMNS: list[Column] = [("run_id", "text"), ("token", "bigint")]


def insert_events(tx: Tx, events: Sequence[dict[str, Any]]) -> None:
    """Add timeline events (made by `event_params`)."""
    for start in range(0, len(events), ROWS_CHUNK):
        params: dict[str, Any] = {}
        rows = tx.rows(_EVENT_COLUMNS, events[start : start + ROWS_CHUNK], params)
        tx.execute(
            f"WITH w({_EVENT_NAMES}) AS ({rows})"
            f" INSERT INTO run_events ({_EVENT_NAMES}) SELECT {_EVENT_NAMES} FROM w",
            params,
        )


def fence(tx: Tx, backend: Backend, leases: Sequence[Lease]) -> dict[str, Row]:
    """Every write a worker makes for a run first proves it still holds the run's lease: lock
    the runs still leased with these tokens, in id order (heartbeats lock in the same order, so
    the two never deadlock); by id, what their end gives back (lane and slots)."""
    params: dict[str, Any] = {}
    rows = tx.rows(_FENCE_COLUMNS, [{"run_id": x.run.id, "token": x.token} for x in leases], params)
    lock = f"{backend.for_update} OF r" if backend.for_update else ""
    found = tx.execute(
        f"WITH w(run_id, token) AS ({rows}) SELECT r.id, r.seq, r.state, r.lease_token AS token,"
        " r.tenant, r.queue, r.session_key, r.holds_queue_slot, r.holds_tenant_slot FROM runs r"
        " JOIN w ON r.id = w.run_id AND r.lease_token = w.token WHERE r.state = 'running'"
        f" ORDER BY r.id {lock}",
        params,
    )
    return {r["id"]: r for r in found}


#: What tables show of a run id (its first 8 characters), and longer prefixes of it.
RUN_ID_PREFIX = re.compile(r"[0-9a-f-]{8,35}")


@dataclass(frozen=True, kw_only=True)
class RunFilter:
    tenant: str | None = None
    states: Sequence[RunState] = ()
    workflow: str | None = None
    queue: str | None = None
    session_key: str | None = None
    label: tuple[str, str] | None = None
    error_group: str | None = None
    finished_after: float | None = None
    created_after: float | None = None
    created_before: float | None = None
    finished_before: float | None = None
    before_seq: int | None = None
    limit: int = 50
    #: Failed or cancelled runs that were retried: left out unless asked for.
    include_superseded: bool = False


class StoreBase:
    def __init__(self, backend: Backend, clock: Clock | None = None) -> None:
        self.backend = backend
        self.clock = clock or SystemClock()
        self._known_records = summaries.KnownRecords()

    def _event(
        self,
        tx: Tx,
        run_id: str,
        state: RunState,
        reason: str,
        *,
        at: float,
        worker_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        insert_events(tx, [event_params(run_id, state, reason, at, worker_id, detail)])

    def _fence(self, tx: Tx, lease: Lease) -> None:
        """A write a worker makes for one run first proves it still holds the run's lease."""
        if not fence(tx, self.backend, [lease]):
            raise LeaseLost(f"run {lease.run.id}: lease {lease.token} is no longer held")

    def _select_run(self, tx: Tx, run_id: str, tenant: str | None, lock: str = "") -> Row:
        """The run, scoped to `tenant` when given: other tenants' runs are not found. A unique
        prefix of at least 8 characters (as tables show ids) stands for the whole id."""
        scope = "" if tenant is None else " AND tenant = :tenant"
        if RUN_ID_PREFIX.fullmatch(run_id):
            found = tx.execute(
                f"SELECT id FROM runs WHERE id LIKE :prefix{scope} ORDER BY id LIMIT 6",
                {"prefix": run_id + "%", "tenant": tenant},
            )
            if len(found) > 1:
                some = ", ".join(r["id"] for r in found[:5])
                raise InvalidInput(f"run id prefix {run_id} is ambiguous: it may be {some}")
            run_id = found[0]["id"] if found else run_id
        rows = tx.execute(
            f"SELECT * FROM runs WHERE id = :id{scope} {lock}", {"id": run_id, "tenant": tenant}
        )
        if not rows:
            raise NotFound(f"run {run_id} not found")
        return rows[0]

    def run_filter_sql(self, run_filter: RunFilter) -> tuple[str, dict[str, Any]]:
        backend = self.backend
        clauses = ["1 = 1"]
        params: dict[str, Any] = {}
        for column in ("tenant", "workflow", "queue", "session_key", "error_group"):
            value = getattr(run_filter, column)
            if value is not None:
                clauses.append(f"{column} = :{column}")
                params[column] = check_text(value, column, max_length=500)
        if not run_filter.include_superseded:
            clauses.append("superseded_by IS NULL")
        if run_filter.states:
            clauses.append(backend.member("state", "states"))
            params["states"] = backend.list_param([s.value for s in run_filter.states])
        if run_filter.label is not None:
            clauses.append(backend.label_equals("label_key", "label_value"))
            params["label_key"] = check_text(run_filter.label[0], "label key", min_length=1)
            params["label_value"] = check_text(run_filter.label[1], "label value", max_length=500)
        for column, op in (
            ("finished_after", ">="),
            ("finished_before", "<"),
            ("created_after", ">="),
            ("created_before", "<"),
        ):
            value = getattr(run_filter, column)
            if value is not None:
                clauses.append(f"{column.split('_')[0]}_at {op} :{column}")
                params[column] = value
        return " AND ".join(clauses), params

    def _registered(self, tx: Tx, tenant: str) -> None:
        rows = tx.execute(
            "SELECT name FROM tenants WHERE name = :name AND registered_at IS NOT NULL",
            {"name": tenant},
        )
        if not rows:
            raise NotFound(
                f"tenant {tenant} not found (register it: uv run greenroom tenants create)"
            )

    def _delete_in_batches(self, sql: str, params: dict[str, Any]) -> int:
        """Run a DELETE of at most :batch rows in transactions of its own until it deletes
        fewer; how many rows. Small transactions: on PostgreSQL an open write transaction holds
        back every new event (docs/events.md, "Order")."""
        deleted = 0
        while True:
            with self.backend.transaction() as tx:
                n = tx.execute_count(sql, params)
            deleted += n
            if n < params["batch"]:
                return deleted

    def _audit(
        self,
        tx: Tx,
        *,
        tenant: str | None,
        actor: str,
        action: str,
        target: str,
        reason: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Record an admin action: who, when, what, why."""
        tx.execute(
            "INSERT INTO audit_log (at, tenant, actor, action, target, reason, detail)"
            " VALUES (:at, :tenant, :actor, :action, :target, :reason, :detail)",
            {
                "at": self.clock.now(),
                "tenant": tenant,
                "actor": actor,
                "action": action,
                "target": target,
                "reason": reason,
                "detail": None if detail is None else dumps(detail),
            },
        )


def require_reason(reason: str) -> None:
    if not reason or not reason.strip():
        raise InvalidInput("a reason is required for this action (it goes to the audit log)")
    check_text(reason, "reason", max_length=MAX_REASON)


def audit_columns(values: Mapping[str, Any], json_columns: Collection[str]) -> dict[str, Any]:
    """Changed columns as the audit shows them: JSON columns decoded, so they read as values
    rather than as text."""
    return {k: loads(v) if k in json_columns else v for k, v in values.items()}
