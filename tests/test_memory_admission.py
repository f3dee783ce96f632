"""A worker with a memory budget admits new runs only while it (with its browsers) fits."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from greenroom import RunContext, RunState
from greenroom.browser.launch import browser_rss_by_owner, group_rss_bytes, process_rss_bytes
from greenroom.worker.memory import MB
from tests.apps import isolated_app
from tests.helpers import fast_app, wait_for_states, worker_running


async def _max_overlap(db_url: str, budget_mb: int | None) -> int:
    app = fast_app(db_url, memory_budget_mb=budget_mb, memory_per_run_mb=50, concurrency=4)
    spans: list[tuple[float, float]] = []

    @app.workflow(name="hold")
    async def hold(ctx: RunContext) -> None:
        start = time.monotonic()
        await asyncio.sleep(0.4)
        spans.append((start, time.monotonic()))

    runs = [await app.enqueue("hold") for _ in range(4)]
    async with worker_running(app):
        done = await wait_for_states(app.store, [r.id for r in runs], timeout=30)
    app.close()
    assert {r.state for r in done} == {RunState.SUCCEEDED}
    return max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)


@pytest.mark.parametrize(("budget_mb", "overlap"), [(1, 1), (100_000, 4), (None, 4)])
async def test_runs_are_admitted_only_while_they_fit(
    sqlite_url: str, budget_mb: int | None, overlap: int
) -> None:
    assert await _max_overlap(sqlite_url, budget_mb) == overlap


async def test_room_for_two_runs_admits_two_at_a_time(sqlite_url: str) -> None:
    own_mb = process_rss_bytes(os.getpid()) // MB
    # Room for two runs of the 50 MB estimate beside the worker, not for three.
    assert await _max_overlap(sqlite_url, own_mb + 125) == 2


async def test_an_isolated_runs_browser_counts_against_the_budget(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Its browser sits in a process group of its own, apart from the run's process."""
    app = fast_app(sqlite_url, memory_budget_mb=10_000)
    app.workflows.update(isolated_app.app.workflows)
    pidfile = tmp_path / "browser.pid"
    run = await app.enqueue("iso.browser", {"pidfile": str(pidfile), "hang": True})
    async with worker_running(app) as worker:
        while not pidfile.exists() or not pidfile.read_text():
            await asyncio.sleep(0.05)
        child = int(pidfile.read_text())
        await asyncio.sleep(1.1)  # past the cached measurement
        with_run = worker.memory.used_bytes()
        browser = browser_rss_by_owner().get(child, 0)
        own_group = group_rss_bytes(child)
        await asyncio.to_thread(app.store.runs.cancel, run.id, actor="test", reason="done")
        await wait_for_states(app.store, [run.id], timeout=20)
    app.close()
    assert browser > 50 * MB, "the run's own Chromium is running"
    # Measured a moment apart: allow 10% for what the processes grew or shrank meanwhile.
    assert with_run >= 0.9 * (process_rss_bytes(os.getpid()) + own_group + browser)
