"""Tenant fairness: tenant B's wait (enqueue -> start) for 50 runs, with and without tenant A's
backlog of 5,000 runs queued before it, on one worker with concurrency 10; runs take ~5 ms.

Each trial uses a fresh database. With a backlog: A's runs are enqueued, the worker starts and
runs A's work for a moment (100 of A's runs started), then B enqueues its 50 runs in one batch.
Without: the worker starts idle and B enqueues the same way. The worker runs in this process
(default settings); B and A enqueue through a second store, as another process would, so the
worker learns of new runs the way it does in production.

B's wait = the moment its workflow starts minus the moment the enqueue call began. "A waiting"
= A's runs not yet started when B's last run ended (from the start times the workflow records).
Issue 3's test: B's 50 all finish while A still has more than 4,000 of 5,000 waiting.
Extra backlog sizes (--backlogs 5000,20000) show whether B's wait grows with A's backlog.
Figures are medians over trials (5 per condition by default).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import benchlib

from greenroom import App, RunContext, RunRequest, Worker

RUN_SECONDS = 0.005


class Marks:
    """Start and end times the workflow records, by tenant."""

    def __init__(self) -> None:
        self.starts: dict[str, list[float]] = {"A": [], "B": []}
        self.ends: dict[str, list[float]] = {"A": [], "B": []}


def build_app(url: str, marks: Marks | None = None) -> App:
    app = App(db=url)

    @app.workflow(name="bench.fair")
    async def fair(ctx: RunContext, who: str, i: int) -> None:
        if marks is not None:
            marks.starts[who].append(time.time())
        await asyncio.sleep(RUN_SECONDS)
        if marks is not None:
            marks.ends[who].append(time.time())

    return app


def requests(who: str, count: int) -> list[RunRequest]:
    return [
        RunRequest(workflow="bench.fair", tenant=who, input={"who": who, "i": i})
        for i in range(count)
    ]


async def wait_for(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.002)
    return False


async def trial(url: str, backlog: int, b_runs: int, timeout: float) -> dict[str, Any]:
    marks = Marks()
    app = build_app(url, marks)
    client = build_app(url)
    try:
        app.store.runs.count_by_state()  # migrate before anything is timed
        for first in range(0, backlog, 500):
            await client.enqueue_many(requests("A", min(500, backlog - first)))
        worker = Worker(app, concurrency=10)
        task = asyncio.create_task(worker.run())
        if backlog:
            await wait_for(lambda: len(marks.starts["A"]) >= 100, timeout)
        else:
            await wait_for(lambda: bool(app.store.runs.workers()), timeout)
            await asyncio.sleep(0.5)  # the worker idle, waiting for work
        called = time.time()
        await client.enqueue_many(requests("B", b_runs))
        returned = time.time()
        done = await wait_for(lambda: len(marks.ends["B"]) >= b_runs, timeout)
        b_last_end = max(marks.ends["B"], default=time.time())
        worker.stop()
        await task
    finally:
        app.close()
        client.close()
    waits = [t - called for t in marks.starts["B"]]
    a_started = sum(1 for t in marks.starts["A"] if t <= b_last_end)
    return {
        "backlog": backlog,
        "b_finished": len(marks.ends["B"]),
        "timed_out": not done,
        "b_wait_ms": benchlib.summary(benchlib.ms(waits), 1),
        "b_wait_after_commit_ms_p50": round(
            benchlib.percentile(benchlib.ms([t - returned for t in marks.starts["B"]]), 50), 1
        ),
        "b_all_done_s": round(b_last_end - called, 3),
        "a_waiting_when_b_done": backlog - a_started if backlog else None,
    }


def condition(db: str, backlog: int, b_runs: int, trials: int, timeout: float) -> dict[str, Any]:
    results = []
    for _ in range(trials):
        with benchlib.fresh_database(db, "fairness") as url:
            results.append(asyncio.run(trial(url, backlog, b_runs, timeout)))
    out: dict[str, Any] = {
        "b_wait_ms_p50": round(statistics.median(r["b_wait_ms"]["p50"] for r in results), 1),
        "b_all_done_s": round(statistics.median(r["b_all_done_s"] for r in results), 3),
        "timed_out_trials": sum(r["timed_out"] for r in results),
    }
    if backlog:
        waiting = [r["a_waiting_when_b_done"] for r in results]
        out["a_waiting_when_b_done"] = {"min": min(waiting), "median": statistics.median(waiting)}
    out["trials"] = results
    return out


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument(
        "--backlogs", default="5000,20000", help="A's backlog sizes; the first is the headline"
    )
    p.add_argument("--b-runs", type=int, default=50)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    benchlib.quiet_logs()
    sizes = [int(s) for s in args.backlogs.split(",") if s]
    alone = condition(args.db, 0, args.b_runs, args.trials, args.timeout)
    loaded = {n: condition(args.db, n, args.b_runs, args.trials, args.timeout) for n in sizes}
    head = loaded[sizes[0]]
    result = {
        "benchmark": "fairness",
        "backend": benchlib.backend_name(args.db),
        "server": benchlib.server_version(args.db),
        "b_runs": args.b_runs,
        "backlog": sizes[0],
        "b_wait_ms_p50_alone": alone["b_wait_ms_p50"],
        "b_wait_ms_p50_with_backlog": head["b_wait_ms_p50"],
        "ratio": round(head["b_wait_ms_p50"] / alone["b_wait_ms_p50"], 2),
        "a_waiting_when_b_done_min": head["a_waiting_when_b_done"]["min"],
        "b_wait_ms_p50_by_backlog": {
            "0": alone["b_wait_ms_p50"],
            **{str(n): c["b_wait_ms_p50"] for n, c in loaded.items()},
        },
        "alone": alone,
        "with_backlog": {str(n): c for n, c in loaded.items()},
    }
    benchlib.emit(result)


if __name__ == "__main__":
    main()
