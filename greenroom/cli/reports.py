"""`greenroom reports`: subscribe a tenant's e-mail and webhooks to its reports, list, show and
download the reports made, make a period's report now (or again after a data fix), and resend
one (docs/reports.md)."""

from __future__ import annotations

from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.markup import escape
from rich.table import Table

from greenroom.api.report_schemas import (
    Destination,
    ReportOut,
    ReportRunIn,
    ReportSubscriptionCreate,
)
from greenroom.cli import ActorOpt, DbOpt, JsonOpt, cli, out, print_json
from greenroom.cli.display import when
from greenroom.cli.report_operations import report_operations
from greenroom.errors import InvalidInput

reports_cli = typer.Typer(
    no_args_is_help=True,
    help="Scheduled reports (automation health, license savings): subscribe, list, download.",
)
cli.add_typer(reports_cli, name="reports")

IdArg = Annotated[str, typer.Argument(metavar="ID", help="Report id.")]
TypeOpt = Annotated[str, typer.Option("--type", help="health or savings.")]
PeriodOpt = Annotated[str, typer.Option(help="day, week or month.")]
TimezoneOpt = Annotated[str, typer.Option(help="The tenant's IANA time zone (Europe/Berlin).")]
TenantOpt = Annotated[
    str | None, typer.Option(help="The tenant (on a database; with --url: the key's).")
]
AppOpt = Annotated[
    str | None,
    typer.Option("--app", help="Your App, as module:attribute (subscribe and run, on a database)."),
]


def period_text(r: ReportOut) -> str:
    zone = ZoneInfo(r.timezone)
    start = datetime.fromtimestamp(r.period_start, zone).date()
    return f"{r.period} of {start.isoformat()} ({r.timezone})"


@reports_cli.command("subscribe")
def reports_subscribe(
    ctx: typer.Context,
    report_type: TypeOpt,
    email: Annotated[
        list[str] | None, typer.Option(help="An address it is mailed to (repeatable).")
    ] = None,
    webhook: Annotated[
        list[str] | None, typer.Option(help="An https URL it is posted to (repeatable).")
    ] = None,
    period: PeriodOpt = "week",
    timezone: TimezoneOpt = "UTC",
    cron: Annotated[
        str | None, typer.Option(help="When, in the time zone (default: 07:00 after each period).")
    ] = None,
    tenant: TenantOpt = None,
    app: AppOpt = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Send a report every period to e-mail addresses and webhooks."""
    channels = [Destination(channel="email", url=a) for a in email or []]
    channels += [Destination(channel="webhook", url=u) for u in webhook or []]
    if not channels:
        raise InvalidInput("give --email ADDRESS or --webhook URL (or several)")
    body = ReportSubscriptionCreate.model_validate(
        {
            "report_type": report_type,
            "period": period,
            "timezone": timezone,
            "cron": cron,
            "channels": [c.model_dump() for c in channels],
            "tenant": tenant,
        },
        strict=False,
    )
    with report_operations(ctx, db, actor=actor, app=app) as ops:
        made = ops.subscribe_report(body)
    out.print(
        f"subscribed {escape(made.id)}: the {made.report_type} report every {made.period}"
        f" ({escape(made.timezone)}), schedule {escape(made.schedule_id)}"
    )
    for sid, secret in made.secrets.items():
        out.print(f"webhook {escape(sid)} signing secret (shown once): {escape(secret)}")


@reports_cli.command("subscriptions")
def reports_subscriptions(
    ctx: typer.Context, tenant: TenantOpt = None, json_out: JsonOpt = False, db: DbOpt = None
) -> None:
    """List report subscriptions."""
    with report_operations(ctx, db) as ops:
        found = ops.report_subscriptions(tenant=tenant)
    if json_out:
        print_json(found)
        return
    if not found:
        out.print("no report subscriptions")
        return
    table = Table("ID", "TENANT", "TYPE", "PERIOD", "TIME ZONE", "CHANNELS", "ENABLED")
    for s in found:
        table.add_row(
            escape(s.id),
            escape(s.tenant),
            s.report_type,
            s.period,
            escape(s.timezone),
            str(len(s.subscription_ids)),
            "yes" if s.enabled else "no",
        )
    out.print(table)


@reports_cli.command("unsubscribe")
def reports_unsubscribe(
    ctx: typer.Context,
    subscription_id: Annotated[str, typer.Argument(metavar="ID", help="Report subscription id.")],
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Remove a report subscription (its schedule and channels; its reports stay)."""
    with report_operations(ctx, db, actor=actor) as ops:
        ops.unsubscribe_report(subscription_id)
    out.print(f"unsubscribed {escape(subscription_id)}")


@reports_cli.command("list")
def reports_list(
    ctx: typer.Context,
    report_type: Annotated[str | None, typer.Option("--type", help="health or savings.")] = None,
    tenant: TenantOpt = None,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 50,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Reports made, newest period first."""
    with report_operations(ctx, db) as ops:
        found = list(islice(ops.iter_reports(report_type=report_type, tenant=tenant), limit))
    if json_out:
        print_json(found)
        return
    if not found:
        out.print("no reports")
        return
    table = Table("ID", "TENANT", "TYPE", "PERIOD", "MADE", "SENT", "FILES")
    for r in found:
        table.add_row(
            escape(r.id),
            escape(r.tenant),
            r.report_type,
            escape(period_text(r)),
            when(r.updated_at),
            str(r.published),
            escape(", ".join(f.name for f in r.files)),
        )
    out.print(table)


@reports_cli.command("show")
def reports_show(
    ctx: typer.Context, report_id: IdArg, json_out: JsonOpt = False, db: DbOpt = None
) -> None:
    """A report: its period, headline numbers and files."""
    with report_operations(ctx, db) as ops:
        found = ops.get_report(report_id)
    if json_out:
        print_json(found)
        return
    out.print(f"report {escape(found.id)}: {found.report_type}, {escape(period_text(found))}")
    out.print(f"  tenant: {escape(found.tenant)}  run: {escape(found.run_id or '-')}")
    out.print(f"  made: {when(found.created_at)}  last made: {when(found.updated_at)}")
    out.print(f"  report.ready sent: {found.published}")
    for key, value in found.summary.items():
        out.print(f"  {escape(key)}: {escape(str(value))}")
    for f in found.files:
        out.print(f"  file {escape(f.name)} ({f.content_type}, {f.size} bytes)")


@reports_cli.command("download")
def reports_download(
    ctx: typer.Context,
    report_id: IdArg,
    to: Annotated[Path, typer.Option(help="The directory to write the files to.")] = Path("."),
    name: Annotated[str | None, typer.Option(help="Only this file.")] = None,
    db: DbOpt = None,
) -> None:
    """Write a report's files (HTML, CSV) to a directory."""
    with report_operations(ctx, db) as ops:
        found = ops.get_report(report_id)
        names = [f.name for f in found.files if name in (None, f.name)]
        if not names:
            raise InvalidInput(f"report {report_id} has no file {name!r}")
        to.mkdir(parents=True, exist_ok=True)
        for file_name in names:
            (to / file_name).write_bytes(ops.report_file(found.id, file_name))
            out.print(f"wrote {escape(str(to / file_name))}")


@reports_cli.command("run")
def reports_run(
    ctx: typer.Context,
    report_type: TypeOpt,
    period: PeriodOpt = "week",
    timezone: TimezoneOpt = "UTC",
    at: Annotated[
        str | None, typer.Option(help="An ISO time in or after the period (default: now).")
    ] = None,
    again: Annotated[
        bool, typer.Option(help="Make the period again after a data fix (nobody is told again).")
    ] = False,
    force_resend: Annotated[
        bool, typer.Option(help="Tell its subscribers again all the same (audited; --reason).")
    ] = False,
    reason: Annotated[str | None, typer.Option(help="Why it is resent (audited).")] = None,
    tenant: TenantOpt = None,
    app: AppOpt = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Make a period's report now: a run on the reports queue (a worker serving it makes it).
    The same period asked again is the same run."""
    if force_resend and not reason:
        raise InvalidInput("--force-resend needs --reason (it goes to the audit log)")
    body = ReportRunIn.model_validate(
        {
            "report_type": report_type,
            "period": period,
            "timezone": timezone,
            "at": at,
            "again": again,
            "force_resend": force_resend,
            "reason": reason,
            "tenant": tenant,
        },
        strict=False,
    )
    with report_operations(ctx, db, actor=actor, app=app) as ops:
        made = ops.run_report(body)
    told = "and tells its subscribers again" if force_resend else ""
    out.print(f"run {escape(made.run_id)} makes the {report_type} report {told}".rstrip())


@reports_cli.command("resend")
def reports_resend(
    ctx: typer.Context,
    report_id: IdArg,
    reason: Annotated[str, typer.Option(help="Why (it goes to the audit log).")],
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Tell a report's subscribers again (a new report.ready event): audited."""
    with report_operations(ctx, db, actor=actor) as ops:
        resent = ops.resend_report(report_id, reason=reason)
    out.print(f"resent report {escape(resent.id)} (report.ready sent {resent.published} times)")
