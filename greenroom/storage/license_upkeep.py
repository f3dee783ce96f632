"""What the license loop does besides judging due licenses, every few minutes: integrations whose
data went stale, baselines learned again, and each tenant's daily digest.

Stale data is the noise vendors' users complain of most: a sync that stopped makes everyone look
idle. When no source of an integration is fresh (synced within twice its interval) its licenses
become UNKNOWN at once, their findings stay as they were, and one `integration.data_stale`
event says so; fresh data makes them due again (storage.licenses).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from greenroom.licenses.activity import DAY, day_of
from greenroom.licenses.findings import FindingState
from greenroom.licenses.policy import loads, merged
from greenroom.storage.backend import Tx
from greenroom.storage.base import StoreBase
from greenroom.storage.license_pass import BASELINE_CHANGE, BASELINE_DAYS, learn
from greenroom.storage.licenses import policy_of
from greenroom.storage.outbox import NewEvent, emit

#: A finding's states while it is open (a closed one is `closed`), for the index on tenant and
#: state.
_OPEN_STATES = ", ".join(f"'{s.value}'" for s in FindingState if s is not FindingState.CLOSED)
STALE_REASON = "no fresh data: the last sync is older than twice the sync interval"


class LicenseUpkeep(StoreBase):
    def mark_stale(self) -> int:
        """Integrations whose every source went stale since the last check: their licenses
        become UNKNOWN, with one event each; how many. Three statements read what decides it
        for every integration (a row each, not its licenses); only those gone stale are locked
        and written."""
        now = self.clock.now()
        marked = 0
        with self.backend.transaction() as tx:
            synced = {
                r["integration_id"]: (r["tenant"], r["last"])
                for r in tx.execute(
                    "SELECT tenant, integration_id, MAX(synced_at) AS last FROM license_sources"
                    " GROUP BY tenant, integration_id HAVING COUNT(stale_since) < COUNT(*)"
                )
            }
            intervals = self._intervals(tx, synced)
            for integration_id in sorted(synced):
                tenant, _ = synced[integration_id]
                interval = intervals[integration_id]
                # Locked, then read again: a save may have synced it since.
                rows = tx.execute(
                    "SELECT synced_at, stale_since FROM license_sources WHERE integration_id = :i"
                    f" ORDER BY source {self.backend.for_update}",
                    {"i": integration_id},
                )
                last = max((r["synced_at"] for r in rows), default=now)
                already = all(r["stale_since"] is not None for r in rows)
                if already or last >= now - 2 * interval:
                    continue
                tx.execute(
                    "UPDATE license_sources SET stale_since = :now WHERE integration_id = :i",
                    {"now": now, "i": integration_id},
                )
                tx.execute(
                    "UPDATE licenses SET verdict = 'unknown', action = NULL, confidence = NULL,"
                    " reason_code = 'no_fresh_data', reason = :reason, monthly_savings = NULL,"
                    " savings_currency = NULL, realizable_at = NULL, due_at = NULL,"
                    " checked_at = :now WHERE integration_id = :i AND removed_at IS NULL",
                    {"reason": STALE_REASON, "now": now, "i": integration_id},
                )
                payload = {
                    "integration_id": integration_id,
                    "last_synced_at": last,
                    "expected_every_hours": round(interval / 3600, 2),
                }
                subject = f"integration:{integration_id}"
                emit(
                    tx,
                    self.backend,
                    [NewEvent(tenant, "integration.data_stale", subject, payload)],
                    now,
                )
                marked += 1
        return marked

    def _intervals(self, tx: Tx, synced: dict[str, tuple[str, float]]) -> dict[str, float]:
        """The sync interval of each integration, read for all at once; the integrations whose
        last sync is within it are left out of `synced`."""
        now = self.clock.now()
        every = {
            r["integration"]: r["every"]
            for r in tx.execute(
                "SELECT integration, MIN(every_seconds) AS every FROM schedules"
                f" WHERE {self.backend.member('integration', 'ids')} AND NOT paused"
                " AND every_seconds IS NOT NULL GROUP BY integration",
                {"ids": self.backend.list_param(sorted(synced))},
            )
        }
        layers: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for r in tx.execute(
            "SELECT tenant, integration_id, policy FROM license_policies"
            f" WHERE {self.backend.member('tenant', 'tenants')}",
            {"tenants": self.backend.list_param(sorted({t for t, _ in synced.values()}))},
        ):
            layers[r["tenant"]][r["integration_id"]] = loads(r["policy"])
        intervals: dict[str, float] = {}
        for integration_id, (tenant, last) in list(synced.items()):
            if integration_id in every:
                interval = float(every[integration_id])
            else:
                tenant_layers = layers.get(tenant, {})
                _, hours = merged(tenant_layers.get("", {}), tenant_layers.get(integration_id, {}))
                interval = hours * 3600
            if last >= now - 2 * interval:
                del synced[integration_id]
            else:
                intervals[integration_id] = interval
        return intervals

    def relearn_baselines(self) -> int:
        """Learn again the baselines that are a week old, whose app changed a lot, or that fell
        back for want of users a day ago or more; an app
        whose threshold moved has all its licenses judged again. How many were learned."""
        now = self.clock.now()
        with self.backend.transaction() as tx:
            due = tx.execute(
                "SELECT tenant, integration_id, threshold_days FROM license_baselines"
                " WHERE computed_at < :old OR changed > licenses * :share + 10"
                # Learned from too few users (a new app): again each day as its history grows.
                " OR (fallback AND computed_at <= :day_ago)"
                f" ORDER BY integration_id {self.backend.for_update} {self.backend.skip_locked}",
                {
                    "old": now - BASELINE_DAYS * DAY,
                    "share": BASELINE_CHANGE,
                    "day_ago": now - DAY,
                },
            )
            for row in due:
                policy, _ = policy_of(tx, row["tenant"], row["integration_id"])
                baseline, _ = learn(tx, row["tenant"], row["integration_id"], policy, now)
                if baseline.threshold_days != row["threshold_days"]:
                    tx.execute(
                        "UPDATE licenses SET due_at = :now WHERE integration_id = :i"
                        " AND removed_at IS NULL AND verdict <> 'unknown'",
                        {"now": now, "i": row["integration_id"]},
                    )
        return len(due)

    def unassigned_seats(self) -> int:
        """Seats bought but assigned to no active account: `seats.unassigned` when their number
        grows (not again while it stays); how many events."""
        now = self.clock.now()
        sent = 0
        with self.backend.transaction() as tx:
            rows = tx.execute(
                "SELECT s.tenant, s.integration_id, s.tier, s.purchased, s.told_unassigned,"
                " COUNT(l.seq) AS assigned, MAX(l.unit_cost) AS unit_cost,"
                " MAX(l.currency) AS currency, MAX(l.billing_period) AS period"
                " FROM license_seats s LEFT JOIN licenses l ON l.integration_id = s.integration_id"
                " AND l.tier = s.tier AND l.removed_at IS NULL AND l.status = 'active'"
                " GROUP BY s.tenant, s.integration_id, s.tier, s.purchased, s.told_unassigned"
                " ORDER BY s.integration_id, s.tier"
            )
            for r in rows:
                unassigned = max(int(r["purchased"]) - int(r["assigned"]), 0)
                if unassigned == r["told_unassigned"]:
                    continue
                tx.execute(
                    "UPDATE license_seats SET told_unassigned = :n WHERE integration_id = :i"
                    " AND tier = :tier",
                    {"n": unassigned, "i": r["integration_id"], "tier": r["tier"]},
                )
                if unassigned > r["told_unassigned"]:
                    emit(tx, self.backend, [_unassigned(r, unassigned)], now)
                    sent += 1
        return sent

    def digest(self) -> int:
        """Each tenant with open findings gets one `license.digest` event per UTC day: what is
        open, by state and class, and the savings waiting; how many were sent. The findings
        are read only for tenants still waiting for the day's digest (through the index on
        tenant and state), not every open finding at every upkeep."""
        now = self.clock.now()
        today = day_of(now)
        sent = 0
        with self.backend.transaction() as tx:
            waiting = [
                r["name"]
                for r in tx.execute(
                    "SELECT t.name FROM tenants t WHERE NOT EXISTS (SELECT 1 FROM"
                    " license_digests d WHERE d.tenant = t.name AND d.day = :today)"
                    " AND EXISTS (SELECT 1 FROM license_findings f WHERE f.tenant = t.name"
                    f" AND f.state IN ({_OPEN_STATES}) AND f.closed_at IS NULL)"
                    " ORDER BY t.name",
                    {"today": today},
                )
            ]
            if not waiting:
                return 0
            rows = tx.execute(
                "SELECT tenant, state, verdict, currency, COUNT(*) AS n,"
                " SUM(monthly_savings) AS savings FROM license_findings"
                f" WHERE {self.backend.member('tenant', 'tenants')}"
                f" AND state IN ({_OPEN_STATES}) AND closed_at IS NULL"
                " GROUP BY tenant, state, verdict, currency ORDER BY tenant",
                {"tenants": self.backend.list_param(waiting)},
            )
            by_tenant: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in rows:
                by_tenant[r["tenant"]].append(r)
            for tenant, groups in by_tenant.items():
                taken = tx.execute_count(
                    "INSERT INTO license_digests (tenant, day, at) VALUES (:tenant, :day, :now)"
                    " ON CONFLICT (tenant, day) DO NOTHING",
                    {"tenant": tenant, "day": today, "now": now},
                )
                if not taken:
                    continue
                emit(tx, self.backend, [_digest(tenant, today, groups)], now)
                sent += 1
        return sent


def _digest(tenant: str, today: int, groups: list[dict[str, Any]]) -> NewEvent:
    by_state: dict[str, int] = defaultdict(int)
    by_verdict: dict[str, int] = defaultdict(int)
    savings: dict[str, float] = defaultdict(float)
    for g in groups:
        by_state[g["state"]] += int(g["n"])
        by_verdict[g["verdict"]] += int(g["n"])
        if g["currency"] is not None and g["state"] in ("candidate", "notified"):
            savings[g["currency"]] += float(g["savings"] or 0)
    payload = {
        "day": datetime.fromtimestamp(today * DAY, UTC).date().isoformat(),
        "open_findings": sum(by_state.values()),
        "by_state": dict(by_state),
        "by_verdict": dict(by_verdict),
        "monthly_savings_available": {c: round(v, 2) for c, v in sorted(savings.items())},
    }
    return NewEvent(tenant, "license.digest", f"tenant:{tenant}", payload)


def _unassigned(row: dict[str, Any], unassigned: int) -> NewEvent:
    cost = row["unit_cost"]
    monthly = None
    if cost and row["currency"]:
        monthly = round(unassigned * (cost / 12 if row["period"] == "year" else cost), 2)
    payload = {
        "integration_id": row["integration_id"],
        "tier": row["tier"],
        "purchased": int(row["purchased"]),
        "assigned": int(row["assigned"]),
        "unassigned": unassigned,
        "monthly_savings": monthly,
        "currency": row["currency"] if monthly is not None else None,
    }
    subject = f"integration:{row['integration_id']}"
    return NewEvent(row["tenant"], "seats.unassigned", subject, payload)
