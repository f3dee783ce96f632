"""Admin retry framework: retry from the failed step or from scratch, bulk retry by filter,
error groups, the audit log, and retention."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from greenroom.connectors import refuse_settings_in_input
from greenroom.errors import Conflict, InvalidInput
from greenroom.model import (
    FINISHED_STATES,
    INTEGRATION_LABEL,
    AuditEntry,
    ErrorGroup,
    NewRun,
    Run,
    RunState,
)
from greenroom.storage.backend import Row, Tx
from greenroom.storage.base import RunFilter, StoreBase, require_reason, retry_conflicts
from greenroom.storage.codec import (
    audit_from_row,
    error_group_from_row,
    run_from_row,
)
from greenroom.storage.lifecycle.enqueue import insert_runs
from greenroom.storage.outbox import NewEvent, emit

RETRYABLE = (RunState.FAILED, RunState.CANCELLED)
BULK_LIMIT = 10_000


@dataclass(frozen=True, kw_only=True)
class BulkRetry:
    """What a bulk retry did, or with dry_run what it would do."""

    matched: int
    dry_run: bool
    #: Runs the filter matched that were left alone: already retried (superseded).
    skipped_superseded: int = 0
    #: Which step each run would start from (its first step without a stored result).
    rerun_from: dict[str, int] = field(default_factory=dict)
    new_runs: list[str] = field(default_factory=list)


class Admin(StoreBase):
    # -- retry -----------------------------------------------------------------------------

    @retry_conflicts
    def retry_run(
        self,
        run_id: str,
        *,
        actor: str,
        reason: str,
        tenant: str | None = None,
        from_scratch: bool = False,
        input: dict[str, Any] | None = None,
        force: bool = False,
    ) -> Run:
        """A new run for a failed or cancelled one, linked to it (retry_of). From the failed
        step, it starts with the old run's completed steps; from scratch, with none.

        A run retried already is refused (its retry stands for it: a second one would repeat
        what the first did), unless `force`, which the audit log records."""
        require_reason(reason)
        if input is not None and not isinstance(input, dict):
            raise InvalidInput("run input must be a JSON object")
        with self.backend.transaction() as tx:
            # Locked: of two retries at once, the second sees the first's retry and is refused.
            old = self._select_run(tx, run_id, tenant, self.backend.for_update)
            if old["superseded_by"] is not None and not force:
                raise Conflict(
                    f"run {run_id} was already retried as {old['superseded_by']}: retry that"
                    " run, or force a second retry of this one (force, with a reason)"
                )
            if input is not None:
                self._refuse_settings(tx, run_from_row(old), input)
            new = self._retry_one(tx, old, actor, reason, from_scratch, input)
        return run_from_row(new)

    def _refuse_settings(self, tx: Tx, run: Run, input: dict[str, Any]) -> None:
        """A retry's new input may not name a setting of the run's integration, as a new
        run's may not (App.prepare checks the connector's whole settings model; the store
        knows the integration's stored settings, which hold every field)."""
        integration = run.labels.get(INTEGRATION_LABEL)
        if integration is None:
            return
        rows = tx.execute(
            "SELECT settings FROM integrations WHERE id = :id AND tenant = :tenant",
            {"id": integration, "tenant": run.tenant},
        )
        if rows:
            settings = json.loads(rows[0]["settings"])
            refuse_settings_in_input(input, settings, f"integration {integration}")

    @retry_conflicts
    def retry_where(
        self,
        run_filter: RunFilter,
        *,
        actor: str,
        reason: str,
        dry_run: bool = True,
        from_scratch: bool = False,
    ) -> BulkRetry:
        """Retry every failed or cancelled run matching the filter (failed only by default)."""
        require_reason(reason)
        if not run_filter.states:
            run_filter = replace(run_filter, states=[RunState.FAILED])
        if any(s not in RETRYABLE for s in run_filter.states):
            raise InvalidInput("only failed or cancelled runs can be retried")
        run_filter = replace(run_filter, include_superseded=True)
        where, params = self.run_filter_sql(run_filter)
        backend = self.backend
        with backend.transaction(write=not dry_run) as tx:
            # Locked (not in a dry run): a concurrent bulk retry waits, then skips these.
            matched = tx.execute(
                f"SELECT * FROM runs WHERE {where} ORDER BY seq LIMIT :limit"
                f" {'' if dry_run else backend.for_update}",
                {**params, "limit": BULK_LIMIT},
            )
            runs = [r for r in matched if r["superseded_by"] is None]
            skipped = len(matched) - len(runs)
            starts = Counter(self._restart_step(tx, r, from_scratch) for r in runs)
            if dry_run:
                return BulkRetry(
                    matched=len(runs),
                    dry_run=True,
                    skipped_superseded=skipped,
                    rerun_from=dict(starts),
                )
            new_ids = [
                self._retry_one(tx, r, actor, reason, from_scratch, None)["id"] for r in runs
            ]
            self._audit(
                tx,
                tenant=run_filter.tenant,
                actor=actor,
                action="retry.bulk",
                target=f"{len(runs)} runs",
                reason=reason,
                detail={
                    "filter": _filter_detail(run_filter),
                    "from_scratch": from_scratch,
                    "skipped_superseded": skipped,
                },
            )
        return BulkRetry(
            matched=len(runs),
            dry_run=False,
            skipped_superseded=skipped,
            rerun_from=dict(starts),
            new_runs=new_ids,
        )

    def _restart_step(self, tx: Tx, run: Row, from_scratch: bool) -> str:
        if from_scratch:
            return "(from scratch)"
        rows = tx.execute(
            "SELECT name FROM steps WHERE run_id = :id AND status <> 'completed'"
            " ORDER BY position LIMIT 1",
            {"id": run["id"]},
        )
        return rows[0]["name"] if rows else "(after the last completed step)"

    def _retry_one(
        self,
        tx: Tx,
        old: Row,
        actor: str,
        reason: str,
        from_scratch: bool,
        input: dict[str, Any] | None,
    ) -> Row:
        state = RunState(old["state"])
        if state not in RETRYABLE:
            raise InvalidInput(
                f"run {old['id']} is {state.value}: only failed or cancelled runs can be retried"
            )
        run = run_from_row(old)
        how = "from scratch" if from_scratch else "from the failed step"
        new, _ = insert_runs(
            tx,
            self.backend,
            [_retry_of(run, input)],
            self.clock.now(),
            reason=f"retry of {run.id} {how} by {actor}: {reason}",
        )[0]
        _hand_over(tx, run, new["id"], from_scratch, self.clock.now())
        self._event(
            tx,
            run.id,
            state,
            f"retried {how} as {new['id']} by {actor}: {reason}",
            at=self.clock.now(),
        )
        self._audit(
            tx,
            tenant=run.tenant,
            actor=actor,
            action="retry",
            target=f"run {run.id}",
            reason=reason,
            detail={
                "new_run": new["id"],
                "from_scratch": from_scratch,
                "input_changed": input is not None,
                # A forced second retry: which retry already stood for the run.
                **({"superseded_retry": run.superseded_by} if run.superseded_by else {}),
            },
        )
        retried = {"run_id": run.id, "new_run_id": new["id"], "workflow": run.workflow}
        retried |= {"queue": run.queue, "from_scratch": from_scratch, "actor": actor}
        event = NewEvent(run.tenant, "run.retried", f"run:{run.id}", retried | {"reason": reason})
        emit(tx, self.backend, [event], self.clock.now())
        return new

    # -- errors ----------------------------------------------------------------------------

    def error_groups(self, *, tenant: str | None = None, limit: int = 50) -> list[ErrorGroup]:
        scope = "" if tenant is None else " WHERE g.tenant = :tenant"
        failed = "r.tenant = g.tenant AND r.error_group = g.fingerprint AND r.state = 'failed'"
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT g.*,"
                f" (SELECT COUNT(*) FROM runs AS r WHERE {failed}"
                " AND r.superseded_by IS NULL) AS open,"
                " (SELECT COUNT(*) FROM runs AS r JOIN runs AS t ON t.id = r.superseded_by"
                f" WHERE {failed} AND r.superseded_by IS NOT NULL AND t.state = 'succeeded')"
                " AS resolved"
                f" FROM error_groups AS g{scope} ORDER BY g.last_seen DESC LIMIT :limit",
                {"tenant": tenant, "limit": limit},
            )
        return [error_group_from_row(r) for r in rows]

    # -- audit -----------------------------------------------------------------------------

    def audit_log(
        self, *, tenant: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[AuditEntry]:
        clauses, params = ["1 = 1"], {"limit": limit, "tenant": tenant, "before": before_id}
        if tenant is not None:
            clauses.append("tenant = :tenant")
        if before_id is not None:
            clauses.append("id < :before")
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT * FROM audit_log WHERE {' AND '.join(clauses)}"
                " ORDER BY id DESC LIMIT :limit",
                params,
            )
        return [audit_from_row(r) for r in rows]

    # -- retention -------------------------------------------------------------------------

    def prune(
        self,
        *,
        older_than: float,
        states: Sequence[RunState] = tuple(FINISHED_STATES),
        batch: int = 500,
        delete_files: Callable[[str], None] | None = None,
        dry_run: bool = False,
    ) -> int:
        """Delete finished runs that ended more than `older_than` seconds ago, in small
        transactions so no lock is held for long; `delete_files(run_id)` removes each run's
        stored artifacts once its rows are gone. Returns how many runs were deleted (with
        dry_run: how many would be, deleting nothing)."""
        if older_than < 0:
            raise InvalidInput("older_than must not be negative")
        if any(s not in FINISHED_STATES for s in states):
            raise InvalidInput("only finished runs (succeeded, failed, cancelled) can be pruned")
        backend = self.backend
        cutoff = self.clock.now() - older_than
        if dry_run:
            with backend.transaction(write=False) as tx:
                rows = tx.execute(
                    f"SELECT COUNT(*) AS n FROM runs WHERE finished_at < :cutoff"
                    f" AND {backend.member('state', 'states')}",
                    {"cutoff": cutoff, "states": backend.list_param([s.value for s in states])},
                )
            return int(rows[0]["n"])
        deleted = 0
        while True:
            with backend.transaction() as tx:
                rows = tx.execute(
                    f"SELECT id FROM runs WHERE finished_at < :cutoff"
                    f" AND {backend.member('state', 'states')} ORDER BY finished_at LIMIT :batch"
                    f" {backend.skip_locked}",
                    {
                        "cutoff": cutoff,
                        "states": backend.list_param([s.value for s in states]),
                        "batch": batch,
                    },
                )
                ids = backend.list_param([r["id"] for r in rows])
                for table in ("steps", "run_events", "artifacts"):
                    tx.execute(
                        f"DELETE FROM {table} WHERE {backend.member('run_id', 'ids')}", {"ids": ids}
                    )
                tx.execute(f"DELETE FROM runs WHERE {backend.member('id', 'ids')}", {"ids": ids})
            deleted += len(rows)
            if delete_files is not None:
                for row in rows:
                    delete_files(row["id"])
            if len(rows) < batch:
                return deleted


def _retry_of(run: Run, input: dict[str, Any] | None) -> NewRun:
    return NewRun(
        workflow=run.workflow,
        input=run.input if input is None else input,
        tenant=run.tenant,
        queue=run.queue,
        session_key=run.session_key,
        priority=run.priority,
        labels=run.labels,
        max_attempts=run.max_attempts,
        timeout=run.timeout,
        retry_of=run.id,
    )


def _hand_over(tx: Tx, run: Run, new: str, from_scratch: bool, now: float) -> None:
    """The new run stands for the old one, and for the runs the old one stood for; from the
    failed step, it starts with the old one's completed steps.

    A forced second retry takes over the whole chain of the retry that stood for the run: its
    runs, and the retry itself once it failed or was cancelled. Otherwise that retry's failure
    stays open beside the new run's, and a later `retry --where` re-runs the same work twice."""
    old, params = run.id, {"new": new, "now": now}
    tx.execute(
        "UPDATE runs SET superseded_by = :new, updated_at = :now"
        " WHERE id = :old OR superseded_by = :old",
        {**params, "old": old},
    )
    if run.superseded_by is not None:
        tx.execute(
            "UPDATE runs SET superseded_by = :new, updated_at = :now"
            " WHERE superseded_by = :previous"
            " OR (id = :previous AND state IN ('failed', 'cancelled'))",
            {**params, "previous": run.superseded_by},
        )
    if not from_scratch:
        tx.execute(
            "INSERT INTO steps (run_id, position, name, status, result, error, attempts,"
            " lease_token, started_at, finished_at) SELECT :new, position, name, status,"
            " result, error, attempts, 0, started_at, finished_at FROM steps"
            " WHERE run_id = :old AND status = 'completed'",
            {"new": new, "old": old},
        )


def _filter_detail(run_filter: RunFilter) -> dict[str, Any]:
    return {
        k: v
        for k, v in {
            "tenant": run_filter.tenant,
            "workflow": run_filter.workflow,
            "queue": run_filter.queue,
            "label": list(run_filter.label) if run_filter.label else None,
            "error_group": run_filter.error_group,
            "states": [s.value for s in run_filter.states],
            "finished_after": run_filter.finished_after,
            "finished_before": run_filter.finished_before,
        }.items()
        if v
    }
