"""`greenroom schedules`: runs of a workflow at cron or interval slots; on a database, the
commands that make runs or check a spec against the workflows need --app (as `enqueue` does)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.markup import escape
from rich.table import Table

from greenroom.api.schedule_schemas import BackfillIn, ScheduleCreate, ScheduleOut, ScheduleUpdate
from greenroom.cli import ActorOpt, DbOpt, JsonOpt, cli, out, print_json
from greenroom.cli.connect import operations
from greenroom.cli.display import ago, number
from greenroom.cli.parse import parse_duration, parse_input, parse_iso, parse_labels, parse_time
from greenroom.errors import InvalidInput

schedules_cli = typer.Typer(
    no_args_is_help=True, help="Run workflows at cron or interval slots; pause, trigger, backfill."
)
cli.add_typer(schedules_cli, name="schedules")

IdArg = Annotated[str, typer.Argument(metavar="ID", help="Schedule id.")]
AppOpt = Annotated[
    str | None,
    typer.Option(
        "--app", help="Your App, as module:attribute: its workflows (not needed with --url)."
    ),
]
WorkflowOpt = Annotated[str | None, typer.Option(help="The workflow it runs.")]
CronOpt = Annotated[
    str | None,
    typer.Option(help="A cron expression ('0 8 * * 1-5', @daily); not with --every."),
]
EveryOpt = Annotated[
    str | None, typer.Option(help="An interval (15m, 1h, 90s or seconds); not with --cron.")
]
TimezoneOpt = Annotated[
    str | None, typer.Option(help="IANA time zone of the cron expression (default UTC).")
]
IntegrationOpt = Annotated[str | None, typer.Option(help="Runs for this integration.")]
InputOpt = Annotated[
    str | None,
    typer.Option("--input", help="The runs' input as a JSON object ({slot}, {schedule} filled)."),
]
LabelOpt = Annotated[
    list[str] | None, typer.Option("--label", "-l", help="key=value on its runs (repeatable).")
]
OverlapOpt = Annotated[
    str | None,
    typer.Option(
        help="While a run is unfinished: skip, buffer_one, buffer_all, cancel_other, allow_all."
    ),
]
CatchupOpt = Annotated[
    str | None, typer.Option(help="Fire slots missed by downtime within this long (1h).")
]
JitterOpt = Annotated[str | None, typer.Option(help="Delay each firing by up to this (30s).")]
StartOpt = Annotated[str | None, typer.Option(help="No slot before this ISO time.")]
EndOpt = Annotated[str | None, typer.Option(help="No slot after this ISO time.")]


def _slots(
    cron: str | None,
    every: str | None,
    timezone: str | None,
    catchup: str | None,
    jitter: str | None,
    start: str | None,
    end: str | None,
) -> dict[str, Any]:
    """The body fields for when it fires that the options give (None: not given)."""
    if cron is not None and every is not None:
        raise InvalidInput("give --cron or --every, not both")
    given = {
        "cron": cron,
        "every": None if every is None else _every(every),
        "timezone": timezone,
        "catchup_seconds": None if catchup is None else parse_duration(catchup, "--catchup"),
        "jitter": None if jitter is None else parse_duration(jitter, "--jitter"),
        "start_at": None if start is None else parse_iso(start, "--start"),
        "end_at": None if end is None else parse_iso(end, "--end"),
    }
    return {k: v for k, v in given.items() if v is not None}


def _runs(
    workflow: str | None,
    integration: str | None,
    input: str | None,
    labels: list[str] | None,
    overlap: str | None,
) -> dict[str, Any]:
    """The body fields for the runs it makes that the options give (None: not given)."""
    given = {
        "workflow": workflow,
        "integration": integration,
        "input": None if input is None else parse_input(input),
        "labels": None if labels is None else parse_labels(labels),
        "overlap": overlap,
    }
    return {k: v for k, v in given.items() if v is not None}


def _every(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text.strip()


def next_at(s: ScheduleOut) -> str:
    """Its next slot in its own time zone: "Mon 08:00 Europe/Berlin"."""
    if s.paused:
        return "paused"
    if not s.next_firings:
        return "ended"
    slot = s.next_firings[0].unix
    moment = datetime.fromtimestamp(slot, ZoneInfo(s.timezone))
    shown = (
        f"{moment:%a %H:%M}" if slot - time.time() < 6 * 86400 else f"{moment:%a %Y-%m-%d %H:%M}"
    )
    return f"{shown} {s.timezone}"


def _when(s: ScheduleOut) -> str:
    if s.cron is not None:
        return s.cron
    return f"every {number(s.every_seconds)}s"


def _describe(s: ScheduleOut) -> str:
    state = f"paused: {s.pause_note}" if s.paused else "active"
    return f"schedule {escape(s.id)} {escape(s.name)!r} ({escape(_when(s))}, {escape(state)})"


@schedules_cli.command("list")
def schedules_list(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
    integration: Annotated[str | None, typer.Option(help="Only this integration's.")] = None,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List schedules with their next slot in their own time zone."""
    with operations(ctx, db) as ops:
        found = ops.schedules(tenant=tenant, integration=integration)
    if json_out:
        print_json(found)
        return
    if not found:
        out.print("no schedules")
        return
    now = time.time()
    table = Table("ID", "TENANT", "NAME", "WORKFLOW", "WHEN", "OVERLAP", "NEXT", "LAST FIRED")
    for s in found:
        table.add_row(
            escape(s.id),
            escape(s.tenant),
            escape(s.name),
            escape(s.workflow),
            escape(_when(s)),
            s.overlap,
            escape(next_at(s)),
            ago(s.last_fired_at, now),
        )
    out.print(table)


@schedules_cli.command("create")
def schedules_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Its name (unique in its tenant).")],
    workflow: WorkflowOpt = None,
    cron: CronOpt = None,
    every: EveryOpt = None,
    timezone: TimezoneOpt = None,
    integration: IntegrationOpt = None,
    input: InputOpt = None,
    labels: LabelOpt = None,
    overlap: OverlapOpt = None,
    catchup: CatchupOpt = None,
    jitter: JitterOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    tenant: Annotated[
        str | None, typer.Option(help="Its tenant (default: default; with --url: the key's).")
    ] = None,
    app: AppOpt = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Run a workflow at cron (--cron) or interval (--every) slots."""
    if workflow is None:
        raise InvalidInput("--workflow is needed: which workflow does it run?")
    if cron is None and every is None:
        raise InvalidInput("give --cron EXPR or --every 15m")
    wanted = {
        **_slots(cron, every, timezone, catchup, jitter, start, end),
        **_runs(workflow, integration, input, labels, overlap),
    }
    body = ScheduleCreate.model_validate({"name": name, "tenant": tenant, **wanted})
    with operations(ctx, db, actor=actor, app=app) as ops:
        made = ops.create_schedule(body)
    out.print(f"created {_describe(made)}; next: {escape(next_at(made))}")


@schedules_cli.command("show")
def schedules_show(
    ctx: typer.Context, schedule_id: IdArg, json_out: JsonOpt = False, db: DbOpt = None
) -> None:
    """Show a schedule, its next slots in its time zone and its last firings with their runs."""
    with operations(ctx, db) as ops:
        found = ops.get_schedule(schedule_id)
        firings = ops.schedule_firings(schedule_id, limit=10)
    if json_out:
        print_json(found)
        return
    out.print(_describe(found))
    for field, value in found.model_dump(exclude={"next_firings"}).items():
        out.print(f"  {field}: {escape(str(value))}")
    out.print("next firings:" if found.next_firings else "next firings: none")
    zone = ZoneInfo(found.timezone)
    for f in found.next_firings:
        moment = datetime.fromtimestamp(f.unix, zone)
        out.print(f"  {moment:%a %Y-%m-%d %H:%M %Z} ({escape(found.timezone)})")
    out.print("last firings:" if firings else "last firings: none")
    now = time.time()
    for firing in firings:
        slot = "-"
        if firing.slot is not None:
            slot = f"{datetime.fromtimestamp(firing.slot, zone):%a %Y-%m-%d %H:%M}"
        run = firing.run_id or "-"
        out.print(f"  {ago(firing.at, now)}  {firing.outcome}  slot {slot}  run {escape(run)}")


@schedules_cli.command("update")
def schedules_update(
    ctx: typer.Context,
    schedule_id: IdArg,
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    workflow: WorkflowOpt = None,
    cron: CronOpt = None,
    every: EveryOpt = None,
    timezone: TimezoneOpt = None,
    integration: IntegrationOpt = None,
    input: InputOpt = None,
    labels: LabelOpt = None,
    overlap: OverlapOpt = None,
    catchup: CatchupOpt = None,
    jitter: JitterOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    app: AppOpt = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Change a schedule; a new spec fires from its next slot after now."""
    wanted = {
        **_slots(cron, every, timezone, catchup, jitter, start, end),
        **_runs(workflow, integration, input, labels, overlap),
    }
    if name is not None:
        wanted["name"] = name
    if not wanted:
        raise InvalidInput("nothing to change: give --cron, --every, --name … (see --help)")
    with operations(ctx, db, actor=actor, app=app) as ops:
        done = ops.update_schedule(schedule_id, ScheduleUpdate.model_validate(wanted))
    out.print(f"updated {_describe(done)}; next: {escape(next_at(done))}")


@schedules_cli.command("delete")
def schedules_delete(
    ctx: typer.Context, schedule_id: IdArg, actor: ActorOpt = None, db: DbOpt = None
) -> None:
    """Remove a schedule (the runs it made stay)."""
    with operations(ctx, db, actor=actor) as ops:
        ops.delete_schedule(schedule_id)
    out.print(f"schedule {escape(schedule_id)} deleted")


@schedules_cli.command("pause")
def schedules_pause(
    ctx: typer.Context,
    schedule_id: IdArg,
    note: Annotated[str, typer.Option(help="Why (shown with it, and audited).")],
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Stop firing (runs already made are not touched)."""
    with operations(ctx, db, actor=actor) as ops:
        done = ops.pause_schedule(schedule_id, note=note)
    out.print(f"paused {_describe(done)}")


@schedules_cli.command("resume")
def schedules_resume(
    ctx: typer.Context, schedule_id: IdArg, actor: ActorOpt = None, db: DbOpt = None
) -> None:
    """Fire again from the next slot after now (the paused slots are not caught up)."""
    with operations(ctx, db, actor=actor) as ops:
        done = ops.resume_schedule(schedule_id)
    out.print(f"resumed {_describe(done)}; next: {escape(next_at(done))}")


@schedules_cli.command("trigger")
def schedules_trigger(
    ctx: typer.Context,
    schedule_id: IdArg,
    app: AppOpt = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Start a run of the schedule now, whatever its slots and overlap policy."""
    with operations(ctx, db, actor=actor, app=app) as ops:
        run = ops.trigger_schedule(schedule_id)
    out.print(f"{run.id} created ({run.state.value})")


@schedules_cli.command("backfill")
def schedules_backfill(
    ctx: typer.Context,
    schedule_id: IdArg,
    start: Annotated[str, typer.Option(help="From: a duration ago (12h) or an ISO time.")],
    end: Annotated[str, typer.Option(help="To: a duration ago (0s: now) or an ISO time.")],
    run: Annotated[
        bool, typer.Option("--run", help="Make the missing runs (default: only list the slots).")
    ] = False,
    json_out: JsonOpt = False,
    app: AppOpt = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """The slots from --start to --end (up to now) and their runs; with --run, a run for each
    slot without one (once: a slot's run is never made twice)."""
    now = time.time()
    body = BackfillIn(
        start=parse_time(start, "--start", now), end=parse_time(end, "--end", now), dry_run=not run
    )
    with operations(ctx, db, actor=actor, app=app) as ops:
        done = ops.backfill_schedule(schedule_id, body)
    if json_out:
        print_json(done)
        return
    table = Table("SLOT", "RUN", "NEW")
    for slot in done.slots:
        shown = slot.run_id or ("(would be made)" if done.dry_run else "-")
        table.add_row(slot.at, escape(shown), "yes" if slot.new else "no")
    if done.slots:
        out.print(table)
    new = sum(s.new for s in done.slots)
    verb = "would make" if done.dry_run else "made"
    hint = " (dry run: add --run to make them)" if done.dry_run and new else ""
    out.print(f"{len(done.slots)} slots; {verb} {new} new runs{hint}")


@schedules_cli.command("firings")
def schedules_firings(
    ctx: typer.Context,
    schedule_id: IdArg,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Its latest firings, skips and misses, newest first, with their runs."""
    with operations(ctx, db) as ops:
        found = ops.schedule_firings(schedule_id, limit=limit)
    if json_out:
        print_json(found)
        return
    if not found:
        out.print("no firings")
        return
    now = time.time()
    table = Table("AT", "OUTCOME", "SLOT", "RUN", "DETAIL")
    for f in found:
        table.add_row(
            ago(f.at, now),
            f.outcome,
            "-" if f.slot is None else datetime.fromtimestamp(f.slot).astimezone().isoformat(),
            escape(f.run_id or "-"),
            escape("" if f.detail is None else str(f.detail)),
        )
    out.print(table)
