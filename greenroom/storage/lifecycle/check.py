"""Summaries recomputed from the runs they summarise: drift found, and mended.

Every move keeps the summaries current in its own transaction, so they never drift unless a bug
(or a hand-edited row) moves a run without its bookkeeping. A drifted summary misleads the claim:
a lane that counts a run too many never starts its next run; a tenant that counts ready runs it
has none of keeps its turn. `greenroom doctor` reports drift; `--repair` recomputes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from greenroom.storage.backend import Backend, Tx
from greenroom.storage.lifecycle.summaries import LANE_HEAD, ensure_records


@dataclass(frozen=True)
class Drift:
    """One summary value that differs from what the runs say it should be."""

    #: lane, tenant, queue or run.
    kind: str
    #: What is summarised: "tenant/session key" for a lane, a tenant, queue or run id.
    key: str
    #: The summary field, or `missing` for a record that does not exist.
    field: str
    stored: str | None
    actual: str | None

    def describe(self) -> str:
        return f"{self.kind} {self.key}: {self.field} is {self.stored}, the runs say {self.actual}"


def _text(sql: str) -> str:
    return f"CAST({sql} AS TEXT)"


_RUNNING_IN_LANE = (
    "SELECT COUNT(*) FROM runs r WHERE r.tenant = l.tenant AND r.session_key = l.session_key"
    " AND r.state = 'running'"
)
_HEAD = LANE_HEAD.replace("lanes.", "l.")


def _slot_count(kind: str) -> str:
    return (
        f"(SELECT COUNT(*) FROM runs r WHERE r.{kind} = s.name AND r.state = 'running'"
        f" AND r.holds_{kind}_slot)"
    )


# One statement, so that it reads one snapshot on every backend (the summaries move with the
# runs in the same transactions).
_CHECK = " UNION ALL ".join(
    [
        # Lanes: how many of their runs run, and their best ready run.
        "SELECT 'lane' AS kind, tenant || '/' || session_key AS key, 'active' AS field,"
        f" {_text('active')} AS stored, {_text('n')} AS actual FROM (SELECT l.tenant,"
        f" l.session_key, l.active, ({_RUNNING_IN_LANE}) AS n FROM lanes l) x WHERE active <> n",
        "SELECT 'lane', tenant || '/' || session_key, 'head', "
        f" {_text('head_seq')}, {_text('best')} FROM (SELECT l.tenant, l.session_key,"
        f" l.head_seq, (SELECT seq FROM {_HEAD} h) AS best FROM lanes l) x"
        " WHERE COALESCE(head_seq, -1) <> COALESCE(best, -1)",
        "SELECT 'lane', l.tenant || '/' || l.session_key, 'head priority and queue',"
        " CAST(l.head_priority AS TEXT) || ' ' || l.head_queue,"
        " CAST(r.priority AS TEXT) || ' ' || r.queue FROM lanes l JOIN runs r"
        " ON r.seq = l.head_seq WHERE l.head_priority <> r.priority OR l.head_queue <> r.queue",
        "SELECT 'lane', r.tenant || '/' || r.session_key, 'missing', NULL,"
        f" {_text('COUNT(*)')} || ' ready or running runs' FROM runs r"
        " WHERE r.session_key IS NOT NULL AND r.state IN ('queued', 'running') AND NOT EXISTS"
        " (SELECT 1 FROM lanes l WHERE l.tenant = r.tenant AND l.session_key = r.session_key)"
        " GROUP BY r.tenant, r.session_key",
        # Tenants: ready runs (fairness serves tenants that have some) and slots held.
        f"SELECT 'tenant', name, 'ready', {_text('ready')}, {_text('n')} FROM (SELECT s.name,"
        " s.ready, (SELECT COUNT(*) FROM runs r WHERE r.tenant = s.name AND r.state = 'queued')"
        " AS n FROM tenants s) x WHERE ready <> n",
        f"SELECT 'tenant', name, 'active', {_text('active')}, {_text('n')} FROM (SELECT s.name,"
        f" s.active, {_slot_count('tenant')} AS n FROM tenants s) x WHERE active <> n",
        f"SELECT 'queue', name, 'active', {_text('active')}, {_text('n')} FROM (SELECT s.name,"
        f" s.active, {_slot_count('queue')} AS n FROM queues s) x WHERE active <> n",
        # Records runs need: the claim reads tenants and queues, never runs, to find work.
        "SELECT DISTINCT 'tenant', r.tenant, 'missing', NULL, 'record' FROM runs r"
        " WHERE NOT EXISTS (SELECT 1 FROM tenants s WHERE s.name = r.tenant)",
        "SELECT DISTINCT 'queue', r.queue, 'missing', NULL, 'record' FROM runs r"
        " WHERE NOT EXISTS (SELECT 1 FROM queues s WHERE s.name = r.queue)",
        # Runs: only a running run holds a lease and slots; a running one holds its lease.
        "SELECT 'run', id, 'lease', COALESCE(lease_owner, 'no owner'), state FROM runs"
        " WHERE (state <> 'running' AND (lease_owner IS NOT NULL OR lease_expires_at IS NOT NULL"
        " OR holds_queue_slot OR holds_tenant_slot OR pause_requested))"
        " OR (state = 'running' AND (lease_owner IS NULL OR lease_expires_at IS NULL))",
        "SELECT 'run', r.id, 'queue slot', CASE WHEN r.holds_queue_slot THEN 'held' ELSE"
        " 'not held' END, CASE WHEN q.concurrency IS NULL THEN 'queue unlimited' ELSE"
        " 'queue limited' END FROM runs r JOIN queues q ON q.name = r.queue"
        " WHERE r.state = 'running' AND r.holds_queue_slot <> (q.concurrency IS NOT NULL)",
        "SELECT 'run', r.id, 'tenant slot', CASE WHEN r.holds_tenant_slot THEN 'held' ELSE"
        " 'not held' END, CASE WHEN t.concurrency IS NULL THEN 'tenant unlimited' ELSE"
        " 'tenant limited' END FROM runs r JOIN tenants t ON t.name = r.tenant"
        " WHERE r.state = 'running' AND r.holds_tenant_slot <> (t.concurrency IS NOT NULL)",
    ]
)


def check_summaries(tx: Tx) -> list[Drift]:
    """Every difference between the summaries and the runs they summarise; none when sound."""
    return [
        Drift(r["kind"], r["key"], r["field"], r["stored"], r["actual"])
        for r in tx.execute(f"SELECT * FROM ({_CHECK}) d ORDER BY kind, key, field")
    ]


def repair_summaries(tx: Tx, backend: Backend, now: float) -> None:
    """Recompute every summary from the runs, taking rows in the order every transaction
    keeps (runs, lanes, queues, tenants): moves that wait for them apply their changes to the
    recomputed values."""
    lock = backend.for_update
    tx.execute(
        "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL, holds_queue_slot = false,"
        " holds_tenant_slot = false, pause_requested = false WHERE state <> 'running'"
        " AND (lease_owner IS NOT NULL OR lease_expires_at IS NOT NULL OR holds_queue_slot"
        " OR holds_tenant_slot OR pause_requested)"
    )
    records = tx.execute("SELECT DISTINCT tenant, queue FROM runs")
    ensure_records(
        tx,
        tenants=[r["tenant"] for r in records],
        queues=[r["queue"] for r in records],
        now=now,
    )
    for kind in ("queue", "tenant"):
        tx.execute(
            f"UPDATE runs SET holds_{kind}_slot = (SELECT s.concurrency IS NOT NULL FROM {kind}s s"
            f" WHERE s.name = runs.{kind}) WHERE state = 'running'"
        )
    tx.execute(f"SELECT tenant FROM lanes ORDER BY tenant, session_key {lock}")
    tx.execute(
        "INSERT INTO lanes (tenant, session_key, active, max_active) SELECT DISTINCT r.tenant,"
        " r.session_key, 0, 1 FROM runs r WHERE r.session_key IS NOT NULL"
        " AND r.state IN ('queued', 'running') AND NOT EXISTS (SELECT 1 FROM lanes l"
        " WHERE l.tenant = r.tenant AND l.session_key = r.session_key)"
    )
    tx.execute(
        f"UPDATE lanes SET active = ({_RUNNING_IN_LANE.replace('l.', 'lanes.')}),"
        f" (head_seq, head_priority, head_queue) = {LANE_HEAD}"
    )
    tx.execute(f"SELECT name FROM queues ORDER BY name {lock}")
    tx.execute(f"UPDATE queues AS s SET active = {_slot_count('queue')}")
    tx.execute(f"SELECT name FROM tenants ORDER BY name {lock}")
    tx.execute(
        f"UPDATE tenants AS s SET active = {_slot_count('tenant')}, ready = (SELECT COUNT(*)"
        " FROM runs r WHERE r.tenant = s.name AND r.state = 'queued')"
    )


def drift_detail(drift: list[Drift]) -> dict[str, Any]:
    """What an audit entry keeps of a repair: how many, and the first ones."""
    return {"drift": len(drift), "first": [d.describe() for d in drift[:20]]}
