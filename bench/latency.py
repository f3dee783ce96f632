"""Enqueue→start latency on an idle worker: another process enqueues at a steady rate (30/s for
10 s by default); the workflow records time.time() when it starts. Latency = start time minus the
time the enqueuer called App.enqueue_sync, so it includes the enqueue transaction and its commit;
`latency_after_commit_ms` subtracts the enqueue call (start minus the moment the call returned).

The worker runs in this process with default settings; the enqueuer is a child process, so the
worker learns of new runs the way it would in production (NOTIFY on PostgreSQL, the poll tick
on SQLite, which has no notifications).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import benchlib

from greenroom import App, RunContext, Worker


def build_app(url: str, starts: list[tuple[int, float, float]] | None = None) -> App:
    app = App(db=url)

    @app.workflow(name="bench.stamp")
    async def stamp(ctx: RunContext, t: float, i: int) -> None:
        if starts is not None:
            starts.append((i, t, time.time()))

    return app


def enqueuer(url: str, rate: float, seconds: float) -> None:
    """Child process: enqueue `rate` runs per second on a fixed schedule, report call times."""
    app = build_app(url)
    app.store.runs.count_by_state()  # open and check the schema before the clock starts
    count = int(rate * seconds)
    calls: list[float] = []
    late = 0
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()  # go
    begin = time.perf_counter()
    for i in range(count):
        due = begin + i / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        else:
            late += 1
        t = time.time()
        app.enqueue_sync("bench.stamp", {"t": t, "i": i})
        calls.append(time.time() - t)
    app.close()
    result = {"enqueued": count, "late": late, "calls": calls}
    sys.stdout.write(json.dumps(result) + "\n")


async def measure(url: str, rate: float, seconds: float) -> dict[str, Any]:
    starts: list[tuple[int, float, float]] = []
    app = build_app(url, starts)
    app.store.runs.count_by_state()
    worker = Worker(app)
    task = asyncio.create_task(worker.run())
    child = subprocess.Popen(
        [sys.executable, __file__, "--db", url, "--enqueuer", str(rate), str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        ready = await asyncio.to_thread(child.stdout.readline)
        if ready.strip() != "ready":
            raise SystemExit(f"enqueuer failed to start: {ready!r}")
        await asyncio.sleep(1.0)  # the worker is up and idle
        child.stdin.write("go\n")
        child.stdin.flush()
        report_line = await asyncio.to_thread(child.stdout.readline)
        expected = int(rate * seconds)
        deadline = time.monotonic() + 10
        while len(starts) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        child.wait(timeout=30)
        worker.stop()
        await task
        app.close()
    report = json.loads(report_line)
    calls: list[float] = report["calls"]
    latencies = [start - t for _, t, start in starts]
    after_commit = [start - t - calls[i] for i, t, start in starts]
    return {
        "rate_per_s": rate,
        "seconds": seconds,
        "enqueued": report["enqueued"],
        "started": len(starts),
        "enqueuer_late_ticks": report["late"],
        "latency_ms": benchlib.summary(benchlib.ms(latencies)),
        "latency_after_commit_ms": benchlib.summary(benchlib.ms(after_commit)),
        "enqueue_call_ms": benchlib.summary(benchlib.ms(calls)),
    }


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument("--rate", type=float, default=30.0, help="runs per second")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--enqueuer", nargs=2, type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    benchlib.quiet_logs()
    if args.enqueuer:
        enqueuer(args.db, *args.enqueuer)
        return
    with benchlib.fresh_database(args.db, "latency") as url:
        result = {
            "benchmark": "latency",
            "backend": benchlib.backend_name(url),
            "server": benchlib.server_version(url),
            **asyncio.run(measure(url, args.rate, args.seconds)),
        }
    benchlib.emit(result)


if __name__ == "__main__":
    main()
