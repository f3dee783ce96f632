"""PostgreSQL claims in one function (`greenroom_claim`, migrations/sql/0019_claim.sql); SQLite
claims in Python (`claim.py`). Both must take the same decisions and make the same writes: on
random workloads, each claim runs both ways from the same state (the Python one rolled back) and
every table a claim touches is compared."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from greenroom import ManualClock, RunState
from greenroom.model import Lease, NewRun
from greenroom.storage import RunStore, open_store
from greenroom.storage.backend import Row, Tx
from greenroom.storage.claim import START_RECORD_MARGIN, TENANT_SCAN, _claim
from greenroom.storage.lifecycle.check import check_summaries

ACTOR = "test"
LEASE = 5.0

# What a claim writes, read back in a fixed order.
_STATE = {
    "runs": "SELECT seq, state, lease_owner, lease_token, lease_expires_at, lease_seconds,"
    " started_at, holds_queue_slot, holds_tenant_slot FROM runs ORDER BY seq",
    "lanes": "SELECT * FROM lanes ORDER BY tenant, session_key",
    "tenants": "SELECT name, ready, active, pass FROM tenants ORDER BY name",
    "queues": "SELECT name, active FROM queues ORDER BY name",
    "starts": "SELECT queue, at FROM queue_starts ORDER BY queue, at",
    "events": "SELECT run_id, at, state, reason, worker_id FROM run_events"
    " ORDER BY run_id, at, state, reason",
}


class _Undo(Exception):
    """Rolls the Python claim back."""


def _state(tx: Tx) -> dict[str, list[Row]]:
    return {name: tx.execute(sql) for name, sql in _STATE.items()}


def _both_ways(store: RunStore, worker: str, queues: list[str], limit: int) -> list[int]:
    """Claim in Python, then with the function, from the same state; only the second stays."""
    backend = store.backend
    now = store.clock.now()
    args = {"worker_id": worker, "queues": queues, "limit": limit, "lease_seconds": LEASE}
    try:
        with backend.transaction() as tx:
            python = [r["seq"] for r in _claim(tx, backend, **args, now=now)]
            python_state = _state(tx)
            assert check_summaries(tx) == []
            raise _Undo
    except _Undo:
        pass
    with backend.transaction() as tx:
        function = [
            r["seq"]
            for r in tx.execute(
                "SELECT * FROM greenroom_claim(:worker_id, :queues, :limit, :lease_seconds,"
                " :now, :scan, :margin)",
                {**args, "now": now, "scan": TENANT_SCAN, "margin": START_RECORD_MARGIN},
            )
        ]
        function_state = _state(tx)
        assert check_summaries(tx) == []
    assert function == python
    for table in _STATE:
        assert function_state[table] == python_state[table], table
    return function


def _leases(store: RunStore) -> list[Lease]:
    with store.backend.transaction(write=False) as tx:
        rows = tx.execute("SELECT id FROM runs WHERE state = 'running' ORDER BY id")
    leases = []
    for row in rows:
        run = store.runs.get_run(row["id"])
        assert run.lease_owner and run.lease_expires_at
        leases.append(
            Lease(
                run=run,
                worker_id=run.lease_owner,
                token=run.lease_token,
                expires_at=run.lease_expires_at,
                seconds=LEASE,
            )
        )
    return leases


def _workload(store: RunStore, rng: random.Random) -> None:
    for tenant in ("t1", "t2", "t3"):
        store.controls.set_tenant(
            tenant,
            actor=ACTOR,
            reason="workload",
            weight=rng.choice([1.0, 2.0, 3.0]),
            concurrency=rng.choice([None, None, 2, 4]),
        )
    for queue in ("q1", "q2"):
        changes: dict[str, Any] = {"concurrency": rng.choice([None, 3, 6])}
        if rng.random() < 0.4:
            changes |= {"rate_limit": rng.choice([2, 5]), "rate_period": 10.0}
        if rng.random() < 0.3:
            changes["lease_seconds"] = 7.0
        store.controls.set_queue(queue, actor=ACTOR, reason="workload", **changes)
    for _ in range(rng.randint(20, 60)):
        store.runs.enqueue(
            NewRun(
                workflow="wf",
                tenant=rng.choice(["t1", "t1", "t2", "t3"]),
                queue=rng.choice(["q1", "q2"]),
                session_key=rng.choice([None, None, "s1", "s2", "s3"]),
                priority=rng.choice([0, 0, 1, 2]),
                labels={"k": rng.choice(["a", "b"])},
            )
        )


@pytest.mark.parametrize("seed", range(40))
def test_the_function_claims_as_python_does(pg_url: str, seed: int) -> None:
    rng = random.Random(seed)
    clock = ManualClock()
    store = open_store(pg_url, clock=clock)
    try:
        _workload(store, rng)
        if seed % 3 == 0:
            # A pause that ready runs did not see (one being created as they were enqueued):
            # the claim must hold the runs it matches instead of starting them.
            with store.backend.transaction() as tx:
                tx.execute(
                    "INSERT INTO pauses (tenant, scope, label, value, drain, paused_by, reason,"
                    " created_at) VALUES ('*', 'label', 'k', 'b', true, 'test', 'race', 0)"
                )
        claimed = 0
        for _ in range(10):
            queues = rng.choice([["q1"], ["q2"], ["q1", "q2"], ["q2", "q1"]])
            claimed += len(_both_ways(store, rng.choice(["w1", "w2"]), queues, rng.randint(1, 6)))
            for lease in _leases(store):
                if rng.random() < 0.5:
                    store.runs.finish(
                        lease, RunState.SUCCEEDED, reason="done", output=json.dumps(1)
                    )
            clock.advance(rng.choice([0.5, 3.0]))
        assert claimed > 0, "the workload must claim something"
    finally:
        store.backend.close()
