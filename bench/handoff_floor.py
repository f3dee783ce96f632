"""The floor of enqueue→start on PostgreSQL if the enqueue handed its run over in the notification
(issue 20: p50 ≤ 3 ms): one process inserts a row and `pg_notify`s a 200-byte payload in one
autocommit statement at a steady rate; another process LISTENs. Latency = the payload's arrival
minus the moment the insert was called. No greenroom code runs: it is what the protocol costs on
this machine (today a worker claims after the notification, a second round trip).
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.synchronize import Event

import benchlib
import psycopg

_CHANNEL = "greenroom_bench_handoff"


def listener(url: str, arrivals: multiprocessing.Queue[tuple[float, float]], ready: Event) -> None:
    """Child process: record when each notification arrives, beside when it was sent."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"LISTEN {_CHANNEL}")
        ready.set()
        for note in conn.notifies():
            if note.payload == "end":
                return
            arrivals.put((float(note.payload.split(" ", 1)[0]), time.time()))


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument("--rate", type=float, default=30.0, help="handovers per second")
    p.add_argument("--count", type=int, default=300)
    args = p.parse_args()
    if benchlib.backend_name(args.db) != "postgresql":
        raise SystemExit("--db postgresql://…: SQLite has no notifications")
    with benchlib.fresh_database(args.db, "handoff") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE handoff (id bigserial PRIMARY KEY, payload text)")
        arrivals: multiprocessing.Queue[tuple[float, float]] = multiprocessing.Queue()
        ready = multiprocessing.Event()
        child = multiprocessing.Process(target=listener, args=(url, arrivals, ready))
        child.start()
        ready.wait(10)
        with psycopg.connect(url, autocommit=True) as conn:
            for _ in range(args.count):
                sent = time.time()
                payload = f"{sent!r} {'x' * 200}"
                conn.execute(
                    "WITH ins AS (INSERT INTO handoff (payload) VALUES (%s) RETURNING payload)"
                    f" SELECT pg_notify('{_CHANNEL}', payload) FROM ins",
                    (payload,),
                )
                time.sleep(1 / args.rate)
            latencies = [
                got - sent for sent, got in (arrivals.get(timeout=10) for _ in range(args.count))
            ]
            conn.execute(f"SELECT pg_notify('{_CHANNEL}', 'end')")
        child.join(10)
    benchlib.emit(
        {
            "benchmark": "handoff_floor",
            "server": benchlib.server_version(args.db),
            "rate_per_s": args.rate,
            "latency_ms": benchlib.summary(benchlib.ms(latencies)),
            "machine": benchlib.machine(),
        }
    )


if __name__ == "__main__":
    main()
