"""`greenroom events`: list what happened (docs/events.md), and prune old events."""

from __future__ import annotations

import time
from itertools import islice
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from greenroom.cli import DbOpt, JsonOpt, cli, db_url, existing_store, out, print_json
from greenroom.cli.connect import operations
from greenroom.cli.display import ago, short_json
from greenroom.cli.parse import parse_duration, parse_time, split_list

#: Payload fields the other columns show already.
_SHOWN = frozenset({"version", "run_id", "integration_id"})

events_cli = typer.Typer(no_args_is_help=True, help="List and prune events (docs/events.md).")
cli.add_typer(events_cli, name="events")


@events_cli.command("list")
def events_list(
    ctx: typer.Context,
    event_type: Annotated[
        str | None,
        typer.Option("--type", help="Types or prefixes, comma-separated: run.failed,pause.*"),
    ] = None,
    subject: Annotated[str | None, typer.Option(help="kind:id, as run:<run id>.")] = None,
    tenant: Annotated[str | None, typer.Option()] = None,
    since: Annotated[
        str | None, typer.Option(help="Occurred since: a duration ago (12h) or an ISO time.")
    ] = None,
    after: Annotated[int | None, typer.Option(help="Only the events after this id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List events, oldest first, in the order their changes committed."""
    with operations(ctx, db) as ops:
        pages = ops.iter_events(
            after=after,
            page_size=min(limit, 500),
            type=split_list(event_type) or None,
            subject=subject,
            since=None if since is None else parse_time(since, "--since", time.time()),
            tenant=tenant,
        )
        found = list(islice(pages, limit))
    if json_out:
        print_json(found)
        return
    if not found:
        out.print("no events")
        return
    now = time.time()
    table = Table("ID", "TYPE", "TENANT", "SUBJECT", "OCCURRED", "PAYLOAD")
    for event in found:
        table.add_row(
            str(event.id),
            escape(event.type),
            escape(event.tenant or "-"),
            escape(event.subject),
            ago(event.occurred_at, now),
            escape(short_json({k: v for k, v in event.payload.items() if k not in _SHOWN}, 100)),
        )
    out.print(table)


@events_cli.command("prune")
def events_prune(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Occurred longer ago than this: 30d, 12h, 15m.")
    ],
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's events.")] = None,
    db: DbOpt = None,
) -> None:
    """Delete events that occurred longer ago than --older-than."""
    age = parse_duration(older_than, "--older-than")
    with existing_store(db_url(ctx, db)) as store:
        deleted = store.events.prune(older_than=age, tenant=tenant)
    out.print(f"deleted {deleted} events that occurred more than {older_than} ago")
