"""What admins look back at: `greenroom errors` (failures grouped), `greenroom audit`, and
`greenroom doctor` (what is wrong, checked in one go: greenroom.doctor)."""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from itertools import islice
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from greenroom import doctor as check
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
from greenroom.doctor import Check
from greenroom.errors import GreenroomError
from greenroom.settings import Settings, load_settings
from greenroom.storage import RunStore

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
    browser: Annotated[
        bool, typer.Option("--browser/--no-browser", help="Launch the browser workers use.")
    ] = True,
    actor: ActorOpt = None,
    reason: Annotated[
        str, typer.Option(help="Why, for the audit log of --repair.")
    ] = "greenroom doctor --repair",
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> int:
    """Check the database and its schema, the workers' heartbeats, the clocks, the secret key,
    the browser and the summaries the claim reads, one line each: exit 1 when one fails.
    --repair recomputes summaries that drifted from the runs."""
    url = db_url(ctx, db)
    settings = load_settings(db=url)
    checks: list[Check] = []
    drift: list[Any] = []
    with ExitStack() as stack:
        try:
            store: RunStore | None = stack.enter_context(existing_store(url))
        except GreenroomError as exc:
            checks.append(Check("database", "fail", str(exc).splitlines()[0]))
            store = None
        if store is not None:
            checks += _store_checks(store, settings)
            if repair:
                drift = store.repair.repair_summaries(actor=actor or default_actor(), reason=reason)
                checks.append(Check("summaries", "ok", f"{len(drift)} repaired"))
            else:
                drift = store.repair.summary_drift()
                checks.append(check.guarded("summaries", lambda: check.summaries(store)))
        if store is not None or not url.startswith("sqlite"):  # SQLite's key file is beside it
            checks.append(check.guarded("secret key", lambda: check.secret_key(settings, store)))
    if browser:
        checks.append(check.guarded("browser", lambda: check.browser(settings)))
    _show_checks(checks, drift, json_out)
    return 1 if any(c.status == "fail" for c in checks) else 0


def _store_checks(store: RunStore, settings: Settings) -> list[Check]:
    return [
        check.guarded("database", lambda: check.database(store)),
        check.guarded("workers", lambda: check.workers(store, settings.lease_seconds)),
        check.guarded("clock", lambda: check.clock_skew(store)),
    ]


def _show_checks(checks: list[Check], drift: list[Any], json_out: bool) -> None:
    if json_out:
        found = {"checks": [asdict(c) for c in checks], "drift": [asdict(d) for d in drift]}
        sys.stdout.write(json.dumps(found, indent=2) + "\n")
        return
    marks = {"ok": "[green]ok[/]  ", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}
    for c in checks:
        out.print(f"{marks[c.status]} {c.name:<11} {escape(c.detail)}", soft_wrap=True)
    if drift:
        table = Table("KIND", "KEY", "FIELD", "STORED", "RUNS SAY")
        for d in drift:
            table.add_row(d.kind, escape(d.key), d.field, escape(str(d.stored)), str(d.actual))
        out.print(table)
