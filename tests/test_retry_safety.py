"""A retried failure cannot be retried again by accident: it is superseded by its retry, left
out of lists and counts, and two operators retrying it at once create one retry, on both
backends, through the store, the HTTP API and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import pytest

from greenroom import RunState
from greenroom.client import Client
from greenroom.errors import Conflict, InvalidInput, NotFound
from greenroom.failures import describe_error
from greenroom.model import NewRun, Role, Run
from greenroom.storage import RunFilter, RunStore, open_store
from tests.api_helpers import ApiSetup

T = TypeVar("T")
ACTOR = "oncall@example.com"


def failed(
    store: RunStore, tenant: str = "t1", message: str = "row 3 not found", queue: str = "default"
) -> Run:
    """A run that failed in its first step."""
    run = store.runs.enqueue(NewRun(workflow="sync", tenant=tenant, queue=queue))[0]
    (lease,) = store.runs.claim("w1", [queue], 1, 30.0)
    assert lease.run.id == run.id
    error = describe_error(LookupError(message), step="read_users", attempt=1)
    store.runs.finish(lease, RunState.FAILED, reason="failed", error=error)
    return store.runs.get_run(run.id)


def end(store: RunStore, run: Run, state: RunState) -> None:
    """Let the run be executed to `state` by a worker."""
    (lease,) = store.runs.claim("w1", [run.queue], 1, 30.0)
    assert lease.run.id == run.id
    error = None
    if state is RunState.FAILED:
        error = describe_error(LookupError("row 3 not found"), step="read_users", attempt=1)
    store.runs.finish(lease, state, reason="done", output="1", error=error)


def test_a_retried_run_is_superseded_and_a_second_retry_is_refused(store: RunStore) -> None:
    old = failed(store)
    first = store.admin.retry_run(old.id, actor=ACTOR, reason="layout fixed")
    assert store.runs.get_run(old.id).superseded_by == first.id
    assert first.superseded_by is None
    for state in (RunState.QUEUED, RunState.SUCCEEDED):  # pending, then done: refused alike
        with pytest.raises(Conflict, match=f"already retried as {first.id}"):
            store.admin.retry_run(old.id, actor=ACTOR, reason="again")
        if state is RunState.QUEUED:
            end(store, first, RunState.SUCCEEDED)
    assert [r.retry_of for r in store.runs.list_runs(RunFilter(limit=10))] == [old.id]

    forced = store.admin.retry_run(old.id, actor=ACTOR, reason="re-check the export", force=True)
    assert forced.retry_of == old.id
    assert store.runs.get_run(old.id).superseded_by == forced.id
    audit = store.admin.audit_log()[0]
    assert (audit.action, audit.reason) == ("retry", "re-check the export")
    assert audit.detail["superseded_retry"] == first.id


def test_a_chain_of_retries_is_stood_for_by_its_newest_run(store: RunStore) -> None:
    old = failed(store)
    second = store.admin.retry_run(old.id, actor=ACTOR, reason="try again")
    end(store, second, RunState.FAILED)
    third = store.admin.retry_run(second.id, actor=ACTOR, reason="fixed now")
    assert store.runs.get_run(old.id).superseded_by == third.id
    assert store.runs.get_run(second.id).superseded_by == third.id
    with pytest.raises(Conflict, match=third.id):
        store.admin.retry_run(old.id, actor=ACTOR, reason="by accident")
    failures = store.runs.list_runs(RunFilter(states=[RunState.FAILED]))
    assert failures == []
    shown = store.runs.list_runs(RunFilter(states=[RunState.FAILED], include_superseded=True))
    assert {r.id for r in shown} == {old.id, second.id}


def test_a_forced_retry_stands_for_the_whole_chain(store: RunStore) -> None:
    """A forced second retry of a run whose retry failed: the failed retry's work is the forced
    run's now, so one failure is open, not two, and a bulk retry re-runs the work once."""
    old = failed(store)
    second = store.admin.retry_run(old.id, actor=ACTOR, reason="try again")
    end(store, second, RunState.FAILED)
    third = store.admin.retry_run(second.id, actor=ACTOR, reason="fixed now")
    end(store, third, RunState.FAILED)
    forced = store.admin.retry_run(old.id, actor=ACTOR, reason="from the first", force=True)
    for run in (old, second, third):
        assert store.runs.get_run(run.id).superseded_by == forced.id, run
    end(store, forced, RunState.FAILED)
    [group] = store.admin.error_groups()
    assert (group.open, group.occurrences) == (1, 4)
    assert [r.id for r in store.runs.list_runs(RunFilter(states=[RunState.FAILED]))] == [forced.id]
    by_group = RunFilter(error_group=group.fingerprint)
    plan = store.admin.retry_where(by_group, actor=ACTOR, reason="again")
    assert (plan.matched, plan.skipped_superseded) == (1, 3)


def test_a_forced_retry_leaves_a_pending_or_succeeded_retry_standing(store: RunStore) -> None:
    """Only failures are superseded: a retry still waiting, or one that succeeded, is a run of
    its own that lists and counts keep showing."""
    for state in (RunState.QUEUED, RunState.SUCCEEDED):
        old = failed(store, queue=state.value)
        first = store.admin.retry_run(old.id, actor=ACTOR, reason="try again")
        if state is RunState.SUCCEEDED:
            end(store, first, state)
        forced = store.admin.retry_run(old.id, actor=ACTOR, reason="once more", force=True)
        assert store.runs.get_run(old.id).superseded_by == forced.id
        assert store.runs.get_run(first.id).superseded_by is None
        assert store.runs.get_run(first.id).state is state
        listed = store.runs.list_runs(RunFilter(queue=state.value))
        assert {r.id for r in listed} == {first.id, forced.id}


def test_views_show_that_a_fix_worked(store: RunStore) -> None:
    runs = [failed(store) for _ in range(3)]
    other = failed(store, message="password rejected")
    [group] = {r.error_group for r in runs}
    by_group = {g.fingerprint: g for g in store.admin.error_groups()}
    assert (by_group[group].open, by_group[group].resolved) == (3, 0)

    plan = store.admin.retry_where(RunFilter(error_group=group), actor=ACTOR, reason="layout fixed")
    assert (plan.matched, plan.skipped_superseded) == (3, 0)
    done = store.admin.retry_where(
        RunFilter(error_group=group), actor=ACTOR, reason="layout fixed", dry_run=False
    )
    assert len(done.new_runs) == 3
    for run_id in done.new_runs[:2]:
        end(store, store.runs.get_run(run_id), RunState.SUCCEEDED)

    by_group = {g.fingerprint: g for g in store.admin.error_groups()}
    assert (by_group[group].open, by_group[group].resolved) == (0, 2)
    assert by_group[group].occurrences == 3
    assert (by_group[other.error_group].open, by_group[other.error_group].resolved) == (1, 0)
    assert [r.id for r in store.runs.list_runs(RunFilter(states=[RunState.FAILED]))] == [other.id]
    [queue] = store.controls.queues()
    assert queue.counts.get("failed") == 1
    again = store.admin.retry_where(RunFilter(error_group=group), actor=ACTOR, reason="again")
    assert (again.matched, again.skipped_superseded) == (0, 3)
    assert (
        store.admin.retry_where(
            RunFilter(error_group=group), actor=ACTOR, reason="again", dry_run=False
        ).new_runs
        == []
    )


def _at_once(count: int, call: Callable[[int], T]) -> list[T | BaseException]:
    """`call(i)` from `count` threads released together."""
    start = threading.Barrier(count)

    def one(i: int) -> T | BaseException:
        start.wait()
        try:
            return call(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_concurrent_retries_of_one_run_create_one_retry(store: RunStore, db_url: str) -> None:
    """Each operator on a connection of its own, as two processes or API nodes would be."""
    stores = [open_store(db_url) for _ in range(4)]
    try:
        for attempt in range(5):
            old = failed(store, queue=f"q{attempt}")

            def retry(i: int, run_id: str = old.id) -> Run:
                return stores[i].admin.retry_run(run_id, actor=ACTOR, reason="at once")

            outcomes = _at_once(4, retry)
            made = [o for o in outcomes if isinstance(o, Run)]
            refused = [o for o in outcomes if isinstance(o, Conflict)]
            assert len(made) == 1 and len(refused) == 3, outcomes
            retries = store.runs.list_runs(RunFilter(limit=100))
            assert [r.id for r in retries if r.retry_of == old.id] == [made[0].id]

        many = [failed(store, queue="bulk") for _ in range(5)]
        bulk = _at_once(
            2,
            lambda i: stores[i].admin.retry_where(
                RunFilter(states=[RunState.FAILED]), actor=ACTOR, reason="bulk", dry_run=False
            ),
        )
        new_runs = [
            run_id
            for done in bulk
            if not isinstance(done, BaseException)
            for run_id in done.new_runs
        ]
        assert len(new_runs) == 5, bulk
        assert sorted(store.runs.get_run(r).retry_of or "" for r in new_runs) == sorted(
            r.id for r in many
        )
    finally:
        for s in stores:
            s.backend.close()


def test_two_processes_retrying_one_run_create_one_retry(store: RunStore, db_url: str) -> None:
    old = failed(store)
    argv = [sys.executable, "-m", "greenroom.cli", "--db", db_url, "runs", "retry", old.id]
    procs = [
        subprocess.Popen(
            [*argv, "--reason", f"on-call {i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        for i in range(2)
    ]
    results = [(p.wait(60), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    [(_, out, _)] = [r for r in results if r[0] == 0]
    [(_, _, err)] = [r for r in results if r[0] == 2]
    new_id = store.runs.get_run(old.id).superseded_by
    assert new_id is not None and new_id in out
    assert err.strip() == (
        f"error: run {old.id} was already retried as {new_id}: retry that run, or force a"
        " second retry of this one (force, with a reason)"
    )
    assert [r.retry_of for r in store.runs.list_runs(RunFilter(limit=10))] == [old.id]


def test_the_api_refuses_a_second_retry_and_makes_one_of_two_at_once(api: ApiSetup) -> None:
    store = api.app.store
    old = failed(store, tenant="acme")
    url = f"{api.url}/v1/runs/{old.id}/retry"
    headers = {"Authorization": f"Bearer {api.keys['acme'][Role.OPERATOR]}"}

    def post(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(url, json={"reason": "on-call", **body}, headers=headers, timeout=30)

    answers = _at_once(2, lambda _: post({}))
    codes = sorted(a.status_code for a in answers if isinstance(a, httpx.Response))
    assert codes == [201, 409], answers
    [made] = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 201]
    [refused] = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 409]
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert made.json()["id"] in refused.json()["detail"]

    shown = httpx.get(f"{api.url}/v1/runs/{old.id}", headers=headers).json()
    assert shown["superseded_by"] == made.json()["id"]
    listed = httpx.get(f"{api.url}/v1/runs", params={"state": "failed"}, headers=headers).json()
    assert listed["items"] == []
    everything = httpx.get(
        f"{api.url}/v1/runs",
        params={"state": "failed", "include_superseded": "true"},
        headers=headers,
    ).json()
    assert [r["id"] for r in everything["items"]] == [old.id]

    forced = post({"force": True})
    assert forced.status_code == 201, forced.text
    bulk = httpx.post(
        f"{api.url}/v1/runs/retry", json={"reason": "bulk", "dry_run": True}, headers=headers
    ).json()
    assert (bulk["matched"], bulk["skipped_superseded"]) == (0, 1)
    with (
        Client(api.url, api.keys["acme"][Role.OPERATOR]) as client,
        pytest.raises(Conflict, match=forced.json()["id"]),
    ):
        client.retry_run(old.id, reason="once more")


def test_a_unique_prefix_of_eight_characters_stands_for_a_run_id(store: RunStore) -> None:
    others = [store.runs.enqueue(NewRun(workflow="sync", queue="other"))[0] for _ in range(2)]
    with store.backend.transaction() as tx:  # two ids that share their first 9 characters
        for run, new_id in zip(others, ("abcdef01-1111", "abcdef01-2222"), strict=True):
            tx.execute("DELETE FROM run_events WHERE run_id = :old", {"old": run.id})
            tx.execute(
                "UPDATE runs SET id = :new WHERE id = :old",
                {"new": new_id + run.id[13:], "old": run.id},
            )
    third = failed(store)
    assert store.runs.get_run(third.id[:8]).id == third.id
    assert store.runs.get_run(third.id[:20]).id == third.id
    with pytest.raises(InvalidInput, match="abcdef01- is ambiguous: it may be abcdef01-1111"):
        store.runs.get_run("abcdef01-")
    assert store.runs.get_run("abcdef01-2").id.startswith("abcdef01-2222")
    with pytest.raises(NotFound):
        store.runs.get_run(third.id[:7])  # too short to stand for an id
    with pytest.raises(NotFound):
        store.runs.get_run(third.id[:8], tenant="another tenant")
    new = store.admin.retry_run(third.id[:8], actor=ACTOR, reason="by prefix")
    assert new.retry_of == third.id
