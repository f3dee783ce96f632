"""The process that holds a PostgreSQL worker's liveness lock (docs/durability.md, "Liveness").

A process of its own, so that work keeping the worker's GIL (rendering, parsing, compressing in
threads) cannot keep the lock from being confirmed: the worker would stop its runs for nothing.
Run by path (lock_processes.py starts it), not as a module: it imports only the standard library
and psycopg, and starts fast.

Protocol: the worker writes one JSON line to stdin (conninfo, namespace, key, worker_id, and
`again` when this process replaces one that died) and keeps stdin open; this process writes a
line to stdout per confirmation, `c <monotonic time the probe began>`, `e` when the lock is gone
for good (this worker was declared lost, or it stayed without the lock for GIVE_UP_AFTER seconds),
or `x <message>` when it could not take the lock at first.
It releases the lock and exits when stdin closes (the worker closed it or died) or its parent
changes; SIGINT and SIGTERM to the process group are the worker's to handle, not this process's.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time
from typing import Any

import psycopg

PROBE_SECONDS = 0.1
#: Past this without the lock (our old session not yet dropped by the server, say), the worker
#: gives this identity up: its runs have long been stopped.
GIVE_UP_AFTER = 5.0

# The server drops a silent peer's session (and so its lock) within about 5 s, and a probe
# never waits on a dead network for minutes.
CONNECTION: dict[str, Any] = {
    "autocommit": True,
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


class Ended(Exception):
    """This worker was declared lost: its identity is over."""


class Lock:
    def __init__(self, conninfo: str, namespace: int, key: int, worker_id: str) -> None:
        self.conninfo = conninfo
        self.namespace = namespace
        self.key = key
        self.worker_id = worker_id
        self.conn: psycopg.Connection[Any] | None = None

    def take(self) -> bool:
        """Take the lock on a new connection, unless this worker was declared lost (Ended)."""
        conn = psycopg.connect(self.conninfo, **CONNECTION)
        try:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (self.namespace, self.key)
            ).fetchone()
            if not (row and row[0]):
                conn.close()
                return False  # a declaring worker holds it for a moment, or our old session
            # A second statement, so that its snapshot follows the lock: a worker that declared
            # this one lost held the lock until its commit, which this read therefore sees.
            state = conn.execute(
                "SELECT state FROM workers WHERE id = %s", (self.worker_id,)
            ).fetchone()
        except psycopg.Error:
            conn.close()
            raise
        if state is not None and state[0] != "alive":
            conn.close()
            raise Ended
        self.conn = conn
        return True

    def probe(self) -> bool:
        """Whether the lock is held; a dropped connection is replaced and the lock taken back
        at once, before another worker's maintenance tick is likely to find it free."""
        if self.conn is not None:
            try:
                self.conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                self.drop()
        try:
            return self.take()
        except psycopg.Error:
            return False

    def wait(self, stdin: int) -> bool:
        """Until the next probe is due, or at once when the server closes the connection (it
        sends a message, then EOF); whether the worker is still there."""
        watched = [stdin]
        if self.conn is not None and not self.conn.closed:
            watched.append(self.conn.fileno())
        readable, _, _ = select.select(watched, [], [], PROBE_SECONDS)
        return stdin not in readable or bool(os.read(stdin, 4096))

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def tell(line: str) -> None:
    # The worker not reading (its GIL busy) fills the pipe: a later confirmation will do.
    with contextlib.suppress(BlockingIOError):
        os.write(1, line.encode() + b"\n")


def keep(lock: Lock, stdin: int, parent: int) -> None:
    confirmed = time.monotonic()
    while lock.wait(stdin) and os.getppid() == parent:
        started = time.monotonic()
        if lock.probe():
            confirmed = started  # the lock was held when this probe began
            tell(f"c {started!r}")
        elif started - confirmed > GIVE_UP_AFTER:
            raise Ended


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    parent = os.getppid()
    line = sys.stdin.buffer.readline()
    if not line:
        return  # started ahead of a worker that never came to use it
    config = json.loads(line)
    os.set_blocking(1, False)
    lock = Lock(config["conninfo"], config["namespace"], config["key"], config["worker_id"])
    try:
        if config.get("again"):
            keep(lock, sys.stdin.fileno(), parent)  # take the lock back, as after a drop
            return
        started = time.monotonic()
        try:
            taken = lock.take()
        except psycopg.Error as exc:
            tell(f"x {' '.join(str(exc).split())}")
            return
        if not taken:
            tell("x the liveness lock is held by another session")
            return
        tell(f"c {started!r}")
        keep(lock, sys.stdin.fileno(), parent)
    except Ended:
        tell("e")
    except BrokenPipeError:
        pass  # the worker is gone
    finally:
        lock.drop()


if __name__ == "__main__":
    main()
