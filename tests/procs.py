"""Worker subprocesses for the durability tests (start, signal, always clean up) and the
analysis of the execution records their workflows write."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar

from tests.apps.durable_app import serve

T = TypeVar("T")

# Workers are forked by a server that has imported greenroom and the app once: a restart in the
# chaos test then costs milliseconds, not a second of CPU for imports on a two-core machine.
# Each worker is still its own process, with its own connections and liveness lock.
_forkserver = multiprocessing.get_context("forkserver")
_forkserver.set_forkserver_preload(
    [
        "tests.apps.durable_app",
        "greenroom.storage.migrate",
        "greenroom.storage.sqlite",
        "greenroom.storage.postgres",
        "sqlalchemy.dialects.sqlite",
        "sqlalchemy.dialects.postgresql.psycopg",
    ]
)


@dataclass
class WorkerProcess:
    """One worker process running tests.apps.durable_app, and its log file."""

    name: str
    process: BaseProcess
    pid: int
    log_path: Path
    killed_at: float | None = None

    def alive(self) -> bool:
        return self.process.is_alive()

    def send(self, sig: signal.Signals) -> float:
        """Send a signal; the wall-clock time just before it was sent."""
        at = time.time()
        os.kill(self.pid, sig)
        return at

    def kill(self) -> float:
        """SIGKILL and reap; the time just before the kill, the end of anything it ran."""
        self.killed_at = self.send(signal.SIGKILL)
        self.process.join()
        return self.killed_at

    def wait(self, timeout: float) -> int | None:
        """The exit code (negative: killed by that signal), or None if still running."""
        self.process.join(timeout)
        return self.process.exitcode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class WorkerPool:
    """Starts workers on one database; `close` kills whatever is still running."""

    db_url: str
    log_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    started: list[WorkerProcess] = field(default_factory=list)

    def start(self, name: str, **overrides: Any) -> WorkerProcess:
        argv = [self.db_url, name]
        for key, value in {**self.settings, **overrides}.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        log_path = self.log_dir / f"worker-{name}.log"
        process = _forkserver.Process(
            target=serve, args=(argv, str(log_path)), name=f"worker-{name}", daemon=True
        )
        process.start()
        assert process.pid is not None
        proc = WorkerProcess(name=name, process=process, pid=process.pid, log_path=log_path)
        self.started.append(proc)
        return proc

    def killed(self) -> dict[int, float]:
        """pid -> kill time of every worker this pool SIGKILLed."""
        return {p.pid: p.killed_at for p in self.started if p.killed_at is not None}

    def close(self) -> None:
        for proc in self.started:
            if proc.alive():
                with contextlib.suppress(ProcessLookupError):  # it may exit meanwhile
                    os.kill(proc.pid, signal.SIGCONT)  # a stopped process must die too
                    proc.process.kill()
            proc.process.join()
            proc.process.close()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} (pid {p.pid})\n{p.log()[-3000:]}" for p in self.started)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.01) -> T:
    """Poll `check` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The execution records the workflows appended, in the order they were written.

    A line still being appended has no newline yet: it is left for the next read.
    """
    if not path.exists():
        return []
    complete = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete]


def records_of(records: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


@dataclass(frozen=True)
class Execution:
    """One execution of a workflow function by one process: from `begin` to its end."""

    run: str
    session: str | None
    pid: int
    begin: float
    end: float


def executions(records: list[dict[str, Any]], killed: dict[int, float]) -> list[Execution]:
    """Cut each process's records of a run at every `begin`.

    An execution ends at its last record once it returned or recorded its cancellation, else at
    the process's kill time if it was killed: until then it may still have been running the
    workflow (a later execution by the same process does not prove the earlier one stopped).
    """
    out: list[Execution] = []
    open_: dict[tuple[str, int], dict[str, Any]] = {}

    def close(key: tuple[str, int]) -> None:
        cur = open_.pop(key, None)
        if cur is None:
            return
        end = cur["last"]
        if not cur["ended"] and key[1] in killed:
            end = max(end, killed[key[1]])
        out.append(Execution(key[0], cur["session"], key[1], cur["begin"], end))

    for r in records:
        key = (r["run"], r["pid"])
        if r["ev"] == "begin":
            close(key)
            open_[key] = {
                "begin": r["t"],
                "last": r["t"],
                "ended": False,
                "session": r["session"],
            }
            continue
        cur = open_.get(key)
        if cur is None:
            raise AssertionError(f"record before any begin: {r}")
        cur["last"] = max(cur["last"], r["t"])
        cur["ended"] = cur["ended"] or r["ev"] in ("return", "cancelled")
    for key in list(open_):
        close(key)
    return out


def overlaps(items: list[Execution]) -> list[tuple[Execution, Execution]]:
    """Pairs of executions that overlap in time (sorted by start, so a sweep finds them all)."""
    found = []
    ordered = sorted(items, key=lambda e: e.begin)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.begin >= a.end:
                break
            found.append((a, b))
    return found


def checkpoint_proofs(records: list[dict[str, Any]]) -> dict[tuple[str, int], float]:
    """(run, position) -> a time by which the step's result was surely stored.

    A process starts its next step only once the checkpoint has committed, so its next `start`
    after a step's `end` proves the checkpoint (a `return` does not: the last step's checkpoint
    commits with the run's end). This catches a step executed again even when that execution
    overwrote the stored checkpoint (and its finished_at).
    """
    proofs: dict[tuple[str, int], float] = {}
    ended: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r["run"], r["pid"])
        if r["ev"] == "end":
            ended[key] = r["pos"]
            continue
        position = ended.pop(key, None)
        if position is not None and r["ev"] == "start":
            at = proofs.get((r["run"], position), r["t"])
            proofs[r["run"], position] = min(at, r["t"])
    return proofs
