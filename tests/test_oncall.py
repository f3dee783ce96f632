"""The on-call story, end to end, through the `greenroom` command only: runs fail at a step,
the admin finds the error group and a failed run, fixes the cause, bulk-retries the group from
the failed step, the worker finishes the retries without repeating the steps that had
completed, the views show the failures resolved, and a second retry is refused.

On both backends, with a real `greenroom worker` process; and once through the API (`--url`
against a `greenroom api` process), as an admin without database access would do it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import UUID, assert_one_line_error, cli

#: Runs of the story that fail (beside them, one unrelated failure that must be left alone).
FAILING = 4

APP_SOURCE = '''
"""An invoice sync whose upload step fails until the portal is "fixed" (a flag file)."""

import os
from pathlib import Path

from greenroom import App, RetryPolicy, RunContext, step

HERE = Path(__file__).parent
app = App()


def effect(what: str) -> None:
    """One line per side effect, in a single O_APPEND write."""
    fd = os.open(HERE / "effects.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (what + "\\n").encode())
    finally:
        os.close(fd)


@step(name="fetch")
async def fetch(invoice: int) -> dict:
    effect(f"fetch {invoice}")
    return {"invoice": invoice, "amount": 100 + invoice}


@step(name="upload", retry=RetryPolicy(max_attempts=1))
async def upload(document: dict) -> str:
    effect(f"upload {document['invoice']}")
    fixed = HERE / "portal-fixed"  # "even": a partial fix, for even invoice numbers only
    if not fixed.exists() or (fixed.read_text() == "even" and document["invoice"] % 2):
        raise RuntimeError("portal rejected the upload: submit button not found")
    return f"uploaded {document['invoice']}"


@app.workflow(name="invoices.sync", retry=RetryPolicy(max_attempts=1))
async def sync(ctx: RunContext, invoice: int) -> dict:
    document = await fetch(invoice)
    return {"receipt": await upload(document)}


@app.workflow(name="reports.export", queue="reports", retry=RetryPolicy(max_attempts=1))
async def export(ctx: RunContext) -> None:
    raise ValueError("report template missing")
'''


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The app's directory, the current one (where `--app module:app` finds it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GREENROOM_URL", raising=False)
    monkeypatch.delenv("GREENROOM_API_KEY", raising=False)
    return tmp_path


def write_app(where: Path) -> str:
    name = f"oncall_{secrets.token_hex(4)}"
    (where / f"{name}.py").write_text(APP_SOURCE)
    return f"{name}:app"


@contextmanager
def process(argv: list[str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `greenroom` process (as users start it), stopped with SIGTERM at the end."""
    env = {**os.environ, "GREENROOM_POLL_SECONDS": "0.1"}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "greenroom.cli", *argv],
            cwd=cwd,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_worker(app: str, db: str, cwd: Path) -> AbstractContextManager[subprocess.Popen[bytes]]:
    argv = ["worker", "--app", app, "--db", db, "--concurrency", "4"]
    argv += ["--lease-seconds", "5", "--heartbeat-seconds", "1"]
    return process(argv, cwd, cwd / "worker.log")


@contextmanager
def api_server(app: str, db: str, cwd: Path) -> Iterator[str]:
    """`greenroom api` on a free loopback port; its URL."""
    log = cwd / "api.log"
    argv = ["api", "--app", app, "--db", db, "--host", "127.0.0.1", "--port", "0"]
    with process(argv, cwd, log) as proc:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"API\s+(http://127\.0\.0\.1:\d+)", log.read_text())):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the API did not start:\n" + log.read_text()
            time.sleep(0.05)
        yield found.group(1)


class Admin:
    """The on-call admin at a shell: `greenroom <where> …`, in-process for speed."""

    def __init__(self, capsys: pytest.CaptureFixture[str], where: tuple[str, ...]) -> None:
        self.capsys = capsys
        self.where = where

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        return cli(self.capsys, *self.where, *argv)

    def ok(self, *argv: str) -> str:
        code, out, err = self(*argv)
        assert code == 0, f"greenroom {' '.join(argv)}: exit {code}\n{err}"
        return out

    def json(self, *argv: str) -> Any:
        return json.loads(self.ok(*argv, "--json"))

    def runs(self, *filters: str) -> list[dict[str, Any]]:
        return list(self.json("runs", "list", "--limit", "100", *filters))

    def wait(self, ids: list[str], state: str, timeout: float = 60) -> list[dict[str, Any]]:
        """Poll `runs list` until every run of `ids` is finished; they must all be in `state`."""
        deadline = time.monotonic() + timeout
        while True:
            found = {r["id"]: r for r in self.runs("--include-superseded")}
            finished = {"succeeded", "failed", "cancelled"}
            if all(found.get(i, {}).get("state") in finished for i in ids):
                break
            assert time.monotonic() < deadline, f"runs not finished: {found}"
            time.sleep(0.1)
        states = {i: found[i]["state"] for i in ids}
        assert set(states.values()) == {state}, states
        return [found[i] for i in ids]


def effects(where: Path) -> Counter[str]:
    log = where / "effects.log"
    return Counter(log.read_text().splitlines() if log.exists() else [])


def enqueue_invoices(admin: Admin, enqueue: tuple[str, ...]) -> list[str]:
    """A run of the invoice sync for each invoice 0 … FAILING-1; their ids."""
    ids = []
    for invoice in range(FAILING):
        out = admin.ok("enqueue", "invoices.sync", *enqueue, "--input", f'{{"invoice": {invoice}}}')
        ids += UUID.findall(out)[:1]
    return ids


def oncall_story(admin: Admin, app_dir: Path, enqueue: tuple[str, ...]) -> None:
    """The story, from the failures to the refused second retry; `enqueue` is how this
    admin enqueues (with --app on a database, not through the API)."""
    # 1) Runs fail: the portal's upload page changed.
    failing = enqueue_invoices(admin, enqueue)
    [unrelated] = UUID.findall(admin.ok("enqueue", "reports.export", *enqueue))[:1]
    admin.wait(failing, "failed")
    admin.wait([unrelated], "failed")
    assert effects(app_dir) == {
        **{f"fetch {i}": 1 for i in range(FAILING)},
        **{f"upload {i}": 1 for i in range(FAILING)},
    }

    # 2) Find: one error group holds the failures, open; a run of it shows error and step.
    groups = {g["workflow"]: g for g in admin.json("errors")}
    assert set(groups) == {"invoices.sync", "reports.export"}
    group = groups["invoices.sync"]
    assert (group["step"], group["type"]) == ("upload", "RuntimeError")
    assert (group["open"], group["resolved"], group["occurrences"]) == (FAILING, 0, FAILING)
    assert group["last_run_id"] in failing
    table = admin.ok("errors")
    assert group["fingerprint"] in table and "submit button not found" in table
    shown = admin.ok("runs", "show", group["last_run_id"])
    assert "Error (in step 'upload', attempt 1): RuntimeError: portal rejected the upload" in shown
    assert re.search(r"│ 0 │ fetch\s+│ completed", shown), shown
    assert re.search(r"│ 1 │ upload\s+│ failed", shown), shown
    detail = admin.json("runs", "show", group["last_run_id"])
    assert detail["error"]["step"] == "upload"

    # 3) Fix the cause.
    (app_dir / "portal-fixed").touch()

    # 4) Bulk retry of the group from the failed step: a dry run first, then for real.
    reason = "portal layout fixed"
    retry = ("runs", "retry", "--where", "--error-group", group["fingerprint"], "--reason", reason)
    out = admin.ok(*retry, "--dry-run")
    assert f"dry run: {FAILING} runs would be retried (nothing changed)" in out
    assert re.search(rf"│ upload\s+│ {FAILING}\s+│", out), out
    assert admin.runs("--state", "queued") == []  # the dry run changed nothing
    out = admin.ok(*retry)
    assert f"retried {FAILING} runs: {FAILING} new runs queued" in out

    # 5) The worker finishes the retries, from the failed step: fetch is not executed again.
    superseded = {r["id"]: r for r in admin.runs("--state", "failed", "--include-superseded")}
    retries = [superseded[run_id]["superseded_by"] for run_id in failing]
    assert all(retries) and len(set(retries)) == FAILING
    done = admin.wait(retries, "succeeded")
    assert sorted(r["output"]["receipt"] for r in done) == [f"uploaded {i}" for i in range(FAILING)]
    assert {r["retry_of"] for r in done} == set(failing)
    assert effects(app_dir) == {
        **{f"fetch {i}": 1 for i in range(FAILING)},  # its checkpoint was kept
        **{f"upload {i}": 2 for i in range(FAILING)},  # failed once, then succeeded
    }
    steps = admin.json("runs", "show", retries[0])["steps"]
    assert [(s["name"], s["status"]) for s in steps] == [
        ("fetch", "completed"),
        ("upload", "completed"),
    ]

    # 6) The views show the failures resolved.
    assert [r["id"] for r in admin.runs("--state", "failed")] == [unrelated]
    assert listed_ids(admin.ok("runs", "list", "--state", "failed")) == [unrelated[:8]]
    with_superseded = {r["id"] for r in admin.runs("--state", "failed", "--include-superseded")}
    assert with_superseded == {*failing, unrelated}
    table = admin.ok("runs", "list", "--state", "failed", "--include-superseded")
    assert sorted(listed_ids(table)) == sorted(r[:8] for r in [*failing, unrelated])
    assert table.count("failed (retried)") == FAILING
    groups = {g["workflow"]: g for g in admin.json("errors")}
    resolved = groups["invoices.sync"]
    assert (resolved["open"], resolved["resolved"]) == (0, FAILING)
    assert (groups["reports.export"]["open"], groups["reports.export"]["resolved"]) == (1, 0)
    queues = {q["name"]: q["counts"] for q in admin.json("queues")}
    assert queues["default"].get("failed", 0) == 0
    assert queues["default"].get("succeeded") == FAILING
    assert queues["reports"].get("failed") == 1

    # 7) Retrying again retries nothing; a second retry of one run is refused, naming its retry.
    out = admin.ok(*retry, "--dry-run")
    assert out.strip() == (
        f"no runs match: nothing to retry; {FAILING} matching runs were retried already and are "
        "left alone"
    )
    out = admin.ok(*retry)
    assert "nothing to retry" in out and f"{FAILING} matching runs were retried already" in out
    old, new = failing[0], retries[0]
    code, out, err = admin("runs", "retry", old, "--reason", "by accident")
    assert_one_line_error(code, err, f"run {old} was already retried as {new}")
    assert out == ""
    assert {r["id"] for r in admin.runs()} == {*retries, unrelated}  # no run was added
    assert effects(app_dir)["upload 0"] == 2
    audit = [(e["action"], e["target"]) for e in admin.json("audit") if e["reason"] == reason]
    assert audit[:2] == [("retry.bulk", "0 runs"), ("retry.bulk", f"{FAILING} runs")]
    assert sorted(audit[2:]) == sorted(("retry", f"run {run_id}") for run_id in failing)


def listed_ids(out: str) -> list[str]:
    return re.findall(r"^│ ([0-9a-f]{8}) ", out, re.MULTILINE)


def test_the_oncall_story_on_a_database(
    db_url: str, app_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = write_app(app_dir)
    admin = Admin(capsys, ("--db", db_url))
    admin.ok("db", "upgrade")
    with start_worker(app, db_url, app_dir) as worker:
        oncall_story(admin, app_dir, ("--app", app))
        assert worker.poll() is None, (app_dir / "worker.log").read_text()
    assert worker.returncode == 0, (app_dir / "worker.log").read_text()  # stopped by SIGTERM


def test_the_oncall_story_through_the_api(
    db_url: str, app_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The admin has an API key, not the database: every command goes through `--url`."""
    app = write_app(app_dir)
    local = Admin(capsys, ("--db", db_url))
    local.ok("db", "upgrade")
    local.ok("tenants", "create", "acme")
    key = local.ok("keys", "create", "--tenant", "acme", "--role", "admin").strip()
    with api_server(app, db_url, app_dir) as url, start_worker(app, db_url, app_dir):
        admin = Admin(capsys, ("--url", url, "--key", key))
        oncall_story(admin, app_dir, ())


def test_a_fix_that_was_not_enough(
    db_url: str, app_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first fix works for half of the runs: the group stays open for the rest, and the
    next bulk retry (or a forced retry of an original) re-runs each of them once."""
    app = write_app(app_dir)
    admin = Admin(capsys, ("--db", db_url))
    admin.ok("db", "upgrade")
    half = FAILING // 2
    with start_worker(app, db_url, app_dir):
        failing = enqueue_invoices(admin, ("--app", app))
        admin.wait(failing, "failed")
        [group] = admin.json("errors")
        retry = ("runs", "retry", "--where", "--error-group", group["fingerprint"])

        (app_dir / "portal-fixed").write_text("even")
        admin.ok(*retry, "--reason", "first fix")
        retries = admin.runs("--state", "queued,running,succeeded,failed")
        first = {r["retry_of"]: r["id"] for r in retries}
        odd = [failing[i] for i in range(1, FAILING, 2)]
        admin.wait([first[i] for i in failing[0::2]], "succeeded")
        admin.wait([first[i] for i in odd], "failed")
        [group] = admin.json("errors")
        counts = (group["open"], group["resolved"], group["occurrences"])
        assert counts == (half, half, FAILING + half)
        assert {r["id"] for r in admin.runs("--state", "failed")} == {first[i] for i in odd}

        # A forced retry of an original takes over its failed retry: still one open failure each.
        code, _, err = admin("runs", "retry", odd[0], "--reason", "by hand")
        assert_one_line_error(code, err, f"already retried as {first[odd[0]]}")
        out = admin.ok("runs", "retry", odd[0], "--force", "--reason", "by hand")
        forced = UUID.findall(out)[0]
        admin.wait([forced], "failed")
        [group] = admin.json("errors")
        assert group["open"] == half
        still_failed = {r["id"] for r in admin.runs("--state", "failed")}
        assert still_failed == {forced, *(first[i] for i in odd[1:])}

        (app_dir / "portal-fixed").write_text("all")
        out = admin.ok(*retry, "--reason", "second fix", "--dry-run")
        assert f"dry run: {half} runs would be retried" in out
        admin.ok(*retry, "--reason", "second fix")
        latest = {r["id"]: r for r in admin.runs("--state", "succeeded,queued,running")}
        second = [r["id"] for r in latest.values() if r["retry_of"] in {forced, *first.values()}]
        assert len(second) == half
        admin.wait(second, "succeeded")
    [group] = admin.json("errors")
    # every failure seen (originals, first retries of odd invoices, the forced one) is resolved
    assert (group["open"], group["resolved"], group["occurrences"]) == (0, 7, 7)
    assert admin.runs("--state", "failed") == []
    uploads = effects(app_dir)
    assert [uploads[f"fetch {i}"] for i in range(FAILING)] == [1] * FAILING
    # even invoices: failed, then uploaded; odd: failed, failed on the first fix, uploaded (and
    # the odd one retried by hand failed once more)
    assert [uploads[f"upload {i}"] for i in range(FAILING)] == [2, 4, 2, 3]
