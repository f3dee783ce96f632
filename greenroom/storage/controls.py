"""Queue controls: queue records and their limits, tenant weights and limits, pauses."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

from greenroom.errors import InvalidInput, NotFound
from greenroom.model import (
    ALL_TENANTS,
    FINISHED_STATES,
    EndedRuns,
    Pause,
    PauseScope,
    QueueInfo,
    RunState,
    TenantInfo,
)
from greenroom.rules import (
    LABEL_KEY_PATTERN,
    MAX_INT,
    MAX_LABEL_KEY,
    MAX_NAME,
    MAX_PAUSE_VALUE,
    MAX_SECONDS,
    MAX_WEIGHT,
    check_name,
    check_text,
)
from greenroom.storage.backend import Backend, Row, Tx
from greenroom.storage.base import (
    StoreBase,
    require_reason,
    retry_conflicts,
)
from greenroom.storage.codec import pause_from_row, tenant_from_row
from greenroom.storage.lifecycle import moves, summaries
from greenroom.storage.lifecycle.moves import Change
from greenroom.storage.lifecycle.states import LIVE_WHERE, Move
from greenroom.storage.outbox import NewEvent, emit

#: Settable queue fields: the type and the range of values each accepts.
QUEUE_LIMITS: dict[str, tuple[type, float, float]] = {
    "concurrency": (int, 1, MAX_INT),
    "rate_limit": (int, 1, MAX_INT),
    "rate_period": (float, 0.001, MAX_SECONDS),
    "max_attempts": (int, 1, MAX_INT),
    "retry_initial_delay": (float, 0, MAX_SECONDS),
    "retry_backoff": (float, 1, 1000),
    "retry_max_delay": (float, 0, MAX_SECONDS),
    "lease_seconds": (float, 0.001, 86400),
    "heartbeat_seconds": (float, 0.001, 43200),
    "max_stalls": (int, 1, MAX_INT),
}


def validate_queue_changes(current: Row, changes: dict[str, Any]) -> dict[str, Any]:
    """Checked, normalized queue changes; None clears a field. Errors name the field. The
    rules that tie fields together hold for the settings the queue has after the change."""
    clean: dict[str, Any] = {}
    for name, value in changes.items():
        if name not in QUEUE_LIMITS:
            raise InvalidInput(f"unknown queue setting {name!r}")
        kind, minimum, maximum = QUEUE_LIMITS[name]
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(f"{name} must be a number")
            if kind is int and value != int(value):
                raise InvalidInput(f"{name} must be a whole number")
            if not math.isfinite(value) or value < minimum:
                raise InvalidInput(f"{name} must be at least {minimum:.12g}")
            if value > maximum:
                raise InvalidInput(f"{name} must be at most {maximum:.12g}")
            value = kind(value)
        clean[name] = value
    merged = {**{k: current.get(k) for k in QUEUE_LIMITS}, **clean}
    if (merged["rate_limit"] is None) != (merged["rate_period"] is None):
        raise InvalidInput("rate_limit and rate_period go together: set both or neither")
    lease, beat = merged["lease_seconds"], merged["heartbeat_seconds"]
    if beat is not None and lease is None:
        raise InvalidInput(
            "heartbeat_seconds needs the queue's lease_seconds: set both (or clear both)"
        )
    if lease is not None and beat is not None and beat >= lease / 2:
        raise InvalidInput(
            f"heartbeat_seconds ({beat:g}) must be less than half of lease_seconds ({lease:g})"
        )
    return clean


#: How far back the overview counts ended runs (succeeded, failed, cancelled): a day.
ENDED_WITHIN = 86400.0
_ENDS = frozenset(s.value for s in FINISHED_STATES)


def _queue_info(
    row: Row, counts: dict[str, int], finished: int, paused: bool, since: float = 0.0
) -> QueueInfo:
    return QueueInfo(
        name=row["name"],
        **{k: row[k] for k in QUEUE_LIMITS},
        counts=counts,
        ended_since=since,
        finished_last_minute=finished,
        paused=paused,
    )


class Controls(StoreBase):
    # -- queues ----------------------------------------------------------------------------

    def queues(self, *, tenant: str | None = None) -> list[QueueInfo]:
        """Every queue with its runs by state (of one tenant, if given) and its throughput.

        Runs not ended are counted all (through runs_live, an index of them alone); ended ones
        only if they ended in the last day (through the end-time index), so the cost follows
        what is live and what ended lately, never the size of the table."""
        now = self.clock.now()
        since = now - ENDED_WITHIN
        scope = "" if tenant is None else " AND tenant = :tenant"
        params = {"tenant": tenant, "since": since, "minute": now - 60}
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute("SELECT * FROM queues ORDER BY name")
            live = tx.execute(
                f"SELECT queue, state, COUNT(*) AS n FROM runs WHERE {LIVE_WHERE}{scope}"
                " GROUP BY queue, state",
                params,
            )
            ended = tx.execute(
                # Retried failures are left out: their retries stand for them.
                "SELECT queue, state, COUNT(*) AS n FROM runs WHERE finished_at > :since"
                f" AND superseded_by IS NULL{scope} GROUP BY queue, state",
                params,
            )
            done = tx.execute(
                f"SELECT queue, COUNT(*) AS n FROM runs WHERE finished_at > :minute{scope}"
                " GROUP BY queue",
                params,
            )
            pauses = summaries.load_pauses(tx)
        by_queue: dict[str, dict[str, int]] = {}
        for c in [*live, *ended]:
            by_queue.setdefault(c["queue"], {})[c["state"]] = int(c["n"])
        finished = {d["queue"]: int(d["n"]) for d in done}
        return [
            _queue_info(
                r,
                by_queue.get(r["name"], {}),
                finished.get(r["name"], 0),
                any(
                    p.scope is PauseScope.QUEUE
                    and p.value == r["name"]
                    and p.tenant in (ALL_TENANTS, tenant)
                    for p in pauses
                ),
                since,
            )
            for r in rows
        ]

    def ended(
        self, *, since: float, width: float, count: int, tenant: str | None = None
    ) -> list[EndedRuns]:
        """Runs ended by outcome in `count` stretches of `width` seconds from `since` (of one
        tenant, if given), read from the index on end time alone."""
        scope = "" if tenant is None else " AND tenant = :tenant"
        bucket = self.backend.floor("(finished_at - :since) / :width")
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT {bucket} AS bucket, state, COUNT(*) AS n FROM runs"
                f" WHERE finished_at > :since AND finished_at <= :until{scope}"
                " GROUP BY bucket, state",
                {"since": since, "until": since + width * count, "width": width, "tenant": tenant},
            )
        found: list[dict[str, int]] = [{} for _ in range(count)]
        for r in rows:
            if 0 <= int(r["bucket"]) < count and r["state"] in _ENDS:
                found[int(r["bucket"])][r["state"]] = int(r["n"])
        return [EndedRuns(start=since + i * width, **f) for i, f in enumerate(found)]

    def queue_settings(self) -> dict[str, QueueInfo]:
        """Every queue's settings without counting its runs (cheap: workers poll this)."""
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute("SELECT * FROM queues")
        return {r["name"]: _queue_info(r, {}, 0, False) for r in rows}

    def queue(self, name: str, *, tenant: str | None = None) -> QueueInfo:
        for info in self.queues(tenant=tenant):
            if info.name == name:
                return info
        raise NotFound(f"queue {name!r} not found")

    @retry_conflicts
    def set_queue(self, name: str, *, actor: str, reason: str, **changes: Any) -> QueueInfo:
        """Change a queue's limits, retry defaults or lock tuning at run time (audited)."""
        require_reason(reason)
        check_text(name, "queue name", max_length=MAX_NAME, min_length=1)
        now = self.clock.now()
        with self.backend.transaction() as tx:
            if "concurrency" in changes:
                _lock_running(tx, self.backend, "queue", name)
            summaries.ensure_records(tx, tenants=[], queues=[name], now=now)
            current = tx.execute(
                f"SELECT * FROM queues WHERE name = :name {self.backend.for_update}",
                {"name": name},
            )[0]
            clean = validate_queue_changes(current, changes)
            if clean:
                sets = ", ".join(f"{k} = :{k}" for k in clean)
                tx.execute(
                    f"UPDATE queues SET {sets}, updated_at = :now WHERE name = :name",
                    {**clean, "now": now, "name": name},
                )
            if "concurrency" in clean:
                _take_slots(tx, "queue", name, limited=clean["concurrency"] is not None)
            self._audit(
                tx,
                tenant=None,
                actor=actor,
                action="queue.set",
                target=f"queue {name}",
                reason=reason,
                detail=clean,
            )
        return self.queue(name)

    # -- tenants ---------------------------------------------------------------------------

    def tenants(self) -> list[TenantInfo]:
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute("SELECT * FROM tenants ORDER BY name")
        return [tenant_from_row(r) for r in rows]

    @retry_conflicts
    def set_tenant(
        self,
        name: str,
        *,
        actor: str,
        reason: str,
        weight: float | None = None,
        concurrency: int | None = None,
        clear_concurrency: bool = False,
    ) -> TenantInfo:
        """A tenant's fairness weight and its concurrency limit across all workers (audited)."""
        require_reason(reason)
        if weight is not None and not 0 < weight <= MAX_WEIGHT:  # NaN too
            raise InvalidInput(f"weight must be a positive number, at most {MAX_WEIGHT}")
        if concurrency is not None and not 1 <= concurrency <= MAX_INT:
            raise InvalidInput(f"concurrency must be from 1 to {MAX_INT}")
        now = self.clock.now()
        with self.backend.transaction() as tx:
            if concurrency is not None or clear_concurrency:
                _lock_running(tx, self.backend, "tenant", name)
            summaries.ensure_records(tx, tenants=[name], queues=[], now=now)
            changes: dict[str, Any] = {}
            if weight is not None:
                changes["weight"] = weight
            if concurrency is not None or clear_concurrency:
                changes["concurrency"] = concurrency
            if changes:
                sets = ", ".join(f"{k} = :{k}" for k in changes)
                tx.execute(
                    f"UPDATE tenants SET {sets} WHERE name = :name", {**changes, "name": name}
                )
            if "concurrency" in changes:
                _take_slots(tx, "tenant", name, limited=concurrency is not None)
            self._audit(
                tx,
                tenant=name,
                actor=actor,
                action="tenant.set",
                target=f"tenant {name}",
                reason=reason,
                detail=changes,
            )
            row = tx.execute("SELECT * FROM tenants WHERE name = :name", {"name": name})[0]
        return tenant_from_row(row)

    # -- pauses ----------------------------------------------------------------------------

    def pauses(self, *, tenant: str | None = None) -> list[Pause]:
        """Pauses in force; for a tenant, its own and the platform's."""
        with self.backend.transaction(write=False) as tx:
            found = summaries.load_pauses(tx)
            return [
                self._counted(tx, p)
                for p in found
                if tenant is None or p.tenant in (ALL_TENANTS, tenant)
            ]

    @retry_conflicts
    def pause(
        self,
        scope: PauseScope | str,
        value: str,
        *,
        actor: str,
        reason: str,
        label: str = "",
        tenant: str = ALL_TENANTS,
        drain: bool = True,
    ) -> Pause:
        """Hold every matching run that has not started; with drain=False, running ones stop
        at their next step. Pausing what is already paused returns the existing pause."""
        require_reason(reason)
        wanted = _new_pause(scope, value, label, tenant, drain, actor, reason)
        _check_pause(wanted)
        now = self.clock.now()
        backend = self.backend
        with backend.transaction() as tx:
            rows = _insert_pause(tx, wanted, now)
            if not rows:
                return self._counted(tx, self._find_pause(tx, wanted))
            pause = pause_from_row(rows[0])
            where, params = summaries.pause_predicate(backend, pause)
            waiting = tx.execute(f"SELECT * FROM runs WHERE state = 'queued' AND {where}", params)
            summaries.lock_lanes(tx, backend, waiting)
            why = f"paused ({pause.describe()}) by {actor}: {reason}"
            held = moves.move(
                tx,
                backend,
                Move.HOLD,
                [Change(row=r, to=RunState.PAUSED, reason=why) for r in waiting],
                now,
            )
            stopping = 0
            if not pause.drain:
                stopping = tx.execute_count(
                    f"UPDATE runs SET pause_requested = true WHERE state = 'running' AND {where}",
                    params,
                )
            self._audit(
                tx,
                tenant=None if pause.tenant == ALL_TENANTS else pause.tenant,
                actor=actor,
                action="pause",
                target=pause.describe(),
                reason=reason,
                detail={"held": len(held), "stopping": stopping, "drain": pause.drain},
            )
            _emit_pause(tx, backend, "pause.created", pause, actor, reason, now)
            return self._counted(tx, pause)

    def _counted(self, tx: Tx, pause: Pause) -> Pause:
        """The pause with how many runs it holds (some may be held by another pause too)."""
        where, params = summaries.pause_predicate(self.backend, pause)
        sql = f"SELECT COUNT(*) AS n FROM runs WHERE state = 'paused' AND {where}"
        rows = tx.execute(sql, params)
        return replace(pause, held=int(rows[0]["n"]))

    @retry_conflicts
    def resume(
        self,
        scope: PauseScope | str,
        value: str,
        *,
        actor: str,
        reason: str,
        label: str = "",
        tenant: str = ALL_TENANTS,
    ) -> int:
        """Lift a pause; the runs it held (and no other pause holds) go back in their order."""
        require_reason(reason)
        target = _new_pause(scope, value, label, tenant, True, actor, reason)
        now = self.clock.now()
        backend = self.backend
        with backend.transaction() as tx:
            pause = self._find_pause(tx, target)
            tx.execute("DELETE FROM pauses WHERE id = :id", {"id": pause.id})
            others = summaries.load_pauses(tx)
            where, params = summaries.pause_predicate(backend, pause)
            held = tx.execute(f"SELECT * FROM runs WHERE state = 'paused' AND {where}", params)
            freed = [r for r in held if summaries.waiting_state(r, others) is RunState.QUEUED]
            summaries.lock_lanes(tx, backend, freed)
            why = f"resumed ({pause.describe()}) by {actor}: {reason}"
            rows = moves.move(
                tx,
                backend,
                Move.RELEASE,
                [Change(row=r, to=RunState.QUEUED, reason=why) for r in freed],
                now,
            )
            still_stopping = [p for p in others if not p.drain]
            for r in tx.execute(
                f"SELECT * FROM runs WHERE state = 'running' AND pause_requested AND {where}",
                params,
            ):
                if not any(p.matches(summaries.run_fields(r)) for p in still_stopping):
                    tx.execute(
                        "UPDATE runs SET pause_requested = false WHERE seq = :seq",
                        {"seq": r["seq"]},
                    )
            self._audit(
                tx,
                tenant=None if pause.tenant == ALL_TENANTS else pause.tenant,
                actor=actor,
                action="resume",
                target=pause.describe(),
                reason=reason,
                detail={"resumed": len(rows)},
            )
            _emit_pause(tx, backend, "pause.lifted", pause, actor, reason, now)
        return len(rows)

    def _find_pause(self, tx: Tx, wanted: Pause) -> Pause:
        rows = tx.execute(
            "SELECT * FROM pauses WHERE tenant = :tenant AND scope = :scope AND label = :label"
            " AND value = :value",
            {
                "tenant": wanted.tenant,
                "scope": wanted.scope.value,
                "label": wanted.label,
                "value": wanted.value,
            },
        )
        if not rows:
            raise NotFound(f"no pause on {wanted.describe()}")
        return pause_from_row(rows[0])


def _emit_pause(
    tx: Tx, backend: Backend, kind: str, pause: Pause, actor: str, reason: str, now: float
) -> None:
    """A pause's outbox event: one of every tenant is the platform's (no tenant)."""
    payload: dict[str, Any] = {"scope": pause.scope.value, "value": pause.value}
    payload |= {"label": pause.label}
    payload |= {"drain": pause.drain, "actor": actor, "reason": reason}
    tenant = None if pause.tenant == ALL_TENANTS else pause.tenant
    emit(tx, backend, [NewEvent(tenant, kind, f"pause:{pause.id}", payload)], now)


def _insert_pause(tx: Tx, pause: Pause, now: float) -> list[Row]:
    """The pause's new row; none when the same pause exists already."""
    return tx.execute(
        "INSERT INTO pauses (tenant, scope, label, value, drain, paused_by, reason, created_at)"
        " VALUES (:tenant, :scope, :label, :value, :drain, :actor, :reason, :now)"
        " ON CONFLICT (tenant, scope, label, value) DO NOTHING RETURNING *",
        {
            "tenant": pause.tenant,
            "scope": pause.scope.value,
            "label": pause.label,
            "value": pause.value,
            "drain": pause.drain,
            "actor": pause.paused_by,
            "reason": pause.reason,
            "now": now,
        },
    )


def _new_pause(
    scope: PauseScope | str,
    value: str,
    label: str,
    tenant: str,
    drain: bool,
    actor: str,
    reason: str,
) -> Pause:
    try:
        kind = PauseScope(scope)
    except ValueError:
        choices = ", ".join(s.value for s in PauseScope)
        raise InvalidInput(f"unknown pause scope {scope!r} (one of: {choices})") from None
    if not value or len(value) > MAX_PAUSE_VALUE:
        raise InvalidInput(f"what to pause must be 1 to {MAX_PAUSE_VALUE} characters")
    if kind is PauseScope.LABEL and not label:
        raise InvalidInput("a label pause needs the label's key")
    return Pause(
        scope=kind,
        value=value,
        label=label if kind is PauseScope.LABEL else "",
        tenant=tenant,
        drain=drain,
        paused_by=actor,
        reason=reason,
    )


def _check_pause(pause: Pause) -> None:
    """What a new pause holds is text that follows the rules (lifting one does not check: a
    pause made before they held can still be lifted)."""
    check_text(pause.value, "what to pause", max_length=MAX_PAUSE_VALUE, min_length=1)
    if pause.scope is PauseScope.LABEL and (
        len(pause.label) > MAX_LABEL_KEY or not re.match(LABEL_KEY_PATTERN, pause.label)
    ):
        raise InvalidInput(
            f"the label key of a pause must be 1 to {MAX_LABEL_KEY} letters, digits or _.:/-"
        )
    if pause.tenant != ALL_TENANTS:
        check_name(pause.tenant)


def _lock_running(tx: Tx, backend: Backend, kind: str, name: str) -> None:
    """Lock a queue's or tenant's running runs before its row, in id order, as a worker's
    writes do (runs, then the queue and tenant rows they give slots back to)."""
    tx.execute(
        f"SELECT id FROM runs WHERE {kind} = :name AND state = 'running' ORDER BY id"
        f" {backend.for_update}",
        {"name": name},
    )


def _take_slots(tx: Tx, kind: str, name: str, *, limited: bool) -> None:
    """A queue's or tenant's concurrency limit was set or cleared: its running runs hold a slot
    of it (or none) from now on, and its running count starts from them."""
    tx.execute(
        f"UPDATE runs SET holds_{kind}_slot = :limited WHERE {kind} = :name AND state = 'running'",
        {"limited": limited, "name": name},
    )
    tx.execute(
        f"UPDATE {kind}s SET active = (SELECT COUNT(*) FROM runs WHERE {kind} = :name"
        f" AND state = 'running' AND holds_{kind}_slot) WHERE name = :name",
        {"name": name},
    )
