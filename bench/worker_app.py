"""The app `user_config.py` hands to `greenroom worker --app worker_app:app`, as a user would.

`bench.one_step` is the no-op run the drain counts; `bench.stamp` and `bench.long` write a JSON
line with `time.time()` to the file named by $BENCH_MARKS when they start, so start-up, latency
and recovery are read from the workflow's own clock, not from when the benchmark noticed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from greenroom import App, RunContext, step


def mark(kind: str, i: int, **extra: object) -> None:
    line = {"kind": kind, "i": i, "t": time.time(), "pid": os.getpid(), **extra}
    with open(os.environ["BENCH_MARKS"], "a") as f:
        f.write(json.dumps(line) + "\n")


@step
async def noop_step() -> int:
    return 1


@step
async def long_step() -> str:
    if os.environ.get("BENCH_ROLE") == "A":
        await asyncio.sleep(3600)  # killed long before this ends
    return os.environ.get("BENCH_ROLE", "")


def build(db: str | None = None) -> App:
    """The app; the benchmark builds its own copy to enqueue with."""
    app = App(db=db)

    @app.workflow(name="bench.one_step")
    async def one_step(ctx: RunContext, i: int = 0) -> int:
        return await noop_step()

    @app.workflow(name="bench.stamp")
    async def stamp(ctx: RunContext, t: float, i: int) -> None:
        mark("stamp", i, enqueued=t)

    @app.workflow(name="bench.long")
    async def long(ctx: RunContext, trial: int) -> str:
        mark("long", trial, role=os.environ.get("BENCH_ROLE", ""))
        return await long_step()

    return app


app = build()
