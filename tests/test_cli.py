"""The greenroom command on real databases: in-process for speed, as subprocesses where the
process itself matters (exit codes, stderr, signals)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greenroom import RunState, StepStatus
from greenroom.cli import run
from greenroom.failures import describe_error
from greenroom.storage import RunFilter, open_store
from greenroom.storage.codec import dumps
from greenroom.storage.migrate import current_revision, head_revision

APP_SOURCE = """
from greenroom import App, RunContext, step

app = App()
not_an_app = 42


@step(name="greet")
async def greet(name: str) -> str:
    return f"hello {name}"


@app.workflow(name="hello", session="{tenant}:{name}")
async def hello(ctx: RunContext, name: str = "world") -> dict:
    return {"greeting": await greet(name)}


@app.workflow(name="boom")
async def boom(ctx: RunContext) -> None:
    raise ValueError("the page layout changed")
"""

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: A run's row in a table, which shows the first 8 characters of its id.
LISTED = re.compile(r"^│ ([0-9a-f]{8}) ", re.MULTILINE)


def listed(out: str) -> list[str]:
    """The ids of the runs a table lists, as prefixes; compare with `short`."""
    return LISTED.findall(out)


def short(*run_ids: str) -> list[str]:
    return [run_id[:8] for run_id in run_ids]


@pytest.fixture
def app_ref(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An app module in the current directory, as users write them."""
    name = f"cliapp_{secrets.token_hex(4)}"
    (tmp_path / f"{name}.py").write_text(APP_SOURCE)
    monkeypatch.chdir(tmp_path)
    return f"{name}:app"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_db_upgrade_creates_the_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sub" / "g.db"
    code, out, _ = cli(capsys, "--db", f"sqlite:///{path}", "db", "upgrade")
    assert code == 0
    assert head_revision() in out
    assert current_revision(f"sqlite:///{path}") == head_revision()
    # Twice is fine, and --db after the command works too.
    assert cli(capsys, "db", "upgrade", "--db", f"sqlite:///{path}")[0] == 0


def test_enqueue_is_idempotent_and_runs_list_filters(
    db_url: str, app_ref: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "--db", db_url, "db", "upgrade")[0] == 0
    args = ("enqueue", "hello", "--app", app_ref, "--db", db_url, "--input", '{"name": "ada"}')
    code, out, err = cli(capsys, *args, "--idempotency-key", "k1", "--label", "org=acme")
    assert code == 0, err
    first = UUID.findall(out)[0]
    assert "created" in out
    code, out, _ = cli(capsys, *args, "--idempotency-key", "k1")
    assert code == 0
    assert UUID.findall(out) == [first]
    assert "already existed" in out
    code, out, _ = cli(capsys, *args, "--tenant", "t2", "--priority", "5", "--delay", "60")
    other = UUID.findall(out)[0]
    assert other != first

    store = open_store(db_url)
    try:
        runs = {r.id: r for r in store.runs.list_runs(RunFilter())}
    finally:
        store.backend.close()
    assert set(runs) == {first, other}
    assert runs[first].labels == {"org": "acme"}
    assert runs[first].session_key == "default:ada"
    assert runs[other].state is RunState.DELAYED
    assert (runs[other].tenant, runs[other].priority) == ("t2", 5)

    code, out, _ = cli(capsys, "--db", db_url, "runs", "list")
    assert code == 0
    assert listed(out) == short(other, first)
    code, out, _ = cli(capsys, "--db", db_url, "runs", "list", "--state", "delayed")
    assert listed(out) == short(other)
    code, out, _ = cli(capsys, "--db", db_url, "runs", "list", "--tenant", "default")
    assert listed(out) == short(first)
    code, out, _ = cli(capsys, "--db", db_url, "runs", "list", "--workflow", "boom")
    assert (code, out.strip()) == (0, "no runs")

    code, out, err = cli(capsys, *args, "--start-at", "2099-01-02T03:04:05+00:00")
    assert code == 0 and "created (delayed)" in out, err
    [later] = UUID.findall(out)
    shown = json.loads(cli(capsys, "--db", db_url, "runs", "show", later, "--json")[1])
    assert shown["available_at"] == 4071006245.0
    code, _, err = cli(capsys, *args, "--start-at", "2099-01-02", "--delay", "5")
    assert_one_line_error(code, err, "give --delay or --start-at, not both")
    code, _, err = cli(capsys, *args, "--start-at", "tomorrow")
    assert_one_line_error(code, err, "--start-at must be an ISO time")

    [backfill] = UUID.findall(cli(capsys, *args, "--queue", "backfill")[1])
    out = cli(capsys, "--db", db_url, "runs", "list", "--queue", "backfill", "--json")[1]
    assert [(r["id"], r["queue"]) for r in json.loads(out)] == [(backfill, "backfill")]


def test_runs_show_prints_timeline_steps_and_error(
    sqlite_url: str, app_ref: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "--db", sqlite_url, "db", "upgrade")[0] == 0
    code, out, _ = cli(capsys, "enqueue", "boom", "--app", app_ref, "--db", sqlite_url)
    run_id = UUID.findall(out)[0]
    store = open_store(sqlite_url)
    try:
        [lease] = store.runs.claim("w-test", ["default"], 1, 30.0)
        store.runs.save_step(
            lease,
            position=0,
            name="login",
            status=StepStatus.COMPLETED,
            result=dumps({"ok": True}),
            error=None,
            attempts=2,
            started_at=time.time() - 1.5,
        )
        try:
            raise ValueError("the page layout changed")
        except ValueError as exc:
            error = describe_error(exc, step="read_users", attempt=1)
        store.runs.finish(lease, RunState.FAILED, reason="failed: ValueError", error=error)
    finally:
        store.backend.close()

    code, out, err = cli(capsys, "--db", sqlite_url, "runs", "show", run_id)
    assert code == 0, err
    assert run_id in out
    assert "failed" in out
    # Times are local with their UTC offset, to the millisecond.
    assert re.search(r"created\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", out)
    assert cli(capsys, "--db", sqlite_url, "runs", "show", run_id[:8])[1] == out
    for reason in ("enqueued", "leased", "failed: ValueError", "w-test"):
        assert reason in out
    assert re.search(r"login\s+│\s+completed\s+│\s+2\s+│\s+1\.\d\ds", out), out
    assert "in step 'read_users'" in out
    assert "ValueError: the page layout changed" in out
    assert "Traceback (most recent call last)" in out  # the stored one, printed for the admin

    code, _, err = cli(capsys, "--db", sqlite_url, "runs", "show", "nope")
    assert_one_line_error(code, err, "run nope not found")


def test_runs_cancel(sqlite_url: str, app_ref: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "--db", sqlite_url, "db", "upgrade")[0] == 0
    ids = []
    for name in ("a", "b"):
        args = ("enqueue", "hello", "--app", app_ref, "--db", sqlite_url)
        out = cli(capsys, *args, "--input", f'{{"name": "{name}"}}')[1]
        ids.append(UUID.findall(out)[0])
    code, out, _ = cli(capsys, "--db", sqlite_url, "runs", "cancel", ids[0], "--reason", "test")
    assert (code, out.strip()) == (0, f"run {ids[0]} cancelled")

    store = open_store(sqlite_url)
    try:
        assert store.runs.get_run(ids[0]).state is RunState.CANCELLED
        [lease] = store.runs.claim("w-test", ["default"], 1, 30.0)
        assert lease.run.id == ids[1]
        code, out, _ = cli(capsys, "--db", sqlite_url, "runs", "cancel", ids[1], "--reason", "test")
        assert code == 0
        assert "cancel requested" in out
        assert store.runs.get_run(ids[1]).cancel_requested
        store.runs.finish(lease, RunState.SUCCEEDED, reason="completed", output="null")
    finally:
        store.backend.close()
    code, _, err = cli(capsys, "--db", sqlite_url, "runs", "cancel", ids[1], "--reason", "test")
    assert_one_line_error(code, err, "already succeeded")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["runs", "list", "--bogus"], "No such option: --bogus"),
        (["runs", "list", "--limit", "0"], "--limit"),
        (["runs", "list", "--state", "sleeping"], "unknown state 'sleeping'"),
        (["runs", "show"], "Missing argument 'ID'"),
        (["enqueue", "hello", "--app", "{app}", "--input", "{{nope"], "not valid JSON"),
        (["enqueue", "hello", "--app", "{app}", "--input", "[1]"], "must be a JSON object"),
        (["enqueue", "hello", "--app", "{app}", "--label", "novalue"], "key=value"),
        (["enqueue", "nope", "--app", "{app}"], "unknown workflow 'nope'"),
        (["enqueue", "hello", "--app", "no_such_module:app"], "cannot import"),
        (["enqueue", "hello", "--app", "{module}:not_an_app"], "not a greenroom App"),
        (["enqueue", "hello", "--app", "{module}"], "module:attribute"),
        (
            ["worker", "--app", "{app}", "--lease-seconds", "1", "--heartbeat-seconds", "0.9"],
            "half",
        ),
        (["worker", "--app", "{app}", "--concurrency", "0"], "--concurrency"),
        (["--db", "mysql://x/y", "runs", "list"], "unsupported database URL"),
        (["--db", "sqlite:///{tmp}/missing.db", "workers"], "no database at"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    argv: list[str],
    fragment: str,
    app_ref: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = ["--db", f"sqlite:///{tmp_path / 'g.db'}"]
    fill = {"app": app_ref, "module": app_ref.split(":")[0], "tmp": str(tmp_path)}
    argv = [a.format(**fill) for a in argv]
    code, _, err = cli(capsys, *(argv if argv[0] == "--db" else db + argv))
    assert_one_line_error(code, err, fragment)


def greenroom(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "greenroom.cli", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_errors_of_the_real_command_are_one_line_without_traceback(tmp_path: Path) -> None:
    bad = greenroom("runs", "list", "--no-such-flag", cwd=tmp_path)
    assert_one_line_error(bad.returncode, bad.stderr, "No such option")
    assert bad.stdout == ""


def test_worker_process_runs_workflows_and_stops_on_sigterm(
    sqlite_url: str, app_ref: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "--db", sqlite_url, "db", "upgrade")[0] == 0
    cmd = [sys.executable, "-m", "greenroom.cli", "worker", "--app", app_ref, "--db", sqlite_url]
    cmd += ["--concurrency", "2", "--lease-seconds", "2", "--heartbeat-seconds", "0.5"]
    with subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        try:
            ids = {}
            for wf in ("hello", "boom"):
                args = ("enqueue", wf, "--app", app_ref, "--db", sqlite_url)
                out = cli(capsys, *args, "--input", '{"name": "world"}' if wf == "hello" else "{}")[
                    1
                ]
                ids[wf] = UUID.findall(out)[0]
            store = open_store(sqlite_url)
            try:
                deadline = time.monotonic() + 30
                while not all(store.runs.get_run(i).state.finished for i in ids.values()):
                    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                    assert time.monotonic() < deadline, "runs did not finish"
                    time.sleep(0.1)
                assert store.runs.get_run(ids["hello"]).output == {"greeting": "hello world"}
                assert store.runs.get_run(ids["boom"]).state is RunState.FAILED
            finally:
                store.backend.close()
            code, out, _ = cli(capsys, "--db", sqlite_url, "workers")
            assert code == 0
            assert f"│ {proc.pid} " in out and "alive" in out
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    code, out, _ = cli(capsys, "--db", sqlite_url, "workers")
    assert "no live workers" in out
    code, out, _ = cli(capsys, "--db", sqlite_url, "workers", "--all")
    assert str(proc.pid) in out and "stopped" in out
    code, out, _ = cli(capsys, "--db", sqlite_url, "runs", "show", ids["boom"])
    assert "ValueError: the page layout changed" in out
    assert os.path.exists(sqlite_url.removeprefix("sqlite:///"))


@pytest.mark.parametrize(
    "argv",
    [
        ["worker", "--app", "{app}"],
        ["enqueue", "hello", "--app", "{app}"],
        ["up", "--app", "{app}", "--port", "0"],
        ["runs", "list"],
    ],
)
def test_a_missing_sqlite_file_is_an_error_not_a_new_database(
    argv: list[str],
    app_ref: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A typo in --db or $GREENROOM_DB must not start a worker on a new, empty database."""
    argv = [a.format(app=app_ref) for a in argv]
    typo = tmp_path / "typo.db"
    code, _, err = cli(capsys, "--db", f"sqlite:///{typo}", *argv)
    assert_one_line_error(code, err, f"no database at {typo}", "uv run greenroom db upgrade")
    monkeypatch.setenv("GREENROOM_DB", f"sqlite:///{typo}")
    code, _, err = cli(capsys, *argv)
    assert_one_line_error(code, err, f"no database at {typo}")
    assert not typo.exists()


NAME = '{"name": "ada"}'


def test_the_default_database_and_db_upgrade_create_the_file(
    app_ref: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("GREENROOM_DB", raising=False)
    code, _, err = cli(capsys, "enqueue", "hello", "--app", app_ref, "--input", NAME)
    assert code == 0, err
    assert (tmp_path / ".greenroom" / "greenroom.db").is_file()
    new = tmp_path / "new.db"
    assert cli(capsys, "--db", f"sqlite:///{new}", "db", "upgrade")[0] == 0
    code, _, err = cli(
        capsys, "--db", f"sqlite:///{new}", "enqueue", "hello", "--app", app_ref, "--input", NAME
    )
    assert code == 0, err


def printed_command(line: str) -> list[str]:
    """A hint's command, run as printed but by this interpreter (`uv run greenroom` is how a
    checkout runs the same entry point)."""
    found = re.search(r"uv run greenroom (.+)$", line)
    assert found, line
    return [sys.executable, "-m", "greenroom.cli", *shlex.split(found[1])]


def test_hints_are_commands_that_work_as_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = f"sqlite:///{tmp_path / 'hinted db.db'}"  # a space: the hint must quote it
    code, _, err = cli(capsys, "--db", db, "tenants", "create", "acme")
    assert_one_line_error(code, err, "no database at")
    upgrade = printed_command(err.split("`")[1])
    done = subprocess.run(upgrade, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    code, out, _ = cli(capsys, "--db", db, "tenants", "create", "acme")
    assert code == 0
    key = printed_command(" ".join(out.split()))
    done = subprocess.run(key, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("grk_") and "admin key" in done.stderr
