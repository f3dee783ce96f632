"""`greenroom licenses`: the licenses the pass judged, the findings to act on (keep, snooze,
reclaim), savings, the license policy, pushing a sync's accounts, and running the pass now on a
database (docs/licenses.md)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from greenroom.api.license_schemas import FindingOut, account_data
from greenroom.cli import ActorOpt, DbOpt, JsonOpt, cli, out, print_json
from greenroom.cli.display import short, when
from greenroom.cli.license_operations import license_operations, local_license_operations
from greenroom.cli.parse import parse_iso
from greenroom.errors import InvalidInput
from greenroom.licenses.policy import PolicyIn

licenses_cli = typer.Typer(
    no_args_is_help=True,
    help="Unused licenses: findings to keep, snooze or reclaim; savings; policy; push; pass.",
)
policy_cli = typer.Typer(help="Show the license policy in force, or change it (set).")
licenses_cli.add_typer(policy_cli, name="policy")
cli.add_typer(licenses_cli, name="licenses")

IdArg = Annotated[str, typer.Argument(metavar="ID", help="Finding id.")]
NoteOpt = Annotated[str, typer.Option(help="Why (kept with the finding, and audited).")]
IntegrationOpt = Annotated[str | None, typer.Option(help="Only this integration's.")]
TenantOpt = Annotated[str | None, typer.Option(help="Only this tenant's (platform).")]
VerdictOpt = Annotated[
    str | None,
    typer.Option(help="never_used, idle, underused, active, excluded, inactive_at_source, unknown"),
]
SortOpt = Annotated[str, typer.Option(help="savings (largest first) or recent (newest first).")]
LimitOpt = Annotated[int, typer.Option(help="Show at most this many.")]
AppOpt = Annotated[
    str | None,
    typer.Option("--app", help="Your App, as module:attribute (reclaim on a database only)."),
]


def _money(amount: float | None, currency: str | None) -> str:
    return "-" if amount is None else f"{amount:,.2f} {currency or ''}".rstrip()


@licenses_cli.command("list")
def licenses_list(
    ctx: typer.Context,
    integration: IntegrationOpt = None,
    verdict: VerdictOpt = None,
    confidence: Annotated[str | None, typer.Option(help="high, medium or low.")] = None,
    finding_state: Annotated[
        str | None,
        typer.Option(help="The open finding's state; none: licenses without one."),
    ] = None,
    removed: Annotated[bool, typer.Option(help="Licenses the app no longer lists.")] = False,
    tenant: TenantOpt = None,
    sort: SortOpt = "savings",
    limit: LimitOpt = 50,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List licenses with their last verdict, largest monthly savings first."""
    with license_operations(ctx, db) as ops:
        found = list(
            islice(
                ops.iter_licenses(
                    page_size=min(max(limit, 1), 500),
                    integration=integration,
                    verdict=verdict,
                    confidence=confidence,
                    finding_state=finding_state,
                    removed=removed,
                    tenant=tenant,
                    sort=sort,
                ),
                limit,
            )
        )
    if json_out:
        print_json(found)
        return
    if not found:
        out.print("no licenses")
        return
    table = Table("ID", "USER", "EMAIL", "TIER", "VERDICT", "CONFIDENCE", "REASON", "MONTHLY")
    for lic in found:
        table.add_row(
            escape(lic.id),
            escape(lic.user_id),
            escape(lic.email or "-"),
            escape(lic.tier or "-"),
            lic.verdict or "not judged",
            lic.confidence or "-",
            escape(short(lic.reason or "-", 60)),
            _money(lic.monthly_savings, lic.savings_currency),
        )
    out.print(table)


@licenses_cli.command("show")
def licenses_show(
    ctx: typer.Context,
    license_id: Annotated[str, typer.Argument(metavar="ID", help="License id.")],
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Show a license: what its syncs said, its active days and its last verdict."""
    with license_operations(ctx, db) as ops:
        found = ops.get_license(license_id)
    if json_out:
        print_json(found)
        return
    out.print(f"license {escape(found.id)} of {escape(found.user_id)}")
    for field, value in found.model_dump(exclude={"active_days"}).items():
        shown = when(value) if field.endswith("_at") and value is not None else value
        out.print(f"  {field}: {escape(str(shown))}")
    out.print(f"  active days (last 180): {len(found.active_days)}")


@licenses_cli.command("findings")
def licenses_findings(
    ctx: typer.Context,
    integration: IntegrationOpt = None,
    state: Annotated[
        str | None, typer.Option(help="candidate, notified, actioned, kept, snoozed, closed")
    ] = None,
    verdict: VerdictOpt = None,
    closed: Annotated[bool, typer.Option("--all", help="Closed findings too.")] = False,
    tenant: TenantOpt = None,
    sort: SortOpt = "savings",
    limit: LimitOpt = 50,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List findings (open ones), largest monthly savings first."""
    with license_operations(ctx, db) as ops:
        found = list(
            islice(
                ops.iter_findings(
                    page_size=min(max(limit, 1), 500),
                    integration=integration,
                    state=state,
                    verdict=verdict,
                    open=not closed,
                    tenant=tenant,
                    sort=sort,
                ),
                limit,
            )
        )
    if json_out:
        print_json(found)
        return
    if not found:
        out.print("no findings")
        return
    table = Table("ID", "USER", "EMAIL", "ACTION", "CONFIDENCE", "STATE", "MONTHLY", "REASON")
    for f in found:
        table.add_row(
            escape(f.id),
            escape(f.user_id or "-"),
            escape(f.email or "-"),
            f.action,
            f.confidence,
            f.state,
            _money(f.monthly_savings, f.currency),
            escape(short(f.reason, 60)),
        )
    out.print(table)


def _acted(done: FindingOut) -> None:
    run = f"; deactivate run {escape(done.action_run_id)}" if done.action_run_id else ""
    until = f" until {when(done.until)}" if done.until is not None else ""
    out.print(
        f"finding {escape(done.id)} ({escape(done.user_id or '-')}): {done.state}{until}{run}"
    )


@licenses_cli.command("keep")
def licenses_keep(
    ctx: typer.Context, finding_id: IdArg, note: NoteOpt, actor: ActorOpt = None, db: DbOpt = None
) -> None:
    """Keep the license: no event for it until the policy's kept_days end."""
    with license_operations(ctx, db, actor=actor) as ops:
        _acted(ops.act_on_finding(finding_id, "keep", note=note))


@licenses_cli.command("snooze")
def licenses_snooze(
    ctx: typer.Context,
    finding_id: IdArg,
    until: Annotated[str, typer.Option(help="An ISO time: it comes back then, if still true.")],
    note: NoteOpt,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Not now: the finding comes back at --until if it still holds."""
    at = parse_iso(until, "--until")
    with license_operations(ctx, db, actor=actor) as ops:
        _acted(ops.act_on_finding(finding_id, "snooze", note=note, until=at))


@licenses_cli.command("reclaim")
def licenses_reclaim(
    ctx: typer.Context,
    finding_id: IdArg,
    note: NoteOpt,
    app: AppOpt = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Reclaim the license: the connector's deactivate workflow runs once for the account."""
    with license_operations(ctx, db, actor=actor, app=app) as ops:
        _acted(ops.act_on_finding(finding_id, "reclaim", note=note))


@licenses_cli.command("savings")
def licenses_savings(
    ctx: typer.Context, tenant: TenantOpt = None, json_out: JsonOpt = False, db: DbOpt = None
) -> None:
    """Monthly savings per integration and currency: available (open) and realized."""
    with license_operations(ctx, db) as ops:
        found = ops.savings(tenant=tenant)
    if json_out:
        print_json(found)
        return
    if not found.items:
        out.print("no savings yet")
        return
    table = Table("INTEGRATION", "CURRENCY", "AVAILABLE", "REALIZED", "OPEN", "RECLAIMED")
    rows = [(t.integration_id, t) for t in found.items] + [("all", t) for t in found.totals]
    for name, t in rows:
        table.add_row(
            escape(name),
            t.currency,
            f"{t.available:,.2f}",
            f"{t.realized:,.2f}",
            str(t.open_findings),
            str(t.reclaimed),
        )
    out.print(table)


@policy_cli.callback(invoke_without_command=True)
def licenses_policy(
    ctx: typer.Context,
    integration: Annotated[str | None, typer.Option(help="This integration's policy.")] = None,
    tenant: Annotated[str | None, typer.Option(help="This tenant's (platform).")] = None,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Show the policy in force (the tenant's default, or an integration's override over it)."""
    if ctx.invoked_subcommand is not None:
        return
    with license_operations(ctx, db) as ops:
        found = ops.license_policy(integration=integration, tenant=tenant)
    if json_out:
        print_json(found)
        return
    for field, value in found.model_dump().items():
        out.print(f"{field}: {escape(str(value))}")


def _change(values: dict[str, Any], clear: list[str] | None) -> PolicyIn:
    """The fields given, and those --clear names as null (back to the default)."""
    given = {k: v for k, v in values.items() if v is not None}
    for name in clear or []:
        if name not in PolicyIn.model_fields:
            known = ", ".join(PolicyIn.model_fields)
            raise InvalidInput(f"--clear {name}: not a policy setting (one of {known})")
        given[name] = None
    if not given:
        raise InvalidInput("nothing to change: give --grace-days, --threshold-days … (see --help)")
    return PolicyIn.model_validate(given)


@policy_cli.command("set")
def licenses_policy_set(
    ctx: typer.Context,
    integration: Annotated[str | None, typer.Option(help="Override for this integration.")] = None,
    tenant: Annotated[str | None, typer.Option(help="This tenant's (platform).")] = None,
    grace_days: Annotated[int | None, typer.Option(help="New licenses are left alone.")] = None,
    threshold_days: Annotated[
        int | None, typer.Option(help="A fixed idle threshold (instead of the learned one).")
    ] = None,
    exempt_role: Annotated[list[str] | None, typer.Option(help="Repeatable.")] = None,
    exempt_user: Annotated[list[str] | None, typer.Option(help="User id or e-mail.")] = None,
    underuse_share: Annotated[float | None, typer.Option(help="0..1 of the last 30 days.")] = None,
    premium_idle_days: Annotated[int | None, typer.Option()] = None,
    kept_days: Annotated[int | None, typer.Option(help="How long a keep holds.")] = None,
    min_users: Annotated[int | None, typer.Option(help="To learn a baseline.")] = None,
    fallback_days: Annotated[int | None, typer.Option()] = None,
    sync_hours: Annotated[float | None, typer.Option(help="Expected sync interval.")] = None,
    clear: Annotated[list[str] | None, typer.Option(help="A setting back to default.")] = None,
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Change the tenant's default policy, or with --integration its override."""
    change = _change(
        {
            "grace_days": grace_days,
            "threshold_days": threshold_days,
            "exempt_roles": exempt_role,
            "exempt_users": exempt_user,
            "underuse_share": underuse_share,
            "premium_idle_days": premium_idle_days,
            "kept_days": kept_days,
            "min_users": min_users,
            "fallback_days": fallback_days,
            "sync_hours": sync_hours,
        },
        clear,
    )
    with license_operations(ctx, db, actor=actor) as ops:
        found = ops.set_license_policy(change, integration=integration, tenant=tenant)
    out.print("policy changed; licenses it governs are judged again on the next pass")
    for field, value in found.model_dump().items():
        out.print(f"  {field}: {escape(str(value))}")


@licenses_cli.command("push")
def licenses_push(
    ctx: typer.Context,
    integration: Annotated[str, typer.Argument(help="The integration's id.")],
    file: Annotated[Path, typer.Argument(help="A JSON array of account rows, or NDJSON.")],
    complete: Annotated[
        bool, typer.Option(help="The file lists every account: the others are removed.")
    ] = False,
    sync: Annotated[str | None, typer.Option(help="The sync id (pages of one sync).")] = None,
    db: DbOpt = None,
) -> None:
    """Save a sync's accounts from a file: all of them, or none if a row is bad."""
    raw = file.read_bytes()
    rows = account_data(raw, ndjson=not raw.lstrip().startswith(b"["))
    if not isinstance(rows, list):
        raise InvalidInput(f"{file}: expected a JSON array of account rows, or NDJSON")
    with license_operations(ctx, db) as ops:
        done = ops.push_accounts(integration, rows, complete=complete, sync=sync)
    out.print(
        f"received {done.received}: {done.created} new, {done.changed} changed,"
        f" {done.removed} removed (sync {escape(done.sync_id)})"
    )


@licenses_cli.command("pass")
def licenses_pass(ctx: typer.Context, db: DbOpt = None) -> None:
    """Run the license pass now on a database (as every worker does every few minutes).

    Marks stale data, learns baselines again where due, tells unassigned seats, sends the day's
    digests, then judges every license that is due."""
    with local_license_operations(ctx, db) as local:
        done = local.run_pass()
    events = ", ".join(f"{n} {kind}" for kind, n in sorted(done.events.items())) or "none"
    out.print(
        f"judged {done.judged} licenses: {done.opened} findings opened, {done.closed} closed;"
        f" events: {events}; stale integrations: {done.stale}, baselines learned:"
        f" {done.baselines}, seat counts told: {done.seats}, digests: {done.digests}"
    )
