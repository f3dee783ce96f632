"""SQLite backend: the embedded default. WAL, busy timeout, BEGIN IMMEDIATE for writes,
and OS file locks (released by the kernel when a process dies) for worker liveness."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from greenroom.errors import ConfigError
from greenroom.storage.backend import ANY_QUEUE, Backend, Column, Liveness, Row, Tx


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


class _SQLiteTx(Tx):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        return self._conn.execute(sql, params or {}).fetchall()

    def execute_count(self, sql: str, params: dict[str, Any] | None = None) -> int:
        return self._conn.execute(sql, params or {}).rowcount

    def execute_many(self, sql: str, params: Sequence[dict[str, Any]]) -> None:
        self._conn.executemany(sql, params)

    def rows(
        self, columns: Sequence[Column], rows: Sequence[dict[str, Any]], params: dict[str, Any]
    ) -> str:
        # One JSON parameter, not one per value: SQLite finds each named parameter in a list of
        # the statement's names, so preparing a statement with 22,000 of them (2,000 rows of
        # 11 columns) took 0.7 s; and the statement's text is the same for any number of rows.
        # Text as it is (not \u escapes): a lone surrogate is refused as it was when bound.
        params["rows"] = json.dumps(rows, ensure_ascii=False)
        values = ", ".join(f"json_extract(value, '$.{name}')" for name, _ in columns)
        return f"SELECT {values} FROM json_each(:rows)"


class _FileLock(Liveness):
    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def close(self) -> None:
        if self._fd >= 0:
            self._path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = -1


class SQLiteBackend(Backend):
    def __init__(self, url: str, *, busy_timeout: float = 30.0) -> None:
        self.url = url
        path = url.removeprefix("sqlite:///")
        if not path or path == url:
            raise ConfigError(f"not a SQLite URL: {url!r} (expected sqlite:///path/to/file.db)")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._locks_dir = self.path.parent / f"{self.path.name}.workers"
        self._locks_dir.mkdir(exist_ok=True)
        # One connection per process, shared by threads under a lock: SQLite serializes writers
        # anyway, and a single connection avoids lock upgrades between our own threads.
        self._conn = sqlite3.connect(
            self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = _dict_row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._mutex = threading.Lock()

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Tx]:
        with self._mutex:
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _SQLiteTx(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def sqlalchemy_url(self) -> str:
        return f"sqlite:///{self.path}"

    def member(self, column: str, param: str) -> str:
        return f"{column} IN (SELECT value FROM json_each(:{param}))"

    def list_param(self, values: Sequence[Any]) -> object:
        return json.dumps(list(values))

    def is_transient(self, exc: BaseException) -> bool:
        # "database is locked" past the busy timeout, a disk briefly full or unreadable.
        return isinstance(exc, sqlite3.OperationalError)

    def label_equals(self, key_param: str, value_param: str) -> str:
        return f"json_extract(labels, '$.\"' || :{key_param} || '\"') = :{value_param}"

    def _lock_path(self, lock_key: int) -> Path:
        return self._locks_dir / f"{lock_key}.lock"

    def hold_liveness(self, lock_key: int, worker_id: str) -> Liveness:
        return _FileLock(self._lock_path(lock_key))

    def alive(self, lock_keys: Sequence[int]) -> set[int]:
        alive: set[int] = set()
        for key in lock_keys:
            path = self._lock_path(key)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # never created or removed at a clean stop: not alive
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                alive.add(key)
            else:
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return alive

    def listen(self, on_notify: Callable[[str], None]) -> Liveness | None:
        return _CommitWatcher(self.path, on_notify)

    def close(self) -> None:
        with self._mutex:
            self._conn.close()


class _CommitWatcher(Liveness):
    """SQLite has no NOTIFY: watch PRAGMA data_version, which moves when another connection
    commits, so idle workers see new runs within milliseconds without querying the tables."""

    INTERVAL = 0.005

    def __init__(self, path: Path, on_notify: Callable[[str], None]) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False)
        self._on_notify = on_notify
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="greenroom-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        last = None
        while not self._stopped.wait(self.INTERVAL):
            try:
                version = self._conn.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                continue
            if last is not None and version != last:
                self._on_notify(ANY_QUEUE)
            last = version

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)
        self._conn.close()
