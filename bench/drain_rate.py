"""Drain rate: N no-op one-step runs enqueued beforehand, drained by one Worker (concurrency 10)
running in this process's event loop. Timed from worker start until every run's end is committed.

Ends are counted where they are committed (a wrapper around RunStore.runs.write), not from the
worker's own counters. Each trial uses a fresh database. A trial that has not finished every run
within --timeout stops there: `runs_per_s` then counts only what finished, and
`runs_per_s_until_last_finish` shows the rate of the runs that did finish.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import benchlib

from greenroom import App, RunContext, RunRequest, Worker, step
from greenroom.storage import RunStore


@step
async def noop_step() -> int:
    return 1


def build_app(url: str) -> App:
    return declare(App(db=url))


def declare(app: App) -> App:
    """The benchmark's workflow, on `app`."""

    @app.workflow(name="bench.one_step")
    async def one_step(ctx: RunContext, i: int = 0) -> int:
        return await noop_step()

    return app


def fill(app: App, count: int, batch: int = 500) -> None:
    for start in range(0, count, batch):
        n = min(batch, count - start)
        app.enqueue_many_sync(
            [RunRequest(workflow="bench.one_step", input={"i": start + i}) for i in range(n)]
        )


def count_finishes(store: RunStore) -> list[float]:
    """Record when each run's end was committed, at the store: independent of the worker's stats."""
    finished: list[float] = []
    original = store.runs.write

    def write(*args: Any, **kwargs: Any) -> Any:
        written = original(*args, **kwargs)
        now = time.perf_counter()
        finished.extend([now] * len(written.states))  # atomic across the worker's threads
        return written

    store.runs.write = write  # type: ignore[method-assign]
    return finished


async def drain(app: App, count: int, concurrency: int, timeout: float) -> dict[str, Any]:
    finished = count_finishes(app.store)
    worker = Worker(app, concurrency=concurrency)
    start = time.perf_counter()
    task = asyncio.create_task(worker.run())
    deadline = start + timeout
    while len(finished) < count and time.perf_counter() < deadline and not task.done():
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - start
    worker.stop()
    await task
    del app.store.runs.write  # back to the class method
    done = len(finished)
    last = (max(finished) - start) if finished else elapsed
    return {
        "seconds": elapsed,
        "runs_per_s": done / elapsed,
        "finished": done,
        "timed_out": done < count,
        # Runs left behind (still 'running' at the timeout) do not hold up this one.
        "runs_per_s_until_last_finish": done / last,
        "worker_stats": dict(worker.stats.__dict__),
    }


def trial(db: str, runs: int, concurrency: int, timeout: float) -> dict[str, Any]:
    """One drain on a fresh database, so runs stranded by one trial cannot leak into the next."""
    with benchlib.fresh_database(db, "drain") as url:
        app = build_app(url)
        try:
            fill(app, runs)
            out = asyncio.run(drain(app, runs, concurrency, timeout))
            counts = app.store.runs.count_by_state()
        finally:
            app.close()
        out = {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}
        out["final_states"] = {str(k): v for k, v in counts.items()}
        out["server"] = benchlib.server_version(url)
    return out


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=3000, help="runs per trial")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--timeout", type=float, default=30.0, help="give up a trial after this")
    args = p.parse_args()
    benchlib.quiet_logs()
    trials = [trial(args.db, args.runs, args.concurrency, args.timeout) for _ in range(args.trials)]
    servers = [t.pop("server") for t in trials]
    result = {
        "benchmark": "drain_rate",
        "backend": benchlib.backend_name(args.db),
        "server": servers[0],
        "runs_per_trial": args.runs,
        "concurrency": args.concurrency,
        "runs_per_s": round(statistics.median(t["runs_per_s"] for t in trials)),
        "runs_per_s_until_last_finish": round(
            statistics.median(t["runs_per_s_until_last_finish"] for t in trials)
        ),
        "stranded_runs": sum(args.runs - t["finished"] for t in trials),
        "trials": trials,
    }
    benchlib.emit(result)


if __name__ == "__main__":
    main()
