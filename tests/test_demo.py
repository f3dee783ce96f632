"""`greenroom demo` end to end: real worker processes, a real SIGKILL, a real SQLite file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from greenroom import RunState, StepStatus
from greenroom.storage import RunFilter, RunStore, open_store


def demo_cmd(db: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "greenroom.cli", "demo", "--db", db, *options]


def assert_no_worker_left(url: str) -> None:
    """No process of this demo's database is alive: every command line names the URL."""
    left = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, NotADirectoryError, PermissionError, ProcessLookupError):
            continue
        if url.encode() in cmdline and b"worker" in cmdline:
            left.append(int(entry.name))
    assert not left, f"worker processes left running: {left}"


def test_demo_recovers_the_killed_workers_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    done = subprocess.run(
        demo_cmd(url, "--runs", "3", "--orgs", "2", "--workers", "2"),
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: all 3 runs succeeded" in done.stdout
    assert "resumed on another worker from their last checkpoint" in done.stdout
    assert "0 re-executed after a checkpoint" in done.stdout

    store = open_store(url, migrate=False)
    try:
        runs = store.list_runs(RunFilter(limit=100))
        assert [r.state for r in runs] == [RunState.SUCCEEDED] * 3
        kept = {r.id: recovered_from_kill(store, r.id) for r in runs}
        recovered = [run_id for run_id, n in kept.items() if n is not None]
        assert any(kept.values()), "no run was resumed from a checkpoint after the kill"
        pids = [w.pid for w in store.workers(include_gone=True)]
        assert sum(w.state == "dead" for w in store.workers(include_gone=True)) == 1
        checkpointed = {
            r.id: len([s for s in store.steps(r.id) if s.status is StepStatus.COMPLETED])
            for r in runs
        }
    finally:
        store.backend.close()
    assert len(pids) >= 2
    assert_no_worker_left(url)

    # Every step ran once, except at most one per recovered run: the one in flight at the kill.
    trace = (tmp_path / "demo.trace.jsonl").read_text().splitlines()
    executions = [json.loads(line) for line in trace]
    per_step = Counter((e["run"], e["step"]) for e in executions)
    again = Counter(run_id for (run_id, _), n in per_step.items() if n > 1)
    assert set(again) <= set(recovered)
    assert all(n == 1 for n in again.values())
    assert max(per_step.values()) <= 2
    assert len(per_step) == sum(checkpointed.values())


def recovered_from_kill(store: RunStore, run_id: str) -> int | None:
    """For a run that stalled because its worker died and that another worker resumed: how many
    of its checkpoints the killed worker had written (they were not written again)."""
    events = store.events(run_id)
    stalls = [i for i, e in enumerate(events) if e.reason.startswith("stalled: worker")]
    if not stalls:
        return None
    stall = events[stalls[0]]
    before = [e.worker_id for e in events[: stalls[0]] if e.state is RunState.RUNNING]
    after = [e.worker_id for e in events[stalls[0] :] if e.state is RunState.RUNNING]
    assert "died" in stall.reason
    assert after and after[0] != before[-1]
    return len([s for s in store.steps(run_id) if s.finished_at < stall.at])


def test_demo_interrupted_leaves_no_worker_behind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    with subprocess.Popen(
        demo_cmd(url, "--runs", "30", "--orgs", "2", "--workers", "2", "--no-chaos"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            wait_for_running_runs(url, proc)
            with pytest.raises(AssertionError):  # the check sees live workers
                assert_no_worker_left(url)
        finally:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
            output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "Interrupted" in output
    assert "Traceback" not in output
    assert_no_worker_left(url)
    store = open_store(url, migrate=False)
    try:
        assert {w.state for w in store.workers(include_gone=True)} == {"stopped"}
        assert not store.list_runs(RunFilter(states=[RunState.RUNNING]))
    finally:
        store.backend.close()


def wait_for_running_runs(url: str, proc: subprocess.Popen[str]) -> None:
    """Wait until the demo's two workers are up and executing runs."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
        if not Path(url.removeprefix("sqlite:///")).exists():
            continue
        try:
            store = open_store(url, migrate=False)
        except Exception:
            continue  # the demo is still creating the database
        try:
            workers = store.workers()
            running = store.list_runs(RunFilter(states=[RunState.RUNNING]))
        finally:
            store.backend.close()
        if len(workers) == 2 and running:
            return
    raise AssertionError("the demo's workers did not start")
