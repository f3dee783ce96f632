"""Commands that set up and drive the engine: db upgrade, worker, enqueue, workers, demo."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from greenroom.cli import (
    AppOpt,
    DbOpt,
    JsonOpt,
    cli,
    configure,
    db_url,
    freeze_start_up,
    given_db,
    load_app,
    out,
    print_json,
    quiet_driver_logs,
    require_database,
)
from greenroom.cli.connect import operations
from greenroom.cli.display import ago
from greenroom.cli.parse import parse_input, parse_iso, parse_labels, split_list
from greenroom.errors import InvalidInput
from greenroom.logs import configure_logging
from greenroom.settings import redact
from greenroom.storage import open_backend, start_worker_liveness
from greenroom.tracing import configure_tracing

if TYPE_CHECKING:
    from greenroom.api.schemas import RunOut

db_cli = typer.Typer(no_args_is_help=True, help="Manage the database schema.")
cli.add_typer(db_cli, name="db")


@db_cli.command("upgrade")
def db_upgrade(ctx: typer.Context, db: DbOpt = None) -> None:
    """Create or migrate the database schema to the newest revision."""
    from greenroom.storage.migrate import head_revision, upgrade

    url = db_url(ctx, db)
    quiet_driver_logs()
    backend = open_backend(url)
    try:
        upgrade(backend.sqlalchemy_url())
    finally:
        backend.close()
    out.print(f"database {escape(redact(url))} is at revision {head_revision()}")


@cli.command()
def worker(
    ctx: typer.Context,
    app: AppOpt,
    db: DbOpt = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Runs executed at once (default: from settings)")
    ] = None,
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues (default: the app's queues)")
    ] = None,
    lease_seconds: Annotated[float | None, typer.Option(help="Lease duration.")] = None,
    heartbeat_seconds: Annotated[float | None, typer.Option(help="Heartbeat interval.")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="Serve Prometheus /metrics on this port (default: off)."
        ),
    ] = None,
) -> None:
    """Run a worker: lease runs of the app's workflows and execute them (SIGTERM stops it)."""
    from greenroom.worker import Worker

    the_app = load_app(app)
    configure(
        the_app,
        db=given_db(ctx, db),
        concurrency=concurrency,
        lease_seconds=lease_seconds,
        heartbeat_seconds=heartbeat_seconds,
        metrics_port=metrics_port,
    )
    require_database(the_app.settings.db)
    start_worker_liveness(the_app.settings.db)
    configure_logging(the_app.settings)
    configure_tracing("greenroom-worker")
    runner = Worker(the_app, queues=split_list(queues), concurrency=concurrency)
    freeze_start_up()
    try:
        asyncio.run(runner.run(install_signal_handlers=True))
    finally:
        the_app.close()


@cli.command()
def enqueue(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(help="Workflow name.")],
    app: Annotated[
        str | None,
        typer.Option("--app", help="Your App, as module:attribute (not needed with --url)."),
    ] = None,
    input: Annotated[str, typer.Option("--input", help="Run input as a JSON object.")] = "{}",
    tenant: Annotated[
        str | None,
        typer.Option(help="Tenant the run belongs to (default: default; with --url: the key's)."),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Same key, same run: enqueue at most once.")
    ] = None,
    priority: Annotated[int | None, typer.Option(help="Higher runs first.")] = None,
    delay: Annotated[
        float | None, typer.Option(min=0, help="Start no earlier than this many seconds.")
    ] = None,
    start_at: Annotated[
        str | None,
        typer.Option(
            help="Start no earlier than this ISO time (local unless it says); not with --delay."
        ),
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="key=value, repeatable.")
    ] = None,
    integration: Annotated[
        str | None,
        typer.Option(help="Run for this integration (int_…): its settings and credentials."),
    ] = None,
    queue: Annotated[
        str | None,
        typer.Option(help="Another queue than the workflow's (a worker must serve it)."),
    ] = None,
    db: DbOpt = None,
) -> None:
    """Enqueue one run and print its id (an existing run's id for a used idempotency key)."""
    at = None if start_at is None else parse_iso(start_at, "--start-at")
    if at is not None and delay is not None:
        raise InvalidInput("give --delay or --start-at, not both")
    body = {
        "workflow": workflow,
        "input": parse_input(input),
        "tenant": tenant,
        "priority": priority,
        "delay": delay,
        "start_at": at,
        "labels": parse_labels(label or []),
        "integration": integration,
        "queue": queue,
    }
    from greenroom.api.schemas import RunCreate  # not at import: `greenroom worker` needs none

    request = RunCreate.model_validate(body)
    with operations(ctx, db, app=app) as ops:
        run, created = ops.create_run(request, idempotency_key=idempotency_key)
    say_enqueued(run, created, idempotency_key)


def say_enqueued(run: RunOut, created: bool, idempotency_key: str | None) -> None:
    if created:
        out.print(f"{run.id} created ({run.state.value})")
    else:
        out.print(
            f"{run.id} already existed (idempotency key {escape(repr(idempotency_key))}, "
            f"{run.state.value})"
        )


@cli.command()
def workers(
    ctx: typer.Context,
    all: Annotated[bool, typer.Option("--all", help="Include stopped and dead workers.")] = False,
    json_out: JsonOpt = False,
    db: DbOpt = None,
) -> None:
    """List workers: id, host, pid, state, last heartbeat and the runs they hold."""
    with operations(ctx, db) as ops:
        found = ops.workers(include_gone=all)
    now = time.time()
    if json_out:
        print_json(found)
        return
    if not found:
        out.print("no workers" if all else "no live workers (--all shows stopped ones)")
        return
    table = Table("ID", "HOST", "PID", "STATE", "HEARTBEAT", "RUNNING", "QUEUES")
    for w in found:
        style = {"alive": "green", "lost": "yellow", "dead": "red"}.get(w.state, "dim")
        table.add_row(
            escape(w.id),
            escape(w.host),
            str(w.pid),
            f"[{style}]{w.state}[/]",
            ago(w.heartbeat_at, now),
            f"{len(w.running)}/{w.concurrency}",
            escape(",".join(w.queues)),
        )
    out.print(table)


@cli.command()
def demo(
    ctx: typer.Context,
    orgs: Annotated[
        int, typer.Option(min=1, max=50, help="Demo organizations to sync (one run each).")
    ] = 5,
    workers: Annotated[int, typer.Option(min=1, max=8, help="Worker processes.")] = 2,
    chaos: Annotated[
        bool, typer.Option("--chaos", help="SIGKILL a worker mid-run to show recovery.")
    ] = False,
    users_per_org: Annotated[
        int | None,
        typer.Option(min=1, help="Users in every org (default: each org its own, 20 to 312)."),
    ] = None,
    latency_ms: Annotated[
        int, typer.Option(min=0, max=5000, help="Latency the demo SaaS adds to each page.")
    ] = 100,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Database URL (default: a fresh .greenroom/demo-<time>.db)"),
    ] = None,
) -> None:
    """Sync users from the demo SaaS with browser workflows on worker processes, live."""
    from greenroom.demo.browser_demo import DemoOptions, run_demo

    options = DemoOptions(
        orgs=orgs,
        workers=workers,
        chaos=chaos,
        users_per_org=users_per_org,
        latency_ms=latency_ms,
        db=given_db(ctx, db),
    )
    raise typer.Exit(run_demo(options, console=out))
