"""Browser pool: cold launch vs warm context acquisition, and memory per concurrent session.

- cold: a new BrowserPool acquires a session context and takes its page: Playwright's driver,
  Chromium and the context all start (what a worker's first run waits for).
- new context: a pool whose browser already runs acquires a context for a new session key.
- warm: a session's context was released warm (as after a successful run); acquiring it again
  and taking its page from the pool. Goal: p50 <= 50 ms.
- warm in a run: `await ctx.page()` in the next run of a logged-in session on the same worker
  (reads the session's saved-state version from the database, then takes the warm context):
  what a workflow waits for. Runs one at a time on an in-process worker over `--db`.
- memory: 1, 5 and 10 sessions, each logged into its own demo SaaS organization and showing its
  users page; resident memory of every Chromium process of the pool (RSS, and PSS, which splits
  shared pages fairly) divided by the number of sessions.

"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from typing import Any

import benchlib

from greenroom import App, RunContext, RunState, Worker
from greenroom.browser.pool import BrowserPool
from greenroom.demo.saas import DemoSaaS, org_slugs, running_demo_saas
from greenroom.settings import Settings, load_settings


def settings() -> Settings:
    return load_settings(db="sqlite:///unused.db", browser_idle_contexts=50)


async def cold(samples: int) -> tuple[list[float], dict[str, Any]]:
    """Cold acquisition times, and which browser was launched."""
    times = []
    browser: dict[str, Any] = {}
    for _ in range(samples):
        pool = BrowserPool(settings())
        try:
            t0 = time.perf_counter()
            entry = await pool.acquire("cold")
            await entry.take_page()
            times.append(time.perf_counter() - t0)
            if pool.found is not None:
                browser = {
                    "path": pool.found.path,
                    "source": pool.found.source,
                    "version": entry.owner.browser.version,
                }
        finally:
            await pool.close()
    return times, browser


async def new_and_warm(samples: int) -> tuple[list[float], list[float]]:
    """(new context on a running browser, warm context of a known session) acquisitions."""
    pool = BrowserPool(settings())
    new: list[float] = []
    warm: list[float] = []
    try:
        entry = await pool.acquire("warm-up")  # the browser is running from here on
        await pool.release(entry, await entry.take_page(), keep=False)
        for i in range(samples):
            t0 = time.perf_counter()
            entry = await pool.acquire(f"session-{i}")
            page = await entry.take_page()
            new.append(time.perf_counter() - t0)
            await page.goto("data:text/html,<title>run</title>")
            await pool.release(entry, page, keep=True)
        for i in range(samples):
            t0 = time.perf_counter()
            entry = await pool.acquire(f"session-{i}")
            page = await entry.take_page()
            warm.append(time.perf_counter() - t0)
            await pool.release(entry, page, keep=True)
        assert pool.stats.browsers_launched == 1, pool.stats
        assert pool.stats.contexts_reused == samples, pool.stats
    finally:
        await pool.close()
    return new, warm


def process_group_memory(pgid: int) -> tuple[int, int, int]:
    """(processes, RSS bytes, PSS bytes) of a process group (Linux)."""
    count = rss = pss = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            with open(f"/proc/{entry}/smaps_rollup") as f:
                rollup = {
                    line.split(":")[0]: int(line.split()[1]) * 1024
                    for line in f
                    if line.startswith(("Rss:", "Pss:"))
                }
        except (OSError, IndexError, ValueError):
            continue
        count += 1
        rss += rollup.get("Rss", 0)
        pss += rollup.get("Pss", 0)
    return count, rss, pss


async def login(page: Any, saas: DemoSaaS, org: str) -> None:
    creds = saas.credentials(org)
    await page.goto(saas.users_url(org))
    await page.fill("input[name=email]", creds.email)
    await page.fill("input[name=password]", creds.password)
    await page.click("[data-testid=login-submit]")
    await page.wait_for_selector("[data-testid=user-row]")


async def memory(saas: DemoSaaS, sessions: int) -> dict[str, Any]:
    pool = BrowserPool(settings())
    try:
        orgs = org_slugs(sessions)
        held = []
        for org in orgs:
            entry = await pool.acquire(org)
            page = await entry.take_page()
            await login(page, saas, org)
            held.append((entry, page))
        await asyncio.sleep(1.0)  # let the renderers settle
        procs = rss = pss = 0
        for pid in pool.browser_pids():
            n, r, p = process_group_memory(pid)
            procs, rss, pss = procs + n, rss + r, pss + p
        mb = 1024 * 1024
        return {
            "sessions": sessions,
            "chromium_processes": procs,
            "rss_mb_total": round(rss / mb, 1),
            "pss_mb_total": round(pss / mb, 1),
            "rss_mb_per_session": round(rss / mb / sessions, 1),
            "pss_mb_per_session": round(pss / mb / sessions, 1),
        }
    finally:
        await pool.close()


def page_app(url: str, saas: DemoSaaS) -> App:
    # Saved sessions are encrypted: a key of this run's own (SQLite alone would make a key file).
    key = base64.b64encode(os.urandom(32)).decode()
    app = App(db=url, settings=load_settings(secret_key=key))

    @app.workflow(name="bench.page", session="{tenant}:acme")
    async def timed_page(ctx: RunContext, first: bool) -> float:
        t0 = time.perf_counter()
        page = await ctx.page()
        took = time.perf_counter() - t0
        if first:
            await login(page, saas, "acme")
        else:
            await page.goto(saas.users_url("acme"))
            await page.wait_for_selector("[data-testid=user-row]", timeout=5000)
        return took

    return app


async def warm_in_runs(url: str, saas: DemoSaaS, samples: int) -> tuple[list[float], int, int]:
    """ctx.page() times of a session's runs after its first; the logins the SaaS counted; how
    many runs got the warm context."""
    app = page_app(url, saas)
    app.store.runs.count_by_state()  # open and migrate once, before two threads would race to
    worker = Worker(app, concurrency=1)
    task = asyncio.create_task(worker.run())
    times = []
    try:
        for i in range(samples + 1):
            run = await app.enqueue("bench.page", {"first": i == 0})
            while not (
                done := await asyncio.to_thread(app.store.runs.get_run, run.id)
            ).state.finished:
                await asyncio.sleep(0.005)
            if done.state is not RunState.SUCCEEDED:
                raise SystemExit(f"run {run.id} ended {done.state}: {done.error}")
            if i:
                times.append(float(done.output))
    finally:
        worker.stop()
        await task
        app.close()
    return times, saas.logins("acme"), worker.browser.pool.stats.contexts_reused


async def measure(url: str, samples: int) -> dict[str, Any]:
    cold_s, browser = await cold(samples)
    new_s, warm_s = await new_and_warm(samples)
    with running_demo_saas(orgs=10) as saas:
        in_run, logins, reused = await warm_in_runs(url, saas, samples)
        saas.reset_stats()
        mem = [await memory(saas, n) for n in (1, 5, 10)]
    warm_ms = benchlib.summary(benchlib.ms(warm_s), 2)
    in_run_ms = benchlib.summary(benchlib.ms(in_run), 2)
    first, last = mem[0], mem[-1]
    added = last["sessions"] - first["sessions"]
    return {
        "benchmark": "browser_pool",
        "backend": benchlib.backend_name(url),
        "browser": browser,
        "samples": samples,
        "cold_acquire_ms": benchlib.summary(benchlib.ms(cold_s), 1),
        "new_context_ms": benchlib.summary(benchlib.ms(new_s), 2),
        "warm_acquire_ms": warm_ms,
        "warm_page_in_run_ms": in_run_ms,
        "warm_page_in_run_reused_contexts": reused,
        "logins_in_runs": logins,
        "warm_goal_ms_p50": 50,
        "warm_goal_met": warm_ms["p50"] <= 50 and in_run_ms["p50"] <= 50,
        "memory": mem,
        "pss_mb_per_added_session": round(
            (last["pss_mb_total"] - first["pss_mb_total"]) / added, 1
        ),
    }


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument("--samples", type=int, default=30)
    args = p.parse_args()
    benchlib.quiet_logs()
    with benchlib.fresh_database(args.db, "browser_pool") as url:
        result = asyncio.run(measure(url, args.samples))
    result["machine"] = benchlib.machine()
    benchlib.emit(result)


if __name__ == "__main__":
    main()
