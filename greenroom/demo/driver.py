"""The demo's worker processes: started in their own sessions, SIGKILLed on request, stopped at
the end, and swept afterwards so that no worker and no Chromium of theirs outlives the demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from greenroom.browser.launch import browser_processes

STOP_SECONDS = 10.0
SWEEP_SECONDS = 3.0


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen[bytes]
    #: Its id in the workers table, once it registered.
    worker_id: str | None = None
    killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


@dataclass(frozen=True)
class Kill:
    """The chaos: which worker was SIGKILLed, when, holding what, and who replaced it."""

    victim: WorkerProc
    at: float
    held: str
    replacement: WorkerProc


class Fleet:
    """`greenroom worker` subprocesses of one app on one database, writing to one log file."""

    def __init__(
        self, *, db: str, app: str, concurrency: int, log_path: Path, env: dict[str, str]
    ) -> None:
        self.db = db
        self.app = app
        self.concurrency = concurrency
        self.log_path = log_path
        self.env = env
        self.procs: list[WorkerProc] = []
        self._log: IO[bytes] | None = None

    def start(self) -> WorkerProc:
        if self._log is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        cmd = [sys.executable, "-m", "greenroom.cli", "worker", "--app", self.app]
        cmd += ["--db", self.db, "--concurrency", str(self.concurrency)]
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the workers
        )
        wp = WorkerProc(name=f"W{len(self.procs) + 1}", proc=proc)
        self.procs.append(wp)
        return wp

    def by_id(self, worker_id: str | None) -> WorkerProc | None:
        return next((wp for wp in self.procs if wp.worker_id and wp.worker_id == worker_id), None)

    def kill(self, wp: WorkerProc) -> float:
        """SIGKILL one worker (its browsers die with it); the time just before the signal."""
        wp.killed_at = time.time()
        with suppress(ProcessLookupError):
            os.kill(wp.pid, signal.SIGKILL)
        wp.proc.wait()
        return wp.killed_at

    def stop(self) -> int:
        """SIGTERM every running worker, SIGKILL the process group of any that does not stop in
        time, then kill whatever browser process is left. How many were asked to stop."""
        live = [wp for wp in self.procs if wp.running]
        for wp in live:
            with suppress(ProcessLookupError):
                wp.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        try:
            for wp in live:
                with suppress(subprocess.TimeoutExpired):
                    wp.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        finally:  # also when interrupted while waiting: leave nothing behind
            for wp in self.procs:
                _kill_group(wp.pid)  # a killed worker's Playwright driver too, if it lingers
                wp.proc.wait()
            sweep_browsers(wp.pid for wp in self.procs)
        return len(live)

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None


def _browsers_of(worker_pids: list[int]) -> list[int]:
    found = browser_processes()
    return [pid for worker in worker_pids for pid in found.get(worker, [])]


def sweep_browsers(worker_pids: Iterable[int], wait: float = SWEEP_SECONDS) -> list[int]:
    """Give the dead workers' browsers `wait` seconds to go on their own (their watchdog kills
    them), then SIGKILL the rest. The processes that had to be killed."""
    if not sys.platform.startswith("linux"):
        return []
    pids = list(worker_pids)
    deadline = time.monotonic() + wait
    while (left := _browsers_of(pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return left


def _kill_group(pid: int) -> None:
    """A worker leads its own process group (its session), shared with Playwright's driver;
    Linux does not reuse a pid while a group of that id has members."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
