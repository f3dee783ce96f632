"""Workflows for the durability tests, and a runner that serves them in a worker process.

Every workflow records what really happens to an append-only file (one JSON line per event,
each written with a single O_APPEND write, so a SIGKILL never leaves half a line behind):
`begin` when an execution of the workflow function starts, `start` and `end` around every step
execution (`stop` in place of `end` when the worker interrupts it), `return` when the function is
about to return. The tests check the engine's
guarantees against this record, not against what the engine says about itself.

    python -m tests.apps.durable_app DB_URL WORKER_ID [--lease 10 --heartbeat 2 ...]

The tests fork workers from a server that has imported this module already (see tests/procs.py),
so a restart costs milliseconds instead of a second of imports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from typing import Any

from greenroom import App, RetryPolicy, RunContext, Worker, load_settings, step

CHAIN = "durable.chain"
SESSION_CHAIN = "durable.session_chain"
TICK = "durable.tick"


def note(path: str, event: str, ctx: RunContext, position: int | None = None) -> None:
    """Append one execution record; crash-safe because it is a single O_APPEND write."""
    line = json.dumps(
        {
            "ev": event,
            "run": ctx.run_id,
            "pos": position,
            "pid": os.getpid(),
            "worker": ctx.worker_id,
            "session": ctx.session_key,
            "t": time.time(),
        }
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@step(retry=RetryPolicy(max_attempts=1))
async def work(ctx: RunContext, record: str, position: int, seconds: float) -> dict[str, Any]:
    note(record, "start", ctx, position)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        note(record, "stop", ctx, position)  # the execution ends here, not at its start
        raise
    note(record, "end", ctx, position)
    return {"pos": position, "by": ctx.worker_id, "pid": os.getpid()}


async def chain(
    ctx: RunContext,
    *,
    record: str,
    steps: int = 10,
    step_ms: tuple[float, float] = (2.0, 8.0),
    slow_at: int | None = None,
    slow_on: str | None = None,
    slow_seconds: float = 30.0,
) -> dict[str, Any]:
    """`steps` short steps; step `slow_at` takes `slow_seconds` when worker `slow_on` runs it."""
    note(record, "begin", ctx)
    results = []
    try:
        for position in range(steps):
            if position == slow_at and ctx.worker_id == slow_on:
                seconds = slow_seconds
            else:
                seconds = random.uniform(*step_ms) / 1000
            results.append(await work(ctx, record, position, seconds))
    except asyncio.CancelledError:
        # Stopped by its worker (a cancel, a pause, a lease it could no longer prove): this
        # execution ends here, even if the same process executes the run again later.
        note(record, "cancelled", ctx)
        raise
    note(record, "return", ctx)
    return {"by": ctx.worker_id, "steps": results}


async def tick(ctx: RunContext, seconds: float = 0.0) -> dict[str, Any]:
    """What the schedule tests fire: returns at once, or after `seconds` (to overlap)."""
    if seconds:
        await asyncio.sleep(seconds)
    return {"by": ctx.worker_id}


def build_app(db: str | None = None, **settings: Any) -> App:
    """The app with its workflows; the session one serializes runs by their `lane` label."""
    app = App(db=db, settings=load_settings(db=db, **settings) if db else None)
    app.workflow(name=CHAIN)(chain)
    app.workflow(name=SESSION_CHAIN, session="durable:{lane}")(chain)
    app.workflow(name=TICK)(tick)
    return app


app = build_app()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("db")
    parser.add_argument("worker_id")
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--heartbeat", type=float, default=2.0)
    parser.add_argument("--poll", type=float, default=0.25)
    parser.add_argument("--max-stalls", type=int, default=3)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    served = build_app(
        args.db,
        lease_seconds=args.lease,
        heartbeat_seconds=args.heartbeat,
        poll_seconds=args.poll,
        max_stalls=args.max_stalls,
        shutdown_grace_seconds=args.grace,
        concurrency=args.concurrency,
    )
    worker = Worker(served, worker_id=args.worker_id)
    try:
        asyncio.run(worker.run(install_signal_handlers=True))
    finally:
        served.close()


def serve(argv: list[str], log_path: str) -> None:
    """Entry point of a worker process forked by the tests: its output goes to `log_path`."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    main(argv)


if __name__ == "__main__":
    main()
