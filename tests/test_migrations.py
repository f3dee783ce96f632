"""The schema defined once (schema.metadata) equals the Alembic migrations applied in order."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import _pg_admin, _pg_url
from sqlalchemy import Column, Connection, Index, TextClause, create_engine, text

from greenroom import ConfigError
from greenroom.storage import open_store
from greenroom.storage.migrate import alembic_config, current_revision, head_revision, upgrade
from greenroom.storage.schema import metadata

Schema = dict[str, Any]


def _sa_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def empty_pg(pg_template: str) -> Iterator[str]:
    """A database with no schema at all (pg_template only makes absent servers skip)."""
    name = f"greenroom_empty_{secrets.token_hex(6)}"
    _pg_admin(f"CREATE DATABASE {name}")
    try:
        yield _sa_url(_pg_url(name))
    finally:
        _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLAlchemy URL of an empty database, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    return str(request.getfixturevalue("empty_pg"))


@pytest.fixture
def second_empty_db(empty_db: str, tmp_path: Path) -> Iterator[str]:
    """Another empty database on the same backend as `empty_db`."""
    if empty_db.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'other.db'}"
        return
    name = f"greenroom_empty_{secrets.token_hex(6)}"
    _pg_admin(f"CREATE DATABASE {name}")
    try:
        yield _sa_url(_pg_url(name))
    finally:
        _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _with_conn(url: str, fn: Any) -> Any:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            return fn(conn)
    finally:
        engine.dispose()


# -- how each backend describes a schema ---------------------------------------------------


def _sqlite_index(conn: Connection, name: str, sql: str | None) -> Schema:
    info = conn.exec_driver_sql(f"PRAGMA index_xinfo('{name}')").all()
    where = None
    if sql is not None and " WHERE " in sql:
        where = " ".join(sql.split(" WHERE ", 1)[1].split())
    return {"columns": [(r[2], r[3]) for r in info if r[5]], "where": where}


def _sqlite_schema(conn: Connection) -> Schema:
    out: Schema = {}
    tables = conn.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        " AND name NOT LIKE 'sqlite_%' AND name <> 'alembic_version' ORDER BY name"
    ).scalars()
    for table in list(tables):
        columns = conn.exec_driver_sql(f"PRAGMA table_xinfo('{table}')").all()
        fks = conn.exec_driver_sql(f"PRAGMA foreign_key_list('{table}')").all()
        indexes = {}
        for row in conn.exec_driver_sql(f"PRAGMA index_list('{table}')").all():
            name, unique, origin = row[1], row[2], row[3]
            sql = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = ?", (name,)
            ).scalar()
            indexes[name] = {"unique": unique, "origin": origin, **_sqlite_index(conn, name, sql)}
        out[table] = {
            "columns": [tuple(c[1:]) for c in columns],
            "foreign_keys": sorted(tuple(f[2:]) for f in fks),
            "indexes": indexes,
        }
    return out


def _postgres_schema(conn: Connection) -> Schema:
    columns = conn.execute(
        text(
            "SELECT table_name, column_name, data_type, character_maximum_length, is_nullable,"
            " column_default FROM information_schema.columns WHERE table_schema = 'public'"
            " AND table_name <> 'alembic_version' ORDER BY table_name, ordinal_position"
        )
    ).all()
    indexes = conn.execute(
        text(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            " AND tablename <> 'alembic_version'"
        )
    ).all()
    constraints = conn.execute(
        text(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text"
            " <> 'alembic_version'"
        )
    ).all()
    sequences = conn.execute(
        text("SELECT sequence_name, data_type FROM information_schema.sequences")
    ).all()
    return {
        "columns": [tuple(r) for r in columns],
        "indexes": sorted(tuple(r) for r in indexes),
        "constraints": sorted(tuple(r) for r in constraints),
        "sequences": sorted(tuple(r) for r in sequences),
    }


def describe(url: str) -> Schema:
    def read(conn: Connection) -> Schema:
        if conn.dialect.name == "sqlite":
            return _sqlite_schema(conn)
        return _postgres_schema(conn)

    result: Schema = _with_conn(url, read)
    return result


def _expected_sqlite_indexes() -> dict[str, Schema]:
    """The indexes of schema.metadata as SQLite's PRAGMA index_xinfo describes them."""
    out: dict[str, Schema] = {}
    for table in metadata.tables.values():
        for index in table.indexes:
            out[index.name or ""] = _index_shape(index)
    return out


def _index_shape(index: Index) -> Schema:
    columns = []
    for element in index.expressions:
        if isinstance(element, Column):
            columns.append((element.name, 0))
        else:
            assert isinstance(element, TextClause)
            name, _, order = element.text.partition(" ")
            columns.append((name, int(order.strip().upper() == "DESC")))
    where = index.dialect_options["sqlite"]["where"]
    return {
        "unique": int(bool(index.unique)),
        "columns": columns,
        "where": None if where is None else " ".join(str(where).split()),
    }


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")
def test_migrations_produce_exactly_the_declared_schema(empty_db: str) -> None:
    upgrade(empty_db)
    assert current_revision(empty_db) == head_revision()

    def diff(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, metadata))

    differences = _with_conn(empty_db, diff)
    if empty_db.startswith("postgresql"):
        assert differences == []
        return
    # SQLite reflection drops the DESC of index columns, so autogenerate reports those indexes as
    # changed; everything else must match. Those indexes are compared through PRAGMAs below.
    desc_indexes = {
        index.name
        for table in metadata.tables.values()
        for index in table.indexes
        if any(isinstance(e, TextClause) for e in index.expressions)
    }
    assert desc_indexes, "the schema is expected to have DESC indexes"
    unexplained = [d for d in differences if d[0] not in ("add_index", "remove_index")]
    unexplained += [
        d for d in differences if d[0].endswith("index") and d[1].name not in desc_indexes
    ]
    assert unexplained == []
    actual = {
        name: {k: v for k, v in index.items() if k != "origin"}
        for table in describe(empty_db).values()
        for name, index in table["indexes"].items()
        if index["origin"] == "c"
    }
    assert actual == _expected_sqlite_indexes()


def test_create_all_and_migrations_build_the_same_database(
    empty_db: str, second_empty_db: str
) -> None:
    upgrade(empty_db)
    _with_conn(second_empty_db, metadata.create_all)
    migrated, created = describe(empty_db), describe(second_empty_db)
    assert migrated, "the migrated database has no tables"
    assert migrated == created


def _functions_and_types(url: str) -> set[str]:
    """greenroom's functions and types (PostgreSQL only: the claim function, migration 0006)."""
    if not url.startswith("postgresql"):
        return set()
    sql = (
        "SELECT proname FROM pg_proc WHERE starts_with(proname, 'greenroom')"
        " UNION SELECT typname FROM pg_type WHERE starts_with(typname, 'greenroom')"
    )
    return _with_conn(url, lambda conn: {r[0] for r in conn.exec_driver_sql(sql)})


def test_upgrade_is_idempotent_and_downgrade_removes_everything(empty_db: str) -> None:
    upgrade(empty_db)
    before = describe(empty_db)
    if empty_db.startswith("postgresql"):
        assert {"greenroom_claim", "greenroom_candidate"} <= _functions_and_types(empty_db)
    upgrade(empty_db)
    assert describe(empty_db) == before
    command.downgrade(alembic_config(empty_db), "base")
    assert not any(describe(empty_db).values()), "tables left after downgrade"
    assert not _functions_and_types(empty_db), "functions or types left after downgrade"
    assert current_revision(empty_db) is None


def test_opening_an_old_database_without_migrating_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with pytest.raises(ConfigError, match="greenroom db upgrade"):
        open_store(url, migrate=False)
    store = open_store(url)  # migrates
    try:
        assert current_revision(url) == head_revision()
    finally:
        store.backend.close()


def test_schema_revision_constant_is_alembic_head() -> None:
    from greenroom.storage import SCHEMA_REVISION

    assert head_revision() == SCHEMA_REVISION
