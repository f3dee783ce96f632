"""Service commands: `greenroom api` (stateless API nodes, any number against one database)
and `greenroom up` (the API and a worker in one process, for one machine)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from greenroom.api.schemas import KeyOut
from greenroom.app import App
from greenroom.cli import (
    DbOpt,
    cli,
    configure,
    default_actor,
    existing_store,
    freeze_start_up,
    given_db,
    hint,
    load_app,
    out,
    quiet_driver_logs,
    require_database,
)
from greenroom.cli.accounts import ONCE, describe_key
from greenroom.errors import Conflict
from greenroom.logs import configure_logging
from greenroom.metrics.expose import fresh_multiprocess_dir, remove_multiprocess_dir
from greenroom.model import Role
from greenroom.settings import redact
from greenroom.storage import RunStore
from greenroom.tracing import configure_tracing

if TYPE_CHECKING:
    from fastapi import FastAPI

#: What `greenroom api` and `up` serve without --app, so they work on a fresh machine.
DEMO_APP = "greenroom.demo.connector:app"
#: How `greenroom api --workers N` tells its processes what to build (see api_process).
APP_ENV = "GREENROOM_SERVE_APP"
DB_ENV = "GREENROOM_SERVE_DB"

ServeAppOpt = Annotated[
    str | None,
    typer.Option("--app", help=f"Your App, as module:attribute (default: the demo, {DEMO_APP})."),
]
HostOpt = Annotated[
    str | None, typer.Option(help="Address to listen on (default: the api_host setting).")
]
PortOpt = Annotated[
    int | None, typer.Option(help="Port (default: the api_port setting; 0 picks a free one).")
]
AccessLogOpt = Annotated[
    bool, typer.Option("--access-log", help="Log every request (uvicorn's access log).")
]


def announce(ref: str | None, app: App, url: str, how: str) -> None:
    which = f"{ref} (your app)" if ref else f"{DEMO_APP} (the built-in demo; --app serves yours)"
    out.print(f"app       {escape(which)}", soft_wrap=True)
    out.print(f"database  {escape(redact(app.settings.db))}", soft_wrap=True)
    out.print(f"API       {url} ({how}; docs at {url}/docs); Ctrl-C stops", soft_wrap=True)
    out.print(f"console   {url}/ui/ (sign in with an API key)", soft_wrap=True)


def check_schema(url: str) -> None:
    """API nodes never migrate: `greenroom db upgrade` does, once, before they start (the
    error says how, naming the database)."""
    with existing_store(url):
        pass


def connect_early(app: App) -> None:
    """Open the store before serving: the first requests would otherwise wait for the driver's
    import, the first connection and the schema check (1-2 s on a busy machine). If the
    database does not answer now, the first request tries again, as /readyz reports."""
    with contextlib.suppress(Exception):
        app.store  # noqa: B018 - opening it is the point


def api_process() -> FastAPI:
    """The API of one `greenroom api --workers N` process, built from the same --app and
    --db as its parent's, which it finds in the environment."""
    from greenroom.api.app import create_api

    app = load_app(os.environ.get(APP_ENV) or DEMO_APP)
    configure(app, db=os.environ.get(DB_ENV))
    configure_logging(app.settings)  # a new process: uvicorn leaves its logging alone
    configure_tracing("greenroom-api")
    app.migrate = False
    connect_early(app)
    return create_api(app)


@cli.command()
def api(
    ctx: typer.Context,
    app: ServeAppOpt = None,
    db: DbOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Server processes (each with its own connections).")
    ] = 1,
    access_log: AccessLogOpt = False,
) -> None:
    """Serve the HTTP API. Nodes are stateless: run any number of them against one PostgreSQL
    database, beside workers. The database must be migrated first (greenroom db upgrade)."""
    the_app = load_app(app or DEMO_APP)
    configure(the_app, db=given_db(ctx, db), api_host=host, api_port=port)
    settings = the_app.settings
    quiet_driver_logs()
    check_schema(settings.db)
    configure_logging(settings)
    configure_tracing("greenroom-api")
    the_app.migrate = False
    from greenroom.api.app import create_api  # FastAPI is slow to import: not before the checks
    from greenroom.api.serve import address, listen, serve, serve_processes, server

    sock = listen(settings.api_host, settings.api_port)
    try:
        if workers == 1:
            connect_early(the_app)
            announce(app, the_app, address(sock), "1 process")
            asyncio.run(serve(server(create_api(the_app), settings, access_log=access_log), sock))
            return
        announce(app, the_app, address(sock), f"{workers} processes")
        os.environ[APP_ENV] = app or DEMO_APP
        os.environ[DB_ENV] = settings.db
        # The processes add their metrics up through files (prometheus_client multiprocess).
        metrics_dir = fresh_multiprocess_dir()
        try:
            serve_processes(
                f"{__name__}:{api_process.__name__}",
                sock,
                settings,
                workers=workers,
                access_log=access_log,
            )
        finally:
            remove_multiprocess_dir(metrics_dir)
    finally:
        sock.close()
        the_app.close()


def bootstrap(ctx: typer.Context, store: RunStore, tenant: str) -> None:
    """Register `tenant` and print an admin key for it; a tenant that exists is left alone."""
    from greenroom.api.keys import create_key

    actor = default_actor()
    try:
        store.accounts.create_tenant(tenant, actor=actor)
    except Conflict:
        out.print(
            f"tenant {escape(tenant)} already exists (another admin key: "
            + escape(hint(ctx, "keys", "create", "--tenant", tenant, "--role", "admin"))
            + ")",
            soft_wrap=True,
        )
        return
    key, secret = create_key(
        store.accounts, tenant=tenant, role=Role.ADMIN, name="bootstrap", actor=actor
    )
    out.print(f"registered tenant {escape(tenant)} and {describe_key(KeyOut.of(key))}; {ONCE}:")
    out.print(f"  {secret}", markup=False, highlight=False, soft_wrap=True)


def first_start_hint(ctx: typer.Context, store: RunStore) -> None:
    if store.accounts.api_keys():
        return
    tenant = hint(ctx, "tenants", "create", "TENANT")
    key = hint(ctx, "keys", "create", "--tenant", "TENANT", "--role", "admin")
    out.print(
        "no API keys yet: restart with --bootstrap TENANT for a tenant and its admin key, or "
        f"run {escape(tenant)} and {escape(key)}",
        soft_wrap=True,
    )


@cli.command()
def up(
    ctx: typer.Context,
    app: ServeAppOpt = None,
    db: DbOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Runs the worker executes at once.")
    ] = None,
    bootstrap_tenant: Annotated[
        str | None,
        typer.Option(
            "--bootstrap",
            metavar="TENANT",
            help="Register this tenant (if new) and print an admin API key for it, once.",
        ),
    ] = None,
    access_log: AccessLogOpt = False,
) -> None:
    """Run the API and a worker in one process (SQLite by default): migrates the database,
    then serves until Ctrl-C or SIGTERM, letting running runs finish."""
    from greenroom.api.app import create_api
    from greenroom.api.serve import address, listen, serve, server
    from greenroom.worker import Worker

    the_app = load_app(app or DEMO_APP)
    configure(the_app, db=given_db(ctx, db), api_host=host, api_port=port, concurrency=concurrency)
    settings = the_app.settings
    quiet_driver_logs()
    if bootstrap_tenant is None:  # --bootstrap sets a new service up: it may create the file
        require_database(settings.db)
    configure_logging(settings)
    configure_tracing("greenroom")
    try:
        store = the_app.store  # opening it migrates
        if bootstrap_tenant is not None:
            bootstrap(ctx, store, bootstrap_tenant)
        else:
            first_start_hint(ctx, store)
        sock = listen(settings.api_host, settings.api_port)
        try:
            worker = Worker(the_app)
            announce(
                app, the_app, address(sock), f"with a worker: concurrency {worker.concurrency}"
            )
            api_server = server(create_api(the_app), settings, access_log=access_log)
            freeze_start_up()
            asyncio.run(serve(api_server, sock, worker=worker))
        finally:
            sock.close()
    finally:
        the_app.close()
