"""The claim: which ready runs a worker leases next (`lifecycle.lease` writes the move).

Order of decisions, each read from a small summary rather than by scanning runs:
1. queues: what their concurrency limit and rate limit still allow (limited rows are locked, so
   limits hold across all workers);
2. tenants: ready tenants are served in turn by stride scheduling (lowest `pass` first, then
   by name; each claim moves it on by 1/weight), so one tenant's backlog never delays another's;
   only tenants with a run that can start now are in the turn;
3. within a tenant: priority first, then FIFO, one run per free session lane.

On PostgreSQL the function `greenroom_claim` (migrations/sql/0019_claim.sql) takes the same
decisions, so that a claim is one statement: a change here is made there too, in a new migration.
tests/test_claim_function.py checks that both decide and write alike.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from greenroom.storage.backend import Backend, Row, Tx
from greenroom.storage.lifecycle.lease import START_RECORD_MARGIN, Leasing, lease

#: How many ready tenants one claim looks at, at most.
TENANT_SCAN = 64


@dataclass
class _Tenant:
    name: str
    weight: float
    pass_: float
    room: float  # how many more runs its concurrency limit allows
    limited: bool
    candidates: list[Row] | None = None
    taken: int = 0


@dataclass
class _Plan:
    allowance: dict[str, float]
    lease_seconds: dict[str, float | None]
    rate_periods: dict[str, float] = field(default_factory=dict)
    #: Queues with a concurrency limit: their runs hold a slot.
    limited: set[str] = field(default_factory=set)


def _queue_rows(tx: Tx, backend: Backend, queues: Sequence[str]) -> list[Row]:
    return tx.execute(
        f"SELECT * FROM queues WHERE {backend.member('name', 'queues')}",
        {"queues": backend.list_param(queues)},
    )


def _ready_tenants(tx: Tx, backend: Backend, open_queues: Sequence[str]) -> list[Row]:
    """The first TENANT_SCAN tenants in turn that have a run this claim could start: a free
    run or a free session lane's head in a queue with room, and room under their own limit.
    Tenants whose ready runs all wait (on a full queue, a busy session, their limit) would
    otherwise fill the scan and hide every other tenant's runs (bench/README.md, finding 36)."""
    return tx.execute(
        "SELECT name, concurrency, weight, pass FROM tenants t"
        " WHERE ready > 0 AND (concurrency IS NULL OR active < concurrency) AND ("
        " EXISTS (SELECT 1 FROM runs r WHERE r.tenant = t.name AND r.state = 'queued'"
        f" AND r.session_key IS NULL AND {backend.member('r.queue', 'open')})"
        " OR EXISTS (SELECT 1 FROM lanes l WHERE l.tenant = t.name AND l.head_seq IS NOT NULL"
        f" AND l.active < l.max_active AND {backend.member('l.head_queue', 'open')}))"
        " ORDER BY pass, name LIMIT :n",
        {"open": backend.list_param(open_queues), "n": TENANT_SCAN},
    )


def _queue_plan(
    tx: Tx, backend: Backend, rows: list[Row], queues: Sequence[str], limit: int, now: float
) -> _Plan:
    limited = sorted(
        r["name"] for r in rows if r["concurrency"] is not None or r["rate_limit"] is not None
    )
    if limited:  # lock them, then read them again: the limit holds across workers
        locked = tx.execute(
            f"SELECT * FROM queues WHERE {backend.member('name', 'names')}"
            f" ORDER BY name {backend.for_update}",
            {"names": backend.list_param(limited)},
        )
        rows = [r for r in rows if r["name"] not in limited] + locked
    plan = _Plan(allowance={q: float(limit) for q in queues}, lease_seconds={})
    for r in rows:
        name = r["name"]
        plan.lease_seconds[name] = r["lease_seconds"]
        allow = float(limit)
        if r["concurrency"] is not None:
            allow = min(allow, r["concurrency"] - r["active"])
            plan.limited.add(name)
        if r["rate_limit"] is not None and r["rate_period"]:
            started = tx.execute(
                "SELECT COUNT(*) AS n FROM queue_starts WHERE queue = :q AND at > :since",
                {"q": name, "since": now - r["rate_period"]},
            )[0]["n"]
            allow = min(allow, r["rate_limit"] - started)
            plan.rate_periods[name] = r["rate_period"]
        plan.allowance[name] = max(allow, 0)
    return plan


def _tenants(tx: Tx, backend: Backend, rows: list[Row]) -> list[_Tenant]:
    capped = sorted(r["name"] for r in rows if r["concurrency"] is not None)
    active: dict[str, int] = {}
    if capped:  # lock tenants with a concurrency limit so it holds across workers
        for r in tx.execute(
            f"SELECT name, active FROM tenants WHERE {backend.member('name', 'names')}"
            f" ORDER BY name {backend.for_update}",
            {"names": backend.list_param(capped)},
        ):
            active[r["name"]] = int(r["active"])
    return [
        _Tenant(
            name=r["name"],
            weight=max(float(r["weight"]), 1e-6),
            pass_=float(r["pass"]),
            room=math.inf
            if r["concurrency"] is None
            else r["concurrency"] - active.get(r["name"], 0),
            limited=r["concurrency"] is not None,
        )
        for r in rows
    ]


def _candidates(tx: Tx, backend: Backend, tenant: str, queues: list[str], n: int) -> list[Row]:
    """A tenant's best ready runs: free runs and the heads of its free session lanes.

    One query per queue, reading each kind from its index in order (a list of queues would make
    PostgreSQL read and sort every ready row)."""
    found: list[Row] = []
    for queue in queues:
        found += tx.execute(
            "WITH free AS (SELECT seq, priority, queue, NULL AS session_key FROM runs"
            " WHERE tenant = :tenant AND queue = :queue AND state = 'queued'"
            f" AND session_key IS NULL ORDER BY priority DESC, seq LIMIT :n {backend.skip_locked}),"
            " heads AS (SELECT head_seq AS seq, head_priority AS priority, head_queue AS queue,"
            " session_key FROM lanes WHERE tenant = :tenant AND head_queue = :queue"
            " AND head_seq IS NOT NULL AND active < max_active"
            f" ORDER BY head_priority DESC, head_seq LIMIT :n {backend.skip_locked})"
            " SELECT * FROM free UNION ALL SELECT * FROM heads",
            {"tenant": tenant, "queue": queue, "n": n},
        )
    # Best last, so choosing pops from the end.
    return sorted(found, key=lambda r: (-r["priority"], r["seq"]), reverse=True)


def _choose(tx: Tx, backend: Backend, plan: _Plan, tenants: list[_Tenant], limit: int) -> list[Row]:
    """Serve ready tenants in stride order until the slots or the allowances run out."""
    chosen: list[Row] = []
    heap = [(t.pass_, i) for i, t in enumerate(tenants)]
    heapq.heapify(heap)
    while heap and len(chosen) < limit:
        _, i = heapq.heappop(heap)
        t = tenants[i]
        if t.taken >= t.room:
            continue
        open_queues = [q for q, a in plan.allowance.items() if a > 0]
        if not open_queues:
            break
        if t.candidates is None:
            t.candidates = _candidates(tx, backend, t.name, open_queues, limit - len(chosen))
        while t.candidates and plan.allowance.get(t.candidates[-1]["queue"], 0) <= 0:
            t.candidates.pop()
        if not t.candidates:
            continue
        row = t.candidates.pop()
        chosen.append({**row, "tenant": t.name})
        plan.allowance[row["queue"]] -= 1
        t.taken += 1
        t.pass_ += 1.0 / t.weight
        heapq.heappush(heap, (t.pass_, i))
    return chosen


def claim(
    backend: Backend,
    *,
    worker_id: str,
    queues: Sequence[str],
    limit: int,
    lease_seconds: float,
    now: float,
) -> list[Row]:
    """Lease up to `limit` runs to `worker_id`, in a transaction of its own; the leased rows,
    best first."""
    queues = sorted(set(queues))
    if backend.claims_in_one_statement:
        with backend.single_statement() as tx:
            return tx.execute(
                "SELECT * FROM greenroom_claim(:worker_id, :queues, :limit, :lease_seconds,"
                " :now, :tenant_scan, :margin)",
                {
                    "worker_id": worker_id,
                    "queues": queues,
                    "limit": limit,
                    "lease_seconds": lease_seconds,
                    "now": now,
                    "tenant_scan": TENANT_SCAN,
                    "margin": START_RECORD_MARGIN,
                },
            )
    with backend.transaction() as tx:
        return _claim(tx, backend, worker_id, queues, limit, lease_seconds, now)


def _claim(
    tx: Tx,
    backend: Backend,
    worker_id: str,
    queues: Sequence[str],
    limit: int,
    lease_seconds: float,
    now: float,
) -> list[Row]:
    plan = _queue_plan(tx, backend, _queue_rows(tx, backend, queues), queues, limit, now)
    open_queues = sorted(q for q, a in plan.allowance.items() if a > 0)
    if not open_queues:
        return []
    tenants = _tenants(tx, backend, _ready_tenants(tx, backend, open_queues))
    chosen = _choose(tx, backend, plan, tenants, limit)
    if not chosen:
        return []
    leasing = Leasing(
        worker_id=worker_id,
        lease_seconds=plan.lease_seconds,
        default_seconds=lease_seconds,
        limited_queues=plan.limited,
        limited_tenants=[t.name for t in tenants if t.limited],
        rate_periods=plan.rate_periods,
        advance={t.name: t.taken / t.weight for t in tenants if t.taken},
    )
    return lease(tx, backend, chosen, leasing, now)
