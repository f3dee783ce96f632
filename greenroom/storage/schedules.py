"""Schedules in the store: made, changed, paused, and fired.

A firing enqueues its run, whose idempotency key is the schedule and the slot, in the
transaction that moves the schedule past the slot; due schedules are locked with SKIP LOCKED
(SQLite has one writer), so any number of schedulers racing fire each slot once. Slots missed
while nothing ran are fired if they are within the schedule's catch-up window, else counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from greenroom.errors import Conflict, InvalidInput, NotFound
from greenroom.model import (
    Run,
    RunState,
    Schedule,
    ScheduleFiring,
)
from greenroom.rules import MAX_REASON, check_text
from greenroom.schedules.spec import MAX_SLOTS, Spec
from greenroom.storage.backend import Row, Tx
from greenroom.storage.base import StoreBase, audit_columns, retry_conflicts
from greenroom.storage.codec import (
    run_from_row,
    schedule_firing_from_row,
    schedule_from_row,
)
from greenroom.storage.lifecycle.enqueue import insert_runs
from greenroom.storage.outbox import NewEvent, emit
from greenroom.storage.schedule_plans import (
    Fired,
    Plan,
    Prepare,
    due_runs,
    firing,
    insert_firings,
    new_event,
    plan_slots,
    prepared,
    prepared_run,
    slot_key,
    spec_of,
)

_WAITING = "NOT paused AND next_due IS NOT NULL AND next_due <= :now"
#: Columns stored as JSON, which the audit shows decoded.
_JSON_COLUMNS = ("input", "labels")


class Schedules(StoreBase):
    # -- admins ---------------------------------------------------------------------------

    @retry_conflicts
    def create(
        self,
        *,
        schedule_id: str,
        tenant: str,
        values: dict[str, Any],
        actor: str,
        origin: str = "api",
    ) -> Schedule:
        """Store a schedule; `values` are its columns as `columns` checks them."""
        now = self.clock.now()
        spec = _spec(values)
        next_slot = spec.slot_after(now)
        row = {
            **values,
            "id": schedule_id,
            "tenant": tenant,
            "origin": origin,
            "next_slot": next_slot,
            "next_due": None if next_slot is None else spec.due(schedule_id, next_slot),
            "now": now,
        }
        names = [k for k in row if k != "now"]
        with self.backend.transaction() as tx:
            self._name_free(tx, tenant, values["name"])
            tx.execute(
                f"INSERT INTO schedules ({', '.join(names)}, paused, fired, skipped, missed,"
                f" created_at, updated_at) VALUES ({', '.join(':' + n for n in names)}, false,"
                " 0, 0, 0, :now, :now)",
                row,
            )
            self._audit(
                tx,
                tenant=tenant,
                actor=actor,
                action="schedule.create",
                target=schedule_id,
                reason="created",
                detail=audit_columns(values, _JSON_COLUMNS),
            )
            return self._get(tx, schedule_id, tenant)

    def get(self, schedule_id: str, *, tenant: str | None = None) -> Schedule:
        with self.backend.transaction(write=False) as tx:
            return self._get(tx, schedule_id, tenant)

    def list_schedules(
        self, *, tenant: str | None = None, integration: str | None = None
    ) -> list[Schedule]:
        clauses = ["1 = 1"]
        if tenant is not None:
            clauses.append("tenant = :tenant")
        if integration is not None:
            clauses.append("integration = :integration")
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT * FROM schedules WHERE {' AND '.join(clauses)} ORDER BY tenant, name",
                {"tenant": tenant, "integration": integration},
            )
        return [schedule_from_row(r) for r in rows]

    @retry_conflicts
    def update(
        self, schedule_id: str, values: dict[str, Any], *, actor: str, tenant: str | None = None
    ) -> Schedule:
        """Change a schedule; a new spec starts from the next slot after now."""
        now = self.clock.now()
        with self.backend.transaction() as tx:
            current = self._get(tx, schedule_id, tenant, lock=True)
            if "name" in values and values["name"] != current.name:
                self._name_free(tx, current.tenant, values["name"])
            merged = {**_columns_of(current), **values}
            spec = _spec(merged)
            if any(k in values for k in _SPEC_COLUMNS):
                next_slot = spec.slot_after(now)
                values = {
                    **values,
                    "next_slot": next_slot,
                    "next_due": None if next_slot is None else spec.due(schedule_id, next_slot),
                }
            if values:
                assignments = ", ".join(f"{k} = :{k}" for k in values)
                tx.execute(
                    f"UPDATE schedules SET {assignments}, updated_at = :now WHERE id = :id",
                    {**values, "now": now, "id": schedule_id},
                )
                self._audit(
                    tx,
                    tenant=current.tenant,
                    actor=actor,
                    action="schedule.update",
                    target=schedule_id,
                    reason="updated",
                    detail=audit_columns(values, _JSON_COLUMNS),
                )
            return self._get(tx, schedule_id, tenant)

    @retry_conflicts
    def delete(self, schedule_id: str, *, actor: str, tenant: str | None = None) -> None:
        """Remove a schedule (its runs stay)."""
        with self.backend.transaction() as tx:
            current = self._get(tx, schedule_id, tenant, lock=True)
            tx.execute("DELETE FROM schedules WHERE id = :id", {"id": schedule_id})
            self._audit(
                tx,
                tenant=current.tenant,
                actor=actor,
                action="schedule.delete",
                target=schedule_id,
                reason="deleted",
                detail={"name": current.name, "workflow": current.workflow},
            )

    @retry_conflicts
    def pause(
        self, schedule_id: str, *, note: str, actor: str, tenant: str | None = None
    ) -> Schedule:
        """Stop firing (runs already made are not touched), with a note saying why."""
        check_text(note, "note", max_length=MAX_REASON, min_length=1)
        with self.backend.transaction() as tx:
            current = self._get(tx, schedule_id, tenant, lock=True)
            self._pause(tx, current, note, actor)
            return self._get(tx, schedule_id, tenant)

    @retry_conflicts
    def resume(self, schedule_id: str, *, actor: str, tenant: str | None = None) -> Schedule:
        """Fire again from the next slot after now: the slots of the pause are not caught up."""
        now = self.clock.now()
        with self.backend.transaction() as tx:
            current = self._get(tx, schedule_id, tenant, lock=True)
            if not current.paused:
                return current
            spec = spec_of(current)
            next_slot = spec.slot_after(now)
            tx.execute(
                "UPDATE schedules SET paused = false, pause_note = NULL, paused_by = NULL,"
                " paused_at = NULL, next_slot = :slot, next_due = :due, updated_at = :now"
                " WHERE id = :id",
                {
                    "slot": next_slot,
                    "due": None if next_slot is None else spec.due(current.id, next_slot),
                    "now": now,
                    "id": current.id,
                },
            )
            self._audit(
                tx,
                tenant=current.tenant,
                actor=actor,
                action="schedule.resume",
                target=current.id,
                reason="resumed",
            )
            self._schedule_event(tx, current, "schedule.resumed", {"actor": actor}, now)
            return self._get(tx, schedule_id, tenant)

    def firings(
        self, schedule_id: str, *, tenant: str | None = None, limit: int = 50
    ) -> list[ScheduleFiring]:
        """The latest firings, skips and misses, newest first."""
        with self.backend.transaction(write=False) as tx:
            self._get(tx, schedule_id, tenant)
            rows = tx.execute(
                "SELECT * FROM schedule_firings WHERE schedule_id = :id ORDER BY id DESC"
                " LIMIT :limit",
                {"id": schedule_id, "limit": limit},
            )
        return [schedule_firing_from_row(r) for r in rows]

    def prune_firings(self, *, older_than: float, batch: int = 5000) -> int:
        return self._delete_in_batches(
            "DELETE FROM schedule_firings WHERE id IN (SELECT id FROM schedule_firings"
            " WHERE at < :cutoff LIMIT :batch)",
            {"cutoff": self.clock.now() - older_than, "batch": batch},
        )

    # -- firing ---------------------------------------------------------------------------

    @retry_conflicts
    def fire_due(self, prepare: Prepare, *, limit: int = 100) -> Fired:
        """Fire the schedules due now (up to `limit`), each slot once."""
        backend = self.backend
        now = self.clock.now()
        due = f"SELECT * FROM schedules WHERE {_WAITING} ORDER BY next_due LIMIT :limit"
        with backend.transaction(write=False) as tx:  # most polls find nothing: no write lock
            waiting = tx.execute(due, {"now": now, "limit": limit})
        if not waiting:
            return Fired()
        ready = prepared(prepare, [w for row in waiting for w in due_runs(row, now)])
        with backend.transaction() as tx:
            rows = tx.execute(f"{due} {backend.skip_locked}", {"now": now, "limit": limit})
            schedules = self._readable(tx, rows)
            states = self._run_states(tx, [s.last_run_id for s in schedules if s.last_run_id])
            last = states.get
            plans = [plan_slots(s, now, last(s.last_run_id or ""), ready) for s in schedules]
            fired = self._apply(tx, [p for p in plans if p is not None], now)
            fired.taken = len(rows)
            return fired

    @retry_conflicts
    def trigger(
        self, schedule_id: str, prepare: Prepare, *, actor: str, tenant: str | None = None
    ) -> Run:
        """A run now, whatever the slots and the overlap policy (an operator asked)."""
        now = self.clock.now()
        key = f"schedule:{schedule_id}:manual:{now:.6f}"
        ready = prepared(prepare, [(self.get(schedule_id, tenant=tenant), None, key)])
        with self.backend.transaction() as tx:
            current = self._get(tx, schedule_id, tenant, lock=True)
            plan = Plan(current, runs=[(None, prepared_run(ready, current, None, key))])
            fired = self._apply(tx, [plan], now, outcome="triggered", advance=False)
            self._audit(
                tx,
                tenant=current.tenant,
                actor=actor,
                action="schedule.trigger",
                target=current.id,
                reason="triggered",
                detail={"run_id": fired.runs[0].id},
            )
            return fired.runs[0]

    @retry_conflicts
    def backfill(
        self,
        schedule_id: str,
        prepare: Prepare,
        *,
        start: float,
        end: float,
        actor: str,
        tenant: str | None = None,
        dry_run: bool = True,
    ) -> list[tuple[float, Run | None]]:
        """The slots from `start` to `end` with their runs: a slot that has one already keeps
        it (its idempotency key), the others get one, unless `dry_run` (then None)."""
        if end < start:
            raise InvalidInput("end must not be before start")
        now = self.clock.now()

        def missing(tx: Tx, lock: bool) -> tuple[Schedule, list[float], dict[str, Run]]:
            current = self._get(tx, schedule_id, tenant, lock=lock)
            slots = spec_of(current).slots(start - 1e-6, min(end, now), limit=MAX_SLOTS)
            existing = self._by_key(tx, current.tenant, [slot_key(current.id, s) for s in slots])
            return current, slots, existing

        with self.backend.transaction(write=False) as tx:
            current, slots, existing = missing(tx, False)
        if dry_run:
            return [(s, existing.get(slot_key(current.id, s))) for s in slots]
        wanted = [(current, s, slot_key(current.id, s)) for s in slots]
        ready = prepared(prepare, [w for w in wanted if w[2] not in existing])
        with self.backend.transaction() as tx:
            current, slots, existing = missing(tx, True)
            plan = Plan(current)
            plan.runs = [
                (s, prepared_run(ready, current, s, slot_key(current.id, s)))
                for s in slots
                if slot_key(current.id, s) not in existing
            ]
            fired = self._apply(tx, [plan], now, outcome="backfilled", advance=False)
            self._audit(
                tx,
                tenant=current.tenant,
                actor=actor,
                action="schedule.backfill",
                target=current.id,
                reason=f"backfill {start} to {end}",
                detail={"slots": len(slots), "runs": len(fired.runs)},
            )
            runs = existing | {r.idempotency_key or "": r for r in fired.runs}
            return [(s, runs.get(slot_key(current.id, s))) for s in slots]

    # -- inside -------------------------------------------------------------------------------

    def _apply(
        self,
        tx: Tx,
        plans: Sequence[Plan],
        now: float,
        *,
        outcome: str = "fired",
        advance: bool = True,
    ) -> Fired:
        """Enqueue the plans' runs, record firings and events, move the schedules on."""
        fired = Fired()
        wanted = [new for p in plans for _, new in p.runs]
        inserted = insert_runs(tx, self.backend, wanted, now, reason="fired by its schedule")
        made = iter(inserted)
        firings: list[dict[str, Any]] = []
        events: list[NewEvent] = []
        for plan in plans:
            s = plan.schedule
            if plan.problem is not None:
                self._pause(tx, s, plan.problem, "greenroom")
                fired.paused.append(s.id)
                continue
            last_run, last_slot = s.last_run_id, s.last_slot
            for slot, _ in plan.runs:
                row, _created = next(made)
                run = run_from_row(row)
                fired.runs.append(run)
                last_run, last_slot = run.id, slot if slot is not None else last_slot
                firings.append(firing(s, slot, now, outcome, run.id))
                if slot is not None:
                    fired.lags.append(now - slot)
                payload = {"schedule_id": s.id, "name": s.name, "slot": slot, "run_id": run.id}
                events.append(new_event(s, "schedule.fired", {**payload, "how": outcome}))
            firings += [firing(s, slot, now, "skipped") for slot in plan.skipped]
            if plan.missed:
                detail = {"count": len(plan.missed), "first": plan.missed[0]}
                firings.append(firing(s, plan.missed[-1], now, "missed", detail=detail))
                missed = {"schedule_id": s.id, "name": s.name, **detail, "last": plan.missed[-1]}
                events.append(new_event(s, "schedule.missed", missed))
            fired.cancel += plan.cancel
            handled = [slot for slot, _ in plan.runs if slot is not None]
            handled += plan.skipped + plan.missed
            self._moved(tx, s, handled, last_run, last_slot, plan, now, advance)
        insert_firings(tx, firings)
        emit(tx, self.backend, events, now)
        return fired

    def _moved(
        self,
        tx: Tx,
        s: Schedule,
        handled: list[float],
        last_run: str | None,
        last_slot: float | None,
        plan: Plan,
        now: float,
        advance: bool,
    ) -> None:
        values: dict[str, Any] = {
            "last_run": last_run,
            "fired": len(plan.runs),
            "skipped": len(plan.skipped),
            "missed": len(plan.missed),
            "now": now,
            "id": s.id,
        }
        assignments = (
            "last_run_id = :last_run, fired = fired + :fired, skipped = skipped + :skipped,"
            " missed = missed + :missed, updated_at = :now"
        )
        if plan.runs:
            assignments += ", last_fired_at = :now"
        if advance:
            spec = spec_of(s)
            # A schedule with more slots than a round lists goes on after the last one handled.
            after = max(handled) if plan.more else max([now, *handled])
            next_slot = spec.slot_after(after)
            values.update(
                slot=next_slot,
                due=None if next_slot is None else spec.due(s.id, next_slot),
                last_slot=last_slot,
            )
            assignments += ", next_slot = :slot, next_due = :due, last_slot = :last_slot"
        tx.execute(f"UPDATE schedules SET {assignments} WHERE id = :id", values)

    def _pause(self, tx: Tx, s: Schedule, note: str, actor: str) -> None:
        now = self.clock.now()
        tx.execute(
            "UPDATE schedules SET paused = true, pause_note = :note, paused_by = :actor,"
            " paused_at = :now, updated_at = :now WHERE id = :id",
            {"note": note, "actor": actor, "now": now, "id": s.id},
        )
        self._audit(
            tx, tenant=s.tenant, actor=actor, action="schedule.pause", target=s.id, reason=note
        )
        self._schedule_event(tx, s, "schedule.paused", {"note": note, "actor": actor}, now)

    def _schedule_event(
        self, tx: Tx, s: Schedule, kind: str, payload: dict[str, Any], now: float
    ) -> None:
        base = {"schedule_id": s.id, "name": s.name, "workflow": s.workflow}
        emit(tx, self.backend, [new_event(s, kind, {**base, **payload})], now)

    def _readable(self, tx: Tx, rows: Sequence[Row]) -> list[Schedule]:
        """The rows as schedules; one greenroom cannot read is paused with a note, so it
        neither stops nor delays the others."""
        found = []
        for row in rows:
            try:
                found.append(schedule_from_row(row))
            except (ValueError, TypeError, KeyError):
                tx.execute(
                    "UPDATE schedules SET paused = true, pause_note = :note WHERE id = :id",
                    {"note": "unreadable: fix or delete it", "id": row["id"]},
                )
        return found

    def _run_states(self, tx: Tx, run_ids: list[str]) -> dict[str, RunState]:
        if not run_ids:
            return {}
        rows = tx.execute(
            f"SELECT id, state FROM runs WHERE {self.backend.member('id', 'ids')}",
            {"ids": self.backend.list_param(run_ids)},
        )
        return {r["id"]: RunState(r["state"]) for r in rows}

    def _by_key(self, tx: Tx, tenant: str, keys: list[str]) -> dict[str, Run]:
        if not keys:
            return {}
        rows = tx.execute(
            "SELECT * FROM runs WHERE tenant = :tenant AND"
            f" {self.backend.member('idempotency_key', 'keys')}",
            {"tenant": tenant, "keys": self.backend.list_param(keys)},
        )
        return {r["idempotency_key"]: run_from_row(r) for r in rows}

    def _get(self, tx: Tx, schedule_id: str, tenant: str | None, *, lock: bool = False) -> Schedule:
        scope = "" if tenant is None else " AND tenant = :tenant"
        rows = tx.execute(
            f"SELECT * FROM schedules WHERE id = :id{scope}"
            f" {self.backend.for_update if lock else ''}",
            {"id": schedule_id, "tenant": tenant},
        )
        if not rows:
            raise NotFound(f"schedule {schedule_id} not found")
        return schedule_from_row(rows[0])

    def _name_free(self, tx: Tx, tenant: str, name: str) -> None:
        rows = tx.execute(
            "SELECT id FROM schedules WHERE tenant = :tenant AND name = :name",
            {"tenant": tenant, "name": name},
        )
        if rows:
            raise Conflict(f"tenant {tenant!r} has a schedule named {name!r}")


_SPEC_COLUMNS = (
    "cron",
    "every_seconds",
    "phase_seconds",
    "timezone",
    "start_at",
    "end_at",
    "jitter_seconds",
)


def _spec(values: dict[str, Any]) -> Spec:
    return Spec(
        cron=values.get("cron"),
        every=values.get("every_seconds"),
        phase=values.get("phase_seconds") or 0.0,
        timezone=values.get("timezone") or "UTC",
        start_at=values.get("start_at"),
        end_at=values.get("end_at"),
        jitter=values.get("jitter_seconds") or 0.0,
    )


def _columns_of(s: Schedule) -> dict[str, Any]:
    return {
        "cron": s.cron,
        "every_seconds": s.every_seconds,
        "phase_seconds": s.phase_seconds,
        "timezone": s.timezone,
        "start_at": s.start_at,
        "end_at": s.end_at,
        "jitter_seconds": s.jitter_seconds,
    }
