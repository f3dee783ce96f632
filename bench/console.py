"""The console's pages with 1,000,000 runs (issue 18: every page ≤ 200 ms p95): server time and
Chromium navigation time, as an operator would open them, on `greenroom api` (default settings).

Set-up (not measured): N runs (default 1,000,000) written in one `INSERT … SELECT` over 400
tenants and 20 workflows, created over the last 30 days: 90 % succeeded, 5 % failed (in 50 error
groups per tenant, with `error_groups` rows as failures write them), 1 % cancelled, 3 % queued,
1 % running (tenants' and queues' summaries set as enqueue and claim keep them); then 200 real
runs through a worker, in a queue of their own (half fail a step), so that run pages have steps
and a timeline; PostgreSQL `VACUUM (ANALYZE)` (as autovacuum does after a bulk insert: the
visibility map lets index-only scans skip the table). A platform key and a tenant admin key sign
in to the console.

Measured, for each page and each key (`--requests` times, in turns across pages): the time to
answer a GET on a kept-alive connection (`server`), and in Chromium (system `/usr/bin/chromium`,
headless, the session cookie set) `performance.getEntriesByType("navigation")[0]`'s
`responseEnd` (request to last byte) and `loadEventEnd` (the page loaded, its CSS and scripts
too) of a navigation (`navigation`). Reported: p50 and p95 per page, and whether p95 ≤ 200 ms.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import benchlib
import httpx
from api_load import free_port, wait_ready

from greenroom import App, RetryPolicy, RunContext, load_settings, step
from greenroom.api.keys import create_key
from greenroom.model import Role
from greenroom.storage import RunStore, open_store

TENANTS = 400
WORKFLOWS = 20
GROUPS = 50
DAYS = 30
TARGET_MS = 200.0
ERROR = '{"type": "TimeoutError", "message": "page did not load", "step": "open"}'
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def fill(store: RunStore, backend: str, count: int) -> float:
    """The runs, their error groups and the summaries, as the engine keeps them."""
    now = time.time()
    pg = backend == "postgresql"
    source = (
        f"generate_series(0, {count - 1}) AS g(i)"
        if pg
        else "(WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g"
        f" WHERE i < {count - 1}) SELECT i FROM g) AS g"
    )
    pad = "lpad((i % {n})::text, 3, '0')" if pg else "printf('%03d', i % {n})"
    tenant = f"'t' || {pad.format(n=TENANTS)}"
    workflow = f"'bench.flow' || {pad.format(n=WORKFLOWS)}"
    # i % 100: 0-89 succeeded, 90-94 failed, 95 cancelled, 96-98 queued, 99 running.
    state = (
        "CASE WHEN i % 100 < 90 THEN 'succeeded' WHEN i % 100 < 95 THEN 'failed'"
        " WHEN i % 100 = 95 THEN 'cancelled' WHEN i % 100 < 99 THEN 'queued' ELSE 'running' END"
    )
    group = f"'g' || {pad.format(n=GROUPS)}"
    created = f":now - {DAYS * 86400} + i * {DAYS * 86400.0 / count}"
    finished = f"CASE WHEN i % 100 < 96 THEN {created} + 5 END"
    start = time.perf_counter()
    with store.backend.transaction() as tx:
        tx.execute(
            "INSERT INTO runs (id, tenant, workflow, queue, state, priority, input, labels,"
            " attempt, max_attempts, stalls, cancel_requested, pause_requested, lease_token,"
            " lease_owner, lease_expires_at, available_at, created_at, started_at, finished_at,"
            " updated_at, error, error_group)"
            f" SELECT 'bench-' || i, {tenant}, {workflow}, 'default', {state}, 0,"
            " '{\"i\": ' || i || '}', '{\"integration\": \"int-' || (i % 7) || '\"}', 1, 1, 0,"
            " false, false, CASE WHEN i % 100 = 99 THEN 1 ELSE 0 END,"
            " CASE WHEN i % 100 = 99 THEN 'bench-worker' END,"
            " CASE WHEN i % 100 = 99 THEN :now + 3600 END,"
            f" {created}, {created}, {created} + 1, {finished}, :now,"
            f" CASE WHEN i % 100 BETWEEN 90 AND 94 THEN '{ERROR}' END,"
            f" CASE WHEN i % 100 BETWEEN 90 AND 94 THEN {group} END"
            f" FROM {source}",
            {"now": now},
        )
        tx.execute(
            "INSERT INTO error_groups (tenant, fingerprint, workflow, step, type, message,"
            " error_class, occurrences, first_seen, last_seen, last_run_id)"
            " SELECT tenant, error_group, MIN(workflow), 'open', 'TimeoutError',"
            " 'page did not load', 'transient', COUNT(*), MIN(created_at), MAX(created_at),"
            " MAX(id) FROM runs WHERE error_group IS NOT NULL GROUP BY tenant, error_group",
        )
        tx.execute(
            "INSERT INTO tenants (name, weight, active, ready, pass, created_at)"
            " SELECT tenant, 1, SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END), 0, :now FROM runs"
            " GROUP BY tenant ON CONFLICT (name) DO NOTHING",
            {"now": now},
        )
        tx.execute(
            "INSERT INTO queues (name, active, created_at, updated_at) SELECT 'default',"
            " COUNT(*), :now, :now FROM runs WHERE state = 'running'"
            " ON CONFLICT (name) DO UPDATE SET active = excluded.active",
            {"now": now},
        )
    if pg:  # what autovacuum does after a bulk insert: statistics and the visibility map
        import psycopg

        with psycopg.connect(store.backend.url, autocommit=True) as conn:
            for table in ("runs", "error_groups", "tenants", "queues"):
                conn.execute(f"VACUUM (ANALYZE) {table}")
    return time.perf_counter() - start


@step(name="open", retry=RetryPolicy(max_attempts=1))
async def open_page(ctx: RunContext, n: int) -> int:
    if n % 2:
        raise TimeoutError("page did not load")
    return n


def real_runs(url: str, count: int) -> list[str]:
    """Runs made by a worker, with steps, timelines and errors: what run pages show."""
    from greenroom import Worker

    app = App(db=url, settings=load_settings(db=url, licenses_enabled=False))

    @app.workflow(name="bench.real")
    async def real(ctx: RunContext, n: int = 0) -> int:
        return await open_page(ctx, n)

    ids = [
        app.enqueue_sync("bench.real", {"n": i}, tenant="t000", queue="real").id
        for i in range(count)
    ]

    async def drain() -> None:
        worker = Worker(app, queues=["real"], concurrency=10)  # the bulk runs stay as they are
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = [app.store.runs.get_run(i) for i in ids]
            if all(r.state.finished for r in runs):
                break
            await asyncio.sleep(0.2)
        worker.stop()
        await task

    asyncio.run(drain())
    app.close()
    return ids


@contextmanager
def api(url: str, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "greenroom.cli", "api", "--db", url, "--port", str(port)]
    proc = subprocess.Popen(command, stdout=sys.stderr, env={**os.environ, **env})
    try:
        wait_ready(base, proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


def signed_in(base: str, key: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=30)
    form = client.get("/ui/login")
    found = CSRF.search(form.text)
    assert found, "no sign-in form"
    done = client.post("/ui/login", data={"api_key": key, "csrf": found.group(1)})
    assert done.status_code == 303, done.text
    return client


def pages(run_id: str, tenant: str | None) -> dict[str, str]:
    scope = f"?tenant={tenant}" if tenant else ""
    return {
        "overview": "/ui/",
        "runs": "/ui/runs",
        "runs failed": "/ui/runs?state=failed",
        "runs of a workflow": "/ui/runs?workflow=bench.flow007",
        "runs by label": "/ui/runs?label=integration%3Dint-3",
        "run": f"/ui/runs/{run_id}",
        "errors": "/ui/errors" + scope,
        "pauses": "/ui/pauses",
        "integrations": "/ui/integrations",
        "audit": "/ui/audit",
    }


def server_times(client: httpx.Client, paths: dict[str, str], n: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in paths}
    for path in paths.values():  # warm-up
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    for _ in range(n):
        for name, path in paths.items():
            started = time.perf_counter()
            client.get(path)
            times[name].append(time.perf_counter() - started)
    return times


def browser_times(
    base: str, cookies: httpx.Cookies, paths: dict[str, str], n: int
) -> dict[str, dict[str, list[float]]]:
    from playwright.sync_api import sync_playwright

    from greenroom.browser.launch import find_browser

    out: dict[str, dict[str, list[float]]] = {name: {"response": [], "load": []} for name in paths}
    with sync_playwright() as p:
        found = find_browser(load_settings())
        browser = p.chromium.launch(executable_path=str(found.path), headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.add_cookies(
            [{"name": c.name, "value": c.value or "", "url": base + "/ui/"} for c in cookies.jar]
        )
        page = context.new_page()
        for path in paths.values():  # warm-up (and the static files cached)
            page.goto(base + path)
        for _ in range(n):
            for name, path in paths.items():
                page.goto(base + path, wait_until="load")
                timing = page.evaluate(
                    "() => { const t = performance.getEntriesByType('navigation')[0];"
                    " return [t.responseEnd - t.startTime, t.loadEventEnd - t.startTime]; }"
                )
                out[name]["response"].append(timing[0] / 1000)
                out[name]["load"].append(timing[1] / 1000)
        browser.close()
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(benchlib.percentile(values, 50) * 1000, 1),
        "p95_ms": round(benchlib.percentile(values, 95) * 1000, 1),
    }


def main() -> None:
    p = benchlib.parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1_000_000)
    p.add_argument("--requests", type=int, default=20, help="GETs per page and key")
    p.add_argument("--navigations", type=int, default=10, help="Chromium loads per page")
    args = p.parse_args()
    benchlib.quiet_logs()
    secret = base64.b64encode(os.urandom(32)).decode()
    env = {"GREENROOM_SECRET_KEY": secret}
    result: dict[str, Any] = {"benchmark": "console", "runs": args.runs}
    with benchlib.fresh_database(args.db, "console") as url:
        os.environ.update(env)
        store = open_store(url)
        result["backend"] = benchlib.backend_name(url)
        result["setup_s"] = round(fill(store, result["backend"], args.runs), 1)
        store.accounts.create_tenant("t000", actor="bench")
        _, platform = create_key(
            store.accounts, tenant=None, role=Role.PLATFORM, name="ops", actor="bench"
        )
        _, admin = create_key(
            store.accounts, tenant="t000", role=Role.ADMIN, name="admin", actor="bench"
        )
        store.backend.close()
        ids = real_runs(url, 200)
        failed = ids[1]
        print(f"set up {args.runs:,} runs in {result['setup_s']} s", file=sys.stderr)
        with api(url, env) as base:
            for who, key, tenant in (("platform", platform, None), ("tenant", admin, "t000")):
                client = signed_in(base, key)
                paths = pages(failed, tenant)
                server = server_times(client, paths, args.requests)
                browser = browser_times(base, client.cookies, paths, args.navigations)
                client.close()
                result[who] = {
                    name: {
                        "server": summary(server[name]),
                        "navigation_response": summary(browser[name]["response"]),
                        "navigation_load": summary(browser[name]["load"]),
                    }
                    for name in paths
                }
    print(table(result), file=sys.stderr)
    benchlib.emit(result)


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{'key':9} {'page':20} {'server p50/p95':>16} {'load p50/p95':>16}  ≤ {TARGET_MS:g} ms",
    ]
    for who in ("platform", "tenant"):
        for name, r in result[who].items():
            worst = max(r["server"]["p95_ms"], r["navigation_load"]["p95_ms"])
            lines.append(
                f"{who:9} {name:20} {r['server']['p50_ms']:>7} / {r['server']['p95_ms']:<7}"
                f" {r['navigation_load']['p50_ms']:>7} / {r['navigation_load']['p95_ms']:<7}"
                f"  {'yes' if worst <= TARGET_MS else 'no'}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
