"""The store's runs: enqueue, claim, leases, fenced writes, cancel, recovery, workers, reading.

Each public method is one transaction. Writes a worker makes for a run it executes are fenced:
they only apply while the run is still leased with the worker's token.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from greenroom.errors import LeaseLost
from greenroom.model import (
    Artifact,
    Lease,
    NewRun,
    Run,
    RunEvent,
    RunState,
    StepRecord,
    StepStatus,
    WorkerInfo,
)
from greenroom.storage import writes
from greenroom.storage.backend import Row, Tx
from greenroom.storage.base import (
    RunFilter,
    StoreBase,
    require_reason,
    retry_conflicts,
)
from greenroom.storage.claim import claim as claim_runs
from greenroom.storage.codec import (
    artifact_from_row,
    dumps,
    event_from_row,
    run_from_row,
    step_from_row,
    worker_from_row,
)
from greenroom.storage.lifecycle import moves, summaries
from greenroom.storage.lifecycle.enqueue import insert_runs, insert_runs_at_once
from greenroom.storage.lifecycle.moves import Change
from greenroom.storage.lifecycle.states import Move
from greenroom.storage.outbox import NewEvent, emit
from greenroom.storage.writes import Checkpoint, End, Written


@dataclass(frozen=True, kw_only=True)
class ControlRequests:
    """The runs a worker holds (whose leases a heartbeat renewed, or that have a request) and
    those of them an operator asked to cancel or to pause."""

    held: set[str]
    cancel_requested: set[str]
    pause_requested: set[str]


@dataclass(frozen=True, kw_only=True)
class RunDetail:
    run: Run
    steps: list[StepRecord]
    events: list[RunEvent]
    artifacts: list[Artifact]


@dataclass(frozen=True, kw_only=True)
class Recovery:
    requeued: list[str]
    #: Failed after max_stalls, or cancelled as asked.
    failed: list[str]
    #: Workers declared lost by this call: their runs are handed out after the grace.
    lost_workers: list[str]
    #: When the next lost worker's runs are due to be handed out, if any are pending.
    next_due: float | None = None
    #: For each run recovered: how long it waited, from its lease expiring or its worker
    #: declared lost (whichever came first) to its recovery.
    waited: list[float] = field(default_factory=list)


class Runs(StoreBase):
    """Runs from enqueue to their end, and the workers that execute them."""

    # -- enqueue ---------------------------------------------------------------------------

    def enqueue(self, new: NewRun) -> tuple[Run, bool]:
        """Insert a run, or return the existing one with the same idempotency key."""
        runs = self.enqueue_many([new])
        return runs[0]

    @retry_conflicts
    def enqueue_many(self, batch: Sequence[NewRun]) -> list[tuple[Run, bool]]:
        """Insert runs in one transaction; a used idempotency key returns its existing run."""
        now = self.clock.now()
        inserted = insert_runs_at_once(self.backend, batch, now, self._known_records)
        if inserted is None:
            with self.backend.transaction() as tx:
                inserted = insert_runs(tx, self.backend, batch, now, known=self._known_records)
        self._known_records.add(batch)  # committed: they exist from now on
        return [(run_from_row(row), created) for row, created in inserted]

    # -- claim and lease -------------------------------------------------------------------

    @retry_conflicts
    def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_seconds: float
    ) -> list[Lease]:
        """Lease up to `limit` ready runs, fairly across tenants, within every limit."""
        if limit <= 0 or not queues:
            return []
        rows = claim_runs(
            self.backend,
            worker_id=worker_id,
            queues=queues,
            limit=limit,
            lease_seconds=lease_seconds,
            now=self.clock.now(),
        )
        return [
            Lease(
                run=run_from_row(r),
                worker_id=worker_id,
                token=int(r["lease_token"]),
                expires_at=float(r["lease_expires_at"]),
                seconds=float(r["lease_seconds"]),
            )
            for r in rows
        ]

    def heartbeat(
        self, worker_id: str, lease_seconds: float, run_ids: Collection[str]
    ) -> ControlRequests:
        """Renew, in one statement, the leases of the runs this worker is executing.

        Only those: a run the worker no longer executes (say its end could not be written)
        must be left to expire and be recovered, not kept alive forever."""
        now = self.clock.now()
        backend = self.backend
        with backend.transaction() as tx:
            # Locked in id order, as the worker's writes lock them: the two never deadlock.
            rows = tx.execute(
                "UPDATE runs SET lease_expires_at = :now + COALESCE(lease_seconds, :default)"
                " WHERE id IN (SELECT id FROM runs WHERE lease_owner = :worker"
                f" AND state = 'running' AND {backend.member('id', 'ids')}"
                f" ORDER BY id {backend.for_update})"
                " RETURNING id, cancel_requested, pause_requested",
                {
                    "now": now,
                    "default": lease_seconds,
                    "worker": worker_id,
                    "ids": backend.list_param(sorted(run_ids)),
                },
            )
            tx.execute(
                "UPDATE workers SET heartbeat_at = :now WHERE id = :worker",
                {"now": now, "worker": worker_id},
            )
        return ControlRequests(
            held={r["id"] for r in rows},
            cancel_requested={r["id"] for r in rows if r["cancel_requested"]},
            pause_requested={r["id"] for r in rows if r["pause_requested"]},
        )

    def control_requests(self, worker_id: str) -> ControlRequests:
        """This worker's runs that an operator asked to stop (cancel) or to pause."""
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT id, cancel_requested, pause_requested FROM runs"
                " WHERE lease_owner = :worker AND state = 'running'"
                " AND (cancel_requested OR pause_requested)",
                {"worker": worker_id},
            )
        return ControlRequests(
            held={r["id"] for r in rows},
            cancel_requested={r["id"] for r in rows if r["cancel_requested"]},
            pause_requested={r["id"] for r in rows if r["pause_requested"]},
        )

    # -- fenced writes by the leasing worker -----------------------------------------------

    @retry_conflicts
    def write(self, checkpoints: Sequence[Checkpoint], ends: Sequence[End]) -> Written:
        """Commit the fenced writes of a worker's runs in one transaction; a run whose lease is
        no longer held is refused as a whole."""
        with self.backend.transaction() as tx:
            return writes.write(tx, self.backend, checkpoints, ends, self.clock.now())

    @retry_conflicts
    def note(self, lease: Lease, reason: str, detail: dict[str, Any]) -> None:
        """Add an entry to a running run's timeline (a relogin, say) without changing its
        state; fenced like every write of the leasing worker."""
        with self.backend.transaction() as tx:
            self._fence(tx, lease)
            self._event(
                tx,
                lease.run.id,
                RunState.RUNNING,
                reason,
                at=self.clock.now(),
                worker_id=lease.worker_id,
                detail=detail,
            )

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
        """Checkpoint one step (a worker batches its checkpoints through `write`)."""
        checkpoint = Checkpoint(
            lease=lease,
            position=position,
            name=name,
            status=status,
            result=result,
            error=error,
            attempts=attempts,
            started_at=started_at,
            finished_at=self.clock.now(),
        )
        if self.write([checkpoint], []).refused:
            raise LeaseLost(f"run {lease.run.id}: lease {lease.token} is no longer held")

    def finish(
        self,
        lease: Lease,
        state: RunState,
        *,
        reason: str,
        output: str | None = None,
        error: dict[str, Any] | None = None,
        retry_at: float | None = None,
    ) -> RunState:
        """End one lease (see `End`); the state the run took."""
        end = End(
            lease=lease, state=state, reason=reason, output=output, error=error, retry_at=retry_at
        )
        written = self.write([], [end])
        if written.refused:
            raise LeaseLost(f"run {lease.run.id}: lease {lease.token} is no longer held")
        return written.states[lease.run.id]

    # -- operator actions ------------------------------------------------------------------

    @retry_conflicts
    def cancel(self, run_id: str, *, actor: str, reason: str, tenant: str | None = None) -> Run:
        """Cancel a waiting run now; ask the worker of a running one to stop. Audited."""
        require_reason(reason)
        now = self.clock.now()
        with self.backend.transaction() as tx:
            row = self._select_run(tx, run_id, tenant)
            if row["session_key"] is not None:  # lock order: lane before run, as claims do
                summaries.lock_lanes(tx, self.backend, [row])
            row = self._select_run(tx, run_id, tenant, self.backend.for_update)
            state = RunState(row["state"])
            why = f"cancelled by {actor}: {reason}"
            if state in (RunState.QUEUED, RunState.DELAYED, RunState.PAUSED):
                change = Change(row=row, to=RunState.CANCELLED, reason=why)
                moves.move(tx, self.backend, Move.CANCEL, [change], now)
            elif state is RunState.RUNNING:
                tx.execute(
                    "UPDATE runs SET cancel_requested = true, updated_at = :now WHERE seq = :seq",
                    {"now": now, "seq": row["seq"]},
                )
                asked = {"run_id": row["id"], "workflow": row["workflow"], "queue": row["queue"]}
                asked |= {"actor": actor, "reason": reason}
                event = NewEvent(row["tenant"], "run.cancel_requested", f"run:{row['id']}", asked)
                emit(tx, self.backend, [event], now)
            row = self._select_run(tx, row["id"], tenant)
            self._audit(
                tx,
                tenant=row["tenant"],
                actor=actor,
                action="cancel",
                target=f"run {run_id}",
                reason=reason,
                detail={"state_before": state.value},
            )
        return run_from_row(row)

    # -- recovery --------------------------------------------------------------------------

    @retry_conflicts
    def promote_delayed(self, limit: int = 500) -> int:
        """Make delayed runs whose time has come ready to claim (or paused, if held)."""
        now = self.clock.now()
        backend = self.backend
        with backend.transaction() as tx:
            due = tx.execute(
                "SELECT * FROM runs WHERE state = 'delayed' AND available_at <= :now"
                f" ORDER BY available_at LIMIT :limit {backend.skip_locked}",
                {"now": now, "limit": limit},
            )
            if not due:
                return 0
            changes = [Change(row=r, to=RunState.QUEUED, reason="delay elapsed") for r in due]
            moves.move(tx, backend, Move.PROMOTE, changes, now)
        return len(due)

    @retry_conflicts
    def recover(self, worker_id: str, max_stalls: int) -> Recovery:
        """Requeue runs of dead workers (found by liveness locks) and runs whose lease expired.

        Any worker calls this on its maintenance tick: no extra process is needed. A worker
        whose lock is free is declared lost, and its runs are handed out `liveness_grace`
        seconds later (see docs/durability.md, "Liveness"). A queue's own max_stalls, when
        set, wins over the worker's.
        """
        candidates = self._find_dead_workers(worker_id)
        now = self.clock.now()
        backend = self.backend
        requeued: list[str] = []
        failed: list[str] = []
        with backend.transaction() as tx:
            lost = self._declare_lost(tx, candidates, now)
            gone = {
                r["id"]: float(r["lost_at"])
                for r in tx.execute(
                    "UPDATE workers SET state = 'dead' WHERE state = 'lost'"
                    " AND lost_at <= :cutoff RETURNING id, lost_at",
                    {"cutoff": now - backend.liveness_grace},
                )
            }
            pending = tx.execute("SELECT MIN(lost_at) AS at FROM workers WHERE state = 'lost'")
            due = None if pending[0]["at"] is None else pending[0]["at"] + backend.liveness_grace
            stalled = tx.execute(
                "SELECT * FROM runs WHERE state = 'running' AND (lease_expires_at < :now"
                f" OR {backend.member('lease_owner', 'gone')}) ORDER BY seq {backend.skip_locked}",
                {"now": now, "gone": backend.list_param(list(gone))},
            )
            if not stalled:
                return Recovery(requeued=[], failed=[], lost_workers=lost, next_due=due)
            limits = self._queue_max_stalls(tx, {r["queue"] for r in stalled})
            changes = [_stall(row, gone, limits.get(row["queue"], max_stalls)) for row in stalled]
            waited = [now - _recoverable_since(row, gone) for row in stalled]
            for r in moves.move(
                tx,
                backend,
                Move.STALL,
                changes,
                now,
                columns=[("error", "text")],
                sets="stalls = runs.stalls + 1, error = COALESCE(w.error, runs.error)",
            ):
                (failed if RunState(r["state"]).finished else requeued).append(r["id"])
        return Recovery(
            requeued=requeued, failed=failed, lost_workers=lost, next_due=due, waited=waited
        )

    def _declare_lost(self, tx: Tx, candidates: list[Row], now: float) -> list[str]:
        """Mark lost the workers whose locks this transaction takes: until it commits, none of
        them can take its lock back, and afterwards each finds itself declared lost."""
        if not candidates:
            return []
        backend = self.backend
        taken = backend.take_liveness(tx, [int(r["lock_key"]) for r in candidates])
        ids = [r["id"] for r in candidates if int(r["lock_key"]) in taken]
        if not ids:
            return []
        rows = tx.execute(
            "UPDATE workers SET state = 'lost', lost_at = :now"
            f" WHERE {backend.member('id', 'ids')} AND state = 'alive' RETURNING id",
            {"now": now, "ids": backend.list_param(ids)},
        )
        return [r["id"] for r in rows]

    def _queue_max_stalls(self, tx: Tx, queues: set[str]) -> dict[str, int]:
        backend = self.backend
        rows = tx.execute(
            f"SELECT name, max_stalls FROM queues WHERE {backend.member('name', 'names')}"
            " AND max_stalls IS NOT NULL",
            {"names": backend.list_param(sorted(queues))},
        )
        return {r["name"]: int(r["max_stalls"]) for r in rows}

    def _find_dead_workers(self, worker_id: str) -> list[Row]:
        """Workers recorded alive whose liveness locks nobody holds."""
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT id, lock_key FROM workers WHERE state = 'alive' AND id <> :me",
                {"me": worker_id},
            )
        if not rows:
            return []
        alive = self.backend.alive([int(r["lock_key"]) for r in rows])
        return [r for r in rows if int(r["lock_key"]) not in alive]

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
            # The listed workers' runs alone, through runs_leased.
            leased = tx.execute(
                "SELECT id, lease_owner FROM runs WHERE state = 'running'"
                f" AND {self.backend.member('lease_owner', 'owners')} ORDER BY seq",
                {"owners": self.backend.list_param([r["id"] for r in rows])},
            )
        running: dict[str, list[str]] = {}
        for r in leased:
            running.setdefault(r["lease_owner"], []).append(r["id"])
        return [worker_from_row(r, running.get(r["id"], [])) for r in rows]

    # -- reading ---------------------------------------------------------------------------

    def get_run(self, run_id: str, *, tenant: str | None = None) -> Run:
        with self.backend.single_statement(write=False) as tx:
            return run_from_row(self._select_run(tx, run_id, tenant))

    def run_detail(self, run_id: str, *, tenant: str | None = None) -> RunDetail:
        """A run with its steps, timeline and artifacts, as one consistent read."""
        with self.backend.transaction(write=False) as tx:
            run = run_from_row(self._select_run(tx, run_id, tenant))
            params = {"id": run.id}  # run_id may be a prefix
            steps = tx.execute("SELECT * FROM steps WHERE run_id = :id ORDER BY position", params)
            events = tx.execute("SELECT * FROM run_events WHERE run_id = :id ORDER BY id", params)
            files = tx.execute("SELECT * FROM artifacts WHERE run_id = :id ORDER BY id", params)
        return RunDetail(
            run=run,
            steps=[step_from_row(r) for r in steps],
            events=[event_from_row(r) for r in events],
            artifacts=[artifact_from_row(r) for r in files],
        )

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

    def list_runs(self, run_filter: RunFilter) -> list[Run]:
        where, params = self.run_filter_sql(run_filter)
        if run_filter.before_seq is not None:
            where += " AND seq < :before_seq"
            params["before_seq"] = run_filter.before_seq
        params["limit"] = run_filter.limit
        with self.backend.single_statement(write=False) as tx:  # one round trip, not three
            rows = tx.execute(
                f"SELECT * FROM runs WHERE {where} ORDER BY seq DESC LIMIT :limit", params
            )
        return [run_from_row(r) for r in rows]

    def count_by_state(self) -> dict[RunState, int]:
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute("SELECT state, COUNT(*) AS n FROM runs GROUP BY state")
        return {RunState(r["state"]): int(r["n"]) for r in rows}

    # -- helpers ---------------------------------------------------------------------------


def _recoverable_since(row: Row, gone: dict[str, float]) -> float:
    """When a stalled run could first be recovered: its lease expired or its worker was lost."""
    times = [float(row["lease_expires_at"] or 0.0)]
    if row["lease_owner"] in gone:
        times.append(gone[row["lease_owner"]])
    return min(times)


def _stall(row: Row, gone: dict[str, float], max_stalls: int) -> Change:
    """Where a stalled run goes: cancelled if a cancel was asked for, failed at max_stalls,
    else ready again."""
    why = (
        f"worker {row['lease_owner']} lost its liveness lock"
        if row["lease_owner"] in gone
        else f"lease of worker {row['lease_owner']} expired"
    )
    if row["cancel_requested"]:
        return Change(
            row=row, to=RunState.CANCELLED, reason=f"cancelled ({why})", values={"error": None}
        )
    if row["stalls"] + 1 >= max_stalls:
        reason = f"stalled {row['stalls'] + 1} times ({why}); max_stalls reached"
        error = {"type": "Stalled", "message": reason, "class": "transient"}
        return Change(row=row, to=RunState.FAILED, reason=reason, values={"error": dumps(error)})
    return Change(row=row, to=RunState.QUEUED, reason=f"stalled: {why}", values={"error": None})
