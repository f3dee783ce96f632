"""The contract between the run store and a database: transactions, SQL dialect, worker liveness."""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

Row = dict[str, Any]
#: A column of rows passed as parameters (`Tx.rows`): its name and SQL type.
Column = tuple[str, str]

#: Notification payload meaning "something changed; any queue may have work".
ANY_QUEUE = "*"


class Tx(abc.ABC):
    """An open transaction; statements use :name parameters."""

    @abc.abstractmethod
    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[Row]:
        """Run one statement; rows it returns (empty for statements without rows)."""

    @abc.abstractmethod
    def execute_count(self, sql: str, params: dict[str, Any] | None = None) -> int:
        """Run one statement; the number of rows it changed."""

    @abc.abstractmethod
    def execute_many(self, sql: str, params: Sequence[dict[str, Any]]) -> None: ...

    @abc.abstractmethod
    def rows(
        self, columns: Sequence[Column], rows: Sequence[dict[str, Any]], params: dict[str, Any]
    ) -> str:
        """A query whose result is `rows` (dicts keyed by column name, values JSON can hold),
        to name in a `WITH w(...) AS (...)`; its parameters are added to `params`. One
        statement for many rows costs little more than one for a single row."""


class Liveness(abc.ABC):
    """Held by a live worker for its whole life; released by the OS or server when it dies."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def unconfirmed(self) -> bool:
        """Whether the worker cannot prove right now that it holds its lock: it must stop
        executing its runs and claim none until it can (see docs/durability.md, "Liveness")."""
        return False

    def ended(self) -> bool:
        """Whether the lock is gone for good (another worker declared this one dead): the
        worker abandons its runs and takes a new identity."""
        return False


class Backend(abc.ABC):
    """A database greenroom can run on, chosen by URL."""

    url: str
    #: Appended to SELECTs that claim rows: skip rows other transactions hold.
    skip_locked: str = ""
    #: Appended to SELECTs that lock one row for update.
    for_update: str = ""
    #: Whether one statement can hold several writes (data-modifying WITH queries), so that a
    #: common operation can be one statement that is its own transaction: one round trip.
    composes_writes: bool = False
    #: Whether the database claims in one statement (a function the migrations install).
    claims_in_one_statement: bool = False
    #: Whether the database marks license activity days itself (functions the migrations
    #: install), so that a save merges a page into the stored rows in one statement.
    marks_activity: bool = False
    #: Seconds between declaring a worker lost and handing out its runs: longer than a live
    #: worker that lost its lock takes to stop them; 0 where only a dead process loses its lock.
    liveness_grace: float = 0.0
    #: SQL for the writing transaction's position in commit order (the events table's txid):
    #: 0 where transactions commit one at a time.
    txid_sql: str = "0"
    #: SQL for an event (`events` row) whose transaction every reader will see before any
    #: transaction that is still open: true where transactions commit one at a time.
    settled_sql: str = "1 = 1"

    @abc.abstractmethod
    def transaction(self, *, write: bool = True) -> AbstractContextManager[Tx]: ...

    def single_statement(self, *, write: bool = True) -> AbstractContextManager[Tx]:
        """A transaction of one statement: where the database allows, that statement is its own
        transaction, one round trip in all."""
        return self.transaction(write=write)

    @abc.abstractmethod
    def sqlalchemy_url(self) -> str:
        """The URL Alembic and SQLAlchemy use to reach this database."""

    def floor(self, expr: str) -> str:
        """SQL for the whole number at or below `expr`, which is never negative (SQLite's CAST
        truncates; PostgreSQL's rounds, so it floors first)."""
        return f"CAST({expr} AS INTEGER)"

    @abc.abstractmethod
    def member(self, column: str, param: str) -> str:
        """SQL for `column` being one of the values of list parameter `param`."""

    @abc.abstractmethod
    def list_param(self, values: Sequence[Any]) -> object: ...

    @abc.abstractmethod
    def hold_liveness(self, lock_key: int, worker_id: str) -> Liveness:
        """Take this worker's liveness lock, held until close() or process death."""

    @abc.abstractmethod
    def alive(self, lock_keys: Sequence[int]) -> set[int]:
        """Which of these liveness locks are held by a live process right now."""

    def take_liveness(self, tx: Tx, lock_keys: Sequence[int]) -> set[int]:
        """Of these locks that `alive` found free, the ones this transaction takes until it
        commits, so that their workers cannot take them back before it declares them lost."""
        return set(lock_keys)

    def notify(self, tx: Tx, queue: str) -> None:  # noqa: B027 - optional hook
        """Tell idle workers that `queue` has ready work (only where the database can)."""

    def notify_sql(self, queue: str) -> str:
        """An SQL expression telling idle workers that the queue named by SQL `queue` has ready
        work, for statements that compose writes."""
        raise NotImplementedError

    def listen(self, on_notify: Callable[[str], None]) -> Liveness | None:
        """Call on_notify(queue) from a background thread on each notification, if supported."""
        return None

    def is_conflict(self, exc: BaseException) -> bool:
        """Whether the database aborted a transaction for a lock conflict worth retrying."""
        return False

    def is_data_error(self, exc: BaseException) -> bool:
        """Whether the database refused a statement for data it could not read or take: the
        same statement fails the same way until that data changes (see storage.repair)."""
        return False

    @abc.abstractmethod
    def is_transient(self, exc: BaseException) -> bool:
        """Whether a failed transaction may succeed if tried again later (a lost connection,
        a database restarting or busy), rather than fail the same way."""

    @abc.abstractmethod
    def label_equals(self, key_param: str, value_param: str) -> str:
        """SQL for a run's label `key_param` having the value `value_param`."""

    @abc.abstractmethod
    def close(self) -> None: ...


_PARAM = re.compile(r"(?<![:\w]):(\w+)")


def pyformat(sql: str) -> str:
    """Turn :name parameters into psycopg's %(name)s."""
    return _PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))
