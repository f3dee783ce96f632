"""Storage: one run store over SQLite (embedded default) or PostgreSQL, chosen by URL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from greenroom.clock import Clock
from greenroom.errors import ConfigError
from greenroom.storage.backend import Backend
from greenroom.storage.base import RunFilter
from greenroom.storage.store import RunStore

__all__ = [
    "SCHEMA_REVISION",
    "Backend",
    "DbCall",
    "RunFilter",
    "RunStore",
    "open_backend",
    "open_store",
    "schema_revision",
]

#: Runs a blocking store call off the event loop (a worker's database threads).
DbCall = Callable[..., Awaitable[Any]]

_POSTGRES_URLS = ("postgresql://", "postgres://")

#: The newest migration; a test checks it against Alembic's head.
SCHEMA_REVISION = "0019"


def open_backend(url: str, *, pool_size: int = 8) -> Backend:
    """The backend for a URL; drivers are imported only when their backend is used."""
    if url.startswith("sqlite:///"):
        from greenroom.storage.sqlite import SQLiteBackend

        return SQLiteBackend(url)
    if url.startswith(_POSTGRES_URLS):
        try:
            from greenroom.storage.postgres import PostgresBackend
        except ImportError:
            raise ConfigError(
                "PostgreSQL support needs psycopg: pip install 'greenroom[postgres]'"
            ) from None
        return PostgresBackend(url, pool_size=pool_size)
    raise ConfigError(
        f"unsupported database URL {url!r}: use sqlite:///path/to/file.db or postgresql://…"
    )


def start_worker_liveness(url: str) -> None:
    """Begin what a worker on this database must hold before it claims (on PostgreSQL, its
    lock process), so that it gets ready while the worker opens its store."""
    if url.startswith(_POSTGRES_URLS):
        from greenroom.storage import lock_processes

        lock_processes.start_ahead()


def open_store(
    url: str, *, clock: Clock | None = None, migrate: bool = True, pool_size: int = 8
) -> RunStore:
    """Open the store; with `migrate`, bring the schema up to date first."""
    backend = open_backend(url, pool_size=pool_size)
    if schema_revision(backend) != SCHEMA_REVISION:
        if not migrate:
            backend.close()
            raise ConfigError("database schema is not current: run `uv run greenroom db upgrade`")
        from greenroom.storage.migrate import upgrade  # Alembic is slow to import: only here

        upgrade(backend.sqlalchemy_url())
    return RunStore(backend, clock)


def schema_revision(backend: Backend) -> str | None:
    try:
        with backend.transaction(write=False) as tx:
            rows = tx.execute("SELECT version_num FROM alembic_version")
    except Exception:  # no such table yet: a new database
        return None
    return rows[0]["version_num"] if rows else None
