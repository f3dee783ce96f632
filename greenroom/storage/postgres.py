"""PostgreSQL backend: the shared store for many machines. Claims use FOR UPDATE SKIP LOCKED,
idle workers wake on LISTEN/NOTIFY, and worker liveness is an advisory lock held by a process of the
worker's own, released by the server the moment its connection drops."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
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

from greenroom.storage import liveness_process, lock_processes
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
    """A session advisory lock held by a process of the worker's own (liveness_process.py), which
    confirms it every 0.1 s whatever this process's threads do with the GIL. The worker stops its
    runs once no confirmation is STOP_AFTER seconds old; others hand them out GRACE seconds after
    declaring it lost, by then it has stopped them."""

    STOP_AFTER = 0.25
    GRACE = 0.45
    #: How long the first lock may take (a connection, the lock, one read).
    START_TIMEOUT = 15.0

    def __init__(self, conninfo: str, lock_key: int, worker_id: str) -> None:
        self._config = {
            "conninfo": conninfo,
            "namespace": LOCK_NAMESPACE,
            "key": lock_key,
            "worker_id": worker_id,
        }
        self._confirmed_at = 0.0
        self._ended = False
        self._failure: str | None = None
        self._pending = b""
        self._process = self._spawn(again=False)
        deadline = time.monotonic() + self.START_TIMEOUT
        while not (self._confirmed_at or self._ended):
            assert self._process.stdout is not None
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._process.stdout], [], [], left)[0]:
                self._failure = "the liveness lock was not taken in time"
                break
            self._read()
        if self._ended or not self._confirmed_at:
            self.close()
            raise psycopg.OperationalError(self._failure or "the liveness lock was not taken")

    def _spawn(self, *, again: bool) -> subprocess.Popen[bytes]:
        process = lock_processes.spawn()
        assert process.stdin is not None and process.stdout is not None
        with contextlib.suppress(BrokenPipeError):  # it died at once: its stdout says so
            process.stdin.write(json.dumps({**self._config, "again": again}).encode() + b"\n")
            process.stdin.flush()
        os.set_blocking(process.stdout.fileno(), False)
        return process

    def _read(self) -> bool:
        """Take in what the lock's process said; whether it said anything or ended."""
        assert self._process.stdout is not None
        try:
            data = os.read(self._process.stdout.fileno(), 65536)
        except BlockingIOError:
            return False
        if not data:  # the process is gone: the lock with it
            self._replace()
            return True
        *lines, self._pending = (self._pending + data).split(b"\n")
        for line in lines:
            kind, _, rest = line.decode().partition(" ")
            if kind == "c":
                self._confirmed_at = max(self._confirmed_at, float(rest))
            elif kind in ("e", "x"):
                self._ended = True
                self._failure = rest or None
        return True

    def _replace(self) -> None:
        """A lock process that died (killed by someone) is replaced by one that takes the lock
        back, as after a dropped connection: unless this worker was declared lost meanwhile."""
        self._process.wait()
        self._close_pipes()
        self._pending = b""
        if not self._confirmed_at:  # it never took the lock: the first start failed
            self._failure = f"the liveness lock's process exited ({self._process.returncode})"
            self._ended = True
        elif time.monotonic() - self._confirmed_at > liveness_process.GIVE_UP_AFTER:
            self._ended = True  # as a lock process gives the identity up itself
        if not self._ended:
            self._process = self._spawn(again=True)

    def unconfirmed(self) -> bool:
        while not self._ended and self._read():
            pass
        return self._ended or time.monotonic() - self._confirmed_at > self.STOP_AFTER

    def ended(self) -> bool:
        self.unconfirmed()
        return self._ended

    def _close_pipes(self) -> None:
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def close(self) -> None:
        """Release the lock: its process drops the connection and exits once stdin closes."""
        self._close_pipes()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


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
