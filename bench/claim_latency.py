"""Claim latency with many queued runs: 100,000 runs over 1,000 sessions versus 1,000 runs over
the same 1,000 sessions, for claim batch sizes 1 and 10. The claim should not slow down as
runs pile up behind sessions.

Set-up uses RunStore.runs.enqueue_many in big batches (on PostgreSQL, then ANALYZE, as autovacuum
would after a bulk load). Two situations per queue size:
  free  every session is free to run its next run;
  busy  990 sessions already have a running run (claimed and held), so nearly all queued runs
        are blocked behind them and only 10 sessions can be served: the case where a naive
        claim scans the whole backlog.
Each timed RunStore.runs.claim call is followed (untimed) by finishing the runs it returned and
enqueuing as many new runs in the same sessions, so the queue keeps its size.

An extra case, beyond the issue's: the same sizes of runs without a session key (`no_session`),
the common case for work that needs no browser session.
"""

from __future__ import annotations

import time
from typing import Any

import benchlib

from greenroom import RunState
from greenroom.model import NewRun
from greenroom.storage import RunStore, open_store

WORKER = "bench-claimer"
LEASE = 3600.0
CELLS = ("free_batch1", "free_batch10", "busy_batch1", "busy_batch10")


def new_run(i: int, session: str | None) -> NewRun:
    return NewRun(workflow="bench.noop", input={"i": i}, session_key=session)


def fill(store: RunStore, count: int, sessions: int, batch: int = 5000) -> float:
    """`sessions` 0 means runs without a session key."""
    start = time.perf_counter()
    for first in range(0, count, batch):
        store.runs.enqueue_many(
            [
                new_run(i, f"s{i % sessions:05d}" if sessions else None)
                for i in range(first, min(first + batch, count))
            ]
        )
    return time.perf_counter() - start


def measure(store: RunStore, size: int, repeats: int) -> dict[str, Any]:
    """Time `repeats` claims of `size`; keep the queue's size constant between them."""
    times: list[float] = []
    got: list[float] = []
    next_i = 10**9
    for _ in range(repeats):
        t0 = time.perf_counter()
        leases = store.runs.claim(WORKER, ["default"], size, LEASE)
        times.append(time.perf_counter() - t0)
        got.append(len(leases))
        for lease in leases:
            store.runs.finish(lease, RunState.SUCCEEDED, reason="bench")
        refill = []
        for lease in leases:
            next_i += 1
            refill.append(new_run(next_i, lease.run.session_key))
        store.runs.enqueue_many(refill)
    return {
        "claim_ms": benchlib.summary(benchlib.ms(times)),
        "runs_per_claim_p50": benchlib.percentile(got, 50),
    }


def scenario(url: str, queued: int, sessions: int, busy: int, repeats: int) -> dict[str, Any]:
    store = open_store(url)
    try:
        setup = fill(store, queued, sessions)
        if benchlib.backend_name(url) == "postgresql":
            with store.backend.transaction() as tx:
                tx.execute("ANALYZE runs")
                tx.execute("ANALYZE lanes")
        out: dict[str, Any] = {"queued": queued, "sessions": sessions, "setup_s": round(setup, 1)}
        for size in (1, 10):
            out[f"free_batch{size}"] = measure(store, size, repeats)
        if sessions:
            held = store.runs.claim(WORKER, ["default"], busy, LEASE)
            out["busy_sessions"] = len(held)
            for size in (1, 10):
                out[f"busy_batch{size}"] = measure(store, size, repeats)
        out["queued_at_end"] = store.runs.count_by_state().get(RunState.QUEUED, 0)
    finally:
        store.backend.close()
    return out


def ratios(small: dict[str, Any], large: dict[str, Any]) -> dict[str, float]:
    """p50 with the large queue over p50 with the small one, per cell."""
    return {
        cell: round(large[cell]["claim_ms"]["p50"] / small[cell]["claim_ms"]["p50"], 2)
        for cell in CELLS
        if cell in small and cell in large
    }


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument("--large", type=int, default=100_000, help="queued runs, large case")
    p.add_argument("--small", type=int, default=1_000, help="queued runs, small case")
    p.add_argument("--sessions", type=int, default=1_000)
    p.add_argument("--busy", type=int, default=990, help="sessions held busy in the busy case")
    p.add_argument("--repeats", type=int, default=60, help="timed claims per cell")
    p.add_argument("--no-extra", action="store_true", help="skip the runs-without-session case")
    args = p.parse_args()
    benchlib.quiet_logs()
    plan = [("small", args.small, args.sessions), ("large", args.large, args.sessions)]
    if not args.no_extra:
        plan += [("no_session_small", args.small, 0), ("no_session_large", args.large, 0)]
    cases: dict[str, dict[str, Any]] = {}
    server = ""
    for label, queued, sessions in plan:
        with benchlib.fresh_database(args.db, f"claim_{label}") as url:
            server = benchlib.server_version(url)
            cases[label] = scenario(url, queued, sessions, args.busy, args.repeats)
    result: dict[str, Any] = {
        "benchmark": "claim_latency",
        "backend": benchlib.backend_name(args.db),
        "server": server,
        "p50_ratio_large_to_small": ratios(cases["small"], cases["large"]),
    }
    if not args.no_extra:
        result["no_session_p50_ratio_large_to_small"] = ratios(
            cases["no_session_small"], cases["no_session_large"]
        )
    benchlib.emit({**result, **cases})


if __name__ == "__main__":
    main()
