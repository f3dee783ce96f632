"""Run every benchmark on SQLite and PostgreSQL; print a summary and one combined JSON object.

    uv run python bench/run_all.py [--pg postgresql://postgres@127.0.0.1:5432] [--only drain_rate]

The combined JSON is also written to bench/results/<UTC time>.json (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "enqueue_rate",
    "drain_rate",
    "latency",
    "recovery",
    "checkpoint",
    "claim_latency",
    "claim_scale",
    "fairness",
    "rate_limit",
    "user_config",
]
# Longer than --timeout allows by default: 1,000,000 runs to set up; worker processes to start.
TIMEOUTS = {"claim_scale": 600.0, "user_config": 600.0}
CLOSE = 2.0  # claim p50 with 100,000 queued at most this many times the p50 with 1,000


def _claim_close(r: dict[str, Any]) -> tuple[Any, bool]:
    worst = max(r["p50_ratio_large_to_small"].values())
    return worst, worst <= CLOSE


def _claim_close_no_session(r: dict[str, Any]) -> tuple[Any, bool | None]:
    found = r.get("no_session_p50_ratio_large_to_small")
    if not found:
        return "-", None
    worst = max(found.values())
    return worst, worst <= CLOSE


def _scale_p50s(r: dict[str, Any], cell: str) -> tuple[Any, None]:
    small, large = r["small"][cell]["claim_ms"]["p50"], r["large"][cell]["claim_ms"]["p50"]
    return f"{large} vs {small}", None


def _rate_window(r: dict[str, Any], record: str) -> tuple[Any, bool]:
    most = r[record]["max_in_any_window"]
    return most, most <= r["limit"]


# (benchmark, backend or None for both, label, extract (value, met or None), target text)
Check = tuple[str, str | None, str, Callable[[dict[str, Any]], tuple[Any, bool | None]], str]
CHECKS: list[Check] = [
    (
        "enqueue_rate",
        None,
        "enqueue one by one (runs/s)",
        lambda r: (r["one_by_one"]["runs_per_s"], None),
        "-",
    ),
    (
        "enqueue_rate",
        None,
        "enqueue batches of 100 (runs/s)",
        lambda r: (r["batched"]["runs_per_s"], None),
        "-",
    ),
    (
        "drain_rate",
        "postgresql",
        "drain 1 worker x 10 (runs/s)",
        lambda r: (r["runs_per_s"], r["runs_per_s"] >= 1500),
        ">= 1500",
    ),
    (
        "drain_rate",
        "sqlite",
        "drain 1 worker x 10 (runs/s)",
        lambda r: (r["runs_per_s"], r["runs_per_s"] >= 1000),
        ">= 1000",
    ),
    (
        "latency",
        "postgresql",
        "enqueue->start p50 (ms)",
        lambda r: (r["latency_ms"]["p50"], r["latency_ms"]["p50"] <= 5),
        "<= 5",
    ),
    ("latency", "sqlite", "enqueue->start p50 (ms)", lambda r: (r["latency_ms"]["p50"], None), "-"),
    ("latency", None, "enqueue->start p99 (ms)", lambda r: (r["latency_ms"]["p99"], None), "-"),
    (
        "latency",
        None,
        "commit->start p50 (ms)",
        lambda r: (r["latency_after_commit_ms"]["p50"], None),
        "-",
    ),
    (
        "recovery",
        None,
        "recovery after SIGKILL, median (s)",
        lambda r: (
            r["recovery_s"]["median"],
            r["recovery_s"]["median"] is not None
            and r["recovery_s"]["median"] <= 1.0
            and r["failed_trials"] == 0,
        ),
        "<= 1",
    ),
    (
        "checkpoint",
        None,
        "checkpoint overhead per step p50 (ms)",
        lambda r: (r["overhead_ms_p50"], r["overhead_ms_p50"] <= 3),
        "<= 3",
    ),
    (
        "claim_latency",
        None,
        "claim p50, 100k/1k queued, worst ratio",
        _claim_close,
        f"<= {CLOSE}x",
    ),
    (
        "claim_latency",
        None,
        "claim p50, no session, 100k/1k, ratio",
        _claim_close_no_session,
        f"<= {CLOSE}x",
    ),
    (
        "claim_scale",
        None,
        "claim p50 ms, 1M vs 1k queued, batch 1",
        lambda r: _scale_p50s(r, "batch1"),
        "-",
    ),
    (
        "claim_scale",
        None,
        "claim p50 ms, 1M vs 1k queued, batch 10",
        lambda r: _scale_p50s(r, "batch10"),
        "-",
    ),
    (
        "claim_scale",
        None,
        "claim p50, 1M/1k queued, worst ratio",
        lambda r: (r["worst_ratio"], r["worst_ratio"] <= CLOSE),
        f"<= {CLOSE}x",
    ),
    (
        "fairness",
        None,
        "B wait p50 ms, alone vs with A's backlog",
        lambda r: (f"{r['b_wait_ms_p50_alone']} vs {r['b_wait_ms_p50_with_backlog']}", None),
        "-",
    ),
    ("fairness", None, "B wait p50, with/without backlog", lambda r: (r["ratio"], None), "-"),
    (
        "fairness",
        None,
        "A runs waiting when B done (of 5000)",
        lambda r: (r["a_waiting_when_b_done_min"], r["a_waiting_when_b_done_min"] > 4000),
        "> 4000",
    ),
    (
        "rate_limit",
        None,
        "max starts per window, claim times",
        lambda r: _rate_window(r, "claimed"),
        "<= limit",
    ),
    (
        "rate_limit",
        None,
        "max starts per window, workflow starts",
        lambda r: _rate_window(r, "started"),
        "<= limit",
    ),
    (
        "rate_limit",
        None,
        "rate achieved / limit",
        lambda r: (r["claimed"]["rate_vs_limit"], None),
        "-",
    ),
    (
        "user_config",
        None,
        "user config: start-up to claim (s)",
        lambda r: _startup(r, "bytecode"),
        "<= 0.5",
    ),
    (
        "user_config",
        None,
        "user config: start-up, no bytecode (s)",
        lambda r: _startup(r, "no_bytecode"),
        "-",
    ),
    (
        "user_config",
        "postgresql",
        "user config: drain (runs/s)",
        lambda r: (r["drain_prefilled"]["runs_per_s"], r["drain_prefilled"]["runs_per_s"] >= 1500),
        ">= 1500",
    ),
    (
        "user_config",
        "sqlite",
        "user config: drain (runs/s)",
        lambda r: (r["drain_prefilled"]["runs_per_s"], None),
        "-",
    ),
    (
        "user_config",
        None,
        "user config: drain, enqueued live (runs/s)",
        lambda r: (r["drain_live"]["runs_per_s"], None),
        "-",
    ),
    (
        "user_config",
        "postgresql",
        "user config: enqueue->start p50 (ms)",
        lambda r: (r["latency"]["latency_ms"]["p50"], r["latency"]["latency_ms"]["p50"] <= 3),
        "<= 3",
    ),
    (
        "user_config",
        "sqlite",
        "user config: enqueue->start p50 (ms)",
        lambda r: (r["latency"]["latency_ms"]["p50"], None),
        "-",
    ),
    (
        "user_config",
        None,
        "user config: recovery, standby (s)",
        lambda r: (r["recovery"]["standby"]["median"], r["recovery"]["standby"]["median"] <= 1),
        "<= 1",
    ),
    (
        "user_config",
        None,
        "user config: recovery, fresh worker (s)",
        lambda r: (r["recovery"]["replacement"]["median"], None),
        "-",
    ),
]


def _startup(r: dict[str, Any], cache: str) -> tuple[Any, bool | None]:
    seconds = r["startup"][cache]["spawn_to_claim_s"]["median"]
    return seconds, (seconds <= 0.5) if cache == "bytecode" else None


def run_one(name: str, db: str, timeout: float) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / f"{name}.py"), "--db", db],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"benchmark": name, "error": f"timed out after {timeout} s"}
    seconds = round(time.monotonic() - started, 1)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        return {"benchmark": name, "error": f"exit {proc.returncode}", "stderr": tail}
    result: dict[str, Any] = json.loads(proc.stdout)
    result["wall_seconds"] = seconds
    result["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line or "error" in line]
    if warnings:
        result["log_warnings"] = {"count": len(warnings), "first": warnings[:3]}
    return result


def summarize(results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for bench, only, label, extract, target in CHECKS:
        for backend, by_name in results.items():
            if only not in (None, backend) or bench not in by_name:
                continue
            r = by_name[bench]
            if "error" in r:
                rows.append({"backend": backend, "metric": label, "value": r["error"]})
                continue
            value, met = extract(r)
            row = {"backend": backend, "metric": label, "value": value, "target": target}
            row["met"] = "-" if met is None else ("yes" if met else "NO")
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432", help="server URL")
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--only", default="", help="comma-separated benchmark names")
    p.add_argument("--timeout", type=float, default=300.0, help="per benchmark, in seconds")
    p.add_argument("--out", default="", help="where to write the JSON (default bench/results/)")
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n] or BENCHMARKS
    dbs = {"sqlite": "sqlite", "postgresql": args.pg}
    began = time.monotonic()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for backend in args.backends.split(","):
        results[backend] = {}
        for name in names:
            print(f"[{backend}] {name} ...", file=sys.stderr, flush=True)
            timeout = max(args.timeout, TIMEOUTS.get(name, 0.0))
            results[backend][name] = run_one(name, dbs[backend], timeout)
    table = summarize(results)
    combined = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": benchlib.machine(),
        "total_seconds": round(time.monotonic() - began, 1),
        "summary": table,
        "results": results,
    }
    out = (
        Path(args.out)
        if args.out
        else HERE / "results" / f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(combined, indent=2) + "\n")
    for row in table:
        print(
            f"{row['backend']:<11} {row['metric']:<42} {row['value']!s:>10}"
            f"  target {row.get('target', '-'):<8} met {row.get('met', '-')}",
            file=sys.stderr,
        )
    print(f"written to {out}", file=sys.stderr)
    benchlib.emit(combined)


if __name__ == "__main__":
    main()
