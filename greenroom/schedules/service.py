"""Schedules as admins and apps make them: checked against the app (its workflows, the tenant's
integrations) and the rules, and the runs they start made the way every run is (App.prepare)."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from greenroom.app import RunRequest
from greenroom.errors import Conflict, InvalidInput
from greenroom.model import NewRun, Overlap, Schedule
from greenroom.rules import MAX_NAME, check_keys, check_labels, check_text
from greenroom.schedules.spec import Spec, invalid, parse_every
from greenroom.storage.codec import dumps, loads
from greenroom.storage.schedule_plans import Prepare

if TYPE_CHECKING:
    from greenroom.app import App

#: The tenant of the schedules workflows declare.
DEFAULT_TENANT = "default"
#: The label on a schedule's runs that names it.
SCHEDULE_LABEL = "schedule"
#: The longest catch-up window: a week of missed slots.
MAX_CATCHUP = 7 * 86400.0
#: Policies whose runs go one after another: without a session of their own, the schedule's.
_SERIAL = frozenset({Overlap.BUFFER_ONE, Overlap.BUFFER_ALL, Overlap.CANCEL_OTHER})


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScheduleRequest:
    """What an admin (or a workflow's declaration) asks for; on update, None leaves a field."""

    name: str | None = None
    workflow: str | None = None
    integration: str | None = None
    cron: str | None = None
    #: An interval: seconds, or text like "15m".
    every: float | str | None = None
    phase: float | None = None
    timezone: str | None = None
    start_at: float | None = None
    end_at: float | None = None
    jitter: float | None = None
    input: dict[str, Any] | None = None
    labels: dict[str, str] | None = None
    overlap: str | None = None
    catchup_seconds: float | None = None


def columns(
    app: App, tenant: str, req: ScheduleRequest, current: Schedule | None = None
) -> dict[str, Any]:
    """The request as checked column values (on update: the changed ones, the spec checked
    whole)."""
    values: dict[str, Any] = {}
    if req.name is not None:
        values["name"] = check_text(req.name, "name", max_length=MAX_NAME, min_length=1)
    if req.workflow is not None:
        if req.workflow not in app.workflows:
            raise invalid("workflow", f"{req.workflow!r} is not a workflow of this app")
        values["workflow"] = req.workflow
    if req.integration is not None:
        app.store.accounts.integration(req.integration, tenant=tenant)  # NotFound: 404
        values["integration"] = req.integration
    if req.input is not None:
        values["input"] = dumps(check_keys(req.input, "input"), "input")
    if req.labels is not None:
        values["labels"] = dumps(check_labels(req.labels), "labels")
    if req.overlap is not None:
        try:
            values["overlap"] = Overlap(req.overlap).value
        except ValueError:
            choices = ", ".join(o.value for o in Overlap)
            raise invalid("overlap", f"must be one of {choices}") from None
    if req.catchup_seconds is not None:
        if not 0 <= req.catchup_seconds <= MAX_CATCHUP:
            raise invalid("catchup_seconds", f"must be from 0 to {MAX_CATCHUP:.0f} (a week)")
        values["catchup_seconds"] = req.catchup_seconds
    values.update(_spec_columns(app, req, current))
    return values


def _spec_columns(app: App, req: ScheduleRequest, current: Schedule | None) -> dict[str, Any]:
    given = {
        "cron": req.cron,
        "every": req.every,
        "phase": req.phase,
        "timezone": req.timezone,
        "start_at": req.start_at,
        "end_at": req.end_at,
        "jitter": req.jitter,
    }
    if current is not None and all(v is None for v in given.values()):
        return {}
    base: dict[str, Any] = {}
    if current is not None:
        base = {
            "cron": current.cron,
            "every": current.every_seconds,
            "phase": current.phase_seconds,
            "timezone": current.timezone,
            "start_at": current.start_at,
            "end_at": current.end_at,
            "jitter": current.jitter_seconds,
        }
        if req.cron is not None:
            base["every"] = None
        if req.every is not None:
            base["cron"] = None
    merged = {**base, **{k: v for k, v in given.items() if v is not None}}
    every = merged.get("every")
    spec = Spec.checked(
        cron=merged.get("cron"),
        every=parse_every(every) if isinstance(every, str) else every,
        phase=merged.get("phase") or 0.0,
        timezone=merged.get("timezone") or "UTC",
        start_at=merged.get("start_at"),
        end_at=merged.get("end_at"),
        jitter=merged.get("jitter") or 0.0,
        min_every=app.settings.schedule_min_interval_seconds,
    )
    return {
        "cron": spec.cron,
        "every_seconds": spec.every,
        "phase_seconds": spec.phase,
        "timezone": spec.timezone,
        "start_at": spec.start_at,
        "end_at": spec.end_at,
        "jitter_seconds": spec.jitter,
    }


def create(app: App, tenant: str, req: ScheduleRequest, *, actor: str) -> Schedule:
    if req.name is None or req.workflow is None:
        raise InvalidInput("a schedule needs a name and a workflow")
    values = {
        "input": "{}",
        "labels": "{}",
        "overlap": Overlap.SKIP.value,
        "catchup_seconds": 3600.0,
        "integration": None,
        **columns(app, tenant, req),
    }
    schedule_id = str(uuid.uuid4())
    _check_runs(app, tenant, values, schedule_id)
    return app.store.schedules.create(
        schedule_id=schedule_id, tenant=tenant, values=values, actor=actor
    )


def update(
    app: App, schedule_id: str, req: ScheduleRequest, *, actor: str, tenant: str | None
) -> Schedule:
    current = app.store.schedules.get(schedule_id, tenant=tenant)
    values = columns(app, current.tenant, req, current)
    merged = {
        "workflow": current.workflow,
        "integration": current.integration,
        "input": dumps(current.input),
        "labels": dumps(current.labels),
        "overlap": current.overlap.value,
        **values,
    }
    _check_runs(app, current.tenant, merged, schedule_id)
    return app.store.schedules.update(schedule_id, values, actor=actor, tenant=tenant)


def _check_runs(app: App, tenant: str, values: dict[str, Any], schedule_id: str) -> None:
    """Make (and drop) a run as the schedule will, so bad input is refused now, not at the
    first slot."""
    _make_run(
        app,
        tenant=tenant,
        schedule_id=schedule_id,
        name=values.get("name", ""),
        workflow=values["workflow"],
        integration=values.get("integration"),
        template=loads(values["input"]),
        labels=loads(values["labels"]),
        overlap=Overlap(values["overlap"]),
        slot=app.store.clock.now(),
        key="check",
    )


def preparer(app: App) -> Prepare:
    """How the app makes a schedule's runs (storage.schedules.Prepare)."""

    def prepare(schedule: Schedule, slot: float | None, key: str) -> NewRun:
        return _make_run(
            app,
            tenant=schedule.tenant,
            schedule_id=schedule.id,
            name=schedule.name,
            workflow=schedule.workflow,
            integration=schedule.integration,
            template=schedule.input,
            labels=schedule.labels,
            overlap=schedule.overlap,
            slot=app.store.clock.now() if slot is None else slot,
            key=key,
        )

    return prepare


def _make_run(
    app: App,
    *,
    tenant: str,
    schedule_id: str,
    name: str,
    workflow: str,
    integration: str | None,
    template: dict[str, Any],
    labels: dict[str, str],
    overlap: Overlap,
    slot: float,
    key: str,
) -> NewRun:
    """A schedule's run for a slot: its input with `{slot}` (the slot's time, ISO 8601 UTC)
    and `{schedule}` (its name) filled into string values, its labels and the `schedule`
    label, its integration. Runs of a policy that keeps them in order share the schedule's
    session when the workflow has none."""
    moment = datetime.fromtimestamp(slot, UTC).isoformat()
    run_input = {
        k: v.replace("{slot}", moment).replace("{schedule}", name) if isinstance(v, str) else v
        for k, v in template.items()
    }
    new = app.prepare(
        RunRequest(
            workflow=workflow,
            input=run_input,
            tenant=tenant,
            integration=integration,
            labels={**labels, SCHEDULE_LABEL: schedule_id},
            idempotency_key=key,
        )
    )
    if overlap in _SERIAL and new.session_key is None:
        new = dataclasses.replace(new, session_key=f"schedule:{schedule_id}")
    return new


def declared(app: App) -> dict[str, ScheduleRequest]:
    """The schedules the app's workflows declare, by name (the workflow's)."""
    found = {}
    for wf in app.workflows.values():
        if wf.schedule is None:
            continue
        text = wf.schedule.strip()
        every = text.removeprefix("every").strip() if text.startswith("every") else None
        found[wf.name] = ScheduleRequest(
            name=wf.name,
            workflow=wf.name,
            cron=None if every is not None else text,
            every=every,
            timezone=wf.schedule_timezone,
        )
    return found


def sync_declared(app: App) -> None:
    """Make the schedules the app declares, for the default tenant; change the ones whose
    spec changed; pause those no longer declared (a deploy may be rolling back)."""
    store = app.store
    wanted = declared(app)
    existing = {
        s.name: s
        for s in store.schedules.list_schedules(tenant=DEFAULT_TENANT)
        if s.origin == "app"
    }
    for name, req in wanted.items():
        current = existing.get(name)
        if current is None:
            values = {
                "input": "{}",
                "labels": "{}",
                "overlap": Overlap.SKIP.value,
                "catchup_seconds": 3600.0,
                "integration": None,
                **columns(app, DEFAULT_TENANT, req),
            }
            # Conflict: another worker made it first, or an admin's has the name.
            with contextlib.suppress(Conflict):
                store.schedules.create(
                    schedule_id=str(uuid.uuid4()),
                    tenant=DEFAULT_TENANT,
                    values=values,
                    actor="app",
                    origin="app",
                )
            continue
        spec = columns(app, DEFAULT_TENANT, dataclasses.replace(req, name=None), current)
        changed = {k: v for k, v in spec.items() if getattr(current, k, v) != v}
        if changed:
            store.schedules.update(current.id, changed, actor="app")
        if current.paused and current.paused_by == "app":
            store.schedules.resume(current.id, actor="app")
    for name, current in existing.items():
        if name not in wanted and not current.paused:
            store.schedules.pause(current.id, note="no longer declared by the app", actor="app")
