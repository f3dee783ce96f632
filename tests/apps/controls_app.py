"""Workflows for multi-process queue-control tests, and a worker runner:
`python controls_app.py DB_URL CONCURRENCY` serves them until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from greenroom import App, RunContext, Worker, load_settings

app = App()


@app.workflow(name="tick", queue="limited")
async def tick(ctx: RunContext) -> dict[str, float]:
    """A start to count against the queue's rate limit."""
    return {"pid": os.getpid(), "at": time.time()}


@app.workflow(name="hold", queue="capped")
async def hold(ctx: RunContext, seconds: float = 0.3) -> dict[str, float]:
    """Holds a slot of its queue for a while and says when."""
    start = time.time()
    await asyncio.sleep(seconds)
    return {"pid": os.getpid(), "start": start, "end": time.time()}


def main(db: str, concurrency: int) -> None:
    app.settings = load_settings(
        db=db,
        lease_seconds=5.0,
        heartbeat_seconds=0.5,
        poll_seconds=0.05,
        shutdown_grace_seconds=1.0,
        # Claims are the subject: no side loops beside them (as in fast_app).
        delivery_enabled=False,
        schedules_enabled=False,
        licenses_enabled=False,
    )
    worker = Worker(app, queues=["limited", "capped"], concurrency=concurrency)
    try:
        asyncio.run(worker.run(install_signal_handlers=True))
    finally:
        app.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
