"""Findings as admins see and act on them, savings totals, and the tenants' license policies.

An action locks its finding and checks its state first: two admins acting at once get one
action and one clear refusal (409), never two half-applied ones. Every action is audited.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from greenroom.errors import Conflict, InvalidInput, NotFound
from greenroom.licenses.findings import FindingState
from greenroom.licenses.policy import PolicyIn, updated
from greenroom.licenses.records import Finding, SavingsTotal
from greenroom.rules import MAX_UNIX_TIME
from greenroom.storage.backend import Row, Tx
from greenroom.storage.base import StoreBase, require_reason, retry_conflicts
from greenroom.storage.licenses import next_after, page_order, policy_layers, policy_of

#: States an admin may still act on.
OPEN_STATES = (
    FindingState.CANDIDATE,
    FindingState.NOTIFIED,
    FindingState.SNOOZED,
    FindingState.KEPT,
)


@dataclass(frozen=True, kw_only=True)
class FindingFilter:
    tenant: str | None = None
    integration_id: str | None = None
    state: str | None = None
    verdict: str | None = None
    #: False: closed findings too.
    open_only: bool = True
    #: `savings` (largest first) or `recent` (newest first).
    sort: str = "savings"
    after: tuple[float, int] | None = None
    limit: int = 50


_SELECT = (
    "SELECT f.*, COALESCE(f.monthly_savings, -1) AS sort_savings, l.user_id, l.email"
    " FROM license_findings f JOIN licenses l ON l.id = f.license_id"
)


def finding_from_row(row: Row) -> Finding:
    return Finding(
        id=row["id"],
        tenant=row["tenant"],
        integration_id=row["integration_id"],
        license_id=row["license_id"],
        user_id=row.get("user_id"),
        email=row.get("email"),
        verdict=row["verdict"],
        action=row["action"],
        confidence=row["confidence"],
        state=row["state"],
        episode_start=row["episode_start"],
        until=row["until"],
        reason=row["reason"],
        monthly_savings=row["monthly_savings"],
        currency=row["currency"],
        realizable_at=row["realizable_at"],
        action_run_id=row["action_run_id"],
        note=row["note"],
        opened_at=row["opened_at"],
        updated_at=row["updated_at"],
        closed_at=row["closed_at"],
        outcome=row["outcome"],
    )


class Findings(StoreBase):
    # -- reads -----------------------------------------------------------------------------

    def list_findings(
        self, finding_filter: FindingFilter
    ) -> tuple[list[Finding], tuple[float, int] | None]:
        """A page of findings, and the `after` of the next page (None: this was the last)."""
        f = finding_filter
        clauses: list[str] = ["1 = 1"]
        params: dict[str, Any] = {"limit": f.limit}
        for column, value in (
            ("tenant", f.tenant),
            ("integration_id", f.integration_id),
            ("state", f.state),
            ("verdict", f.verdict),
        ):
            if value is not None:
                clauses.append(f"f.{column} = :{column}")
                params[column] = value
        if f.open_only:
            clauses.append("f.closed_at IS NULL")
        order = page_order("f", f.sort, f.after, clauses, params)
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"{_SELECT} WHERE {' AND '.join(clauses)} ORDER BY {order} LIMIT :limit", params
            )
        return [finding_from_row(r) for r in rows], next_after(rows, f.limit)

    def get_finding(self, finding_id: str, *, tenant: str | None = None) -> Finding:
        with self.backend.transaction(write=False) as tx:
            return finding_from_row(self._row(tx, finding_id, tenant))

    def savings(self, *, tenant: str | None = None) -> list[SavingsTotal]:
        """Monthly savings per integration and currency: available (open findings waiting for
        someone, not snoozed or kept) and realized (closed as reclaimed)."""
        scope = "" if tenant is None else " AND tenant = :tenant"
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT integration_id, currency,"
                " SUM(CASE WHEN closed_at IS NULL AND state IN ('candidate', 'notified',"
                " 'actioned') THEN monthly_savings ELSE 0 END) AS available,"
                " SUM(CASE WHEN outcome = 'reclaimed' THEN monthly_savings ELSE 0 END)"
                " AS realized,"
                " SUM(CASE WHEN closed_at IS NULL THEN 1 ELSE 0 END) AS open_findings,"
                " SUM(CASE WHEN outcome = 'reclaimed' THEN 1 ELSE 0 END) AS reclaimed"
                f" FROM license_findings WHERE currency IS NOT NULL{scope}"
                " GROUP BY integration_id, currency ORDER BY integration_id, currency",
                {"tenant": tenant},
            )
        return [
            SavingsTotal(
                integration_id=r["integration_id"],
                currency=r["currency"],
                available=round(float(r["available"] or 0), 2),
                realized=round(float(r["realized"] or 0), 2),
                open_findings=int(r["open_findings"] or 0),
                reclaimed=int(r["reclaimed"] or 0),
            )
            for r in rows
        ]

    # -- actions ---------------------------------------------------------------------------

    @retry_conflicts
    def keep(self, finding_id: str, *, tenant: str | None, actor: str, note: str) -> Finding:
        """The license stays: no event for it until the tenant's cooldown (`kept_days`) ends."""
        require_reason(note)
        now = self.clock.now()
        with self.backend.transaction() as tx:
            row = self._open_row(tx, finding_id, tenant, "keep")
            policy, _ = policy_of(tx, row["tenant"], row["integration_id"])
            until = now + policy.kept_days * 86400.0
            return self._hold(tx, row, FindingState.KEPT, until, actor, note, now)

    @retry_conflicts
    def snooze(
        self, finding_id: str, *, tenant: str | None, until: float, actor: str, note: str
    ) -> Finding:
        """Not now: the finding comes back (with an event) at `until` if still true."""
        require_reason(note)
        now = self.clock.now()
        if not now < until <= MAX_UNIX_TIME:
            raise InvalidInput("until must be in the future (and before the year 2100)")
        with self.backend.transaction() as tx:
            row = self._open_row(tx, finding_id, tenant, "snooze")
            return self._hold(tx, row, FindingState.SNOOZED, until, actor, note, now)

    def reclaim_started(
        self, finding_id: str, *, tenant: str | None, run_id: str, actor: str, note: str
    ) -> Finding:
        """The connector's deactivate run `run_id` was enqueued for this finding."""
        now = self.clock.now()
        with self.backend.transaction() as tx:
            row = self._row(tx, finding_id, tenant, lock=True)
            if row["action_run_id"] == run_id:
                return finding_from_row(row)
            if row["state"] not in OPEN_STATES or row["action"] != "reclaim":
                raise Conflict(f"finding {finding_id} is {row['state']}: it cannot be reclaimed")
            tx.execute(
                "UPDATE license_findings SET state = 'actioned', action_run_id = :run,"
                " note = :note, until = NULL, updated_at = :now WHERE id = :id",
                {"run": run_id, "note": note, "now": now, "id": finding_id},
            )
            self._audit(
                tx,
                tenant=row["tenant"],
                actor=actor,
                action="finding.reclaim",
                target=finding_id,
                reason=note,
                detail={"license_id": row["license_id"], "run_id": run_id},
            )
            return finding_from_row(self._row(tx, finding_id, tenant))

    def _hold(
        self,
        tx: Tx,
        row: Row,
        state: FindingState,
        until: float,
        actor: str,
        note: str,
        now: float,
    ) -> Finding:
        tx.execute(
            "UPDATE license_findings SET state = :state, until = :until, note = :note,"
            " updated_at = :now WHERE id = :id",
            {"state": state.value, "until": until, "note": note, "now": now, "id": row["id"]},
        )
        # The pass looks at the license again when the hold ends.
        tx.execute(
            "UPDATE licenses SET due_at = :until WHERE id = :license"
            " AND (due_at IS NULL OR due_at < :until)",
            {"until": until, "license": row["license_id"]},
        )
        action = "finding.keep" if state is FindingState.KEPT else "finding.snooze"
        self._audit(
            tx,
            tenant=row["tenant"],
            actor=actor,
            action=action,
            target=row["id"],
            reason=note,
            detail={"license_id": row["license_id"], "until": until},
        )
        return finding_from_row(self._row(tx, row["id"], None))

    def _row(self, tx: Tx, finding_id: str, tenant: str | None, lock: bool = False) -> Row:
        """The finding (with its license's user); locked, its license first: the order the pass
        locks them in, so an admin acting during a pass never deadlocks with it."""
        scope = "" if tenant is None else " AND f.tenant = :tenant"
        params = {"id": finding_id, "tenant": tenant}
        if lock and self.backend.for_update:
            tx.execute(
                "SELECT l.seq FROM licenses l JOIN license_findings f ON f.license_id = l.id"
                f" WHERE f.id = :id{scope} FOR UPDATE OF l",
                params,
            )
        locked = " FOR UPDATE OF f" if lock and self.backend.for_update else ""
        rows = tx.execute(f"{_SELECT} WHERE f.id = :id{scope}{locked}", params)
        if not rows:
            raise NotFound(f"finding {finding_id} not found")
        return rows[0]

    def _open_row(self, tx: Tx, finding_id: str, tenant: str | None, action: str) -> Row:
        row = self._row(tx, finding_id, tenant, lock=True)
        if row["state"] not in OPEN_STATES:
            raise Conflict(f"finding {finding_id} is {row['state']}: it cannot {action}")
        return row

    # -- policies --------------------------------------------------------------------------

    def policy(self, tenant: str, integration_id: str | None = None) -> dict[str, Any]:
        """The settings in force (defaults filled in) for the tenant or one integration."""
        with self.backend.transaction(write=False) as tx:
            policy, sync_hours = policy_of(tx, tenant, integration_id or "")
        values = {k: getattr(policy, k) for k in policy.__dataclass_fields__}
        values["exempt_roles"] = sorted(policy.exempt_roles)
        values["exempt_users"] = sorted(policy.exempt_users)
        return values | {"sync_hours": sync_hours}

    @retry_conflicts
    def set_policy(
        self, tenant: str, change: PolicyIn, *, integration_id: str | None, actor: str
    ) -> dict[str, Any]:
        """Change the tenant's default (or one integration's override); every license it
        governs is judged again on the next pass, with its baseline learned again."""
        now = self.clock.now()
        key = integration_id or ""
        with self.backend.transaction() as tx:
            self._registered(tx, tenant)
            if integration_id is not None:
                found = tx.execute(
                    "SELECT id FROM integrations WHERE id = :id AND tenant = :tenant",
                    {"id": integration_id, "tenant": tenant},
                )
                if not found:
                    raise NotFound(f"integration {integration_id} not found")
            layer = updated(policy_layers(tx, tenant).get(key, {}), change)
            tx.execute(
                "INSERT INTO license_policies (tenant, integration_id, policy, updated_by,"
                " updated_at) VALUES (:tenant, :key, :policy, :actor, :now)"
                " ON CONFLICT (tenant, integration_id) DO UPDATE SET policy = :policy,"
                " updated_by = :actor, updated_at = :now",
                {
                    "tenant": tenant,
                    "key": key,
                    "policy": json.dumps(layer),
                    "actor": actor,
                    "now": now,
                },
            )
            scope = "" if integration_id is None else " AND integration_id = :key"
            tx.execute(
                f"DELETE FROM license_baselines WHERE tenant = :tenant{scope}",
                {
                    "tenant": tenant,
                    "key": key,
                },
            )
            tx.execute(
                "UPDATE licenses SET due_at = :now WHERE tenant = :tenant"
                f" AND removed_at IS NULL{scope}",
                {"tenant": tenant, "key": key, "now": now},
            )
            self._audit(
                tx,
                tenant=tenant,
                actor=actor,
                action="license_policy.set",
                target=key or tenant,
                reason="license policy changed",
                detail=change.model_dump(exclude_unset=True),
            )
        return self.policy(tenant, integration_id)
