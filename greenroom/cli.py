"""The `greenroom` command: parses arguments, calls the library, prints with Rich.

Every error a user can cause is one line on stderr with exit code 2, never a traceback
(GREENROOM_DEBUG=1 shows tracebacks of unexpected errors).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer._click.exceptions import ClickException, NoArgsIsHelpError

from greenroom.app import App, RunRequest
from greenroom.errors import ConfigError, GreenroomError, InvalidInput, NotFound
from greenroom.model import Run, RunState, StepRecord
from greenroom.settings import load_settings
from greenroom.storage import RunFilter, RunStore, open_backend, open_store


def _width() -> int | None:
    """Rich's width, except that piped output is not squeezed into 80 columns."""
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return None
    return 160


out = Console(highlight=False, width=_width())
err = Console(stderr=True, highlight=False, soft_wrap=True)

cli = typer.Typer(
    name="greenroom",
    help="Durable, multi-tenant browser-automation workflows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_cli = typer.Typer(no_args_is_help=True, help="Manage the database schema.")
runs_cli = typer.Typer(no_args_is_help=True, help="List, inspect and cancel runs.")
cli.add_typer(db_cli, name="db")
cli.add_typer(runs_cli, name="runs")

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL: sqlite:///path or postgresql://… [default: the app's db setting, "
        "else $GREENROOM_DB or sqlite:///.greenroom/greenroom.db]",
        show_default=False,
    ),
]
AppOpt = Annotated[str, typer.Option("--app", help="Your App, as module:attribute.")]
ActorOpt = Annotated[
    str | None,
    typer.Option(help="Who acts, for the audit log [default: $GREENROOM_ACTOR, else user@host]."),
]


def default_actor() -> str:
    import getpass
    import socket

    return os.environ.get("GREENROOM_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


STATE_STYLE = {
    RunState.QUEUED: "cyan",
    RunState.DELAYED: "blue",
    RunState.RUNNING: "yellow",
    RunState.SUCCEEDED: "green",
    RunState.FAILED: "red",
    RunState.CANCELLED: "magenta",
}


@cli.callback()
def root(ctx: typer.Context, db: DbOpt = None) -> None:
    """Durable, multi-tenant browser-automation workflows."""
    ctx.obj = {"db": db}


# -- helpers -------------------------------------------------------------------------------


def given_db(ctx: typer.Context, db: str | None) -> str | None:
    """The --db given on this command, else the global one, else None."""
    if db:
        return db
    obj = ctx.find_root().obj
    return obj.get("db") if isinstance(obj, dict) else None


def db_url(ctx: typer.Context, db: str | None) -> str:
    return given_db(ctx, db) or load_settings().db


def redact(url: str) -> str:
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)


def quiet_driver_logs() -> None:
    """The pool logs each failed connection attempt; a command reports the failure once."""
    logging.getLogger("psycopg").addHandler(logging.NullHandler())


@contextmanager
def existing_store(url: str) -> Iterator[RunStore]:
    """A store over a database that must already exist and be migrated."""
    quiet_driver_logs()
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise NotFound(f"no database at {path}: run `greenroom db upgrade` or pass --db")
    store = open_store(url, migrate=False)
    try:
        yield store
    finally:
        store.backend.close()


def load_app(ref: str) -> App:
    """Import `module:attribute` (from the current directory too) and check it is an App."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidInput(f"--app must look like module:attribute, got {ref!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except GreenroomError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, App):
        raise ConfigError(f"{ref} is a {type(obj).__name__}, not a greenroom App")
    return obj


def configure(app: App, **overrides: object) -> None:
    """Apply command-line settings over the app's own, validated like any settings."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return
    settings = load_settings(**{**app.settings.model_dump(), **given})
    if settings.db != app.settings.db:
        app.close()
    app.settings = settings


def split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InvalidInput("expected a comma-separated list, got nothing")
    return items


def parse_states(value: str | None) -> list[RunState]:
    states = []
    for name in split_list(value) or []:
        try:
            states.append(RunState(name.lower()))
        except ValueError:
            known = ", ".join(s.value for s in RunState)
            raise InvalidInput(f"unknown state {name!r} (one of {known})") from None
    return states


def parse_input(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--input is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidInput('--input must be a JSON object, e.g. \'{"org": "acme"}\'')
    return value


def parse_labels(pairs: Sequence[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--label must look like key=value, got {pair!r}")
        labels[key.strip()] = value
    return labels


def ago(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    secs = max(now - at, 0.0)
    if secs < 60:
        return f"{secs:.1f}s ago"
    if secs < 3600:
        return f"{secs / 60:.0f}m ago"
    if secs < 86400:
        return f"{secs / 3600:.1f}h ago"
    return f"{secs / 86400:.1f}d ago"


def when(at: float | None) -> str:
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"


def seconds(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return "-"
    return f"{end - start:.2f}s"


def state_text(state: RunState) -> str:
    return f"[{STATE_STYLE[state]}]{state.value}[/]"


def short_json(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return escape(text if len(text) <= limit else text[: limit - 1] + "…")


# -- commands ------------------------------------------------------------------------------


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
        int | None, typer.Option(min=1, help="Runs executed at once [default: from settings]")
    ] = None,
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues [default: the app's queues]")
    ] = None,
    lease_seconds: Annotated[float | None, typer.Option(help="Lease duration.")] = None,
    heartbeat_seconds: Annotated[float | None, typer.Option(help="Heartbeat interval.")] = None,
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
    )
    runner = Worker(the_app, queues=split_list(queues), concurrency=concurrency)
    try:
        asyncio.run(runner.run(install_signal_handlers=True))
    finally:
        the_app.close()


@cli.command()
def enqueue(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(help="Workflow name.")],
    app: AppOpt,
    input: Annotated[str, typer.Option("--input", help="Run input as a JSON object.")] = "{}",
    tenant: Annotated[str, typer.Option(help="Tenant the run belongs to.")] = "default",
    idempotency_key: Annotated[
        str | None, typer.Option(help="Same key, same run: enqueue at most once.")
    ] = None,
    priority: Annotated[int | None, typer.Option(help="Higher runs first.")] = None,
    delay: Annotated[
        float | None, typer.Option(min=0, help="Start no earlier than this many seconds.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "-l", help="key=value, repeatable.")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Enqueue one run and print its id (an existing run's id for a used idempotency key)."""
    the_app = load_app(app)
    configure(the_app, db=given_db(ctx, db))
    quiet_driver_logs()
    request = RunRequest(
        workflow=workflow,
        input=parse_input(input),
        tenant=tenant,
        idempotency_key=idempotency_key,
        priority=priority,
        delay=delay,
        labels=parse_labels(label or []),
    )
    try:
        run, created = the_app.store.enqueue(the_app.prepare(request))
    finally:
        the_app.close()
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
    db: DbOpt = None,
) -> None:
    """List workers: id, host, pid, state, last heartbeat and the runs they hold."""
    with existing_store(db_url(ctx, db)) as store:
        found = store.workers(include_gone=all)
        now = store.clock.now()
    if not found:
        out.print("no workers" if all else "no live workers (--all shows stopped ones)")
        return
    table = Table("ID", "HOST", "PID", "STATE", "HEARTBEAT", "RUNNING", "QUEUES")
    for w in found:
        style = {"alive": "green", "dead": "red"}.get(w.state, "dim")
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
    runs: Annotated[int, typer.Option(min=1, max=1000, help="Runs to enqueue.")] = 24,
    orgs: Annotated[int, typer.Option(min=1, max=100, help="Customer orgs (sessions).")] = 6,
    workers: Annotated[int, typer.Option(min=1, max=16, help="Worker processes.")] = 3,
    no_chaos: Annotated[bool, typer.Option("--no-chaos", help="Do not kill a worker.")] = False,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Database URL [default: a fresh .greenroom/demo-<time>.db]"),
    ] = None,
) -> None:
    """Watch workers run multi-step workflows, lose one to SIGKILL, and resume its runs."""
    from greenroom.demo.engine import DemoOptions, run_demo

    options = DemoOptions(
        runs=runs, orgs=orgs, workers=workers, chaos=not no_chaos, db=given_db(ctx, db)
    )
    raise typer.Exit(run_demo(options, console=out))


# -- runs ----------------------------------------------------------------------------------


@runs_cli.command("list")
def runs_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="States, comma-separated.")] = None,
    workflow: Annotated[str | None, typer.Option()] = None,
    tenant: Annotated[str | None, typer.Option()] = None,
    queue: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    db: DbOpt = None,
) -> None:
    """List runs, newest first."""
    f = RunFilter(
        tenant=tenant, states=parse_states(state), workflow=workflow, queue=queue, limit=limit
    )
    with existing_store(db_url(ctx, db)) as store:
        found = store.list_runs(f)
        now = store.clock.now()
    if not found:
        out.print("no runs")
        return
    table = Table("ID", "WORKFLOW", "TENANT", "STATE", "ATTEMPT", "STALLS", "CREATED", "TOOK")
    table.columns[0].no_wrap = True
    for run in found:
        table.add_row(
            run.id,
            escape(run.workflow),
            escape(run.tenant),
            state_text(run.state),
            f"{run.attempt}/{run.max_attempts}",
            str(run.stalls),
            ago(run.created_at, now),
            seconds(run.started_at, run.finished_at),
        )
    out.print(table)


@runs_cli.command("show")
def runs_show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="ID", help="Run id.")],
    db: DbOpt = None,
) -> None:
    """Show a run: its fields, timeline, steps and error."""
    with existing_store(db_url(ctx, db)) as store:
        run = store.get_run(run_id)
        steps = store.steps(run_id)
        events = store.events(run_id)
    show_fields(run)
    timeline = Table("AT", "+SECONDS", "STATE", "REASON", "WORKER", title="Timeline")
    for e in events:
        timeline.add_row(
            when(e.at),
            f"{e.at - run.created_at:.3f}",
            state_text(e.state),
            escape(e.reason),
            escape(e.worker_id or ""),
        )
    out.print(timeline)
    show_steps(steps)
    if run.error:
        show_error(run.error)


def show_fields(run: Run) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    rows: list[tuple[str, str]] = [
        ("run", run.id),
        ("workflow", escape(run.workflow)),
        ("state", state_text(run.state) + (" (cancel requested)" if run.cancel_requested else "")),
        ("tenant", escape(run.tenant)),
        ("queue", escape(run.queue)),
        ("session", escape(run.session_key or "-")),
        ("priority", str(run.priority)),
        ("attempt", f"{run.attempt} of {run.max_attempts}"),
        ("stalls", str(run.stalls)),
        ("idempotency key", escape(run.idempotency_key or "-")),
        ("labels", short_json(run.labels)),
        ("input", short_json(run.input)),
        ("output", short_json(run.output)),
        ("created", when(run.created_at)),
        ("started", when(run.started_at)),
        ("finished", when(run.finished_at)),
    ]
    if run.lease_owner:
        rows.append(("leased by", f"{escape(run.lease_owner)} until {when(run.lease_expires_at)}"))
    for name, value in rows:
        grid.add_row(name, value)
    out.print(grid)


def show_steps(steps: list[StepRecord]) -> None:
    if not steps:
        out.print("no steps recorded")
        return
    table = Table("#", "STEP", "STATUS", "ATTEMPTS", "DURATION", "FINISHED", title="Steps")
    for s in steps:
        style = "green" if s.status.value == "completed" else "red"
        table.add_row(
            str(s.position),
            escape(s.name),
            f"[{style}]{s.status.value}[/]",
            str(s.attempts),
            seconds(s.started_at, s.finished_at),
            when(s.finished_at),
        )
    out.print(table)


def show_error(error: dict[str, Any]) -> None:
    where = []
    if error.get("step"):
        where.append(f"in step {error['step']!r}")
    if error.get("attempt"):
        where.append(f"attempt {error['attempt']}")
    suffix = f" ({', '.join(where)})" if where else ""
    out.print(
        f"[bold red]Error[/]{escape(suffix)}: "
        f"{escape(str(error.get('type')))}: {escape(str(error.get('message')))}"
    )
    if error.get("traceback"):
        out.print(escape(str(error["traceback"]).rstrip()), soft_wrap=True)


@runs_cli.command("cancel")
def runs_cancel(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="ID", help="Run id.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")],
    actor: ActorOpt = None,
    db: DbOpt = None,
) -> None:
    """Cancel a run: at once if it waits, at its next await if it is running."""
    with existing_store(db_url(ctx, db)) as store:
        run = store.cancel(run_id, actor=actor or default_actor(), reason=reason)
    if run.state is RunState.CANCELLED:
        out.print(f"run {run.id} cancelled")
    elif run.state is RunState.RUNNING:
        out.print(f"run {run.id} is running: cancel requested, it stops at its next await")
    else:
        raise InvalidInput(f"run {run.id} already {run.state.value}: nothing to cancel")


# -- entry point ---------------------------------------------------------------------------


def is_database_error(exc: BaseException) -> bool:
    module = type(exc).__module__
    return isinstance(exc, sqlite3.Error) or module.startswith(
        ("sqlalchemy", "psycopg", "psycopg_pool", "alembic")
    )


def describe(exc: BaseException) -> str:
    """An exception as one line; SQLAlchemy's wrapper gives way to the driver's own error."""
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException):
        exc = orig
    return f"{type(exc).__name__}: {exc}"


def fail(message: str, code: int = 2) -> int:
    err.print(f"error: {' '.join(message.split())}", markup=False)
    return code


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    try:
        result = cli(args=argv, prog_name="greenroom", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        out.print(exc.format_message(), markup=False, highlight=False)
        return 2
    except ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        return fail(f"{where}{exc.format_message()} (see --help)")
    except GreenroomError as exc:
        return fail(str(exc))
    except (KeyboardInterrupt, typer.Abort):
        return fail("interrupted", 130)
    except Exception as exc:
        if is_database_error(exc) or isinstance(exc, OSError):
            return fail(describe(exc))
        if os.environ.get("GREENROOM_DEBUG"):
            raise
        return fail(
            f"internal error: {type(exc).__name__}: {exc} (GREENROOM_DEBUG=1 shows the traceback)",
            1,
        )
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
