"""The overview's counts (GET /v1/queues, the throughput sparklines) read what is live and what
ended lately, never the whole runs table: runs not ended are counted all, ended ones only within
the last day (retried failures left out), ends by outcome per stretch of time; and on
PostgreSQL the plans read the two indexes, not the table."""

from __future__ import annotations

import pytest
from ui_helpers import sign_in

from greenroom import ManualClock, RunState
from greenroom.model import NewRun, Role
from greenroom.storage import RunStore
from greenroom.storage.controls import ENDED_WITHIN
from tests.api_helpers import api_setup
from tests.test_retry_safety import ACTOR, end, failed


def test_live_runs_all_and_ended_ones_of_the_last_day(store: RunStore, clock: ManualClock) -> None:
    old = store.runs.enqueue(NewRun(workflow="sync", tenant="t1"))[0]
    end(store, old, RunState.SUCCEEDED)
    clock.advance(ENDED_WITHIN + 1)  # ended over a day ago: no longer counted
    first = failed(store)
    failed(store, tenant="t2")
    recent = store.runs.enqueue(NewRun(workflow="sync", tenant="t1"))[0]
    end(store, recent, RunState.SUCCEEDED)
    store.admin.retry_run(first.id, actor=ACTOR, reason="fixed")  # its retry queued stands for it
    store.runs.enqueue(NewRun(workflow="sync", tenant="t2", available_at=clock.now() + 60))
    store.runs.enqueue(NewRun(workflow="sync", tenant="t1", queue="other"))
    assert len(store.runs.claim("w1", ["other"], 1, 30.0)) == 1
    counts = {q.name: q.counts for q in store.controls.queues()}
    assert counts == {
        "default": {"queued": 1, "delayed": 1, "failed": 1, "succeeded": 1},
        "other": {"running": 1},
    }
    [default] = [q for q in store.controls.queues(tenant="t1") if q.name == "default"]
    assert default.counts == {"queued": 1, "succeeded": 1}
    assert default.ended_since == clock.now() - ENDED_WITHIN
    assert default.finished_last_minute == 2  # every end counts here, a retried failure too


def test_ends_by_outcome_per_stretch(store: RunStore, clock: ManualClock) -> None:
    since = clock.now()
    clock.advance(30)
    failed(store)  # stretch 0
    clock.advance(60)
    for state in (RunState.SUCCEEDED, RunState.SUCCEEDED, RunState.CANCELLED):  # stretch 1
        end(store, store.runs.enqueue(NewRun(workflow="sync", tenant="t2"))[0], state)
    clock.advance(60)
    end(store, store.runs.enqueue(NewRun(workflow="sync", tenant="t1"))[0], RunState.SUCCEEDED)
    got = store.controls.ended(since=since, width=60, count=3)
    assert [(e.start, e.succeeded, e.failed, e.cancelled) for e in got] == [
        (since, 0, 1, 0),
        (since + 60, 2, 0, 1),
        (since + 120, 1, 0, 0),
    ]
    mine = store.controls.ended(since=since, width=60, count=2, tenant="t1")
    assert [(e.succeeded, e.failed) for e in mine] == [(0, 1), (0, 0)], "t1's, and only 2"


@pytest.mark.postgres
def test_postgres_counts_through_the_indexes(pg_url: str) -> None:
    """The plans of the overview's queries on PostgreSQL read runs_live and runs_finished; the
    table is never read whole (bench/console.py measures them at 1,000,000 runs)."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")  # a table this small would be read whole
        for sql, index in (
            (
                "SELECT queue, state, COUNT(*) FROM runs WHERE state IN"
                " ('queued', 'delayed', 'running', 'paused') GROUP BY queue, state",
                "runs_live",
            ),
            (
                "SELECT queue, state, COUNT(*) FROM runs WHERE finished_at > 0"
                " AND superseded_by IS NULL GROUP BY queue, state",
                "runs_finished",
            ),
        ):
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql).fetchall())
            assert f" {index} " in plan and "Seq Scan" not in plan, plan


def test_throughput_and_the_overview_sparklines_per_tenant(db_url: str) -> None:
    with api_setup(db_url) as api:
        store = api.app.store
        for tenant, state in (("acme", RunState.FAILED), ("acme", RunState.SUCCEEDED)):
            run = store.runs.enqueue(NewRun(workflow="sync", tenant=tenant))[0]
            end(store, run, state)
        end(
            store,
            store.runs.enqueue(NewRun(workflow="sync", tenant="globex"))[0],
            RunState.CANCELLED,
        )
        with api.as_("acme", Role.VIEWER) as c:
            got = c.get("/v1/throughput", params={"hours": 1}).json()
            assert (got["width"], len(got["stretches"])) == (60, 60)
            last = got["stretches"][-1]
            assert (last["succeeded"], last["failed"], last["cancelled"]) == (1, 1, 0)
            assert c.get("/v1/throughput", params={"hours": 25}).status_code == 422
        with api.platform() as c:
            every = c.get("/v1/throughput").json()["stretches"]
            assert sum(s["cancelled"] for s in every) == 1
        with sign_in(api.url, api.keys["acme"][Role.VIEWER]) as c:
            shown = c.get("/ui/").text
            assert 'class="bar-failed"' in shown and 'class="bar-succeeded"' in shown
            assert "bar-cancelled" not in shown, "globex's end is not acme's"
            assert "50.0 % of 2" in shown
