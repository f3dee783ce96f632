"""Schema migrations with Alembic: upgrade to head, and check whether a database is current."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

SCRIPTS = Path(__file__).with_name("migrations")


def alembic_config(sqlalchemy_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    # ConfigParser interpolates %: a percent-encoded password must not break the URL.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    assert head is not None
    return head


def current_revision(sqlalchemy_url: str) -> str | None:
    engine = create_engine(sqlalchemy_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade(sqlalchemy_url: str) -> None:
    """Bring the schema to the newest revision (a no-op when it is current)."""
    engine = create_engine(sqlalchemy_url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two nodes upgrading at once: the second waits, then finds nothing to do.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(6779502)")
            config = alembic_config(sqlalchemy_url)
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    finally:
        engine.dispose()
