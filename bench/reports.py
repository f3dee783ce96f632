"""Reports at scale (issue 19): every tenant's automation-health and license-savings report for
last week, made by report runs on the `reports` queue (its concurrency limit, 4 by default),
while ordinary runs keep coming; prints one JSON object on stdout and a summary on stderr.

Set-up (not measured), in bulk (executemany, chunks of 5,000): `--tenants` tenants with
`--integrations` integrations each; `--runs` finished runs over last week (per integration, a
success rate drawn between 70 % and 100 %, failures in 5 error groups, durations of 2-120 s);
`--licenses` licenses, a third of them with an open finding (idle, never_used or underused,
5-60 a month in USD) and 2 % reclaimed last week.

Measured, with `--workers` in-process workers serving `default` and `reports` (each
`--concurrency` runs at once):
1. baseline: ordinary runs (a workflow that returns at once) enqueued at `--rate` per second
   for `--baseline` seconds: their latency from enqueue to end.
2. fan-out: one health and one savings report run per tenant enqueued at once (as a
   platform-wide schedule's slot does), ordinary runs still at `--rate`; until every report
   has succeeded: the total time, reports per second, and the ordinary runs' latency meanwhile.

    uv run python bench/reports.py --db postgresql://postgres@127.0.0.1:5432 --tenants 400 \\
        --runs 1000000 --licenses 5000000
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import benchlib

from greenroom import App, RunContext, Worker, load_settings
from greenroom.reports.period import PeriodKind, last_complete
from greenroom.reports.service import limit_queue
from greenroom.reports.workflows import REPORT_WORKFLOW, add_reports
from greenroom.storage import RunStore

CHUNK = 5000
BERLIN = "Europe/Berlin"
GROUPS = ("TimeoutError", "LoggedOut", "SelectorNotFound", "HTTP 502", "CaptchaShown")
VERDICTS = (("idle", "reclaim"), ("never_used", "reclaim"), ("underused", "downgrade"))


def chunks(rows: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start : start + CHUNK]


def insert(store: RunStore, table: str, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    names = list(rows[0])
    sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)})"
    for part in chunks(rows):
        with store.backend.transaction() as tx:
            tx.execute_many(sql, part)


def world(store: RunStore, args: Any, start: float, end: float) -> dict[str, int]:
    """Tenants, integrations, last week's runs, licenses and findings."""
    rnd = random.Random(19)
    now = time.time()
    tenants = [f"t{t:03d}" for t in range(args.tenants)]
    integrations = [(t, f"int_{t}_{i}") for t in tenants for i in range(args.integrations)]
    insert(
        store,
        "tenants",
        [{"name": t, "created_at": now, "registered_at": now} for t in tenants],
    )
    insert(
        store,
        "integrations",
        [
            {
                "id": iid,
                "tenant": t,
                "connector": "crm",
                "name": f"{iid} app",
                "settings": "{}",
                "status": "active",
                "key_id": "k",
                "credentials": "x",
                "credentials_updated_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for t, iid in integrations
        ],
    )
    insert(
        store,
        "error_groups",
        [
            {
                "tenant": t,
                "fingerprint": f"fp{g}",
                "workflow": "crm.sync",
                "step": "sync",
                "type": name,
                "message": f"{name} on the page",
                "error_class": "transient",
                "occurrences": 1,
                "first_seen": start,
                "last_seen": end,
                "last_run_id": "r",
            }
            for t in tenants
            for g, name in enumerate(GROUPS)
        ],
    )
    rates = {iid: rnd.uniform(0.7, 1.0) for _, iid in integrations}
    runs = []
    for n in range(args.runs):
        t, iid = integrations[n % len(integrations)]
        finished = rnd.uniform(start, end)
        ok = rnd.random() < rates[iid]
        runs.append(
            {
                "id": str(uuid.UUID(int=rnd.getrandbits(128))),
                "tenant": t,
                "workflow": "crm.sync",
                "queue": "default",
                "state": "succeeded" if ok else "failed",
                "input": "{}",
                "labels": json.dumps({"integration": iid}),
                "available_at": finished - 200,
                "created_at": finished - 200,
                "started_at": finished - rnd.uniform(2, 120),
                "finished_at": finished,
                "updated_at": finished,
                "error_group": None if ok else f"fp{rnd.randrange(len(GROUPS))}",
            }
        )
    insert(store, "runs", runs)
    licenses, findings = [], []
    for n in range(args.licenses):
        t, iid = integrations[n % len(integrations)]
        lid = f"lic{n}"
        licenses.append(
            {
                "id": lid,
                "tenant": t,
                "integration_id": iid,
                "user_id": f"u{n}",
                "email": f"user{n}@{t}.example",
                "billing_period": "monthly",
                "status": "active",
                "service_account": False,
                "activity": "0",
                "first_seen_at": start - 90 * 86400,
                "seen_at": end,
                "sync_id": "s",
                "updated_at": end,
            }
        )
        if n % 3 == 0:
            verdict, action = VERDICTS[n % 9 // 3]
            reclaimed = rnd.random() < 0.02
            findings.append(
                {
                    "id": f"f{n}",
                    "tenant": t,
                    "integration_id": iid,
                    "license_id": lid,
                    "verdict": verdict,
                    "action": action,
                    "confidence": "high",
                    "state": "closed" if reclaimed else "candidate",
                    "episode_start": start - rnd.uniform(30, 200) * 86400,
                    "reason": "idle",
                    "monthly_savings": float(rnd.randrange(5, 61)),
                    "currency": "USD",
                    "opened_at": start - 86400,
                    "updated_at": end,
                    "closed_at": rnd.uniform(start, end) if reclaimed else None,
                    "outcome": "reclaimed" if reclaimed else None,
                }
            )
    insert(store, "licenses", licenses)
    insert(store, "license_findings", findings)
    return {
        "tenants": len(tenants),
        "integrations": len(integrations),
        "runs": len(runs),
        "licenses": len(licenses),
        "findings": len(findings),
    }


async def ordinary(app: App, rate: float, until: asyncio.Event, ids: list[str]) -> None:
    """Enqueue an ordinary run every 1/rate seconds until told to stop."""
    while not until.is_set():
        run = await app.enqueue("bench.ordinary", {}, tenant=f"t{len(ids) % 7:03d}")
        ids.append(run.id)
        await asyncio.sleep(1 / rate)


def latencies(store: RunStore, ids: Sequence[str]) -> list[float]:
    runs = [store.runs.get_run(i) for i in ids]
    return [r.finished_at - r.created_at for r in runs if r.finished_at is not None]


async def wait_done(store: RunStore, ids: Sequence[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    left = list(ids)
    while left and time.monotonic() < deadline:
        runs = await asyncio.to_thread(lambda wanted=left: [store.runs.get_run(i) for i in wanted])
        left = [r.id for r in runs if r.state.value not in ("succeeded", "failed", "cancelled")]
        await asyncio.sleep(0.25)
    if left:
        raise SystemExit(f"{len(left)} runs not finished within {timeout:.0f}s")


async def measure(app: App, args: Any, at: float) -> dict[str, Any]:
    workers = [
        Worker(app, queues=["default", "reports"], concurrency=args.concurrency)
        for _ in range(args.workers)
    ]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        stop, base_ids = asyncio.Event(), []
        feeder = asyncio.create_task(ordinary(app, args.rate, stop, base_ids))
        await asyncio.sleep(args.baseline)
        stop.set()
        await feeder
        await wait_done(app.store, base_ids, 60)
        baseline = latencies(app.store, base_ids)

        stop, during_ids = asyncio.Event(), []
        feeder = asyncio.create_task(ordinary(app, args.rate, stop, during_ids))
        started = time.perf_counter()
        when = datetime.fromtimestamp(at, UTC).isoformat()
        reports = await asyncio.gather(
            *(
                app.enqueue(
                    REPORT_WORKFLOW,
                    {
                        "report_type": kind,
                        "period": "week",
                        "timezone": "Europe/Berlin",
                        "at": when,
                    },
                    tenant=f"t{t:03d}",
                )
                for t in range(args.tenants)
                for kind in ("health", "savings")
            )
        )
        await wait_done(app.store, [r.id for r in reports], args.timeout)
        total = time.perf_counter() - started
        stop.set()
        await feeder
        await wait_done(app.store, during_ids, 60)
        during = latencies(app.store, during_ids)
        failed = [r.id for r in reports if app.store.runs.get_run(r.id).state.value != "succeeded"]
    finally:
        for w in workers:
            w.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "reports": len(reports),
        "reports_failed": len(failed),
        "total_s": round(total, 2),
        "reports_per_s": round(len(reports) / total, 2),
        "ordinary_latency_baseline_ms": benchlib.summary(benchlib.ms(baseline)),
        "ordinary_latency_during_ms": benchlib.summary(benchlib.ms(during)),
    }


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument("--tenants", type=int, default=400)
    p.add_argument("--integrations", type=int, default=5)
    p.add_argument("--runs", type=int, default=1_000_000)
    p.add_argument("--licenses", type=int, default=5_000_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--rate", type=float, default=20.0, help="ordinary runs per second")
    p.add_argument("--baseline", type=float, default=10.0, help="seconds of ordinary runs alone")
    p.add_argument("--timeout", type=float, default=3600.0)
    args = p.parse_args()
    benchlib.quiet_logs()
    at = time.time()
    week = last_complete(PeriodKind.WEEK, at, "Europe/Berlin")
    with benchlib.fresh_database(args.db or "sqlite", "reports") as url:
        app = App(
            db=url,
            settings=load_settings(
                db=url, schedules_enabled=False, licenses_enabled=False, delivery_enabled=False
            ),
        )

        @app.workflow(name="bench.ordinary")
        async def ordinary_run(ctx: RunContext) -> int:
            return 1

        add_reports(app)
        started = time.perf_counter()
        made = world(app.store, args, week.start, week.end)
        setup_s = time.perf_counter() - started
        limit_queue(app)
        try:
            result = asyncio.run(measure(app, args, at))
        finally:
            app.close()
    output = {
        "benchmark": "reports",
        "backend": benchlib.backend_name(url),
        **made,
        "setup_s": round(setup_s, 1),
        "reports_queue_concurrency": 4,
        "workers": args.workers,
        "ordinary_rate_per_s": args.rate,
        **result,
        "machine": benchlib.machine(),
    }
    print(
        f"{made['tenants']} tenants, {made['runs']} runs, {made['licenses']} licenses:"
        f" {result['reports']} reports in {result['total_s']} s; ordinary p50/p95"
        f" {result['ordinary_latency_baseline_ms']} -> {result['ordinary_latency_during_ms']}",
        file=sys.stderr,
    )
    benchlib.emit(output)


if __name__ == "__main__":
    main()
