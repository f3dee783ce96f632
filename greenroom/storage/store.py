"""The run store: every state change of runs, steps, lanes and workers, as SQL on a Backend.

Each public method is one transaction. Writes a worker makes for a run it executes are fenced:
they only apply while the run is still leased with the worker's token.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from greenroom.clock import Clock, SystemClock
from greenroom.errors import LeaseLost, NotFound
from greenroom.model import (
    Lease,
    NewRun,
    Run,
    RunEvent,
    RunState,
    StepRecord,
    StepStatus,
    WorkerInfo,
)
from greenroom.storage.backend import Backend, Row, Tx
from greenroom.storage.codec import (
    dumps,
    event_from_row,
    run_from_row,
    step_from_row,
    worker_from_row,
)

_RUN_COLUMNS = (
    "id, tenant, workflow, queue, session_key, state, priority, input, labels, idempotency_key,"
    " attempt, max_attempts, timeout, stalls, cancel_requested, lease_token, available_at,"
    " created_at, updated_at"
)
_INSERT_RUN = (
    f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (:id, :tenant, :workflow, :queue, :session_key,"
    " :state, :priority, :input, :labels, :idempotency_key, 1, :max_attempts, :timeout, 0, false,"
    " 0, :available_at, :now, :now)"
)
_INSERT_EVENT = (
    "INSERT INTO run_events (run_id, at, state, reason, worker_id, detail)"
    " VALUES (:run_id, :at, :state, :reason, :worker_id, :detail)"
)
# Make the lane's head point at a newly ready run when it beats the current head.
_LANE_OFFER = (
    "INSERT INTO lanes (session_key, active, max_active, head_seq, head_priority, head_queue)"
    " VALUES (:session_key, 0, 1, :seq, :priority, :queue)"
    " ON CONFLICT (session_key) DO UPDATE SET head_seq = excluded.head_seq,"
    " head_priority = excluded.head_priority, head_queue = excluded.head_queue"
    " WHERE lanes.head_seq IS NULL OR excluded.head_priority > lanes.head_priority"
    " OR (excluded.head_priority = lanes.head_priority AND excluded.head_seq < lanes.head_seq)"
)
_HEAD = (
    "(SELECT r.seq, r.priority, r.queue FROM runs r WHERE r.session_key = lanes.session_key"
    " AND r.state = 'queued' ORDER BY r.priority DESC, r.seq LIMIT 1)"
)
_CLEAR_LEASE = "lease_owner = NULL, lease_expires_at = NULL"
_EVENT_ERROR_KEYS = ("type", "message", "step", "attempt", "class")


@dataclass(frozen=True, kw_only=True)
class Heartbeat:
    held: set[str]
    cancel_requested: set[str]


@dataclass(frozen=True, kw_only=True)
class RunFilter:
    tenant: str | None = None
    states: Sequence[RunState] = ()
    workflow: str | None = None
    queue: str | None = None
    session_key: str | None = None
    before_seq: int | None = None
    limit: int = 50


@dataclass(frozen=True, kw_only=True)
class Recovery:
    requeued: list[str]
    failed: list[str]
    dead_workers: list[str]


class RunStore:
    def __init__(self, backend: Backend, clock: Clock | None = None) -> None:
        self.backend = backend
        self.clock = clock or SystemClock()

    # -- enqueue ---------------------------------------------------------------------------

    def enqueue(self, new: NewRun) -> tuple[Run, bool]:
        """Insert a run, or return the existing one with the same idempotency key."""
        runs = self.enqueue_many([new])
        return runs[0]

    def enqueue_many(self, batch: Sequence[NewRun]) -> list[tuple[Run, bool]]:
        now = self.clock.now()
        out: list[tuple[Run, bool]] = []
        queues: set[str] = set()
        with self.backend.transaction() as tx:
            for new in batch:
                available = new.available_at if new.available_at is not None else now
                state = RunState.DELAYED if available > now else RunState.QUEUED
                params = {
                    "id": str(uuid.uuid4()),
                    "tenant": new.tenant,
                    "workflow": new.workflow,
                    "queue": new.queue,
                    "session_key": new.session_key,
                    "state": state.value,
                    "priority": new.priority,
                    "input": dumps(new.input, "run input"),
                    "labels": dumps(new.labels, "labels"),
                    "idempotency_key": new.idempotency_key,
                    "max_attempts": new.max_attempts,
                    "timeout": new.timeout,
                    "available_at": available,
                    "now": now,
                }
                rows = tx.execute(
                    _INSERT_RUN + " ON CONFLICT (tenant, idempotency_key)"
                    " WHERE idempotency_key IS NOT NULL DO NOTHING RETURNING *",
                    params,
                )
                if not rows:
                    existing = tx.execute(
                        "SELECT * FROM runs WHERE tenant = :tenant"
                        " AND idempotency_key = :idempotency_key",
                        params,
                    )
                    out.append((run_from_row(existing[0]), False))
                    continue
                row = rows[0]
                reason = "enqueued" if state is RunState.QUEUED else "enqueued with a delay"
                self._event(tx, row["id"], state, reason, at=now)
                if state is RunState.QUEUED:
                    self._offer(tx, row)
                    queues.add(new.queue)
                out.append((run_from_row(row), True))
            for queue in queues:
                self.backend.notify(tx, queue)
        return out

    # -- claim and lease -------------------------------------------------------------------

    def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[Lease]:
        """Lease up to `limit` ready runs: priority first, then FIFO, one per free session lane."""
        if limit <= 0:
            return []
        now = self.clock.now()
        b = self.backend
        qs = b.list_param(queues)
        with b.transaction() as tx:
            free = tx.execute(
                "SELECT seq, priority, NULL AS session_key FROM runs WHERE state = 'queued'"
                f" AND session_key IS NULL AND {b.member('queue', 'queues')}"
                f" ORDER BY priority DESC, seq LIMIT :limit {b.skip_locked}",
                {"queues": qs, "limit": limit},
            )
            lanes = tx.execute(
                "SELECT head_seq AS seq, head_priority AS priority, session_key FROM lanes"
                f" WHERE head_seq IS NOT NULL AND active < max_active"
                f" AND {b.member('head_queue', 'queues')}"
                f" ORDER BY head_priority DESC, head_seq LIMIT :limit {b.skip_locked}",
                {"queues": qs, "limit": limit},
            )
            chosen = sorted(free + lanes, key=lambda r: (-r["priority"], r["seq"]))[:limit]
            if not chosen:
                return []
            expires = now + lease_seconds
            rows = tx.execute(
                "UPDATE runs SET state = 'running', lease_owner = :worker,"
                " lease_token = lease_token + 1, lease_expires_at = :expires,"
                " started_at = COALESCE(started_at, :now), updated_at = :now"
                f" WHERE {b.member('seq', 'seqs')} AND state = 'queued' RETURNING *",
                {
                    "worker": worker_id,
                    "expires": expires,
                    "now": now,
                    "seqs": b.list_param([r["seq"] for r in chosen]),
                },
            )
            keys = [r["session_key"] for r in rows if r["session_key"] is not None]
            if keys:
                tx.execute(
                    f"UPDATE lanes SET active = active + 1,"
                    f" (head_seq, head_priority, head_queue) = {_HEAD}"
                    f" WHERE {b.member('session_key', 'keys')}",
                    {"keys": b.list_param(keys)},
                )
            # A head that was no longer ready (should not happen): repair it.
            stale = {r["session_key"] for r in chosen if r["session_key"] is not None} - set(keys)
            self._refresh_heads(tx, sorted(stale))
            tx.execute_many(
                _INSERT_EVENT,
                [
                    self._event_params(r["id"], RunState.RUNNING, "leased", now, worker_id)
                    for r in rows
                ],
            )
        return [
            Lease(
                run=run_from_row(r),
                worker_id=worker_id,
                token=int(r["lease_token"]),
                expires_at=expires,
            )
            for r in sorted(rows, key=lambda r: (-r["priority"], r["seq"]))
        ]

    def heartbeat(self, worker_id: str, lease_seconds: float) -> Heartbeat:
        """Renew every lease of this worker in one statement."""
        now = self.clock.now()
        with self.backend.transaction() as tx:
            rows = tx.execute(
                "UPDATE runs SET lease_expires_at = :expires"
                " WHERE lease_owner = :worker AND state = 'running'"
                " RETURNING id, cancel_requested",
                {"expires": now + lease_seconds, "worker": worker_id},
            )
            tx.execute(
                "UPDATE workers SET heartbeat_at = :now, state = 'alive' WHERE id = :worker",
                {"now": now, "worker": worker_id},
            )
        return Heartbeat(
            held={r["id"] for r in rows},
            cancel_requested={r["id"] for r in rows if r["cancel_requested"]},
        )

    def cancel_requests(self, worker_id: str) -> set[str]:
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT id FROM runs WHERE lease_owner = :worker AND state = 'running'"
                " AND cancel_requested",
                {"worker": worker_id},
            )
        return {r["id"] for r in rows}

    # -- fenced writes by the leasing worker -----------------------------------------------

    def _guard(self, tx: Tx, lease: Lease, now: float) -> None:
        changed = tx.execute_count(
            "UPDATE runs SET updated_at = :now WHERE id = :id AND lease_token = :token"
            " AND state = 'running'",
            {"now": now, "id": lease.run.id, "token": lease.token},
        )
        if changed != 1:
            raise LeaseLost(f"run {lease.run.id}: lease {lease.token} is no longer held")

    def save_step(
        self,
        lease: Lease,
        *,
        position: int,
        name: str,
        status: StepStatus,
        result: str | None,
        error: dict[str, Any] | None,
        attempts: int,
        started_at: float,
    ) -> None:
        """Checkpoint a step's result (or its final failure) under the run's fencing token."""
        now = self.clock.now()
        with self.backend.transaction() as tx:
            self._guard(tx, lease, now)
            tx.execute(
                "INSERT INTO steps (run_id, position, name, status, result, error, attempts,"
                " lease_token, started_at, finished_at) VALUES (:run_id, :position, :name,"
                " :status, :result, :error, :attempts, :token, :started_at, :now)"
                " ON CONFLICT (run_id, position) DO UPDATE SET name = excluded.name,"
                " status = excluded.status, result = excluded.result, error = excluded.error,"
                " attempts = excluded.attempts, lease_token = excluded.lease_token,"
                " started_at = excluded.started_at, finished_at = excluded.finished_at",
                {
                    "run_id": lease.run.id,
                    "position": position,
                    "name": name,
                    "status": status.value,
                    "result": result,
                    "error": None if error is None else dumps(error),
                    "attempts": attempts,
                    "token": lease.token,
                    "started_at": started_at,
                    "now": now,
                },
            )

    def finish(
        self,
        lease: Lease,
        state: RunState,
        *,
        reason: str,
        output: str | None = None,
        error: dict[str, Any] | None = None,
        retry_at: float | None = None,
    ) -> None:
        """End this lease: succeeded, failed, cancelled, or back to the queue for a retry.

        `state` QUEUED hands the run back without counting an attempt (graceful shutdown);
        DELAYED schedules the next attempt at `retry_at`.
        """
        now = self.clock.now()
        b = self.backend
        sets = {"state": state.value, "now": now, "output": output}
        sets["error"] = None if error is None else dumps(error)
        extra = ""
        # A success clears the error of earlier attempts; their errors stay in the timeline.
        error_sql = "NULL" if state is RunState.SUCCEEDED else "COALESCE(:error, error)"
        if state is RunState.DELAYED:
            extra = ", attempt = attempt + 1, available_at = :retry_at"
            sets["retry_at"] = retry_at if retry_at is not None else now
        elif state.finished:
            extra = ", finished_at = :now"
        with b.transaction() as tx:
            rows = tx.execute(
                f"UPDATE runs SET state = :state, output = :output,"
                f" error = {error_sql}, {_CLEAR_LEASE}, updated_at = :now{extra}"
                " WHERE id = :id AND lease_token = :token AND state = 'running' RETURNING *",
                {**sets, "id": lease.run.id, "token": lease.token},
            )
            if not rows:
                raise LeaseLost(f"run {lease.run.id}: lease {lease.token} is no longer held")
            row = rows[0]
            detail = None if error is None else {k: error.get(k) for k in _EVENT_ERROR_KEYS}
            self._event(
                tx, row["id"], state, reason, at=now, worker_id=lease.worker_id, detail=detail
            )
            self._leave_running(tx, [row])
            if state is RunState.QUEUED:
                b.notify(tx, row["queue"])

    # -- operator actions ------------------------------------------------------------------

    def cancel(self, run_id: str, *, tenant: str | None = None, reason: str = "cancelled") -> Run:
        """Cancel a waiting run now; ask the worker of a running one to stop."""
        now = self.clock.now()
        key = self.get_run(run_id, tenant=tenant).session_key
        with self.backend.transaction() as tx:
            if key is not None:  # lock order: lane before run, as claims do
                tx.execute(
                    f"SELECT active FROM lanes WHERE session_key = :key {self.backend.for_update}",
                    {"key": key},
                )
            row = self._select_run(tx, run_id, tenant, self.backend.for_update)
            state = RunState(row["state"])
            if state in (RunState.QUEUED, RunState.DELAYED):
                rows = tx.execute(
                    "UPDATE runs SET state = 'cancelled', finished_at = :now, updated_at = :now"
                    " WHERE id = :id RETURNING *",
                    {"now": now, "id": run_id},
                )
                self._event(tx, run_id, RunState.CANCELLED, reason, at=now)
                if state is RunState.QUEUED:
                    self._refresh_heads(tx, [row["session_key"]])
                row = rows[0]
            elif state is RunState.RUNNING:
                rows = tx.execute(
                    "UPDATE runs SET cancel_requested = true, updated_at = :now"
                    " WHERE id = :id RETURNING *",
                    {"now": now, "id": run_id},
                )
                row = rows[0]
        return run_from_row(row)

    # -- recovery --------------------------------------------------------------------------

    def promote_delayed(self, limit: int = 500) -> int:
        """Make delayed runs whose time has come ready to claim."""
        now = self.clock.now()
        b = self.backend
        with b.transaction() as tx:
            rows = tx.execute(
                "SELECT seq FROM runs WHERE state = 'delayed' AND available_at <= :now"
                f" ORDER BY available_at LIMIT :limit {b.skip_locked}",
                {"now": now, "limit": limit},
            )
            if not rows:
                return 0
            ready = tx.execute(
                "UPDATE runs SET state = 'queued', updated_at = :now"
                f" WHERE {b.member('seq', 'seqs')} AND state = 'delayed' RETURNING *",
                {"now": now, "seqs": b.list_param([r["seq"] for r in rows])},
            )
            tx.execute_many(
                _INSERT_EVENT,
                [self._event_params(r["id"], RunState.QUEUED, "delay elapsed", now) for r in ready],
            )
            for row in ready:
                self._offer(tx, row)
            for queue in {r["queue"] for r in ready}:
                b.notify(tx, queue)
        return len(ready)

    def next_delayed_at(self) -> float | None:
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute("SELECT MIN(available_at) AS at FROM runs WHERE state = 'delayed'")
        return rows[0]["at"] if rows else None

    def recover(self, worker_id: str, max_stalls: int) -> Recovery:
        """Requeue runs of dead workers (found by liveness locks) and runs whose lease expired.

        Any worker calls this on its maintenance tick: no extra process is needed.
        """
        dead = self._find_dead_workers(worker_id)
        now = self.clock.now()
        b = self.backend
        requeued: list[str] = []
        failed: list[str] = []
        with b.transaction() as tx:
            if dead:
                tx.execute(
                    f"UPDATE workers SET state = 'dead' WHERE {b.member('id', 'ids')}",
                    {"ids": b.list_param(dead)},
                )
            dead_param = b.list_param(dead)
            stalled = tx.execute(
                "SELECT seq, queue, lease_owner, lease_expires_at, stalls, cancel_requested"
                " FROM runs"
                " WHERE state = 'running' AND (lease_expires_at < :now"
                f" OR {b.member('lease_owner', 'dead')}) {b.skip_locked}",
                {"now": now, "dead": dead_param},
            )
            for row in stalled:
                why = (
                    f"worker {row['lease_owner']} died"
                    if row["lease_owner"] in dead
                    else f"lease of worker {row['lease_owner']} expired"
                )
                if row["cancel_requested"]:
                    state, reason, error = RunState.CANCELLED, f"cancelled ({why})", None
                elif row["stalls"] + 1 >= max_stalls:
                    state = RunState.FAILED
                    reason = f"stalled {row['stalls'] + 1} times ({why}); max_stalls reached"
                    error = {"type": "Stalled", "message": reason}
                else:
                    state, reason, error = RunState.QUEUED, f"stalled: {why}", None
                updated = tx.execute(
                    f"UPDATE runs SET state = :state, stalls = stalls + 1, {_CLEAR_LEASE},"
                    " error = COALESCE(:error, error), updated_at = :now,"
                    " finished_at = :finished_at"
                    " WHERE seq = :seq AND state = 'running' RETURNING *",
                    {
                        "state": state.value,
                        "error": None if error is None else dumps(error),
                        "now": now,
                        "finished_at": None if state is RunState.QUEUED else now,
                        "seq": row["seq"],
                    },
                )
                if not updated:
                    continue
                self._event(tx, updated[0]["id"], state, reason, at=now)
                self._leave_running(tx, updated)
                (requeued if state is RunState.QUEUED else failed).append(updated[0]["id"])
            for queue in {r["queue"] for r in stalled}:
                b.notify(tx, queue)
        return Recovery(requeued=requeued, failed=failed, dead_workers=dead)

    def _find_dead_workers(self, worker_id: str) -> list[str]:
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT id, lock_key FROM workers WHERE state = 'alive' AND id <> :me",
                {"me": worker_id},
            )
        if not rows:
            return []
        alive = self.backend.alive([int(r["lock_key"]) for r in rows])
        return [r["id"] for r in rows if int(r["lock_key"]) not in alive]

    # -- workers ---------------------------------------------------------------------------

    def register_worker(
        self,
        worker_id: str,
        *,
        host: str,
        pid: int,
        queues: Sequence[str],
        concurrency: int,
        lock_key: int,
    ) -> None:
        now = self.clock.now()
        with self.backend.transaction() as tx:
            tx.execute(
                "INSERT INTO workers (id, host, pid, queues, concurrency, state, lock_key,"
                " started_at, heartbeat_at) VALUES (:id, :host, :pid, :queues, :concurrency,"
                " 'alive', :lock_key, :now, :now)",
                {
                    "id": worker_id,
                    "host": host,
                    "pid": pid,
                    "queues": dumps(list(queues)),
                    "concurrency": concurrency,
                    "lock_key": lock_key,
                    "now": now,
                },
            )

    def stop_worker(self, worker_id: str) -> None:
        with self.backend.transaction() as tx:
            tx.execute(
                "UPDATE workers SET state = 'stopped', heartbeat_at = :now WHERE id = :id",
                {"now": self.clock.now(), "id": worker_id},
            )

    def workers(self, *, include_gone: bool = False) -> list[WorkerInfo]:
        where = "" if include_gone else " WHERE state = 'alive'"
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(f"SELECT * FROM workers{where} ORDER BY started_at")
            leased = tx.execute(
                "SELECT id, lease_owner FROM runs WHERE state = 'running' ORDER BY seq"
            )
        running: dict[str, list[str]] = {}
        for r in leased:
            running.setdefault(r["lease_owner"], []).append(r["id"])
        return [worker_from_row(r, running.get(r["id"], [])) for r in rows]

    # -- reading ---------------------------------------------------------------------------

    def get_run(self, run_id: str, *, tenant: str | None = None) -> Run:
        with self.backend.transaction(write=False) as tx:
            return run_from_row(self._select_run(tx, run_id, tenant))

    def steps(self, run_id: str) -> list[StepRecord]:
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT * FROM steps WHERE run_id = :id ORDER BY position", {"id": run_id}
            )
        return [step_from_row(r) for r in rows]

    def events(self, run_id: str) -> list[RunEvent]:
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT * FROM run_events WHERE run_id = :id ORDER BY id", {"id": run_id}
            )
        return [event_from_row(r) for r in rows]

    def list_runs(self, f: RunFilter) -> list[Run]:
        b = self.backend
        clauses = ["1 = 1"]
        params: dict[str, Any] = {"limit": f.limit}
        for column in ("tenant", "workflow", "queue", "session_key"):
            value = getattr(f, column)
            if value is not None:
                clauses.append(f"{column} = :{column}")
                params[column] = value
        if f.states:
            clauses.append(b.member("state", "states"))
            params["states"] = b.list_param([s.value for s in f.states])
        if f.before_seq is not None:
            clauses.append("seq < :before_seq")
            params["before_seq"] = f.before_seq
        with b.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT * FROM runs WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT :limit",
                params,
            )
        return [run_from_row(r) for r in rows]

    def count_by_state(self) -> dict[RunState, int]:
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute("SELECT state, COUNT(*) AS n FROM runs GROUP BY state")
        return {RunState(r["state"]): int(r["n"]) for r in rows}

    # -- helpers ---------------------------------------------------------------------------

    def _select_run(self, tx: Tx, run_id: str, tenant: str | None, lock: str = "") -> Row:
        """The run, scoped to `tenant` when given: other tenants' runs are not found."""
        scope = "" if tenant is None else " AND tenant = :tenant"
        rows = tx.execute(
            f"SELECT * FROM runs WHERE id = :id{scope} {lock}", {"id": run_id, "tenant": tenant}
        )
        if not rows:
            raise NotFound(f"run {run_id} not found")
        return rows[0]

    def _offer(self, tx: Tx, row: Row) -> None:
        if row["session_key"] is not None:
            tx.execute(
                _LANE_OFFER,
                {
                    "session_key": row["session_key"],
                    "seq": row["seq"],
                    "priority": row["priority"],
                    "queue": row["queue"],
                },
            )

    def _refresh_heads(self, tx: Tx, keys: Sequence[str | None]) -> None:
        present = [k for k in keys if k is not None]
        if present:
            tx.execute(
                f"UPDATE lanes SET (head_seq, head_priority, head_queue) = {_HEAD}"
                f" WHERE {self.backend.member('session_key', 'keys')}",
                {"keys": self.backend.list_param(present)},
            )

    def _leave_running(self, tx: Tx, rows: Sequence[Row]) -> None:
        """A run stopped running: free its session lane slot and recompute the lane head."""
        keys = [r["session_key"] for r in rows if r["session_key"] is not None]
        if keys:
            tx.execute(
                f"UPDATE lanes SET active = active - 1,"
                f" (head_seq, head_priority, head_queue) = {_HEAD}"
                f" WHERE {self.backend.member('session_key', 'keys')}",
                {"keys": self.backend.list_param(keys)},
            )

    @staticmethod
    def _event_params(
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
        tx.execute(_INSERT_EVENT, self._event_params(run_id, state, reason, at, worker_id, detail))
