"""Rate-limit accuracy across processes: a queue limited to N starts per P seconds (20 per 1 s by
default), 3 worker processes (default settings, concurrency 10 each) on the same database, 300
runs of ~5 ms enqueued at once.

Two records of every start:
  claimed  runs.started_at, the moment the claim that leased the run committed its decision
           (the limit is enforced there, by the database, over a sliding window);
  started  time.time() written by the workflow when it begins, in the worker process.
For each: the most starts in any window of P seconds (must be <= N), and the rate achieved.
The database enforces the limit on claim times; workflow starts follow them by a few ms of
varying delay, so at a window's edge two bursts can fall into one P-second window of start times
(`max_in_any_window_less_100ms` shows the count without that edge effect).
Any P-second window holds at most N starts, so n starts spanning T seconds (first to last) give
(n - N) / T <= N / P: `rate_per_s` is that figure, `rate_vs_limit` its share of N / P.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib

from greenroom import App, RunContext, RunRequest, RunState, Worker

QUEUE = "rate-limited"
RUN_SECONDS = 0.005


def build_app(url: str, marks: Path | None = None) -> App:
    app = App(db=url)

    @app.workflow(name="bench.limited", queue=QUEUE)
    async def limited(ctx: RunContext, i: int) -> None:
        if marks is not None:
            with marks.open("a") as f:  # one short O_APPEND write per start
                f.write(json.dumps({"i": i, "t": time.time(), "pid": os.getpid()}) + "\n")
        await asyncio.sleep(RUN_SECONDS)

    return app


def worker_main(url: str, marks: Path) -> None:
    """Child process: one worker with default settings until SIGTERM."""
    benchlib.quiet_logs()
    app = build_app(url, marks)
    asyncio.run(Worker(app).run(install_signal_handlers=True))


def max_in_window(times: list[float], period: float) -> int:
    """The most starts in any window [t, t + period)."""
    ordered = sorted(times)
    return max(
        (bisect.bisect_left(ordered, t + period) - i for i, t in enumerate(ordered)), default=0
    )


def accuracy(times: list[float], limit: int, period: float) -> dict[str, Any]:
    ordered = sorted(times)
    span = ordered[-1] - ordered[0] if len(ordered) > 1 else 0.0
    rate = (len(ordered) - limit) / span if span > 0 else float("nan")
    most = max_in_window(ordered, period)
    return {
        "starts": len(ordered),
        "max_in_any_window": most,
        "within_limit": most <= limit,
        # Claims come in bursts about P apart: a start delayed more than the next burst's
        # puts both bursts in one window of P. A window 0.1 s shorter leaves that jitter out.
        "max_in_any_window_less_100ms": max_in_window(ordered, max(period - 0.1, 0.0)),
        "span_s": round(span, 3),
        "rate_per_s": round(rate, 2),
        "rate_vs_limit": round(rate / (limit / period), 3),
    }


def wait_until(check: Any, timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return False


def measure(url: str, runs: int, limit: int, period: float, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        marks = Path(tmp) / "starts.jsonl"
        app = build_app(url)
        store = app.store  # migrates before the workers start
        store.controls.set_queue(
            QUEUE,
            actor="bench",
            reason="rate-limit benchmark",
            rate_limit=limit,
            rate_period=period,
        )
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--db", url, "--worker", str(marks)],
                stdout=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        try:
            if not wait_until(lambda: len(store.runs.workers()) >= workers, 30):
                raise SystemExit("the worker processes did not all register")
            time.sleep(0.5)
            app.enqueue_many_sync(
                [RunRequest(workflow="bench.limited", input={"i": i}) for i in range(runs)]
            )
            budget = runs / limit * period + 30
            done = wait_until(
                lambda: store.runs.count_by_state().get(RunState.SUCCEEDED, 0) >= runs, budget
            )
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        with store.backend.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT started_at, input FROM runs WHERE queue = :q AND started_at IS NOT NULL",
                {"q": QUEUE},
            )
        app.close()
        lines = [json.loads(line) for line in marks.read_text().splitlines()]
    by_pid: dict[int, int] = {}
    for line in lines:
        by_pid[line["pid"]] = by_pid.get(line["pid"], 0) + 1
    claimed_at = {json.loads(r["input"])["i"]: float(r["started_at"]) for r in rows}
    delays = [line["t"] - claimed_at[line["i"]] for line in lines if line["i"] in claimed_at]
    return {
        "finished_all": done,
        "claimed": accuracy([float(r["started_at"]) for r in rows], limit, period),
        "started": accuracy([float(line["t"]) for line in lines], limit, period),
        "claimed_to_started_ms": benchlib.summary(benchlib.ms(delays), 1),
        "starts_per_worker_process": sorted(by_pid.values(), reverse=True),
    }


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--limit", type=int, default=20, help="N starts ...")
    p.add_argument("--period", type=float, default=1.0, help="... per P seconds")
    p.add_argument("--workers", type=int, default=3, help="worker processes")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    benchlib.quiet_logs()
    if args.worker:
        worker_main(args.db, Path(args.worker))
        return
    with benchlib.fresh_database(args.db, "rate") as url:
        result = measure(url, args.runs, args.limit, args.period, args.workers)
        server = benchlib.server_version(url)
    benchlib.emit(
        {
            "benchmark": "rate_limit",
            "backend": benchlib.backend_name(url),
            "server": server,
            "limit": args.limit,
            "period_s": args.period,
            "worker_processes": args.workers,
            "runs": args.runs,
            **result,
        }
    )


if __name__ == "__main__":
    main()
