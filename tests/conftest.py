"""Fixtures: a fresh database per test, on SQLite and on PostgreSQL.

PostgreSQL tests use GREENROOM_TEST_PG (default postgresql://postgres@127.0.0.1:5432/postgres):
each test gets its own database cloned from a migrated template. Without a server they skip with
the reason; with GREENROOM_REQUIRE_POSTGRES=1 (set in CI) they fail instead. SQLite tests get a
copy of a migrated file the same way.

A clone takes the server 0.3-0.5 s, about 5 minutes of a run's 700 PostgreSQL tests: a thread
clones the next databases while no PostgreSQL test runs (`_Clones`), e.g. beside a test's SQLite
twin. Never beside a PostgreSQL test: a clone is a transaction of the server, and events are read
once every older transaction of the server has ended (docs/events.md), so a clone in progress
would hide a test's fresh events from it.
"""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schema_fuzz

from greenroom import ManualClock
from greenroom.storage import RunStore, open_store

PG_ADMIN_URL = os.environ.get("GREENROOM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_PG = os.environ.get("GREENROOM_REQUIRE_POSTGRES") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The schema tests last: they check what the schema fuzzing met beside the other tests."""
    items.sort(key=lambda item: item.path.name == schema_fuzz.FILE)


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any(item.path.name == schema_fuzz.FILE for item in session.items):
        out = Path(tempfile.mkdtemp(prefix="greenroom-schema-")) / "answers.json"
        session.config.stash[schema_fuzz.Background.KEY] = schema_fuzz.Background(out)


def pytest_unconfigure(config: pytest.Config) -> None:
    background = config.stash.get(schema_fuzz.Background.KEY, None)
    if background is not None:
        background.stop()


def _pg_url(dbname: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


class _Clones:
    """Databases cloned from the template ahead of the tests that take them."""

    AHEAD = 2

    def __init__(self, template: str) -> None:
        self._template = template
        #: Held by a PostgreSQL test while it runs, and by the thread while it clones.
        self.quiet = threading.RLock()
        self._ready: queue.Queue[str] = queue.Queue()
        self._room = threading.Semaphore(self.AHEAD)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._clone, name="test-databases", daemon=True)
        self._thread.start()

    def _clone(self) -> None:
        while True:
            self._room.acquire()
            if self._stopping.is_set():
                return
            name = f"greenroom_test_{secrets.token_hex(6)}"
            while True:
                try:
                    with self.quiet:
                        _pg_admin(f"CREATE DATABASE {name} TEMPLATE {self._template}")
                    break
                except Exception:  # a test restarting the server: again once it is back
                    if self._stopping.is_set():
                        return
                    time.sleep(0.2)
            self._ready.put(name)

    def take(self) -> str:
        name = self._ready.get(timeout=120)
        self._room.release()
        return name

    def close(self) -> None:
        self._stopping.set()
        self._room.release()
        self._thread.join(timeout=30)
        while not self._ready.empty():
            _pg_admin(f"DROP DATABASE IF EXISTS {self._ready.get()} WITH (FORCE)")


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated template database for this test session, dropped at the end."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3):
            pass
    except Exception as exc:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required (GREENROOM_REQUIRE_POSTGRES=1) but: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    from greenroom.storage.migrate import upgrade

    name = f"greenroom_tpl_{secrets.token_hex(4)}"
    _pg_admin(f"CREATE DATABASE {name}")
    try:
        upgrade("postgresql+psycopg://" + _pg_url(name).split("://", 1)[1])
        yield name
    finally:
        _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def assert_summaries_sound(url: str) -> None:
    """Every summary the claim reads agrees with the runs it summarises (checked after every
    test that used a database: a move that forgets its bookkeeping fails the test)."""
    from greenroom.storage import open_backend
    from greenroom.storage.lifecycle.check import check_summaries

    backend = open_backend(url)
    try:
        with backend.transaction(write=False) as tx:
            if not tx.execute(_HAS_RUNS[url.split(":")[0]]):
                return  # the test never made the schema
            drift = check_summaries(tx)
    finally:
        backend.close()
    assert not drift, "summaries drifted from the runs:\n" + "\n".join(d.describe() for d in drift)


_HAS_RUNS = {
    "sqlite": "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'",
    "postgresql": "SELECT 1 FROM pg_tables WHERE tablename = 'runs'",
}


@pytest.fixture(scope="session")
def pg_clones(pg_template: str) -> Iterator[_Clones]:
    clones = _Clones(pg_template)
    try:
        yield clones
    finally:
        clones.close()


@pytest.fixture
def pg_url(pg_clones: _Clones, request: pytest.FixtureRequest) -> Iterator[str]:
    name = pg_clones.take()
    try:
        with pg_clones.quiet:
            yield _pg_url(name)
            if not request.node.get_closest_marker("summaries_unchecked"):
                assert_summaries_sound(_pg_url(name))
    finally:
        _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database, copied for each test (migrating one takes 0.1-0.3 s)."""
    path = tmp_path_factory.mktemp("template") / "greenroom.db"
    open_store(f"sqlite:///{path}").backend.close()
    with sqlite3.connect(path) as conn:  # everything in the file itself, none in its WAL
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture
def sqlite_url(
    sqlite_template: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A migrated database of the test's own, as PostgreSQL tests get."""
    path = tmp_path / "greenroom.db"
    shutil.copyfile(sqlite_template, path)
    yield f"sqlite:///{path}"
    if path.exists() and not request.node.get_closest_marker("summaries_unchecked"):
        assert_summaries_sound(f"sqlite:///{path}")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on both backends."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(db_url: str, clock: ManualClock) -> Iterator[RunStore]:
    """A store on the test's database, on a manual clock."""
    s = open_store(db_url, clock=clock)
    yield s
    s.backend.close()


@pytest.fixture
def api(db_url: str) -> Iterator[Any]:
    """A real API server on loopback over a fresh database (both backends); see api_helpers."""
    from tests.api_helpers import api_setup

    with api_setup(db_url) as setup:
        yield setup
