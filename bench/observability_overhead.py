"""What metrics and tracing cost: the drain benchmark (drain_rate.py: N no-op one-step runs
enqueued first, one Worker, concurrency 10, in this process's event loop) in three modes, in
turns (off, metrics, tracing, off, metrics, …), each trial in a fresh process and database:

- off: greenroom's metric objects replaced by no-ops, no tracer provider (the floor);
- metrics: as shipped, the worker serving /metrics on a port a thread scrapes every second
  (Prometheus's default is every 15 s);
- tracing: metrics as above, and a tracer provider with a batch processor exporting to a sink
  that drops the spans (an attempt span and a step span per run).

Reported: the median runs/s of each mode and its ratio to `off` (issue 17: metrics cost
≤ 5 %, tracing ≤ 15 %), and the same for this process's CPU time per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

import benchlib
import drain_rate
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from greenroom import App, load_settings, metrics, tracing

MODES = ("off", "metrics", "tracing")


class _NoMetric:
    """Stands for a metric in mode `off`: every call does nothing."""

    def labels(self, *args: Any, **kwargs: Any) -> _NoMetric:
        return self

    def inc(self, amount: float = 1) -> None:
        return None

    def dec(self, amount: float = 1) -> None:
        return None

    def observe(self, amount: float) -> None:
        return None

    def set(self, value: float) -> None:
        return None


class _Dropped(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int, stop: threading.Event, scrapes: list[float]) -> None:
    while not stop.wait(1.0):
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                r.read()
        except OSError:
            continue  # not listening yet
        scrapes.append(time.perf_counter() - started)


def trial(db: str, mode: str, runs: int, concurrency: int, timeout: float) -> dict[str, Any]:
    """One drain in this process, in `mode`."""
    exporter = _Dropped()
    if mode == "off":
        for name in dir(metrics):
            if name.isupper() and hasattr(getattr(metrics, name), "labels"):
                setattr(metrics, name, _NoMetric())
    if mode == "tracing":
        tracing.install("bench", [BatchSpanProcessor(exporter)])
    port = _free_port() if mode != "off" else 0
    stop, scrapes = threading.Event(), []
    scraper = threading.Thread(target=_scrape, args=(port, stop, scrapes), daemon=True)
    with benchlib.fresh_database(db, "observability") as url:
        app = App(db=url, settings=load_settings(db=url, metrics_port=port))
        drain_rate.declare(app)
        try:
            drain_rate.fill(app, runs)
            if port:
                scraper.start()
            cpu = time.process_time()
            out = asyncio.run(drain_rate.drain(app, runs, concurrency, timeout))
            cpu = time.process_time() - cpu
        finally:
            stop.set()
            app.close()
    tracing.shutdown_tracing()
    return {
        "mode": mode,
        "runs_per_s": round(out["runs_per_s"], 1),
        "cpu_ms_per_run": round(cpu * 1000 / max(1, out["finished"]), 3),
        "finished": out["finished"],
        "scrapes": len(scrapes),
        "spans_exported": exporter.spans,
    }


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument("--runs", type=int, default=3000, help="runs per trial")
    p.add_argument("--rounds", type=int, default=3, help="trials of each mode, in turns")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--timeout", type=float, default=60.0, help="give up a trial after this")
    p.add_argument("--trial", choices=MODES, help=argparse.SUPPRESS)  # one trial, in this process
    args = p.parse_args()
    benchlib.quiet_logs()
    if args.trial:
        print(json.dumps(trial(args.db, args.trial, args.runs, args.concurrency, args.timeout)))
        return
    trials = []
    for _ in range(args.rounds):
        for mode in MODES:
            command = [sys.executable, __file__, "--db", args.db, "--trial", mode]
            command += ["--runs", str(args.runs), "--concurrency", str(args.concurrency)]
            command += ["--timeout", str(args.timeout)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            trials.append(json.loads(done.stdout.strip().splitlines()[-1]))
    medians = {
        mode: statistics.median(t["runs_per_s"] for t in trials if t["mode"] == mode)
        for mode in MODES
    }
    cpu = {
        mode: statistics.median(t["cpu_ms_per_run"] for t in trials if t["mode"] == mode)
        for mode in MODES
    }
    benchlib.emit(
        {
            "benchmark": "observability_overhead",
            "backend": benchlib.backend_name(args.db),
            "runs_per_trial": args.runs,
            "runs_per_s": {mode: round(v) for mode, v in medians.items()},
            "cost_vs_off": {
                mode: f"{1 - medians[mode] / medians['off']:+.1%}" for mode in MODES[1:]
            },
            # This process's CPU per run (the worker, and SQLite's work, not PostgreSQL's):
            # steadier than runs/s on a shared machine.
            "cpu_ms_per_run": cpu,
            "cpu_cost_vs_off": {mode: f"{cpu[mode] / cpu['off'] - 1:+.1%}" for mode in MODES[1:]},
            "stranded_runs": sum(args.runs - t["finished"] for t in trials),
            "trials": trials,
        }
    )


if __name__ == "__main__":
    main()
