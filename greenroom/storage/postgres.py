"""PostgreSQL backend: the shared store for many machines. Claims use FOR UPDATE SKIP LOCKED,
idle workers wake on LISTEN/NOTIFY, and worker liveness is an advisory lock held by the worker's
own connection, released by the server the moment that connection drops."""

from __future__ import annotations

import json
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.pq import ExecStatus
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from greenroom.storage.backend import Backend, Column, Liveness, Row, Tx, pyformat

LOCK_NAMESPACE = 0x67726D  # advisory lock class id for worker liveness locks
CHANNEL = "greenroom_ready"
TUPLES_OK = ExecStatus.TUPLES_OK

_sql = lru_cache(maxsize=512)(pyformat)


class _PostgresTx(Tx):
    def __init__(self, cursor: psycopg.Cursor[Row]) -> None:
        self._cursor = cursor  # one for the transaction's statements

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        cur = self._cursor.execute(_sql(sql), params or {})
        # pgresult's status is cheaper than cur.description, which builds column objects.
        result = cur.pgresult
        return cur.fetchall() if result is not None and result.status == TUPLES_OK else []

    def execute_count(self, sql: str, params: dict[str, Any] | None = None) -> int:
        return self._cursor.execute(_sql(sql), params or {}).rowcount

    def execute_many(self, sql: str, params: Sequence[dict[str, Any]]) -> None:
        self._cursor.executemany(_sql(sql), params)

    def rows(
        self, columns: Sequence[Column], rows: Sequence[dict[str, Any]], params: dict[str, Any]
    ) -> str:
        # One JSON parameter: the statement reads the same for any number of rows (its parsing
        # is cached, the server keeps its plan), and encoding JSON costs the client far less
        # than a parameter, or an array element, per value.
        params["rows"] = json.dumps(rows)
        types = ", ".join(f"{name} {sql_type}" for name, sql_type in columns)
        return f"SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS x({types})"


# The server drops a silent peer's session (and so its lock) within about 5 s, and a probe
# never waits on a dead network for minutes.
_LOCK_CONNECTION: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 2,
    "keepalives_interval": 1,
    "keepalives_count": 2,
    "tcp_user_timeout": 3000,
    "connect_timeout": 2,
    "application_name": "greenroom liveness",
    "options": "-c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1"
    " -c tcp_keepalives_count=3 -c tcp_user_timeout=3000",
}


class _AdvisoryLock(Liveness):
    """A session advisory lock on a dedicated connection, probed every PROBE_SECONDS by its own
    thread. The worker stops its runs once no probe has succeeded for STOP_AFTER seconds; others
    hand them out GRACE seconds after declaring it lost, by then it has stopped them. A dropped
    connection is taken again at once, unless a declaring worker took the lock first."""

    PROBE_SECONDS = 0.1
    STOP_AFTER = 0.25
    GRACE = 0.45
    #: Past this without the lock (our old session not yet dropped by the server, say), the
    #: worker gives this identity up: its runs have long been stopped.
    GIVE_UP_AFTER = 5.0

    def __init__(self, conninfo: str, lock_key: int, worker_id: str) -> None:
        self._conninfo = conninfo
        self._key = lock_key
        self._worker_id = worker_id
        confirmed = time.monotonic()
        self._conn: psycopg.Connection[Any] | None = self._connect()
        self._conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, lock_key))
        self._confirmed_at = confirmed
        self._ended = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="greenroom-liveness", daemon=True)
        self._thread.start()

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._conninfo, autocommit=True, **_LOCK_CONNECTION)

    def unconfirmed(self) -> bool:
        return self._ended or time.monotonic() - self._confirmed_at > self.STOP_AFTER

    def ended(self) -> bool:
        return self._ended

    def _keep(self) -> None:
        while not self._closed.is_set():
            self._wait()
            started = time.monotonic()
            if self._probe():
                self._confirmed_at = started  # the lock was held when this probe began
            elif started - self._confirmed_at > self.GIVE_UP_AFTER:
                self._ended = True
            if self._ended:
                return

    def _wait(self) -> None:
        """Until the next probe is due, or at once when the server closes the connection (it
        sends a message, then EOF), so that the lock is taken back within milliseconds."""
        conn = self._conn
        if conn is None or conn.closed:
            self._closed.wait(self.PROBE_SECONDS)
        else:
            select.select([conn.fileno()], [], [], self.PROBE_SECONDS)

    def _probe(self) -> bool:
        """Whether the lock is held; a dropped connection is replaced and the lock taken back
        at once, before another worker's maintenance tick is likely to find it free."""
        if self._conn is not None:
            try:
                self._conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                self._drop()
        try:
            return self._take_back()
        except psycopg.Error:
            return False

    def _take_back(self) -> bool:
        """Take the lock again on a new connection, unless this worker was declared lost."""
        conn = self._connect()
        try:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_NAMESPACE, self._key)
            ).fetchone()
            if not (row and row[0]):
                conn.close()
                return False  # a declaring worker holds it for a moment, or our old session
            # A second statement, so that its snapshot follows the lock: a worker that declared
            # this one lost held the lock until its commit, which this read therefore sees.
            state = conn.execute(
                "SELECT state FROM workers WHERE id = %s", (self._worker_id,)
            ).fetchone()
        except psycopg.Error:
            conn.close()
            raise
        if state is not None and state[0] != "alive":
            conn.close()
            self._ended = True
            return False
        self._conn = conn
        return True

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._drop()


class _Listener(Liveness):
    def __init__(self, conninfo: str, on_notify: Callable[[str], None]) -> None:
        self._conninfo = conninfo
        self._on_notify = on_notify
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="greenroom-listen", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stopped.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self._stopped.is_set():
                        for note in conn.notifies(timeout=0.1):
                            self._on_notify(note.payload)
            except psycopg.OperationalError:
                self._stopped.wait(0.5)  # server restarting: reconnect

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)


class PostgresBackend(Backend):
    skip_locked = "FOR UPDATE SKIP LOCKED"
    for_update = "FOR UPDATE"
    composes_writes = True
    claims_in_one_statement = True
    marks_activity = True
    liveness_grace = _AdvisoryLock.GRACE
    txid_sql = "pg_current_xact_id()::text::bigint"
    # Transactions older than the oldest open one have all committed or aborted: a later
    # commit gets a larger txid, after any cursor over these (docs/events.md, "Order").
    settled_sql = "events.txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint"

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.url = url
        self._pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            # Transactions say BEGIN; a lone statement is its own (`single_statement`).
            kwargs={"row_factory": dict_row, "autocommit": True},
            open=True,
        )

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Row]]:
        conn = None
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError:
            if conn is not None and conn.broken:
                # The server may have dropped every connection (a restart, a failover): test
                # the idle ones now, so that trying again does not take another dead one.
                self._pool.check()
            raise

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Tx]:
        with self._connection() as conn, conn.transaction(), conn.cursor() as cursor:
            yield _PostgresTx(cursor)

    @contextmanager
    def single_statement(self, *, write: bool = True) -> Iterator[Tx]:
        with self._connection() as conn, conn.cursor() as cursor:
            yield _PostgresTx(cursor)

    def sqlalchemy_url(self) -> str:
        return "postgresql+psycopg://" + self.url.split("://", 1)[1]

    def floor(self, expr: str) -> str:
        return f"CAST(FLOOR({expr}) AS BIGINT)"

    def member(self, column: str, param: str) -> str:
        return f"{column} = ANY(:{param})"

    def list_param(self, values: Sequence[Any]) -> object:
        return list(values)

    def hold_liveness(self, lock_key: int, worker_id: str) -> Liveness:
        return _AdvisoryLock(self.url, lock_key, worker_id)

    def take_liveness(self, tx: Tx, lock_keys: Sequence[int]) -> set[int]:
        if not lock_keys:
            return set()
        rows = tx.execute(
            "SELECT key FROM unnest(CAST(:keys AS bigint[])) AS key"
            " WHERE pg_try_advisory_xact_lock(:ns, CAST(key AS integer))",
            {"keys": list(lock_keys), "ns": LOCK_NAMESPACE},
        )
        return {int(row["key"]) for row in rows}

    def alive(self, lock_keys: Sequence[int]) -> set[int]:
        if not lock_keys:
            return set()
        with self.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT objid::bigint AS key FROM pg_locks WHERE locktype = 'advisory' "
                "AND classid = :ns AND objsubid = 2 AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                {"ns": LOCK_NAMESPACE},
            )
        held = {int(row["key"]) for row in rows}
        return held & set(lock_keys)

    def is_conflict(self, exc: BaseException) -> bool:
        return isinstance(
            exc, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure
        )

    def is_data_error(self, exc: BaseException) -> bool:
        # SQLSTATE class 22 (data exception): "unsupported Unicode escape sequence" and kin.
        return isinstance(exc, psycopg.DataError)

    def is_transient(self, exc: BaseException) -> bool:
        # Lost connections, restarts, lock conflicts, waiting too long for a connection.
        return isinstance(exc, psycopg.OperationalError)

    def label_equals(self, key_param: str, value_param: str) -> str:
        return f"(CAST(labels AS jsonb) ->> :{key_param}) = :{value_param}"

    def notify(self, tx: Tx, queue: str) -> None:
        tx.execute(f"SELECT {self.notify_sql(':queue')}", {"queue": queue})

    def notify_sql(self, queue: str) -> str:
        return f"pg_notify('{CHANNEL}', {queue})"

    def listen(self, on_notify: Callable[[str], None]) -> Liveness | None:
        return _Listener(self.url, on_notify)

    def close(self) -> None:
        self._pool.close()
