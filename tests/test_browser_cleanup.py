"""No Chromium process outlives its worker: not after a graceful stop, not after the worker is
SIGKILLed, not even when its Playwright driver is killed with it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from greenroom.browser.launch import browser_processes

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from greenroom import App, RunContext, Worker, load_settings

    db = sys.argv[1]
    settings = load_settings(db=db, lease_seconds=1.0, heartbeat_seconds=0.2, poll_seconds=0.05,
                             shutdown_grace_seconds=0.2)
    app = App(db=db, settings=settings)

    @app.workflow(name="hold")
    async def hold(ctx: RunContext) -> None:
        page = await ctx.page()
        await page.goto("data:text/html,<title>held</title>")
        print("BROWSER", *ctx.browser.runtime.pool.browser_pids(), flush=True)
        await asyncio.sleep(120)

    async def main() -> None:
        await app.enqueue("hold", {})
        await Worker(app).run(install_signal_handlers=True)

    asyncio.run(main())
    """
)


def _browser_processes(worker_pid: int) -> list[int]:
    """Every live process started for this worker's browsers (found by their environment)."""
    return browser_processes().get(worker_pid, [])


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except OSError:
                continue
    return out


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    out.append(pid)
        except OSError:
            continue
    return out


def _left_after(worker_pid: int, driver: list[int], seconds: float) -> list[int]:
    """Browser processes of the worker (and its driver) still alive after up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        left = _browser_processes(worker_pid) + _alive(driver)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


Started = tuple[subprocess.Popen[str], int]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[], Started]]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    started: list[subprocess.Popen[str]] = []

    def start() -> Started:
        proc = subprocess.Popen(
            [sys.executable, str(script), f"sqlite:///{tmp_path / 'g.db'}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        for line in proc.stdout:  # structlog writes to stdout too
            if line.startswith("BROWSER "):
                return proc, int(line.split()[1])
        raise AssertionError(f"worker exited ({proc.wait()}) without opening a browser")

    yield start
    for proc in started:
        with contextlib.suppress(ProcessLookupError):  # the worker and a frozen driver
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        for pid in _browser_processes(proc.pid):
            os.kill(pid, signal.SIGKILL)


HOW = ["sigkill_worker", "sigkill_worker_and_driver", "sigkill_worker_driver_frozen", "sigterm"]


@pytest.mark.parametrize("how", HOW)
def test_no_chromium_process_outlives_its_worker(
    start_worker: Callable[[], Started], how: str
) -> None:
    proc, browser_pid = start_worker()
    before = _browser_processes(proc.pid)
    assert browser_pid in before and len(before) >= 3, "a browser with its helper processes"
    driver = [p for p in _children(proc.pid) if p not in before]
    assert driver, "Playwright's driver runs as the worker's child"
    if how == "sigkill_worker":
        os.kill(proc.pid, signal.SIGKILL)
    elif how == "sigkill_worker_and_driver":
        os.killpg(proc.pid, signal.SIGKILL)  # the worker's group: worker and driver, not Chromium
    elif how == "sigkill_worker_driver_frozen":
        # A driver that cannot react keeps Chromium's pipe open: only the watchdog helps.
        for pid in driver:
            os.kill(pid, signal.SIGSTOP)
        os.kill(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=20)
    if how == "sigkill_worker_driver_frozen":
        left = _left_after(proc.pid, [], 10)
        assert left == [], f"{len(left)} browser processes outlived the worker ({how})"
        os.killpg(proc.pid, signal.SIGKILL)  # the frozen driver, which this test stopped
    left = _left_after(proc.pid, driver, 10)
    assert left == [], f"{len(left)} browser or driver processes outlived the worker ({how})"
