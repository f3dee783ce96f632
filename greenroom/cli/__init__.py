"""The `greenroom` command: parses arguments, calls the library, prints with Rich.

Every error a user can cause is one line on stderr with exit code 2, never a traceback
(GREENROOM_DEBUG=1 shows tracebacks of unexpected errors). This module holds the Typer app,
the options and helpers every command shares, and the entry point; the commands live in
engine (db, worker, enqueue, workers, demo), runs, controls (queues, pauses, tenants),
admin (errors, audit), events and schedules.

Commands act on a database (--db), and the ones that have a remote mode act on a greenroom
server through its API when given --url (or $GREENROOM_URL). Those are written once, against
`operations.Operations`: the API's operations in the API's shapes, which the HTTP client
implements and `operations.LocalOperations` implements over a store, so that a command prints
the same (its --json: the API's JSON) on a database and through a server. `remote_client` says
which one a command line asks for; the commands with no remote mode (db, worker, doctor,
secrets reseal…) open the database with `existing_store`.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from typer._click.core import ParameterSource
from typer._click.exceptions import ClickException, NoArgsIsHelpError

from greenroom.app import App
from greenroom.errors import ConfigError, GreenroomError, InvalidInput, NotFound
from greenroom.hints import command
from greenroom.rules import error_message
from greenroom.settings import DEFAULT_DB, load_settings, redact
from greenroom.storage import RunStore, open_store

if TYPE_CHECKING:
    from greenroom.client import Client


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

DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL: sqlite:///path or postgresql://… (default: the app's db setting, "
        "else $GREENROOM_DB or sqlite:///.greenroom/greenroom.db)",
        show_default=False,
    ),
]
AppOpt = Annotated[str, typer.Option("--app", help="Your App, as module:attribute.")]
ActorOpt = Annotated[
    str | None,
    typer.Option(help="Who acts, for the audit log (default: $GREENROOM_ACTOR, else user@host)."),
]
ReasonOpt = Annotated[str, typer.Option(help="Why (recorded in the audit log).")]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="GREENROOM_URL",
        help="Act on this greenroom server through its API instead of on a database "
        "(every command but db, worker, api, up, demo, demo-saas, doctor, events prune,"
        " secrets reseal, licenses pass).",
        show_default=False,
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="GREENROOM_API_KEY",
        help="API key for --url (prefer $GREENROOM_API_KEY: options show in process lists).",
        show_default=False,
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print JSON instead of a table: the API's shapes, for scripts (… --json | jq).",
    ),
]


def default_actor() -> str:
    import getpass
    import socket

    return os.environ.get("GREENROOM_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


@cli.callback()
def root(ctx: typer.Context, db: DbOpt = None, url: UrlOpt = None, key: KeyOpt = None) -> None:
    """Durable, multi-tenant browser-automation workflows."""
    ctx.obj = {"db": db}


# -- helpers -------------------------------------------------------------------------------


def _db_option(ctx: typer.Context, db: str | None) -> str | None:
    if db:
        return db
    parent = ctx.parent
    while parent is not None:
        given = parent.params.get("db")
        if isinstance(given, str) and given:
            return given
        parent = parent.parent
    return None


def _url_given(ctx: typer.Context) -> bool:
    """Whether --url was on the command line (not only in the environment)."""
    root = ctx.find_root()
    return bool(root.params.get("url")) and (
        root.get_parameter_source("url") is not ParameterSource.ENVIRONMENT
    )


def given_db(ctx: typer.Context, db: str | None) -> str | None:
    """The --db given on this command, else on a parent command, else None. A command that
    gets here with --url on the command line has no remote mode: it says so."""
    if _url_given(ctx):
        raise InvalidInput(
            f"`{ctx.command_path}` has no remote mode: it acts on a database (--db), not --url"
        )
    return _db_option(ctx, db)


def remote_client(
    ctx: typer.Context, db: str | None, local_only: dict[str, object] | None = None
) -> Client | None:
    """A client for the server of --url (or $GREENROOM_URL), or None to act on the database.
    An explicit --db wins over $GREENROOM_URL; `local_only` are options (by flag) that only
    mean something on a database."""
    root = ctx.find_root()
    url = root.params.get("url")
    if not url or (_db_option(ctx, db) and not _url_given(ctx)):
        return None
    if _db_option(ctx, db):
        raise InvalidInput("give --url or --db, not both")
    for flag, value in (local_only or {}).items():
        if value is not None and value is not False:
            raise InvalidInput(f"{flag} is not available with --url")
    key = root.params.get("key")
    if not key:
        raise InvalidInput("--url needs an API key: set $GREENROOM_API_KEY or pass --key")
    from greenroom.client import Client

    return Client(str(url), str(key))


def hint(ctx: typer.Context, *args: str) -> str:
    """A command to run next, as it works when pasted: `uv run greenroom`, with the --db or
    --url this command was given (a key given by --key is left for the user to add)."""
    root = ctx.find_root()
    where: tuple[str, ...] = ()
    if _url_given(ctx):
        where = ("--url", str(root.params["url"]))
    elif db := _db_option(ctx, None):
        where = ("--db", redact(db))
    return command(*where, *args)


def print_json(found: BaseModel | Sequence[BaseModel]) -> None:
    """Print a list (or one item) of the API's shapes as one JSON document: what --json gives,
    the same on a database and through the API."""
    data = (
        found.model_dump(mode="json")
        if isinstance(found, BaseModel)
        else [item.model_dump(mode="json") for item in found]
    )
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def db_url(ctx: typer.Context, db: str | None) -> str:
    """The database a command acts on. One with no remote mode, run with only $GREENROOM_URL
    set, says so rather than look for a default database that is not there."""
    given = given_db(ctx, db)
    if given:
        return given
    if ctx.find_root().params.get("url") and not os.environ.get("GREENROOM_DB"):
        raise InvalidInput(
            f"`{ctx.command_path}` has no remote mode ($GREENROOM_URL is set): it acts on a "
            "database: pass --db or set $GREENROOM_DB"
        )
    return load_settings().db


def quiet_driver_logs() -> None:
    """The pool logs each failed connection attempt; a command reports the failure once."""
    logging.getLogger("psycopg").addHandler(logging.NullHandler())


def sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def missing_database(path: Path, url: str) -> NotFound:
    return NotFound(
        f"no database at {path}: create it with `{command('db', 'upgrade', '--db', url)}`, "
        "or check --db and $GREENROOM_DB"
    )


def require_database(url: str) -> None:
    """A SQLite file given by --db or $GREENROOM_DB must exist: a typo would otherwise make a
    new, empty database and the command would act on nothing. The default location
    (.greenroom/greenroom.db, the quick start's) is created when missing, as is any file by
    `greenroom db upgrade`."""
    path = sqlite_path(url)
    if path is None or path.is_file():
        return
    default = sqlite_path(DEFAULT_DB)
    assert default is not None
    if path.resolve() != default.resolve():
        raise missing_database(path, url)


@contextmanager
def existing_store(url: str) -> Iterator[RunStore]:
    """A store over a database that must already exist and be migrated."""
    quiet_driver_logs()
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise missing_database(path, url)
    try:
        store = open_store(url, migrate=False)
    except ConfigError as exc:
        if "schema is not current" not in str(exc):
            raise
        upgrade = command("db", "upgrade", "--db", redact(url))
        raise ConfigError(f"database schema is not current: run `{upgrade}`") from None
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


def freeze_start_up() -> None:
    """A service process keeps what it made at start-up (modules, the app, its settings) until
    it exits: moved out of the collector's reach, full collections walk only what runs make.
    Unfrozen, they cost a drain of no-op runs 0.05 ms a run, 0.17 with tracing on; frozen 0.02
    and 0.05 (bench/README.md, finding 32)."""
    gc.collect()
    gc.freeze()


def configure(app: App, **overrides: object) -> None:
    """Apply command-line settings over the app's own, validated like any settings."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return
    settings = load_settings(**{**app.settings.model_dump(), **given})
    if settings.db != app.settings.db:
        app.close()
    app.settings = settings


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
    """One line on stderr; control characters (a bad value may be quoted) are escaped."""
    line = " ".join(message.split())
    line = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in line)
    err.print(f"error: {line}", markup=False)
    return code


#: The modules that define each top-level command. A command imports only its own module(s):
#: Typer inspects the signature of every command it knows at each start, which cost a worker
#: about as much as importing the engine.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("db", "worker", "enqueue", "workers", "demo"), ("engine",)),
    "runs": ("runs",),
    "schedules": ("schedules",),
    "events": ("events",),
    "licenses": ("licenses",),
    "reports": ("reports",),
    **dict.fromkeys(("subscriptions", "deliveries"), ("deliveries",)),
    **dict.fromkeys(("queues", "pause", "resume", "pauses"), ("controls",)),
    **dict.fromkeys(("tenants", "keys", "integrations", "secrets"), ("controls", "accounts")),
    **dict.fromkeys(("errors", "audit", "doctor"), ("admin",)),
    "demo-saas": ("saas",),
    **dict.fromkeys(("api", "up"), ("service",)),
}
ALL_MODULES = (
    "accounts",
    "admin",
    "controls",
    "deliveries",
    "engine",
    "events",
    "licenses",
    "reports",
    "runs",
    "saas",
    "schedules",
    "service",
)
#: Options of the root command that take a value (`--db URL`), to find the command after them.
ROOT_VALUE_OPTIONS = frozenset({"--db", "--url", "--key"})


def command_name(argv: Sequence[str]) -> str | None:
    """The top-level command in argv (None for none, e.g. --help)."""
    args = iter(argv)
    for arg in args:
        if arg in ROOT_VALUE_OPTIONS:
            next(args, None)
        elif not arg.startswith("-"):
            return arg
        elif arg == "--":
            return next(args, None)
    return None


def load_commands(argv: Sequence[str]) -> None:
    """Register the command argv names on `cli`; all commands for help or an unknown name."""
    name = command_name(argv)
    for module in COMMAND_MODULES.get(name or "", ALL_MODULES):
        importlib.import_module(f"greenroom.cli.{module}")


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    load_commands(sys.argv[1:] if argv is None else argv)
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
    except ValidationError as exc:
        return fail(
            "; ".join(f"{'.'.join(map(str, e['loc']))}: {error_message(e)}" for e in exc.errors())
        )
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


# The commands register themselves on `cli` when their module is imported (`load_commands`).
__all__ = [
    "accounts",
    "admin",
    "cli",
    "controls",
    "engine",
    "events",
    "main",
    "run",
    "runs",
    "saas",
    "schedules",
    "service",
]
