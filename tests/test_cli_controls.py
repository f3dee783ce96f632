"""The queue-control and admin commands on a real SQLite file (one smoke test on PostgreSQL):
each command's effect on the database, and one-line errors for bad arguments."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from helpers import fast_app, wait_for_states, worker_running

from greenroom import App, RunContext, RunRequest, RunState, StepStatus, step
from greenroom.cli import run
from greenroom.cli.parse import parse_duration, parse_rate_limit, parse_time
from greenroom.clock import ManualClock
from greenroom.errors import InvalidInput
from greenroom.failures import describe_error
from greenroom.retry import NO_RETRY
from greenroom.storage import RunFilter, RunStore, open_store
from tests.test_cli import listed, short

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CALLS: Counter[str] = Counter()
LAYOUT = {"broken": True}


@step(name="login")
async def login(org: str) -> dict[str, str]:
    CALLS[f"login:{org}"] += 1
    return {"session": f"s-{org}"}


@step(name="read_users", retry=NO_RETRY)
async def read_users(org: str) -> list[str]:
    CALLS[f"read_users:{org}"] += 1
    if LAYOUT["broken"]:
        raise ValueError(f"no users table on page {len(CALLS)}")
    return [f"ada@{org}"]


def make_app(url: str) -> App:
    app = fast_app(url)

    @app.workflow(name="sync_users", retry=NO_RETRY)
    async def sync_users(ctx: RunContext, org: str) -> dict[str, object]:
        session = await login(org)
        return {"session": session, "users": await read_users(org)}

    @app.workflow(name="report", queue="reports")
    async def report(ctx: RunContext) -> None:
        return None

    return app


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ok(capsys: pytest.CaptureFixture[str], db: str, *argv: str) -> str:
    code, out, err = cli(capsys, "--db", db, *argv)
    assert code == 0, err
    assert err == ""
    return out


def assert_one_line_error(code: int, err: str, fragment: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    assert fragment in lines[0], lines[0]


def run_workers(app: App, ids: list[str]) -> None:
    """An in-process Worker until every run finished."""

    async def go() -> None:
        async with worker_running(app, concurrency=4):
            await wait_for_states(app.store, ids)

    asyncio.run(go())


@pytest.fixture
def app(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    monkeypatch.setitem(LAYOUT, "broken", True)
    CALLS.clear()
    a = make_app(sqlite_url)
    yield a
    a.close()


@pytest.fixture
def failed(app: App) -> dict[str, str]:
    """Three runs that failed on their second step: two of tenant acme, one of globex."""
    runs = {
        "acme1": app.enqueue_sync("sync_users", {"org": "acme1"}, tenant="acme"),
        "acme2": app.enqueue_sync("sync_users", {"org": "acme2"}, tenant="acme"),
        "globex": app.enqueue_sync("sync_users", {"org": "globex"}, tenant="globex"),
    }
    ids = {k: r.id for k, r in runs.items()}
    run_workers(app, list(ids.values()))
    assert {app.store.runs.get_run(i).state for i in ids.values()} == {RunState.FAILED}
    return ids


def states(store: RunStore, ids: list[str]) -> list[RunState]:
    return [store.runs.get_run(i).state for i in ids]


# -- queues and tenants ----------------------------------------------------------------------


def test_queues_set_changes_the_record_and_queues_lists_it(
    app: App, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(3):
        app.enqueue_sync("report")
    app.enqueue_sync("sync_users", {"org": "acme"})
    args = ["queues", "set", "reports", "--concurrency", "2", "--rate-limit", "10/1m"]
    args += ["--max-attempts", "4", "--retry-initial-delay", "0.5", "--lease-seconds", "20"]
    out = ok(capsys, sqlite_url, *args, "--reason", "crm throttles us", "--actor", "ops@acme")
    assert "concurrency 2" in out and "rate limit 10/60s" in out
    q = app.store.controls.queue("reports")
    assert (q.concurrency, q.rate_limit, q.rate_period) == (2, 10, 60.0)
    assert (q.max_attempts, q.retry_initial_delay, q.lease_seconds) == (4, 0.5, 20.0)
    assert q.heartbeat_seconds is None

    out = ok(capsys, sqlite_url, "queues")
    row = next(line for line in out.splitlines() if "reports" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    # queue, queued, paused, delayed, running, succeeded, failed, cancelled, paused?, limits
    assert cells == ["reports", "3", "0", "0", "0", "0", "0", "0", "no", "2", "10/60s", "0"]
    assert any(line.split("│")[1].strip() == "default" for line in out.splitlines()[3:-1])

    ok(
        capsys,
        sqlite_url,
        "queues",
        "set",
        "reports",
        "--concurrency",
        "none",
        "--rate-limit",
        "none",
        "--reason",
        "fixed",
    )
    q = app.store.controls.queue("reports")
    assert (q.concurrency, q.rate_limit, q.rate_period, q.max_attempts) == (None, None, None, 4)
    [latest, first] = app.store.admin.audit_log(limit=2)
    assert (first.actor, first.action, first.reason) == (
        "ops@acme",
        "queue.set",
        "crm throttles us",
    )
    assert latest.reason == "fixed"


def test_tenants_set_and_list(
    app: App, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app.enqueue_sync("report", tenant="acme")
    out = ok(
        capsys,
        sqlite_url,
        "tenants",
        "set",
        "acme",
        "--weight",
        "3",
        "--concurrency",
        "5",
        "--reason",
        "paying customer",
    )
    assert "weight 3, concurrency 5" in out
    [acme] = [t for t in app.store.controls.tenants() if t.name == "acme"]
    assert (acme.weight, acme.concurrency) == (3.0, 5)
    out = ok(capsys, sqlite_url, "tenants")
    assert re.search(r"acme\s+│\s+3\s+│\s+5\s+│\s+0\s+│\s+1\s", out), out
    ok(capsys, sqlite_url, "tenants", "set", "acme", "--concurrency", "none", "--reason", "r")
    [acme] = [t for t in app.store.controls.tenants() if t.name == "acme"]
    assert (acme.weight, acme.concurrency) == (3.0, None)


# -- pause and resume ------------------------------------------------------------------------


def test_pause_a_label_holds_its_runs_and_resume_restores_them(
    app: App, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    crm = [app.enqueue_sync("report", labels={"app": "crm"}).id for _ in range(3)]
    erp = app.enqueue_sync("report", labels={"app": "erp"}).id
    out = ok(
        capsys,
        sqlite_url,
        "pause",
        "--label",
        "app=crm",
        "--reason",
        "login page changed",
        "--actor",
        "ops@acme",
    )
    assert "paused label app=crm: 3 waiting runs held, running runs finish" in out
    assert states(app.store, [*crm, erp]) == [RunState.PAUSED] * 3 + [RunState.QUEUED]
    out = ok(capsys, sqlite_url, "runs", "list", "--state", "paused")
    assert set(listed(out)) == set(short(*crm))
    out = ok(capsys, sqlite_url, "runs", "list", "--label", "app=crm")
    assert set(listed(out)) == set(short(*crm))
    out = ok(capsys, sqlite_url, "pauses")
    assert re.search(r"label\s+│\s+app=crm\s+│\s+all\s+│\s+3\s+│\s+yes\s+│\s+ops@acme", out), out
    assert "login page changed" in out
    out = ok(capsys, sqlite_url, "queues")
    row = next(line for line in out.splitlines() if "reports" in line)
    assert [c.strip() for c in row.strip("│ ").split("│")][1:3] == ["1", "3"]

    # Pausing again keeps the first pause.
    out = ok(capsys, sqlite_url, "pause", "--label", "app=crm", "--reason", "again")
    assert "already paused by ops@acme" in out and "(3 runs held)" in out

    out = ok(capsys, sqlite_url, "resume", "--label", "app=crm", "--reason", "connector fixed")
    assert "3 runs queued again" in out
    assert states(app.store, [*crm, erp]) == [RunState.QUEUED] * 4
    assert ok(capsys, sqlite_url, "pauses").strip() == "no pauses"
    leases = app.store.runs.claim("w-test", ["reports"], 10, 30.0)
    assert [lease.run.id for lease in leases] == [*crm, erp]  # their order is back


def test_pause_a_queue_for_one_tenant_only(
    app: App, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    acme = app.enqueue_sync("report", tenant="acme").id
    globex = app.enqueue_sync("report", tenant="globex").id
    other = app.enqueue_sync("sync_users", {"org": "x"}, tenant="acme").id
    ok(
        capsys,
        sqlite_url,
        "pause",
        "--queue",
        "reports",
        "--for-tenant",
        "acme",
        "--no-drain",
        "--reason",
        "acme asked",
    )
    assert states(app.store, [acme, globex, other]) == [
        RunState.PAUSED,
        RunState.QUEUED,
        RunState.QUEUED,
    ]
    [p] = app.store.controls.pauses()
    assert (p.scope.value, p.value, p.tenant, p.drain) == ("queue", "reports", "acme", False)
    out = ok(capsys, sqlite_url, "queues", "--tenant", "acme")
    assert "yes" in next(line for line in out.splitlines() if "reports" in line)
    # Without --for-tenant, resume lifts the only pause on its target, as through the API.
    hold_globex = ("pause", "--queue", "reports", "--for-tenant", "globex", "--reason", "r")
    ok(capsys, sqlite_url, *hold_globex)
    code, _, err = cli(capsys, "--db", sqlite_url, "resume", "--queue", "reports", "--reason", "r")
    assert_one_line_error(code, err, "queue reports is paused for acme, globex: give --for-tenant")
    out = ok(
        capsys,
        sqlite_url,
        "resume",
        "--queue",
        "reports",
        "--for-tenant",
        "acme",
        "--reason",
        "done",
    )
    assert "1 runs queued again" in out
    assert app.store.runs.get_run(acme).state is RunState.QUEUED


def test_pause_warns_about_what_does_not_exist_and_sets_it(
    app: App, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo would hold nothing: say so; but a pause may rightly come before its runs."""
    app.enqueue_sync("report", tenant="acme")
    targets = {
        ("--queue", "reprots"): "there is no queue 'reprots'",
        ("--tenant", "acmee"): "there is no tenant 'acmee'",
        ("--label", "integration=int_nope"): "there is no integration 'int_nope'",
    }
    for target, warning in targets.items():
        code, out, err = cli(capsys, "--db", sqlite_url, "pause", *target, "--reason", "r")
        assert code == 0, err
        assert err.strip() == f"warning: {warning} (yet): the pause holds its runs when they come"
        assert ": 0 waiting runs held" in out
    assert len(app.store.controls.pauses()) == 3
    out = ok(capsys, sqlite_url, "pause", "--queue", "reports", "--reason", "r")
    assert "paused queue reports: 1 waiting runs held" in out


# -- retry -----------------------------------------------------------------------------------


def test_retry_one_run_from_the_failed_step_keeps_completed_steps(
    app: App, failed: dict[str, str], sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    old = failed["acme1"]
    out = ok(capsys, sqlite_url, "runs", "retry", old, "--reason", "layout fixed")
    [new] = [i for i in UUID.findall(out) if i != old]
    assert f"retry of {old} from step 'read_users', keeping 1 completed steps" in out
    run = app.store.runs.get_run(new)
    assert (run.retry_of, run.state, run.input, run.tenant) == (
        old,
        RunState.QUEUED,
        {"org": "acme1"},
        "acme",
    )
    [copied] = app.store.runs.steps(new)
    [first, _] = app.store.runs.steps(old)
    assert (copied.name, copied.status, copied.result) == (
        "login",
        StepStatus.COMPLETED,
        first.result,
    )

    # The connector is fixed: the retry runs read_users only; login's result is replayed.
    LAYOUT["broken"] = False
    run_workers(app, [new])
    done = app.store.runs.get_run(new)
    assert done.state is RunState.SUCCEEDED, done.error
    assert done.output == {"session": {"session": "s-acme1"}, "users": ["ada@acme1"]}
    assert (CALLS["login:acme1"], CALLS["read_users:acme1"]) == (1, 2)
    out = ok(capsys, sqlite_url, "runs", "show", new)
    assert re.search(rf"retry of\s+{old}", out), out


def test_retry_from_scratch_with_new_input(
    app: App, failed: dict[str, str], sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    old = failed["globex"]
    out = ok(
        capsys,
        sqlite_url,
        "runs",
        "retry",
        old,
        "--from-scratch",
        "--input",
        '{"org": "globex2"}',
        "--reason",
        "wrong org",
    )
    [new] = [i for i in UUID.findall(out) if i != old]
    assert "from scratch with the new input" in out
    run = app.store.runs.get_run(new)
    assert (run.retry_of, run.input) == (old, {"org": "globex2"})
    assert app.store.runs.steps(new) == []
    code, _, err = cli(capsys, "--db", sqlite_url, "runs", "retry", new, "--reason", "r")
    assert_one_line_error(code, err, "only failed or cancelled runs can be retried")


def test_bulk_retry_dry_run_changes_nothing_then_retries_the_group(
    app: App, failed: dict[str, str], sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ok(capsys, sqlite_url, "errors")
    # Grouped per tenant by type + normalized message + step: "page 4" and "page 6" are alike.
    groups = {g.tenant: g for g in app.store.admin.error_groups()}
    assert {t: g.occurrences for t, g in groups.items()} == {"acme": 2, "globex": 1}
    group = groups["acme"]
    assert group.fingerprint == groups["globex"].fingerprint
    assert (group.step, group.type, group.error_class) == ("read_users", "ValueError", "unknown")
    row = next(line for line in out.splitlines() if "acme" in line)
    assert group.fingerprint in row
    # Open, resolved, seen; the last failed run's id as tables show it.
    assert re.search(r"sync_users\s+│\s+read_users\s+│\s+ValueError\s+│\s+2\s+│\s+0\s+│\s+2", row)
    assert group.last_run_id[:8] in row
    assert "no users table on page" in row
    assert "globex" in ok(capsys, sqlite_url, "errors", "--tenant", "globex")

    before = app.store.runs.list_runs(RunFilter(limit=100))
    where = ["runs", "retry", "--where", "--error-group", group.fingerprint, "--tenant", "acme"]
    where += ["--since", "1h", "--reason", "layout fixed"]
    out = ok(capsys, sqlite_url, *where, "--dry-run")
    assert "dry run: 2 runs would be retried" in out
    assert re.search(r"read_users\s+│\s+2", out), out
    assert app.store.runs.list_runs(RunFilter(limit=100)) == before
    assert app.store.admin.audit_log() == []

    out = ok(capsys, sqlite_url, *where)
    assert "retried 2 runs: 2 new runs queued" in out
    retried = [r for r in app.store.runs.list_runs(RunFilter(limit=100)) if r.retry_of]
    assert sorted(r.retry_of or "" for r in retried) == sorted([failed["acme1"], failed["acme2"]])
    assert all(r.state is RunState.QUEUED and r.tenant == "acme" for r in retried)
    assert [len(app.store.runs.steps(r.id)) for r in retried] == [1, 1]

    # Nothing failed in the future; --until an hour ago matches nothing.
    soon = datetime.fromtimestamp(time.time() + 3600).isoformat(timespec="seconds")
    out = ok(capsys, sqlite_url, "runs", "retry", "--where", "--since", soon, "--reason", "r")
    assert "nothing to retry" in out
    out = ok(capsys, sqlite_url, "runs", "retry", "--where", "--until", "1h", "--reason", "r")
    assert "nothing to retry" in out

    out = ok(capsys, sqlite_url, "audit")
    assert re.search(r"retry\.bulk\s+│\s+2 runs\s+│\s+acme\s+│\s+layout fixed", out), out
    assert out.count("│ retry ") == 2
    assert f"run {failed['acme1']}" in out
    tenant_only = ok(capsys, sqlite_url, "audit", "--tenant", "globex")
    assert tenant_only.strip() == "no audit entries"


# -- retention -------------------------------------------------------------------------------


def finish_runs(store: RunStore, app: App, outcomes: list[RunState]) -> list[str]:
    ids = []
    for outcome in outcomes:
        ids.append(store.runs.enqueue(app.prepare(RunRequest(workflow="report")))[0].id)
        [lease] = store.runs.claim("w-test", ["reports"], 1, 30.0)
        if outcome is RunState.FAILED:
            error = describe_error(ValueError("boom"), step="x", attempt=1)
            store.runs.finish(lease, outcome, reason="failed", error=error)
        else:
            store.runs.finish(lease, outcome, reason="done", output="null")
    return ids


def test_prune_deletes_old_finished_runs_only(
    app: App, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    then = open_store(sqlite_url, clock=ManualClock(time.time() - 40 * 86400))
    try:
        old_ok, old_failed = finish_runs(then, app, [RunState.SUCCEEDED, RunState.FAILED])
        old_waiting = then.runs.enqueue(app.prepare(RunRequest(workflow="report")))[0].id
    finally:
        then.backend.close()
    [recent] = finish_runs(app.store, app, [RunState.SUCCEEDED])

    out = ok(capsys, sqlite_url, "runs", "prune", "--older-than", "30d", "--dry-run")
    assert out.strip() == (
        "dry run: 2 runs finished more than 30d ago would be deleted (nothing deleted)"
    )
    assert len(app.store.runs.list_runs(RunFilter(limit=100))) == 4
    assert app.store.runs.events(old_ok) != []
    out = ok(capsys, sqlite_url, "runs", "prune", "--older-than", "30d", "--status", "succeeded")
    assert "deleted 1 runs" in out
    left = {r.id for r in app.store.runs.list_runs(RunFilter(limit=100))}
    assert left == {old_failed, old_waiting, recent}
    assert app.store.runs.steps(old_ok) == [] and app.store.runs.events(old_ok) == []

    out = ok(capsys, sqlite_url, "runs", "prune", "--older-than", "30d")
    assert "deleted 1 runs" in out
    assert {r.id for r in app.store.runs.list_runs(RunFilter(limit=100))} == {old_waiting, recent}
    assert "deleted 0 runs" in ok(capsys, sqlite_url, "runs", "prune", "--older-than", "41d")


# -- bad arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["pause", "--queue", "q"], "Missing option '--reason'"),
        (["runs", "retry", "{run}"], "Missing option '--reason'"),
        (["pause", "--queue", "q", "--tenant", "t", "--reason", "r"], "exactly one of --queue"),
        (["pause", "--reason", "r"], "exactly one of --queue"),
        (["pause", "--label", "nokey", "--reason", "r"], "key=value"),
        (["pause", "--queue", "q", "--reason", " "], "a reason is required"),
        (["resume", "--workflow", "w", "--reason", "r"], "no pause on workflow w"),
        (["queues", "set", "q", "--rate-limit", "10", "--reason", "r"], "--rate-limit must"),
        (["queues", "set", "q", "--rate-limit", "0/1m", "--reason", "r"], "at least 1 start"),
        (["queues", "set", "q", "--concurrency", "lots", "--reason", "r"], "--concurrency must"),
        (
            ["queues", "set", "q", "--concurrency", "0", "--reason", "r"],
            "greater than or equal to 1",
        ),
        (["queues", "set", "q", "--reason", "r"], "nothing to change"),
        (
            [
                "queues",
                "set",
                "q",
                "--lease-seconds",
                "1",
                "--heartbeat-seconds",
                "0.6",
                "--reason",
                "r",
            ],
            "half",
        ),
        (["tenants", "set", "t", "--concurrency", "1.5", "--reason", "r"], "whole number"),
        (
            ["tenants", "set", "t", "--weight", "0", "--reason", "r"],
            "weight: Input should be greater",
        ),
        (["runs", "prune", "--older-than", "30x"], "--older-than must be a duration"),
        (["runs", "prune", "--older-than", "30"], "like 30d"),
        (["runs", "prune", "--older-than", "1d", "--status", "queued"], "only succeeded"),
        (["runs", "retry", "nope", "--reason", "r"], "run nope not found"),
        (["runs", "retry", "--reason", "r"], "give a run ID, or --where"),
        (["runs", "retry", "{run}", "--where", "--reason", "r"], "not both"),
        (["runs", "retry", "{run}", "--dry-run", "--reason", "r"], "--dry-run goes with --where"),
        (["runs", "retry", "--where", "--input", "{{}}", "--reason", "r"], "--input applies"),
        (["runs", "retry", "{run}", "--input", "[1]", "--reason", "r"], "JSON object"),
        (["runs", "retry", "--where", "--since", "yesterday", "--reason", "r"], "--since must"),
        (["runs", "retry", "--where", "--state", "queued", "--reason", "r"], "only failed or"),
        (["runs", "list", "--label", "app"], "key=value"),
        (["errors", "--limit", "0"], "--limit"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(
    argv: list[str],
    fragment: str,
    app: App,
    sqlite_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_id = app.enqueue_sync("report").id
    argv = [a.format(run=run_id) for a in argv]
    code, _, err = cli(capsys, "--db", sqlite_url, *argv)
    assert_one_line_error(code, err, fragment)
    assert app.store.admin.audit_log() == []
    assert app.store.runs.get_run(run_id).state is RunState.QUEUED


def test_the_real_command_reports_a_bad_rate_limit_in_one_line(
    app: App, sqlite_url: str, tmp_path: Path
) -> None:
    assert app.store.controls.queues() == []  # the schema exists
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "greenroom.cli",
            "--db",
            sqlite_url,
            "queues",
            "set",
            "q",
            "--rate-limit",
            "fast",
            "--reason",
            "r",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_line_error(done.returncode, done.stderr, "--rate-limit must look like N/PERIOD")
    assert done.stdout == ""


def test_parsing_durations_rate_limits_and_times() -> None:
    assert [parse_duration(t, "-") for t in ("30d", "12h", "15m", "90s", "1.5h")] == [
        2_592_000.0,
        43_200.0,
        900.0,
        90.0,
        5400.0,
    ]
    assert parse_rate_limit("10/60s") == (10, 60.0)
    assert parse_rate_limit("100/1m") == (100, 60.0)
    assert parse_rate_limit("5 / s") == (5, 1.0)
    assert parse_rate_limit("None") is None
    assert parse_time("2h", "--since", now=10_000.0) == 10_000.0 - 7200
    at = datetime(2024, 5, 1, 2, 0).timestamp()
    assert parse_time("2024-05-01T02:00", "--since", now=0) == at
    assert parse_time("2024-05-01T02:00:00+00:00", "--since", now=0) == 1_714_528_800.0
    for bad in ("", "d", "-1d", "10 days"):
        with pytest.raises(InvalidInput):
            parse_duration(bad, "--older-than")


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.mark.postgres
def test_controls_on_postgres(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    app = make_app(pg_url)
    try:
        acme = [app.enqueue_sync("report", tenant="acme").id for _ in range(2)]
        globex = app.enqueue_sync("report", tenant="globex").id
        ok(capsys, pg_url, "pause", "--tenant", "acme", "--reason", "audit in progress")
        out = ok(capsys, pg_url, "runs", "list", "--state", "paused")
        assert set(listed(out)) == set(short(*acme))
        assert app.store.runs.get_run(globex).state is RunState.QUEUED
        ok(capsys, pg_url, "queues", "set", "reports", "--rate-limit", "3/s", "--reason", "r")
        out = ok(capsys, pg_url, "queues")
        assert "3/1s" in out
        out = ok(capsys, pg_url, "resume", "--tenant", "acme", "--reason", "done")
        assert "2 runs queued again" in out
        assert states(app.store, acme) == [RunState.QUEUED] * 2
        out = ok(capsys, pg_url, "audit")
        assert [a.action for a in app.store.admin.audit_log()] == ["resume", "queue.set", "pause"]
        assert "audit in progress" in out
        code, _, err = cli(capsys, "--db", pg_url, "runs", "retry", acme[0], "--reason", "r")
        assert_one_line_error(code, err, "only failed or cancelled runs can be retried")
    finally:
        app.close()
