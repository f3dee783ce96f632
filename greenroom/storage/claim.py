"""The claim: which ready runs a worker leases next.

Order of decisions, each read from a small summary rather than by scanning runs:
1. queues: what their concurrency limit and rate limit still allow (limited rows are locked, so
   limits hold across all workers);
2. tenants: ready tenants are served in turn by stride scheduling (lowest `pass` first, then
   by name; each claim moves it on by 1/weight), so one tenant's backlog never delays another's;
3. within a tenant: priority first, then FIFO, one run per free session lane.

On PostgreSQL the function `greenroom_claim` (migrations/sql/0006_claim.sql) takes the same
decisions, so that a claim is one statement: a change here is made there too, in a new migration.
tests/test_claim_function.py checks that both decide and write alike.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from greenroom.model import RunState
from greenroom.storage.backend import Backend, Row, Tx
from greenroom.storage.base import event_params, insert_events
from greenroom.storage.lifecycle.summaries import (
    LANE_HEAD,
    hold_paused,
    leave_ready,
    refresh_lanes,
)

#: How many ready tenants one claim looks at, at most.
TENANT_SCAN = 64
#: Seconds that rate-limit start records are kept beyond their window.
START_RECORD_MARGIN = 60.0


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


def _summaries(tx: Tx, b: Backend, queues: Sequence[str]) -> tuple[list[Row], list[Row]]:
    """The served queues and the ready tenants first in turn, read together (one round trip)."""
    rows = tx.execute(
        "SELECT 'queue' AS kind, name, concurrency, active, rate_limit, rate_period,"
        " lease_seconds, CAST(NULL AS DOUBLE PRECISION) AS weight,"
        " CAST(NULL AS DOUBLE PRECISION) AS pass"
        f" FROM queues WHERE {b.member('name', 'queues')}"
        " UNION ALL SELECT * FROM (SELECT 'tenant' AS kind, name, concurrency, active,"
        " CAST(NULL AS INTEGER), CAST(NULL AS DOUBLE PRECISION), CAST(NULL AS DOUBLE PRECISION),"
        " weight, pass FROM tenants WHERE ready > 0 ORDER BY pass, name LIMIT :n) AS ready_tenants",
        {"queues": b.list_param(queues), "n": TENANT_SCAN},
    )
    return [r for r in rows if r["kind"] == "queue"], [r for r in rows if r["kind"] == "tenant"]


def _queue_plan(
    tx: Tx, b: Backend, rows: list[Row], queues: Sequence[str], limit: int, now: float
) -> _Plan:
    limited = sorted(
        r["name"] for r in rows if r["concurrency"] is not None or r["rate_limit"] is not None
    )
    if limited:  # lock them, then read them again: the limit holds across workers
        locked = tx.execute(
            f"SELECT * FROM queues WHERE {b.member('name', 'names')} ORDER BY name {b.for_update}",
            {"names": b.list_param(limited)},
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


def _tenants(tx: Tx, b: Backend, rows: list[Row]) -> list[_Tenant]:
    capped = sorted(r["name"] for r in rows if r["concurrency"] is not None)
    active: dict[str, int] = {}
    if capped:  # lock tenants with a concurrency limit so it holds across workers
        for r in tx.execute(
            f"SELECT name, active FROM tenants WHERE {b.member('name', 'names')}"
            f" ORDER BY name {b.for_update}",
            {"names": b.list_param(capped)},
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


def _candidates(tx: Tx, b: Backend, tenant: str, queues: list[str], n: int) -> list[Row]:
    """A tenant's best ready runs: free runs and the heads of its free session lanes.

    One query per queue, reading each kind from its index in order (a list of queues would make
    PostgreSQL read and sort every ready row)."""
    found: list[Row] = []
    for queue in queues:
        found += tx.execute(
            "WITH free AS (SELECT seq, priority, queue, NULL AS session_key FROM runs"
            " WHERE tenant = :tenant AND queue = :queue AND state = 'queued'"
            f" AND session_key IS NULL ORDER BY priority DESC, seq LIMIT :n {b.skip_locked}),"
            " heads AS (SELECT head_seq AS seq, head_priority AS priority, head_queue AS queue,"
            " session_key FROM lanes WHERE tenant = :tenant AND head_queue = :queue"
            " AND head_seq IS NOT NULL AND active < max_active"
            f" ORDER BY head_priority DESC, head_seq LIMIT :n {b.skip_locked})"
            " SELECT * FROM free UNION ALL SELECT * FROM heads",
            {"tenant": tenant, "queue": queue, "n": n},
        )
    # Best last, so choosing pops from the end.
    return sorted(found, key=lambda r: (-r["priority"], r["seq"]), reverse=True)


def _choose(tx: Tx, b: Backend, plan: _Plan, tenants: list[_Tenant], limit: int) -> list[Row]:
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
            t.candidates = _candidates(tx, b, t.name, open_queues, limit - len(chosen))
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
    b: Backend,
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
    if b.claims_in_one_statement:
        with b.single_statement() as tx:
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
    with b.transaction() as tx:
        return _claim(tx, b, worker_id, queues, limit, lease_seconds, now)


def _claim(
    tx: Tx,
    b: Backend,
    worker_id: str,
    queues: Sequence[str],
    limit: int,
    lease_seconds: float,
    now: float,
) -> list[Row]:
    queue_rows, tenant_rows = _summaries(tx, b, queues)
    plan = _queue_plan(tx, b, queue_rows, queues, limit, now)
    if not any(a > 0 for a in plan.allowance.values()):
        return []
    tenants = _tenants(tx, b, tenant_rows)
    chosen = _choose(tx, b, plan, tenants, limit)
    if not chosen:
        return []
    limited_tenants = [t.name for t in tenants if t.limited]
    rows = _lease(
        tx,
        b,
        chosen,
        plan,
        limited_tenants,
        worker_id=worker_id,
        lease_seconds=lease_seconds,
        now=now,
    )
    rows, held = _hold_paused(tx, b, rows, now)
    _account(tx, b, chosen, rows, plan, tenants, now=now)
    leave_ready(tx, held)
    insert_events(
        tx,
        [event_params(r["id"], RunState.RUNNING, "leased", now, worker_id) for r in rows],
    )
    return sorted(rows, key=lambda r: (-r["priority"], r["seq"]))


def _hold_paused(tx: Tx, b: Backend, rows: list[Row], now: float) -> tuple[list[Row], list[Row]]:
    """A run enqueued while its pause was being created can still be ready: never start it."""
    if not any(r["pauses"] for r in rows):
        return rows, []
    held = hold_paused(tx, b, rows)
    insert_events(tx, [event_params(r["id"], RunState.PAUSED, "paused", now) for r in held])
    seqs = {r["seq"] for r in held}
    return [r for r in rows if r["seq"] not in seqs], held


def _lease(
    tx: Tx,
    b: Backend,
    chosen: list[Row],
    plan: _Plan,
    limited_tenants: list[str],
    *,
    worker_id: str,
    lease_seconds: float,
    now: float,
) -> list[Row]:
    by_lease: dict[float, list[int]] = {}
    for row in chosen:
        seconds = plan.lease_seconds.get(row["queue"]) or lease_seconds
        by_lease.setdefault(seconds, []).append(row["seq"])
    rows: list[Row] = []
    for seconds, seqs in by_lease.items():
        rows += tx.execute(
            "UPDATE runs SET state = 'running', lease_owner = :worker,"
            " lease_token = lease_token + 1, lease_expires_at = :expires,"
            " lease_seconds = :seconds, started_at = COALESCE(started_at, :now), updated_at = :now,"
            f" holds_queue_slot = {b.member('queue', 'limited_queues')},"
            f" holds_tenant_slot = {b.member('tenant', 'limited_tenants')}"
            f" WHERE {b.member('seq', 'seqs')} AND state = 'queued'"
            # Whether any pause exists, in the same round trip (there rarely is one).
            " RETURNING *, (SELECT COUNT(*) FROM pauses) AS pauses",
            {
                "worker": worker_id,
                "expires": now + seconds,
                "seconds": seconds,
                "now": now,
                "seqs": b.list_param(seqs),
                "limited_queues": b.list_param(sorted(plan.limited)),
                "limited_tenants": b.list_param(limited_tenants),
            },
        )
    return rows


def _account(
    tx: Tx,
    b: Backend,
    chosen: list[Row],
    rows: list[Row],
    plan: _Plan,
    tenants: list[_Tenant],
    *,
    now: float,
) -> None:
    """Move lanes, queues and tenants on by what was leased (lock order: lanes, queues, tenants)."""
    leased = sorted({(r["tenant"], r["session_key"]) for r in rows if r["session_key"] is not None})
    for tenant, session_key in leased:
        tx.execute(
            f"UPDATE lanes SET active = active + 1, (head_seq, head_priority, head_queue) ="
            f" {LANE_HEAD} WHERE tenant = :tenant AND session_key = :session_key",
            {"tenant": tenant, "session_key": session_key},
        )
    # A head that was no longer ready (it should not happen): repair it.
    stale = {(r["tenant"], r["session_key"]) for r in chosen if r["session_key"] is not None}
    refresh_lanes(tx, sorted(stale - set(leased)))
    per_queue = Counter(r["queue"] for r in rows)
    for queue in sorted(per_queue):
        # Counted where the limit stands now: a limit set after this claim read the queue
        # (unlocked, as it was unlimited) counts these runs too.
        counted = tx.execute(
            "UPDATE queues SET active = active + :n WHERE name = :queue"
            " AND concurrency IS NOT NULL RETURNING name",
            {"n": per_queue[queue], "queue": queue},
        )
        if counted and queue not in plan.limited:
            _hold_slots(tx, b, "queue", [r for r in rows if r["queue"] == queue])
        if queue in plan.rate_periods:
            tx.execute_many(
                "INSERT INTO queue_starts (queue, at) VALUES (:queue, :now)",
                [{"queue": queue, "now": now}] * per_queue[queue],
            )
    for queue, period in plan.rate_periods.items():
        # Keep a margin: a claim that read its clock earlier, then waited for the queue's lock,
        # still counts the starts of its own window.
        tx.execute(
            "DELETE FROM queue_starts WHERE queue = :queue AND at <= :before",
            {"queue": queue, "before": now - period - START_RECORD_MARGIN},
        )
    per_tenant = Counter(r["tenant"] for r in rows)
    for t in sorted((t for t in tenants if t.taken), key=lambda t: t.name):
        # Relative moves: a claim that waited for a queue lock may have read an older pass.
        (row,) = tx.execute(
            "UPDATE tenants SET pass = pass + :advance, ready = ready - :n,"
            " active = active + CASE WHEN concurrency IS NULL THEN 0 ELSE :n END"
            " WHERE name = :tenant RETURNING concurrency",
            {"advance": t.taken / t.weight, "n": per_tenant[t.name], "tenant": t.name},
        )
        if row["concurrency"] is not None and not t.limited:  # a limit set meanwhile
            _hold_slots(tx, b, "tenant", [r for r in rows if r["tenant"] == t.name])


def _hold_slots(tx: Tx, b: Backend, kind: str, rows: list[Row]) -> None:
    if rows:
        tx.execute(
            f"UPDATE runs SET holds_{kind}_slot = true WHERE {b.member('seq', 'seqs')}",
            {"seqs": b.list_param([r["seq"] for r in rows])},
        )
