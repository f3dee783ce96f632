"""What admins look back at: `greenroom errors` (failures grouped) and `greenroom audit`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from greenroom.cli import DbOpt, cli, db_url, existing_store, out
from greenroom.cli.display import ago, short, when

TenantOpt = Annotated[str | None, typer.Option(help="Only this tenant.")]


@cli.command()
def errors(
    ctx: typer.Context,
    tenant: TenantOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    db: DbOpt = None,
) -> None:
    """Failed runs grouped by error (type + normalized message + step), most recent first;
    `runs retry --where --error-group FP` retries a group."""
    with existing_store(db_url(ctx, db)) as store:
        groups = store.error_groups(tenant=tenant, limit=limit)
        now = store.clock.now()
    if not groups:
        out.print("no errors")
        return
    table = Table("FINGERPRINT", "TENANT", "WORKFLOW", "STEP", "TYPE", "CLASS", "COUNT")
    for name in ("FIRST SEEN", "LAST SEEN", "MESSAGE"):
        table.add_column(name)
    table.columns[0].no_wrap = True
    for g in groups:
        table.add_row(
            g.fingerprint,
            escape(g.tenant),
            escape(g.workflow),
            escape(g.step or "-"),
            escape(g.type),
            g.error_class,
            str(g.occurrences),
            ago(g.first_seen, now),
            ago(g.last_seen, now),
            short(g.message),
        )
    out.print(table)


@cli.command()
def audit(
    ctx: typer.Context,
    tenant: TenantOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    db: DbOpt = None,
) -> None:
    """Admin actions, newest first: who did what, when and why."""
    with existing_store(db_url(ctx, db)) as store:
        entries = store.audit_log(tenant=tenant, limit=limit)
    if not entries:
        out.print("no audit entries")
        return
    table = Table("WHEN", "WHO", "ACTION", "TARGET", "TENANT", "REASON")
    for e in entries:
        table.add_row(
            when(e.at),
            escape(e.actor),
            escape(e.action),
            escape(e.target),
            escape(e.tenant or "-"),
            escape(e.reason),
        )
    out.print(table)
