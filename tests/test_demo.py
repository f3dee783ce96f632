"""`greenroom demo` end to end: the demo SaaS, worker processes with real Chromium, the example
connector, a real SIGKILL and a real SQLite file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greenroom import RunState, StepStatus
from greenroom.demo.saas import org_slugs, organization
from greenroom.storage import RunFilter, RunStore, open_store
from greenroom.storage.findings import FindingFilter

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")


def demo_cmd(url: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "greenroom.cli", "demo", "--db", url, *options]


def run_demo(tmp_path: Path, url: str, *options: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        demo_cmd(url, *options),
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "220"},
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done


def summary_value(output: str, row: str) -> str:
    """A row of the summary table, e.g. 'logins' -> '2 for 2 runs (demo SaaS counter)...'."""
    found = re.search(rf"^\W*{row}\s*│\s*(.+?)\s*│?\s*$", output, re.MULTILINE)
    assert found, f"no {row!r} row in:\n{output}"
    return found.group(1)


def live_processes(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    alive.append(pid)
        except OSError:
            continue
    return alive


def leftovers(url: str, worker_pids: list[int]) -> list[int]:
    """Live workers of this demo's database, and live processes of their browsers (greenroom's
    launcher marks those with GREENROOM_BROWSER_OF=<worker pid>)."""
    markers = [f"GREENROOM_BROWSER_OF={pid}\0".encode() for pid in worker_pids]
    found = live_processes(worker_pids)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        worker = url.encode() in cmdline and b"worker" in cmdline
        if worker or any(m in env for m in markers):
            found += live_processes([int(entry)])
    return sorted(set(found))


def assert_nothing_left(url: str, store: RunStore) -> None:
    pids = [w.pid for w in store.runs.workers(include_gone=True)]
    assert pids, "no worker registered"
    assert not leftovers(url, pids), "processes left behind"


def users_of(orgs: int, per_org: int) -> dict[str, list[str]]:
    return {slug: [u.email for u in organization(slug, per_org).users] for slug in org_slugs(orgs)}


def test_demo_syncs_every_org_with_one_login_each(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    out = run_demo(tmp_path, url, "--orgs", "2", "--workers", "2", "--users-per-org", "60").stdout
    assert "OK: all 2 syncs succeeded, 120 users collected" in out
    assert summary_value(out, "runs").startswith("2 succeeded, 0 failed")
    assert summary_value(out, "logins").startswith("2 for 2 runs (demo SaaS counter)")
    assert summary_value(out, "users collected") == "120 of 120"
    assert summary_value(out, "steps").startswith("8 executed and checkpointed (2 logins, 6 pages)")
    assert f"(try: uv run greenroom --db {url} runs" in summary_value(out, "database")

    store = open_store(url, migrate=False)
    try:
        runs = store.runs.list_runs(RunFilter(limit=10))
        assert [r.state for r in runs] == [RunState.SUCCEEDED] * 2
        got = {r.output["org"]: [u["email"] for u in r.output["users"]] for r in runs}
        assert got == users_of(2, 60)
        workers = store.runs.workers(include_gone=True)
        assert len(workers) == 2 and {w.state for w in workers} == {"stopped"}
        assert_nothing_left(url, store)
        assert_licenses_judged(store, summary_value(out, "licenses"))
    finally:
        store.backend.close()


def assert_licenses_judged(store: RunStore, line: str) -> None:
    """Every synced user is a license; the summary's findings are the store's."""
    found, _ = store.findings.list_findings(FindingFilter(limit=500))
    users = [u for slug in org_slugs(2) for u in organization(slug, 60).users]
    idle = [u for u in users if u.last_login is None and u.tier != "free"]
    assert line.startswith(f"120 judged: {len(found)} to act on")
    assert {f.email for f in found if f.verdict == "never_used"} == {u.email for u in idle}
    saves = sum(f.monthly_savings or 0 for f in found)
    assert f"saves ${saves:,.2f} a month" in line


def test_demo_chaos_resumes_the_killed_workers_run_without_a_second_login(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    out = run_demo(
        tmp_path, url, "--orgs", "2", "--workers", "2", "--users-per-org", "150", "--chaos"
    ).stdout
    assert "SIGKILLed holding" in summary_value(out, "workers")
    assert "resumed by W" in summary_value(out, "recoveries")
    # The demo SaaS counted one login per org: the resumed run reused the saved session.
    assert summary_value(out, "logins").startswith("2 for 2 runs (demo SaaS counter): 1 saved")
    assert "OK: all 2 syncs succeeded, 300 users collected" in out
    assert "from the last checkpoint without logging in again" in out

    store = open_store(url, migrate=False)
    try:
        runs = store.runs.list_runs(RunFilter(limit=10))
        assert [r.state for r in runs] == [RunState.SUCCEEDED] * 2
        got = {r.output["org"]: [u["email"] for u in r.output["users"]] for r in runs}
        assert got == users_of(2, 150)
        recovered = [r for r in runs if recovery(store, r.id) is not None]
        assert len(recovered) == 1, "the killed worker held one run"
        before, after, checkpoints = recovery(store, recovered[0].id) or ("", "", 0)
        assert after != before
        assert checkpoints >= 2, "killed past its login step and a page"
        steps = store.runs.steps(recovered[0].id)
        assert len(steps) == 7 and all(s.status is StepStatus.COMPLETED for s in steps)
        assert [s.position for s in steps] == list(range(7))  # each step checkpointed once
        # The killed one, the other, and its replacement if it registered before the end (on a
        # loaded machine its start-up may outlast the demo).
        states = sorted(w.state for w in store.runs.workers(include_gone=True))
        assert states in (["dead", "stopped"], ["dead", "stopped", "stopped"]), states
        assert_nothing_left(url, store)
    finally:
        store.backend.close()


def recovery(store: RunStore, run_id: str) -> tuple[str, str, int] | None:
    """For a run whose worker died and that another worker resumed: (the dead worker, the
    one that resumed it, how many steps were checkpointed before it resumed)."""
    events = store.runs.events(run_id)
    stalls = [i for i, e in enumerate(events) if e.reason.startswith("stalled: worker")]
    if not stalls:
        return None
    assert "lost its liveness lock" in events[stalls[0]].reason
    before = [e.worker_id for e in events[: stalls[0]] if e.state is RunState.RUNNING]
    resumed = [e for e in events[stalls[0] :] if e.state is RunState.RUNNING]
    assert before and resumed
    done = [s for s in store.runs.steps(run_id) if s.finished_at <= resumed[0].at]
    return before[-1] or "", resumed[0].worker_id or "", len(done)


def test_demo_interrupted_leaves_no_worker_or_browser_behind(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    with subprocess.Popen(
        # Pages of 1.5 s: the runs are seconds from their end when the SIGINT comes, however
        # slowly this test notices that they started.
        demo_cmd(
            url, "--orgs", "2", "--workers", "2", "--users-per-org", "150", "--latency-ms", "1500"
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        try:
            pids = wait_for_a_synced_page(url, proc)
            assert leftovers(url, pids), "the check does not see the live workers"
        finally:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
            output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "Interrupted" in output
    assert "Traceback" not in output
    store = open_store(url, migrate=False)
    try:
        assert {w.state for w in store.runs.workers(include_gone=True)} == {"stopped"}
        assert not store.runs.list_runs(RunFilter(states=[RunState.RUNNING]))
        assert_nothing_left(url, store)
    finally:
        store.backend.close()


def wait_for_a_synced_page(url: str, proc: subprocess.Popen[str]) -> list[int]:
    """Wait until a run has read a page (its browser is up); the workers' pids."""
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
            running = store.runs.list_runs(RunFilter(states=[RunState.RUNNING]))
            if any(len(store.runs.steps(r.id)) >= 2 for r in running):
                return [w.pid for w in store.runs.workers()]
        except Exception:
            continue
        finally:
            store.backend.close()
    raise AssertionError("the demo's runs did not start")


def test_demo_without_a_browser_says_how_to_get_one(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-chromium"
    done = subprocess.run(
        demo_cmd(f"sqlite:///{tmp_path / 'demo.db'}"),
        cwd=tmp_path,
        env={**os.environ, "GREENROOM_BROWSER_EXECUTABLE": str(missing)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: browser_executable '{missing}' is not an executable")
    assert not (tmp_path / "demo.db").exists(), "nothing starts without a browser"
