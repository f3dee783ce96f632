"""What admins look back at: `greenroom errors` (failures grouped), `greenroom audit`, and
`greenroom doctor` (summaries checked against the runs)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from itertools import islice
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from greenroom.cli import (
    ActorOpt,
    DbOpt,
    JsonOpt,
    cli,
    db_url,
    default_actor,
    existing_store,
    out,
    print_json,
)
from greenroom.cli.connect import operations
from greenroom.cli.display import ago, short, when

TenantOpt = Annotated[str | None, typer.Option(help="Only this tenant.")]


@cli.command()
def errors(
    ctx: typer.Context,
    tenant: TenantOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Failed runs grouped by error (type + normalized message + step), most recent first:
    OPEN failures not retried yet, RESOLVED ones whose retries succeeded, every failure SEEN,
    and the LAST RUN that failed, for `runs show`; `runs retry --where --error-group FP`
    retries a group."""
    with operations(ctx, db) as ops:
        groups = ops.error_groups(tenant=tenant, limit=limit)
    now = time.time()
    if json_out:
        print_json(groups)
        return
    if not groups:
        out.print("no errors")
        return
    table = Table("FINGERPRINT", "TENANT", "WORKFLOW", "STEP", "TYPE", "OPEN", "RESOLVED")
    for name in ("SEEN", "FIRST / LAST", "LAST RUN", "MESSAGE"):
        table.add_column(name)
    table.columns[0].no_wrap = True
    for g in groups:
        table.add_row(
            g.fingerprint,
            escape(g.tenant),
            escape(g.workflow),
            escape(g.step or "-"),
            escape(g.type),
            f"[red]{g.open}[/]" if g.open else "0",
            f"[green]{g.resolved}[/]" if g.resolved else "0",
            str(g.occurrences),
            f"{ago(g.first_seen, now)} / {ago(g.last_seen, now)}",
            g.last_run_id[:8],
            short(g.message),
        )
    out.print(table)


@cli.command()
def audit(
    ctx: typer.Context,
    tenant: TenantOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """Admin actions, newest first: who did what, when and why."""
    with operations(ctx, db) as ops:
        pages = ops.iter_audit_log(tenant=tenant, page_size=min(limit, 500))
        entries = list(islice(pages, limit))
    if json_out:
        print_json(entries)
        return
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


@cli.command()
def doctor(
    ctx: typer.Context,
    repair: Annotated[
        bool, typer.Option("--repair", help="Recompute the summaries that drifted (audited).")
    ] = False,
    actor: ActorOpt = None,
    reason: Annotated[
        str, typer.Option(help="Why, for the audit log of --repair.")
    ] = "greenroom doctor --repair",
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> int:
    """Check the summaries the claim reads (lanes, tenants' and queues' counts, leases) against
    the runs: exit 1 and list each difference when they drifted; --repair recomputes them."""
    with existing_store(db_url(ctx, db)) as store:
        if repair:
            drift = store.repair.repair_summaries(actor=actor or default_actor(), reason=reason)
        else:
            drift = store.repair.summary_drift()
    if json_out:
        sys.stdout.write(json.dumps([asdict(d) for d in drift], indent=2) + "\n")
    elif not drift:
        out.print("summaries agree with the runs")
    else:
        table = Table("KIND", "KEY", "FIELD", "STORED", "RUNS SAY")
        for d in drift:
            table.add_row(d.kind, escape(d.key), d.field, escape(str(d.stored)), str(d.actual))
        out.print(table)
        out.print(f"{len(drift)} repaired" if repair else f"{len(drift)} drifted: --repair mends")
    return 1 if drift and not repair else 0
