"""What metrics and tracing cost: the drain benchmark (drain_rate.py: N no-op one-step runs
enqueued first, one Worker, concurrency 10, in this process's event loop) in three modes, in
turns (off, metrics, tracing, off, metrics, …), each trial in a fresh process and database,
which freezes what its set-up made (as `greenroom worker` does after start-up):

- off: greenroom's metric objects replaced by no-ops, no tracer provider (the floor);
- metrics: as shipped, the worker serving /metrics on a port a thread scrapes every second
  (Prometheus's default is every 15 s);
- tracing: metrics as above, and a tracer provider with a batch processor exporting to a sink
  that drops the spans (an attempt span and a step span per run).

Reported: the median runs/s of each mode and its ratio to `off` (issue 17: metrics cost
≤ 5 %, tracing ≤ 15 %), and the same for this process's CPU time per run.

`--worker cli` measures the same as users run it: a `greenroom worker` process with default
settings drains the runs (user_config.py's drain, timed from the first claim to the last end).
Its metrics cannot be switched off, so `off` is the default (metrics kept, not served);
`metrics` serves them on a port scraped every second; `tracing` adds the standard
OTEL_EXPORTER_OTLP_ENDPOINT, pointed at a local OTLP/HTTP receiver that drops what it gets
(the spans are encoded and posted, as to a collector). CPU per run is the worker process's,
from its first run's end to its last.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.server
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import benchlib
import drain_rate
import user_config
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


class _Receiver(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes spans and drops them."""

    posts = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).posts += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cli_trial(db: str, mode: str, runs: int, timeout: float) -> dict[str, Any]:
    """One drain by a `greenroom worker` process, in `mode`."""
    extra: dict[str, str] = {}
    stop, scrapes = threading.Event(), []
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    port = _free_port()
    if mode != "off":
        extra["GREENROOM_METRICS_PORT"] = str(port)
        threading.Thread(target=_scrape, args=(port, stop, scrapes), daemon=True).start()
    if mode == "tracing":
        extra["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{receiver.server_port}"
    try:
        with user_config.bench(db, "observability") as b:
            user_config.prefill(b, runs)
            proc = b.worker(extra=extra)
            b.wait_finished(1, timeout)
            cpu = _cpu_seconds(proc.pid)
            b.wait_finished(runs, timeout)
            cpu = _cpu_seconds(proc.pid) - cpu
            first, last, finished = b.span("bench.one_step")
            b.stop(proc)
    finally:
        stop.set()
        receiver.shutdown()
    return {
        "mode": mode,
        "runs_per_s": round(finished / (last - first), 1),
        "cpu_ms_per_run": round(cpu * 1000 / max(1, finished - 1), 3),
        "finished": finished,
        "scrapes": len(scrapes),
        "otlp_posts": _Receiver.posts,
    }


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
            gc.collect()  # as `greenroom worker` does once started (cli.freeze_start_up)
            gc.freeze()
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
    p.add_argument(
        "--worker",
        choices=("process", "cli"),
        default="process",
        help="the drain in this benchmark's process (default), or by a `greenroom worker`",
    )
    p.add_argument("--trial", choices=MODES, help=argparse.SUPPRESS)  # one trial, in this process
    args = p.parse_args()
    benchlib.quiet_logs()
    if args.trial:
        if args.worker == "cli":
            print(json.dumps(cli_trial(args.db, args.trial, args.runs, args.timeout)))
        else:
            print(json.dumps(trial(args.db, args.trial, args.runs, args.concurrency, args.timeout)))
        return
    trials = []
    for _ in range(args.rounds):
        for mode in MODES:
            command = [sys.executable, __file__, "--db", args.db, "--trial", mode]
            command += ["--runs", str(args.runs), "--concurrency", str(args.concurrency)]
            command += ["--timeout", str(args.timeout), "--worker", args.worker]
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
            "worker": args.worker,
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
