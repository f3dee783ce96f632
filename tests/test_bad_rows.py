"""Runs stored before the text rules held, with labels the database cannot read (a NUL): on
PostgreSQL every query reading labels as JSON failed on them, so while a label pause existed
every worker's claim failed and other tenants' runs stayed queued. Now a claim that fails on
such data quarantines those runs (logged with the run id, counted) and claims again."""

from __future__ import annotations

import json

import pytest

from greenroom import App, RunContext, RunState
from greenroom.model import NewRun, PauseScope
from greenroom.storage import RunFilter, RunStore
from tests.helpers import fast_app, wait_for_states, worker_running

ACTOR = "ops@example.com"
#: What the store took before the rules held: a label holding a NUL, as the encoder wrote it.
UNREADABLE = json.dumps({"note": "a\x00b", "team": "blue"})


def store_unreadable_labels(store: RunStore, run_id: str) -> None:
    """Make a run look as if it was stored before the rules held (the store refuses it now)."""
    with store.backend.transaction() as tx:
        tx.execute(
            "UPDATE runs SET labels = :labels WHERE id = :id", {"labels": UNREADABLE, "id": run_id}
        )


def echo_app(db_url: str) -> App:
    app = fast_app(db_url)

    @app.workflow(name="echo")
    async def echo(ctx: RunContext) -> str:
        return ctx.run_id

    return app


async def test_an_unreadable_run_stops_no_other_tenants_claims(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = echo_app(db_url)
    store = app.store
    try:
        store.controls.pause(
            PauseScope.LABEL, "held", label="batch", actor=ACTOR, reason="hold a batch"
        )
        bad = app.enqueue_sync("echo", tenant="t1", labels={"note": "x"})
        store_unreadable_labels(store, bad.id)
        good = [app.enqueue_sync("echo", tenant="t2").id for _ in range(3)]
        async with worker_running(app) as worker:
            done = await wait_for_states(store, good)
            assert {r.state for r in done} == {RunState.SUCCEEDED}
            after = (await wait_for_states(store, [bad.id]))[0]
        if db_url.startswith("postgresql"):  # its claim failed on the run: it is quarantined
            assert after.state is RunState.FAILED
            assert after.error is not None and after.error["type"] == "UnreadableLabels"
            assert after.labels == {"team": "blue"}
            assert worker.stats.quarantined == 1
            logged = capsys.readouterr().out
            assert "run quarantined" in logged and bad.id in logged
        else:  # SQLite reads it: nothing failed, the run ran
            assert after.state is RunState.SUCCEEDED
            assert worker.stats.quarantined == 0
    finally:
        app.close()


def test_quarantine_fails_waiting_runs_and_repairs_the_others(store: RunStore) -> None:
    def enqueue(**kw: object) -> str:
        return store.runs.enqueue(NewRun(workflow="wf", labels={"note": "x"}, **kw))[0].id  # type: ignore[arg-type]

    queued, delayed = (
        enqueue(tenant="t1"),
        enqueue(tenant="t1", available_at=store.clock.now() + 60),
    )
    store.controls.pause(PauseScope.TENANT, "t2", actor=ACTOR, reason="hold t2")
    paused, fine = enqueue(tenant="t2"), enqueue(tenant="t3")
    [lease] = store.runs.claim("w1", ["default"], 1, 30.0)  # t1's queued run
    assert lease.run.id == queued
    store.runs.finish(lease, RunState.SUCCEEDED, reason="done")
    finished = queued
    queued = enqueue(tenant="t1")
    for run_id in (finished, queued, delayed, paused):
        store_unreadable_labels(store, run_id)

    found = {q.run_id: q for q in store.repair.quarantine_unreadable()}
    assert set(found) == {finished, queued, delayed, paused}
    assert "'note'" in found[queued].reason and "NUL" in found[queued].reason
    for run_id in (queued, delayed, paused):
        run = store.runs.get_run(run_id)
        assert run.state is RunState.FAILED and run.labels == {"team": "blue"}
        assert run.error is not None and run.error["type"] == "UnreadableLabels"
        assert run.finished_at is not None
    repaired = store.runs.get_run(finished)
    assert repaired.state is RunState.SUCCEEDED and repaired.labels == {"team": "blue"}
    assert json.loads(store.runs.events(finished)[-1].detail["labels"]) == json.loads(UNREADABLE)
    assert store.runs.get_run(fine).labels == {"note": "x"}
    # Nothing of t1 is ready any more, and every query reading labels works again.
    assert [t.ready for t in store.controls.tenants() if t.name == "t1"] == [0]
    assert store.runs.list_runs(RunFilter(label=("team", "blue"), limit=10))
    assert store.repair.quarantine_unreadable() == []
    assert [lease.run.id for lease in store.runs.claim("w1", ["default"], 10, 30.0)] == [fine]
