"""`greenroom doctor`: summaries checked against the runs, drift reported and mended.

Every other test that uses a database checks its summaries at teardown (tests/conftest.py); these
corrupt them on purpose and see the drift found, named and repaired.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from pathlib import Path
from unittest.mock import patch

import pytest

from greenroom import RunContext
from greenroom.cli import run
from greenroom.crypto import KEY_FILE
from greenroom.model import NewRun, RunState
from greenroom.storage import SCHEMA_REVISION, RunStore, open_store
from tests.helpers import fast_app, wait_for_states, worker_running

KEY = base64.b64encode(bytes(32)).decode()


def doctor(capsys: pytest.CaptureFixture[str], db_url: str, *args: str) -> tuple[int, str]:
    """The doctor without its browser check (test_doctor_checks_the_browser has it)."""
    with patch.dict(os.environ, {"GREENROOM_SECRET_KEY": KEY}):
        code = run(["--db", db_url, "doctor", "--no-browser", *args])
    return code, capsys.readouterr().out


def corrupt(store: RunStore, *statements: str) -> None:
    with store.backend.transaction() as tx:
        for sql in statements:
            tx.execute(sql)


def seeded(db_url: str) -> RunStore:
    """Two tenants, lanes, a limited queue, and a run of each state that matters."""
    store = open_store(db_url)
    store.controls.set_queue("limited", actor="t", reason="a limit", concurrency=5)
    for i in range(6):
        store.runs.enqueue(NewRun(workflow="w", input={}, tenant="t1", session_key=f"t1:k{i % 2}"))
        store.runs.enqueue(NewRun(workflow="w", input={}, tenant="t2", queue="limited"))
    store.runs.enqueue(NewRun(workflow="w", input={}, tenant="t1", available_at=4e9))  # delayed
    store.runs.claim("w1", ["default", "limited"], 3, 30)
    return store


@pytest.mark.summaries_unchecked
@pytest.mark.parametrize(
    ("statement", "kind", "key", "field"),
    [
        ("UPDATE tenants SET ready = ready + 2 WHERE name = 't1'", "tenant", "t1", "ready"),
        ("UPDATE tenants SET active = 7 WHERE name = 't2'", "tenant", "t2", "active"),
        (
            "UPDATE queues SET active = active + 1 WHERE name = 'limited'",
            "queue",
            "limited",
            "active",
        ),
        (
            "UPDATE lanes SET active = active + 1 WHERE session_key = 't1:k0'",
            "lane",
            "t1/t1:k0",
            "active",
        ),
        (
            "UPDATE lanes SET head_seq = NULL WHERE session_key = 't1:k1'",
            "lane",
            "t1/t1:k1",
            "head",
        ),
        ("DELETE FROM lanes WHERE session_key = 't1:k1'", "lane", "t1/t1:k1", "missing"),
        ("UPDATE runs SET lease_owner = 'ghost' WHERE state = 'delayed'", "run", None, "lease"),
        (
            "UPDATE runs SET holds_queue_slot = false WHERE state = 'running'"
            " AND queue = 'limited'",
            "run",
            None,
            "queue slot",
        ),
    ],
)
def test_each_kind_of_drift_is_reported_and_repaired(
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    statement: str,
    kind: str,
    key: str | None,
    field: str,
) -> None:
    store = seeded(db_url)
    code, out = doctor(capsys, db_url)
    assert code == 0 and "summaries   agree with the runs" in out
    corrupt(store, statement)

    code, out = doctor(capsys, db_url, "--json")
    assert code == 1
    found = json.loads(out)["drift"]
    # A run that lost its slot also makes its queue count one run too many.
    assert (kind, field) in [(d["kind"], d["field"]) for d in found] and len(found) <= 2
    if key is not None:
        assert key in [d["key"] for d in found if d["field"] == field]
    code, out = doctor(capsys, db_url)
    assert code == 1 and "drifted: --repair mends" in out

    code, out = doctor(capsys, db_url, "--repair", "--reason", "drift seen in a test")
    assert code == 0 and f"{len(found)} repaired" in out
    assert store.repair.summary_drift() == []
    assert doctor(capsys, db_url)[0] == 0
    (entry,) = [e for e in store.admin.audit_log() if e.action == "summaries.repair"]
    assert entry.reason == "drift seen in a test" and entry.detail["drift"] == len(found)
    store.backend.close()


@pytest.mark.summaries_unchecked
def test_a_repaired_lane_serves_its_runs_again(db_url: str) -> None:
    """A lane counting a run that does not run never starts its next one: the drift matters."""
    store = open_store(db_url)
    first = store.runs.enqueue(NewRun(workflow="w", input={}, tenant="t", session_key="s"))[0]
    second = store.runs.enqueue(NewRun(workflow="w", input={}, tenant="t", session_key="s"))[0]
    (lease,) = store.runs.claim("w1", ["default"], 5, 30)
    assert lease.run.id == first.id
    corrupt(store, "UPDATE lanes SET active = active + 1")  # as if a move forgot to give it back
    store.runs.finish(lease, RunState.SUCCEEDED, reason="done")
    assert store.runs.claim("w1", ["default"], 5, 30) == []  # stuck behind the drift

    assert [d.field for d in store.repair.repair_summaries(actor="a", reason="stuck lane")] == [
        "active"
    ]
    (lease,) = store.runs.claim("w1", ["default"], 5, 30)
    assert lease.run.id == second.id
    store.backend.close()


def test_repair_while_a_worker_drains_leaves_sound_summaries(db_url: str) -> None:
    """Moves that wait for the summary rows a repair holds apply on top of what it recomputed."""
    app = fast_app(db_url)

    @app.workflow(name="quick", session="{tenant}:{n}")
    async def quick(ctx: RunContext, n: int) -> int:
        await asyncio.sleep(0.005)
        return n

    store = open_store(db_url)
    runs = [
        store.runs.enqueue(NewRun(workflow="quick", input={"n": i % 7}, tenant=f"t{i % 3}",
                             session_key=f"t{i % 3}:{i % 7}"))[0]
        for i in range(300)
    ]  # fmt: skip
    stop = threading.Event()
    repairs: list[int] = []

    def repair_often() -> None:
        while not stop.is_set():
            repairs.append(len(store.repair.repair_summaries(actor="a", reason="under load")))
            # Often, not always: back to back, the repairs held SQLite's one write lock so
            # steadily that the worker's heartbeats starved and its runs stalled.
            time.sleep(0.02)

    async def main() -> None:
        async with worker_running(app, concurrency=8):
            repairer = threading.Thread(target=repair_often)
            repairer.start()
            try:
                await wait_for_states(store, [r.id for r in runs], timeout=60)
            finally:
                stop.set()
                await asyncio.to_thread(repairer.join)

    asyncio.run(main())
    assert len(repairs) > 3
    assert sum(repairs) == 0  # nothing drifted: every move kept its bookkeeping
    assert store.repair.summary_drift() == []
    store.backend.close()


def test_doctor_has_no_remote_mode(capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["--url", "http://127.0.0.1:9", "--key", "k", "doctor"])
    assert code == 2
    assert "no remote mode" in capsys.readouterr().err


def lines(out: str) -> dict[str, tuple[str, str]]:
    """The doctor's lines by check: (status, detail)."""
    found = {}
    for line in out.splitlines():
        status, name, detail = line[:4].strip(), line[5:16].strip(), line[17:]
        found[name] = (status, detail)
    return found


def test_doctor_checks_workers_clock_and_key(
    capsys: pytest.CaptureFixture[str], db_url: str
) -> None:
    store = open_store(db_url)
    try:
        code, out = doctor(capsys, db_url)
        found = lines(out)
        assert code == 0 and found["workers"][0] == "warn", out
        assert found["database"] == ("ok", f"reachable, schema {SCHEMA_REVISION} (current)")
        assert found["clock"][0] == "ok" and found["secret key"][0] == "ok"
        store.runs.register_worker(
            "w-silent", host="h", pid=1, queues=["default"], concurrency=2, lock_key=7
        )
        corrupt(store, "UPDATE workers SET heartbeat_at = heartbeat_at - 3600")
        code, out = doctor(capsys, db_url)
        assert code == 1 and lines(out)["workers"][0] == "FAIL"
        assert "w-silent (3600 s)" in lines(out)["workers"][1]
    finally:
        store.backend.close()


def test_doctor_fails_a_key_that_cannot_open_the_credentials(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    store = open_store(sqlite_url)
    try:
        store.accounts.create_tenant("acme", actor="op")
        store.accounts.add_integration(
            integration_id="i1",
            tenant="acme",
            connector="crm",
            name="crm",
            settings={},
            sealed=("k-old", "c2VhbGVk"),
            actor="op",
        )
    finally:
        store.backend.close()
    code, out = doctor(capsys, sqlite_url)
    assert code == 1
    assert lines(out)["secret key"] == (
        "FAIL",
        "cannot open integration i1's credentials (sealed with k-old)",
    )


def test_doctor_checks_the_browser_and_a_missing_database(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    code = run(["--db", url, "doctor"])
    out = capsys.readouterr().out
    assert code == 1
    assert lines(out)["database"][0] == "FAIL" and "no database at" in out
    status, detail = lines(out)["browser"]
    assert status == "ok" and "launched in" in detail
    assert not (tmp_path / KEY_FILE).exists(), "no key file made beside no database"
