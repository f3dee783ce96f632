"""Recovery after SIGKILL, default settings (lease 10 s): worker process A runs a long step,
worker process B is idle; A is killed with SIGKILL; the time until B starts executing the run.

Each trial starts two fresh worker processes; the result is the median over trials. Both workers
write a line to a marks file when the workflow starts, with time.time(), so the measurement does
not depend on how fast this process notices.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib

from greenroom import App, RunContext, RunState, Worker, step


def build_app(url: str, role: str = "", marks: Path | None = None) -> App:
    app = App(db=url)

    @step
    async def long_step() -> str:
        if role == "A":
            await asyncio.sleep(3600)  # killed long before this ends
        return role

    @app.workflow(name="bench.long")
    async def long(ctx: RunContext, trial: int) -> str:
        if marks is not None:
            line = {"role": role, "trial": trial, "t": time.time(), "pid": os.getpid()}
            with marks.open("a") as f:
                f.write(json.dumps(line) + "\n")
        return await long_step()

    return app


def worker_main(url: str, role: str, marks: Path) -> None:
    """Child process: one worker with default settings until SIGTERM (or SIGKILL)."""
    benchlib.quiet_logs()
    app = build_app(url, role, marks)
    asyncio.run(Worker(app).run(install_signal_handlers=True))


def spawn(url: str, role: str, marks: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "--db", url, "--worker", role, str(marks)],
        stdout=subprocess.DEVNULL,
    )


def wait_mark(marks: Path, role: str, trial: int, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marks.exists():
            for line in marks.read_text().splitlines():
                mark = json.loads(line)
                if mark["role"] == role and mark["trial"] == trial:
                    return float(mark["t"])
        time.sleep(0.005)
    return None


def wait_until(check: Any, timeout: float, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return False


def trial(app: App, url: str, marks: Path, n: int, timeout: float) -> dict[str, Any]:
    a = spawn(url, "A", marks)
    b: subprocess.Popen[bytes] | None = None
    try:
        run = app.enqueue_sync("bench.long", {"trial": n})
        if wait_mark(marks, "A", n, timeout) is None:
            return {"trial": n, "error": "worker A never started the run"}
        b = spawn(url, "B", marks)
        if not wait_until(lambda: len(app.store.runs.workers()) >= 2, timeout):
            return {"trial": n, "error": "worker B never registered"}
        time.sleep(random.uniform(0.5, 1.0))  # B idle; kill at a random point of its tick
        a.send_signal(signal.SIGKILL)
        killed = time.time()
        a.wait()
        started = wait_mark(marks, "B", n, timeout)
        if started is None:
            return {"trial": n, "error": f"worker B did not start the run within {timeout} s"}
        done = wait_until(
            lambda: app.store.runs.get_run(run.id).state is RunState.SUCCEEDED, timeout
        )
        return {"trial": n, "recovery_s": round(started - killed, 4), "run_succeeded": done}
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--timeout", type=float, default=30.0, help="per wait, in seconds")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    benchlib.quiet_logs()
    if args.worker:
        worker_main(args.db, args.worker[0], Path(args.worker[1]))
        return
    with benchlib.fresh_database(args.db, "recovery") as url, tempfile.TemporaryDirectory() as tmp:
        app = build_app(url)
        app.store.runs.count_by_state()  # migrate before the workers start
        marks = Path(tmp) / "marks.jsonl"
        try:
            trials = [trial(app, url, marks, n, args.timeout) for n in range(args.trials)]
        finally:
            app.close()
        times = [t["recovery_s"] for t in trials if "recovery_s" in t]
        result = {
            "benchmark": "recovery",
            "backend": benchlib.backend_name(url),
            "server": benchlib.server_version(url),
            "settings": {
                "lease_seconds": app.settings.lease_seconds,
                "heartbeat_seconds": app.settings.heartbeat_seconds,
                "poll_seconds": app.settings.poll_seconds,
            },
            "recovery_s": {
                "median": round(statistics.median(times), 4) if times else None,
                "max": max(times) if times else None,
                "min": min(times) if times else None,
            },
            "failed_trials": sum(1 for t in trials if "error" in t),
            "trials": trials,
        }
    benchlib.emit(result)


if __name__ == "__main__":
    main()
