"""Storage: one run store over SQLite (embedded default) or PostgreSQL, chosen by URL."""

from __future__ import annotations

from greenroom.clock import Clock
from greenroom.errors import ConfigError
from greenroom.storage.backend import Backend
from greenroom.storage.base import RunFilter
from greenroom.storage.store import RunStore

__all__ = ["Backend", "RunFilter", "RunStore", "open_backend", "open_store"]


def open_backend(url: str, *, pool_size: int = 8) -> Backend:
    """The backend for a URL; drivers are imported only when their backend is used."""
    if url.startswith("sqlite:///"):
        from greenroom.storage.sqlite import SQLiteBackend

        return SQLiteBackend(url)
    if url.startswith(("postgresql://", "postgres://")):
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


def open_store(
    url: str, *, clock: Clock | None = None, migrate: bool = True, pool_size: int = 8
) -> RunStore:
    """Open the store; with `migrate`, bring the schema up to date first."""
    from greenroom.storage.migrate import current_revision, head_revision, upgrade

    backend = open_backend(url, pool_size=pool_size)
    sa_url = backend.sqlalchemy_url()
    if current_revision(sa_url) != head_revision():
        if not migrate:
            backend.close()
            raise ConfigError("database schema is not current: run `greenroom db upgrade`")
        upgrade(sa_url)
    return RunStore(backend, clock)
