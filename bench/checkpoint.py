"""Checkpoint overhead per step: a workflow of 100 no-op steps run by a worker (each step's result
is checkpointed) versus the same code with the steps called outside a run (plain calls).

Runs go one at a time through an idle worker in this process (default settings). The per-step
time is measured around each step call inside the workflow; overhead p50 = p50 in a run minus p50
outside a run.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import benchlib

from greenroom import App, RunContext, RunState, Worker, step


@step
async def noop(i: int) -> int:
    return i


async def hundred_steps(steps: int, durations: list[float]) -> None:
    """The code under test: the same in a run and outside one."""
    for i in range(steps):
        t0 = time.perf_counter()
        await noop(i)
        durations.append(time.perf_counter() - t0)


def build_app(url: str, durations: list[float]) -> App:
    app = App(db=url)

    @app.workflow(name="bench.steps")
    async def steps(ctx: RunContext, n: int) -> None:
        await hundred_steps(n, durations)

    return app


async def in_runs(app: App, runs: int, steps: int, timeout: float) -> list[float]:
    """Seconds per whole run, one run at a time."""
    worker = Worker(app)
    task = asyncio.create_task(worker.run())
    totals: list[float] = []
    try:
        for _ in range(runs):
            run = await app.enqueue("bench.steps", {"n": steps})
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                current = await asyncio.to_thread(app.store.runs.get_run, run.id)
                if current.state.finished:
                    break
                await asyncio.sleep(0.01)
            if current.state is not RunState.SUCCEEDED:
                raise SystemExit(f"run {run.id} ended {current.state}: {current.error}")
            assert current.started_at is not None and current.finished_at is not None
            totals.append(current.finished_at - current.started_at)
    finally:
        worker.stop()
        await task
    return totals


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--timeout", type=float, default=60.0, help="per run, in seconds")
    args = p.parse_args()
    benchlib.quiet_logs()
    outside: list[float] = []
    for _ in range(args.runs):
        asyncio.run(hundred_steps(args.steps, outside))
    with benchlib.fresh_database(args.db, "checkpoint") as url:
        inside: list[float] = []
        app = build_app(url, inside)
        try:
            app.store.runs.count_by_state()
            totals = asyncio.run(in_runs(app, args.runs, args.steps, args.timeout))
        finally:
            app.close()
        in_ms, out_ms = benchlib.ms(inside), benchlib.ms(outside)
        result: dict[str, Any] = {
            "benchmark": "checkpoint",
            "backend": benchlib.backend_name(url),
            "server": benchlib.server_version(url),
            "runs": args.runs,
            "steps_per_run": args.steps,
            "overhead_ms_p50": round(
                benchlib.percentile(in_ms, 50) - benchlib.percentile(out_ms, 50), 3
            ),
            "overhead_ms_p99": round(
                benchlib.percentile(in_ms, 99) - benchlib.percentile(out_ms, 99), 3
            ),
            "step_in_run_ms": benchlib.summary(in_ms),
            "step_outside_run_ms": benchlib.summary(out_ms, digits=4),
            "run_seconds": benchlib.summary(totals),
        }
    benchlib.emit(result)


if __name__ == "__main__":
    main()
