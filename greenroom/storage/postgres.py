"""PostgreSQL backend: the shared store for many machines. Claims use FOR UPDATE SKIP LOCKED,
idle workers wake on LISTEN/NOTIFY, and worker liveness is an advisory lock held by the worker's
own connection, released by the server the moment that connection drops."""

from __future__ import annotations

import json
import threading
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


class _AdvisoryLock(Liveness):
    """An advisory lock held by a dedicated connection for as long as the worker lives."""

    def __init__(self, conninfo: str, lock_key: int) -> None:
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, lock_key))

    def healthy(self) -> bool:
        try:
            self.conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def close(self) -> None:
        self.conn.close()


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
    def single_statement(self) -> Iterator[Tx]:
        with self._connection() as conn, conn.cursor() as cursor:
            yield _PostgresTx(cursor)

    def sqlalchemy_url(self) -> str:
        return "postgresql+psycopg://" + self.url.split("://", 1)[1]

    def member(self, column: str, param: str) -> str:
        return f"{column} = ANY(:{param})"

    def list_param(self, values: Sequence[Any]) -> object:
        return list(values)

    def hold_liveness(self, lock_key: int) -> Liveness:
        return _AdvisoryLock(self.url, lock_key)

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
