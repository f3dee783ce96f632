"""Claim cost at scale: 1,000,000 queued runs over 400 tenants and 10,000 sessions versus 1,000
queued runs of the same shape, for claims of 1 and of 10 runs (issue 3: within 2x).

Shape: run i belongs to tenant i % 400 and session i % 10,000 (25 sessions per tenant; each
session belongs to one tenant), priority 0, queue `default`. The small case is the first 1,000
runs of the same sequence: 400 tenants, 1,000 sessions of one run each.

Set-up writes rows directly, in one multi-row INSERT … SELECT per table (generate_series on
PostgreSQL, a recursive CTE on SQLite) inside RunStore.backend.transaction(), consistent with
what enqueue.py and ready.py maintain: runs `queued`; one lane per session with its head (lowest
seq) and active = 0; tenants with their ready counts; the queue record. Enqueue events are not
written (claims never read them). PostgreSQL then runs ANALYZE, as autovacuum would.

Each timed RunStore.runs.claim is followed (untimed) by releasing what it leased
(RunStore.runs.finish(…, QUEUED)), which puts the runs back at the head of their lanes and the
tenants' ready counts back, so every claim sees the same backlog. Warm-up claims are not timed.
"""

from __future__ import annotations

import time
from typing import Any

import benchlib

from greenroom import RunState
from greenroom.storage import RunStore, open_store

WORKER = "bench-claimer"
LEASE = 3600.0
QUEUE = "default"


def _numbers(backend: str, count: int) -> tuple[str, str]:
    """A row source of i = 0 … count-1 (a CTE prefix and the FROM clause)."""
    if backend == "postgresql":
        return "", f"generate_series(0, {count - 1}) AS g(i)"
    cte = f"WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i < {count - 1}) "
    return cte, "g"


def fill(store: RunStore, backend: str, count: int, tenants: int, sessions: int) -> float:
    """Insert `count` queued runs and their lanes, tenants and queue rows; seconds taken."""
    now = time.time()
    cte, source = _numbers(backend, count)
    tw, sw = len(str(tenants - 1)), len(str(sessions - 1))  # zero-padded: names sort as numbers
    if backend == "postgresql":
        tenant = f"'t' || lpad((i % {tenants})::text, {tw}, '0')"
        session = f"'s' || lpad((i % {sessions})::text, {sw}, '0')"
    else:
        tenant = f"printf('t%0{tw}d', i % {tenants})"
        session = f"printf('s%0{sw}d', i % {sessions})"
    run_id = "'bench-' || i"
    run_input = "'{\"i\": ' || i || '}'"
    start = time.perf_counter()
    with store.backend.transaction() as tx:
        tx.execute(
            f"{cte}INSERT INTO runs (id, tenant, workflow, queue, session_key, state, priority,"
            " input, labels, attempt, max_attempts, stalls, cancel_requested, pause_requested,"
            " lease_token, available_at, created_at, updated_at)"
            f" SELECT {run_id}, {tenant}, 'bench.noop', '{QUEUE}', {session}, 'queued', 0,"
            f" {run_input}, '{{}}', 1, 1, 0, false, false, 0, :now, :now, :now FROM {source}"
            " ORDER BY i",
            {"now": now},
        )
        tx.execute(
            "INSERT INTO lanes (tenant, session_key, active, max_active, head_seq, head_priority,"
            f" head_queue) SELECT tenant, session_key, 0, 1, MIN(seq), 0, '{QUEUE}' FROM runs"
            " WHERE state = 'queued' AND session_key IS NOT NULL GROUP BY tenant, session_key",
        )
        tx.execute(
            "INSERT INTO tenants (name, weight, active, ready, pass, created_at)"
            " SELECT tenant, 1, 0, COUNT(*), 0, :now FROM runs WHERE state = 'queued'"
            " GROUP BY tenant",
            {"now": now},
        )
        tx.execute(
            "INSERT INTO queues (name, active, created_at, updated_at)"
            " VALUES (:name, 0, :now, :now) ON CONFLICT (name) DO NOTHING",
            {"name": QUEUE, "now": now},
        )
    if backend == "postgresql":
        with store.backend.transaction() as tx:
            for table in ("runs", "lanes", "tenants", "queues"):
                tx.execute(f"ANALYZE {table}")
    return time.perf_counter() - start


def check(store: RunStore, count: int, tenants: int, sessions: int) -> dict[str, Any]:
    """What the claim relies on, read back: the set-up must look like enqueued runs."""
    with store.backend.transaction(write=False) as tx:
        lanes = tx.execute(
            "SELECT COUNT(*) AS n, SUM(CASE WHEN head_seq IS NULL THEN 1 ELSE 0 END) AS no_head"
            " FROM lanes"
        )[0]
        ready = tx.execute("SELECT COUNT(*) AS n, SUM(ready) AS ready FROM tenants")[0]
        queued = tx.execute("SELECT COUNT(*) AS n FROM runs WHERE state = 'queued'")[0]["n"]
    out = {
        "queued": int(queued),
        "tenants": int(ready["n"]),
        "tenants_ready_sum": int(ready["ready"]),
        "lanes": int(lanes["n"]),
        "lanes_without_head": int(lanes["no_head"]),
    }
    expected = {
        "queued": count,
        "tenants": min(tenants, count),
        "tenants_ready_sum": count,
        "lanes": min(sessions, count),
        "lanes_without_head": 0,
    }
    if out != expected:
        raise SystemExit(f"set-up is not what claims expect: {out} != {expected}")
    return out


class Case:
    """One database filled with one backlog, kept open while the cases take turns."""

    def __init__(self, url: str, count: int, tenants: int, sessions: int) -> None:
        self.store = open_store(url)
        self.setup_s = fill(self.store, benchlib.backend_name(url), count, tenants, sessions)
        self.shape = check(self.store, count, tenants, sessions)
        self.claims: dict[int, list[float]] = {1: [], 10: []}
        self.releases: dict[int, list[float]] = {1: [], 10: []}

    def claim_and_release(self, size: int, timed: bool) -> None:
        """One claim of `size`, timed; its runs released (untimed) so the backlog stays."""
        t0 = time.perf_counter()
        leases = self.store.runs.claim(WORKER, [QUEUE], size, LEASE)
        t1 = time.perf_counter()
        for lease in leases:
            self.store.runs.finish(lease, RunState.QUEUED, reason="bench: released")
        t2 = time.perf_counter()
        if len(leases) != size:
            raise SystemExit(f"a claim of {size} returned {len(leases)} runs")
        if timed:
            self.claims[size].append(t1 - t0)
            self.releases[size].append((t2 - t1) / size)

    def result(self) -> dict[str, Any]:
        with self.store.backend.transaction(write=False) as tx:
            queued = tx.execute("SELECT COUNT(*) AS n FROM runs WHERE state = 'queued'")[0]["n"]
        out: dict[str, Any] = {**self.shape, "setup_s": round(self.setup_s, 1)}
        for size, times in self.claims.items():
            out[f"batch{size}"] = {
                "claim_ms": benchlib.summary(benchlib.ms(times)),
                "release_ms_per_run_p50": round(
                    benchlib.percentile(benchlib.ms(self.releases[size]), 50), 3
                ),
            }
        out["queued_at_end"] = int(queued)
        return out


def measure(cases: list[Case], repeats: int, rounds: int, warmup: int) -> None:
    """The cases take turns, a few claims each, so a burst of load on this shared machine
    lands on both sizes alike."""
    per_round = max(repeats // rounds, 1)
    for size in (1, 10):
        for case in cases:
            for _ in range(warmup):
                case.claim_and_release(size, timed=False)
        for _ in range(rounds):
            for case in cases:
                for _ in range(per_round):
                    case.claim_and_release(size, timed=True)


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument("--large", type=int, default=1_000_000, help="queued runs, large case")
    p.add_argument("--small", type=int, default=1_000, help="queued runs, small case")
    p.add_argument("--tenants", type=int, default=400)
    p.add_argument("--sessions", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=200, help="timed claims per size and case")
    p.add_argument("--rounds", type=int, default=10, help="turns the two cases take")
    args = p.parse_args()
    if args.sessions % args.tenants:
        raise SystemExit("--sessions must be a multiple of --tenants (a session has one tenant)")
    benchlib.quiet_logs()
    shape = (args.tenants, args.sessions)
    with (
        benchlib.fresh_database(args.db, "scale_small") as small_url,
        benchlib.fresh_database(args.db, "scale_large") as large_url,
    ):
        cases = [Case(small_url, args.small, *shape), Case(large_url, args.large, *shape)]
        try:
            measure(cases, args.repeats, args.rounds, warmup=20)
            small, large = (case.result() for case in cases)
        finally:
            for case in cases:
                case.store.backend.close()
        server = benchlib.server_version(large_url)
    ratios = {
        f"batch{size}": round(
            large[f"batch{size}"]["claim_ms"]["p50"] / small[f"batch{size}"]["claim_ms"]["p50"], 2
        )
        for size in (1, 10)
    }
    benchlib.emit(
        {
            "benchmark": "claim_scale",
            "backend": benchlib.backend_name(args.db),
            "server": server,
            "p50_ratio_large_to_small": ratios,
            "worst_ratio": max(ratios.values()),
            "small": small,
            "large": large,
        }
    )


if __name__ == "__main__":
    main()
