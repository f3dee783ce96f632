"""Demo syncs per minute: the example connector's `demo.sync_users` against the demo SaaS, on one
in-process worker at concurrency 1, 4 and 8.

The demo SaaS runs in its own process (`greenroom demo-saas`, as a real SaaS would not share
the worker's interpreter) with `--orgs` organizations of `--users-per-org` users (25 per page:
a login step, then one step per page), once per `--latency-ms` value (added to every page: real
admin consoles are slow, which is what concurrency is for). For each concurrency: a fresh
database, one warm-up sync (Chromium running, as on a worker that has served runs), then every
org enqueued at once; the rate is syncs / (last finish - enqueue).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import benchlib
from pydantic import SecretStr

from greenroom import RunState, Worker
from greenroom.app import App, RunRequest
from greenroom.cli import load_app
from greenroom.crypto import load_keyring
from greenroom.demo.saas import DemoSaaS, make_config, org_slugs
from greenroom.demo.setup import connect_org, register_tenant
from greenroom.model import Run
from greenroom.storage import RunFilter

CONNECTOR = "greenroom.demo.connector:app"
WORKFLOW = "demo.sync_users"


def connector(ref: str, url: str) -> App:
    app = load_app(ref)
    app.close()
    # Saved sessions are encrypted: a key of this run's own (SQLite alone would make a key file).
    key = SecretStr(base64.b64encode(os.urandom(32)).decode())
    app.settings = app.settings.model_copy(update={"db": url, "secret_key": key})
    app.store.runs.count_by_state()  # open and migrate before the worker's threads use it
    return app


def integration(app: App, tenant: str, org: str, base_url: str) -> str:
    """The tenant's integration with the org of the console (the demo connector's credentials
    and its base_url setting), as an admin would create it."""
    register_tenant(app.store, tenant)
    ring = load_keyring(app.settings)
    demo = app.connector_of(WORKFLOW)
    return connect_org(app.store, ring, demo, tenant=tenant, org=org, base_url=base_url).id


async def wait_finished(app: App, tenant: str, count: int, timeout: float) -> list[Run]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = await asyncio.to_thread(
            app.store.runs.list_runs, RunFilter(tenant=tenant, limit=count + 1)
        )
        if len(runs) == count and all(r.state.finished for r in runs):
            return runs
        await asyncio.sleep(0.02)
    raise SystemExit(f"{tenant}: runs did not finish within {timeout} s")


async def one_concurrency(
    ref: str, url: str, saas: DemoSaaS, concurrency: int, orgs: int, timeout: float
) -> dict[str, Any]:
    app = connector(ref, url)
    worker = Worker(app, concurrency=concurrency)
    task = asyncio.create_task(worker.run())
    try:
        warm = f"warmup-{concurrency}"
        await app.enqueue(
            WORKFLOW,
            {"org": "warm-up"},
            tenant=warm,
            integration=await asyncio.to_thread(integration, app, warm, "warm-up", saas.url),
        )
        await wait_finished(app, warm, 1, timeout)
        saas.reset_stats()
        tenant = f"bench-{concurrency}"
        requests = [
            RunRequest(
                workflow=WORKFLOW,
                input={"org": org},
                tenant=tenant,
                integration=await asyncio.to_thread(integration, app, tenant, org, saas.url),
            )
            for org in org_slugs(orgs)
        ]
        t0 = time.time()
        await app.enqueue_many(requests)
        runs = await wait_finished(app, tenant, orgs, timeout)
    finally:
        worker.stop()
        await task
        app.close()
    ok = [r for r in runs if r.state is RunState.SUCCEEDED]
    last = max((r.finished_at or t0) for r in runs)
    seconds = last - t0
    stats = saas.stats()
    return {
        "concurrency": concurrency,
        "syncs": orgs,
        "succeeded": len(ok),
        "seconds": round(seconds, 2),
        "syncs_per_minute": round(len(ok) / seconds * 60, 1),
        "pages_per_second": round(sum(r.output["pages"] for r in ok) / seconds, 1),
        "run_seconds": benchlib.summary(
            [(r.finished_at or 0) - (r.started_at or 0) for r in ok], 2
        ),
        "logins": sum(s.get("logins", 0) for s in stats.values()),
        "browsers_launched": worker.browser.pool.stats.browsers_launched,
    }


@contextlib.contextmanager
def saas_process(orgs: int, users_per_org: int, latency_ms: int) -> Iterator[DemoSaaS]:
    cmd = [sys.executable, "-m", "greenroom.cli", "demo-saas", "--port", "0", "--no-access-log"]
    cmd += ["--orgs", str(orgs), "--users-per-org", str(users_per_org)]
    cmd += ["--latency-ms", str(latency_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # "demo SaaS console at http://127.0.0.1:PORT"
        if "http://" not in first:
            raise SystemExit(f"demo-saas did not start: {first!r}")
        url = first.split()[-1]
        config = make_config(orgs=orgs, users_per_org=users_per_org, latency_ms=latency_ms)
        yield DemoSaaS(url=url, config=config)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


async def measure(args: Any, url_for: Any) -> list[dict[str, Any]]:
    results = []
    for latency in args.latency_ms:
        with saas_process(args.orgs, args.users_per_org, latency) as saas:
            for concurrency in args.concurrency:
                with url_for() as url:
                    found = await one_concurrency(
                        args.app, url, saas, concurrency, args.orgs, args.timeout
                    )
                results.append({"latency_ms": latency, **found})
    return results


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument("--orgs", type=int, default=10)
    p.add_argument("--users-per-org", type=int, default=100)
    p.add_argument("--latency-ms", type=int, nargs="+", default=[0, 250])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--app", default=CONNECTOR, help="the connector app, module:attribute")
    args = p.parse_args()
    benchlib.quiet_logs()
    results = asyncio.run(measure(args, lambda: benchlib.fresh_database(args.db, "browser_demo")))
    url_kind = "sqlite" if args.db.startswith("sqlite") else "postgresql"
    benchlib.emit(
        {
            "benchmark": "browser_demo",
            "backend": url_kind,
            "orgs": args.orgs,
            "users_per_org": args.users_per_org,
            "pages_per_sync": math.ceil(args.users_per_org / 25),
            "results": results,
            "machine": benchlib.machine(),
        }
    )


if __name__ == "__main__":
    main()
