"""Licenses: the accounts each integration's syncs read, kept per (tenant, integration, user).

A save is one transaction: the batch's rows are merged with what is stored (activity days are
marked, never counted, so a replayed page changes nothing) and written in one multi-row upsert.
Rows whose facts changed are due for the pass at once; the others keep their due time, so the
pass's work grows with changes, not with the number of licenses. A complete sync removes the
accounts it did not list; a partial one never removes anyone.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from greenroom.errors import NotFound
from greenroom.licenses.activity import Activity, day_of
from greenroom.licenses.detect import Policy
from greenroom.licenses.ingest import AccountRow
from greenroom.licenses.policy import loads, merged
from greenroom.licenses.records import License
from greenroom.storage.backend import Column, Row, Tx
from greenroom.storage.base import StoreBase, retry_conflicts

#: Rows per statement: a bounded statement however large a page a connector saves.
_CHUNK = 500
#: What a row of the source says; a change of any of them makes the license due.
FACTS = (
    "email",
    "display_name",
    "role",
    "tier",
    "unit_cost",
    "currency",
    "billing_period",
    "assigned_at",
    "renewal_at",
    "status",
    "idp_status",
    "service_account",
    "app_last_active",
    "idp_last_active",
)
_COLUMNS: list[Column] = [
    ("id", "text"),
    ("user_id", "text"),
    ("email", "text"),
    ("display_name", "text"),
    ("role", "text"),
    ("tier", "text"),
    ("unit_cost", "double precision"),
    ("currency", "text"),
    ("billing_period", "text"),
    ("assigned_at", "double precision"),
    ("renewal_at", "double precision"),
    ("status", "text"),
    ("idp_status", "text"),
    ("service_account", "boolean"),
    ("app_last_active", "double precision"),
    ("idp_last_active", "double precision"),
    ("activity", "text"),
    ("activity_day", "integer"),
    ("due_at", "double precision"),
]
_NAMES = ", ".join(name for name, _ in _COLUMNS)
_UPDATED = ", ".join(
    f"{name} = excluded.{name}" for name, _ in _COLUMNS if name not in ("id", "user_id")
)

#: What `_merge` sends of a row: its facts, an id should it be new, and the days to mark.
_MERGE_COLUMNS: list[Column] = [
    *(c for c in _COLUMNS if c[0] not in ("activity", "activity_day", "due_at")),
    ("day_a", "integer"),
    ("day_b", "integer"),
]
_FACT_LIST = ", ".join(FACTS)
_NO_BITS = "repeat('0', 184)::bit(184)"
_MERGE = (
    "WITH w({names}) AS ({{source}}),"
    " m AS (SELECT w.*, COALESCE(o.id, w.id) AS license_id, o.id IS NULL AS created,"
    " (o.id IS NULL OR o.removed_at IS NOT NULL"
    " OR ({w_facts}) IS DISTINCT FROM ({o_facts})) AS changed, b2, l2"
    # Each row's stored one by its key, so a page reads its rows, not its integration's
    # (OFFSET 0 keeps the planner from turning the lookups into a join of all of them).
    " FROM w LEFT JOIN LATERAL (SELECT * FROM licenses l WHERE l.integration_id = :integration"
    " AND l.tenant = :tenant AND l.user_id = w.user_id OFFSET 0) o ON true"
    " CROSS JOIN LATERAL (SELECT greenroom_activity_bits(o.activity, o.activity_day) AS b0) s0"
    " CROSS JOIN LATERAL (SELECT greenroom_activity_mark(b0, o.activity_day, w.day_a) AS b1,"
    " greenroom_activity_last(b0, o.activity_day, w.day_a) AS l1) s1"
    " CROSS JOIN LATERAL (SELECT greenroom_activity_mark(b1, l1, w.day_b) AS b2,"
    " greenroom_activity_last(b1, l1, w.day_b) AS l2) s2),"
    " up AS (INSERT INTO licenses (tenant, integration_id, first_seen_at, seen_at, sync_id,"
    " removed_at, updated_at, id, user_id, {facts}, activity, activity_day, due_at)"
    " SELECT :tenant, :integration, :now, :now, :sync, NULL, :now, license_id, user_id,"
    " {facts}, greenroom_activity_hex(b2), CASE WHEN b2 = {no_bits} THEN NULL ELSE l2 END,"
    # Unchanged: the stored due time stays (NULL here), whatever a pass wrote meanwhile.
    " CASE WHEN changed THEN :now END FROM m"
    " ON CONFLICT (integration_id, tenant, user_id) DO UPDATE SET seen_at = :now,"
    " sync_id = :sync, removed_at = NULL, updated_at = :now, {updated},"
    " activity = excluded.activity, activity_day = excluded.activity_day,"
    " due_at = COALESCE(excluded.due_at, licenses.due_at) RETURNING 1),"
    " c AS (SELECT COUNT(*) FILTER (WHERE created) AS n,"
    " COUNT(*) FILTER (WHERE changed) AS changed FROM m),"
    " s AS ({{sources}}), b AS ({{baseline}})"
    " SELECT n AS created, changed FROM c"
).format(
    names=", ".join(name for name, _ in _MERGE_COLUMNS),
    facts=_FACT_LIST,
    w_facts=", ".join(f"w.{f}" for f in FACTS),
    o_facts=", ".join(f"o.{f}" for f in FACTS),
    no_bits=_NO_BITS,
    updated=", ".join(f"{f} = excluded.{f}" for f in FACTS),
)


def _sources(rows: Sequence[AccountRow], params: dict[str, Any]) -> str:
    """The statement that marks synced now each source the batch brought data of (the
    freshness gate reads it); its parameters are added to `params`."""
    sources = ["app"]
    if any(r.idp_last_active is not None or r.idp_status is not None for r in rows):
        sources.append("idp")
    params |= {f"source_{i}": source for i, source in enumerate(sources)}
    values = ", ".join(
        f"(:tenant, :integration, :source_{i}, :now, :now, :complete, NULL)"
        for i in range(len(sources))
    )
    return (
        "INSERT INTO license_sources (tenant, integration_id, source, first_synced_at,"
        f" synced_at, complete_at, stale_since) VALUES {values}"
        " ON CONFLICT (integration_id, source)"
        " DO UPDATE SET synced_at = :now, stale_since = NULL,"
        " complete_at = COALESCE(:complete, license_sources.complete_at)"
    )


def _baseline_changed(count: str) -> str:
    """An app whose accounts came and went a lot learns its baseline again: `count` more."""
    return (
        f"UPDATE license_baselines SET changed = changed + {count}"
        " WHERE integration_id = :integration"
    )


def _incoming(row: AccountRow, now: float) -> dict[str, Any]:
    """A row as `_merge` sends it: its facts, an id should it be new, and the days its sources
    saw the account active (up to now), to mark as `_merged` does."""
    seen = (row.last_active, row.idp_last_active)
    days: list[int | None] = [day_of(t) for t in seen if t is not None and t <= now]
    days += [None] * (2 - len(days))
    return {
        "id": new_license_id(),
        "user_id": row.user_id,
        **_facts(row),
        "day_a": days[0],
        "day_b": days[1],
    }


@dataclass(frozen=True, kw_only=True)
class Saved:
    """What a save did."""

    received: int
    created: int
    changed: int
    #: Accounts a complete sync removed (not listed by it).
    removed: int


def new_license_id() -> str:
    return "lic_" + secrets.token_hex(10)


def _facts(row: AccountRow) -> dict[str, Any]:
    return {
        "email": row.email,
        "display_name": row.name,
        "role": row.role,
        "tier": row.tier,
        "unit_cost": row.unit_cost,
        "currency": row.currency,
        "billing_period": row.billing_period,
        "assigned_at": row.assigned_at,
        "renewal_at": row.renewal_at,
        "status": row.status,
        "idp_status": row.idp_status,
        "service_account": row.service_account,
        "app_last_active": row.last_active,
        "idp_last_active": row.idp_last_active,
    }


def page_order(
    alias: str,
    sort: str,
    after: tuple[float, int] | None,
    clauses: list[str],
    params: dict[str, Any],
) -> str:
    """The order of a page of licenses or findings (`savings`: largest first; else newest
    first), adding to `clauses` where the page after `after` starts."""
    if sort == "savings":
        if after is not None:
            clauses.append(
                f"(COALESCE({alias}.monthly_savings, -1) < :after_savings OR"
                f" (COALESCE({alias}.monthly_savings, -1) = :after_savings"
                f" AND {alias}.seq < :after_seq))"
            )
            params |= {"after_savings": after[0], "after_seq": after[1]}
        return f"sort_savings DESC, {alias}.seq DESC"
    if after is not None:
        clauses.append(f"{alias}.seq < :after_seq")
        params["after_seq"] = after[1]
    return f"{alias}.seq DESC"


def next_after(rows: list[Row], limit: int) -> tuple[float, int] | None:
    """The `after` of the next page; None when this one was the last."""
    if len(rows) < limit:
        return None
    return (float(rows[-1]["sort_savings"]), int(rows[-1]["seq"]))


def policy_layers(tx: Tx, tenant: str) -> dict[str, dict[str, Any]]:
    """A tenant's stored policy layers: '' its default, else by integration id."""
    return {
        r["integration_id"]: loads(r["policy"])
        for r in tx.execute(
            "SELECT integration_id, policy FROM license_policies WHERE tenant = :tenant",
            {"tenant": tenant},
        )
    }


def policy_of(tx: Tx, tenant: str, integration_id: str) -> tuple[Policy, float]:
    """The policy in force for an integration, and its expected sync interval (hours)."""
    layers = policy_layers(tx, tenant)
    return merged(layers.get("", {}), layers.get(integration_id, {}))


def forget_integration(tx: Tx, integration_id: str) -> None:
    """A deleted integration's licenses, findings and settings go with it (licenses first: the
    order the pass locks them in)."""
    for table in (
        "licenses",
        "license_findings",
        "license_sources",
        "license_baselines",
        "license_seats",
        "license_policies",
    ):
        tx.execute(f"DELETE FROM {table} WHERE integration_id = :i", {"i": integration_id})


def activity_of(row: Row, *, strict: bool = True) -> Activity:
    """A row's activity; an unreadable one raises ValueError, or reads as none when not
    `strict` (to show a license, or learn a baseline, rather than fail)."""
    data = row["activity"]
    try:
        return Activity.from_bytes(bytes.fromhex(data) if data else None, row["activity_day"])
    except ValueError:
        if strict:
            raise
        return Activity()


def _merged(row: AccountRow, old: Row | None, now: float) -> tuple[dict[str, Any], bool]:
    """The row to write, and whether its facts changed."""
    facts = _facts(row)
    # Unreadable history starts again.
    activity = Activity() if old is None else activity_of(old, strict=False)
    for seen in (row.last_active, row.idp_last_active):
        if seen is not None and seen <= now:
            activity = activity.mark(day_of(seen))
    changed = (
        old is None or old["removed_at"] is not None or any(old[k] != v for k, v in facts.items())
    )
    return {
        "id": new_license_id() if old is None else old["id"],
        "user_id": row.user_id,
        **facts,
        "activity": activity.to_bytes().hex(),
        "activity_day": activity.latest(),
        "due_at": now if changed or old is None else old["due_at"],
    }, changed


class Licenses(StoreBase):
    @retry_conflicts
    def save(
        self,
        tenant: str,
        integration_id: str,
        rows: Sequence[AccountRow],
        *,
        sync_id: str,
        complete: bool = False,
    ) -> Saved:
        """Keep a batch of a sync's accounts (validated by licenses.ingest.parse_accounts):
        all of it or, on an error, none."""
        now = self.clock.now()
        params: dict[str, Any] = {
            "tenant": tenant,
            "integration": integration_id,
            "sync": sync_id,
            "now": now,
            "complete": now if complete else None,
        }
        sources = _sources(rows, params)
        with self.backend.transaction() as tx:
            stale = self._integration_of(tx, tenant, integration_id)
            if self.backend.marks_activity:
                created, changed = self._merge(tx, rows, sources, params)
            else:
                created, changed = self._merge_here(tx, rows, sources, params)
            removed = self._remove_unlisted(tx, params) if complete else 0
            if stale:
                # Fresh data again: what the stale data left unknown is looked at again.
                tx.execute(
                    "UPDATE licenses SET due_at = :now WHERE integration_id = :integration"
                    " AND tenant = :tenant AND verdict = 'unknown'",
                    params,
                )
            changed += removed
        return Saved(
            received=len(rows),
            created=created,
            changed=changed,
            removed=removed,
        )

    @retry_conflicts
    def save_seats(self, tenant: str, integration_id: str, seats: Mapping[str, int]) -> None:
        """The seats bought per tier, as the app's billing page says (validated by
        licenses.ingest.parse_seats): they replace what was said before."""
        now = self.clock.now()
        with self.backend.transaction() as tx:
            self._integration_of(tx, tenant, integration_id)
            tx.execute(
                "DELETE FROM license_seats WHERE integration_id = :i AND NOT"
                f" {self.backend.member('tier', 'tiers')}",
                {"i": integration_id, "tiers": self.backend.list_param(sorted(seats))},
            )
            for tier, purchased in sorted(seats.items()):
                tx.execute(
                    "INSERT INTO license_seats (tenant, integration_id, tier, purchased,"
                    " updated_at, told_unassigned) VALUES (:tenant, :i, :tier, :n, :now, 0)"
                    " ON CONFLICT (integration_id, tier) DO UPDATE SET purchased = :n,"
                    " updated_at = :now",
                    {
                        "tenant": tenant,
                        "i": integration_id,
                        "tier": tier,
                        "n": purchased,
                        "now": now,
                    },
                )

    def list_licenses(
        self, license_filter: LicenseFilter
    ) -> tuple[list[License], tuple[float, int] | None]:
        """A page of licenses, and the `after` of the next page (None: this was the last)."""
        f = license_filter
        clauses: list[str] = ["1 = 1"]
        params: dict[str, Any] = {"limit": f.limit}
        for column, value in (
            ("l.tenant", f.tenant),
            ("l.integration_id", f.integration_id),
            ("l.verdict", f.verdict),
            ("l.confidence", f.confidence),
        ):
            if value is not None:
                name = column.split(".")[1]
                clauses.append(f"{column} = :{name}")
                params[name] = value
        if f.finding_state == "none":
            clauses.append("f.id IS NULL")
        elif f.finding_state is not None:
            clauses.append("f.state = :state")
            params["state"] = f.finding_state
        clauses.append("l.removed_at IS NOT NULL" if f.removed else "l.removed_at IS NULL")
        order = page_order("l", f.sort, f.after, clauses, params)
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"{_LICENSE_SELECT} WHERE {' AND '.join(clauses)} ORDER BY {order} LIMIT :limit",
                params,
            )
        return [license_from_row(r) for r in rows], next_after(rows, f.limit)

    def get_license(self, license_id: str, *, tenant: str | None = None) -> License:
        scope = "" if tenant is None else " AND l.tenant = :tenant"
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"{_LICENSE_SELECT} WHERE l.id = :id{scope}", {"id": license_id, "tenant": tenant}
            )
        if not rows:
            raise NotFound(f"license {license_id} not found")
        return license_from_row(rows[0])

    def sync_run_input(self, license_id: str) -> dict[str, Any]:
        """The input of the run whose sync last listed this license ({} for pushed data)."""
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT r.input FROM licenses l JOIN runs r ON r.id = l.sync_id"
                " AND r.tenant = l.tenant WHERE l.id = :id",
                {"id": license_id},
            )
        value = loads(rows[0]["input"]) if rows else {}
        return value

    def _merge(
        self, tx: Tx, rows: Sequence[AccountRow], sources: str, params: dict[str, Any]
    ) -> tuple[int, int]:
        """Write a batch in one statement that reads the stored rows, marks their activity
        (the functions of migration 0017), upserts, marks the sources synced and counts the
        new accounts toward the baseline's relearning: no round trip to read the rows first,
        no merge in Python. How many rows were created and how many changed."""
        now = params["now"]
        source = tx.rows(_MERGE_COLUMNS, [_incoming(r, now) for r in rows], params)
        baseline = _baseline_changed("(SELECT n FROM c)")
        (counts,) = tx.execute(
            _MERGE.format(source=source, sources=sources, baseline=baseline), params
        )
        return int(counts["created"]), int(counts["changed"])

    def _merge_here(
        self, tx: Tx, rows: Sequence[AccountRow], sources: str, params: dict[str, Any]
    ) -> tuple[int, int]:
        """`_merge` where the database cannot mark activity (SQLite): the stored rows read,
        merged here and written back, a statement each."""
        tenant, integration_id, now = params["tenant"], params["integration"], params["now"]
        old = self._existing(tx, tenant, integration_id, [r.user_id for r in rows])
        merged = [_merged(r, old.get(r.user_id), now) for r in rows]
        for start in range(0, len(merged), _CHUNK):
            chunk = [m for m, _ in merged[start : start + _CHUNK]]
            self._upsert(tx, tenant, integration_id, chunk, params["sync"], now)
        created = sum(1 for r in rows if r.user_id not in old)
        tx.execute(sources, params)
        tx.execute(_baseline_changed(":created"), params | {"created": created})
        return created, sum(1 for _, c in merged if c)

    def _integration_of(self, tx: Tx, tenant: str, integration_id: str) -> bool:
        """The integration, locked: saves of one integration take turns, so that two saving
        the same account at once both keep their activity (each merges into what it read).
        Whether a source of it went stale."""
        found = tx.execute(
            "SELECT EXISTS (SELECT 1 FROM license_sources s WHERE s.integration_id = i.id"
            " AND s.stale_since IS NOT NULL) AS stale FROM integrations i"
            f" WHERE i.id = :id AND i.tenant = :tenant {self.backend.for_update}",
            {"id": integration_id, "tenant": tenant},
        )
        if not found:
            raise NotFound(f"integration {integration_id} not found")
        return bool(found[0]["stale"])

    def _existing(
        self, tx: Tx, tenant: str, integration_id: str, user_ids: list[str]
    ) -> dict[str, Row]:
        found: dict[str, Row] = {}
        for start in range(0, len(user_ids), _CHUNK):
            for row in tx.execute(
                f"SELECT id, user_id, removed_at, due_at, activity, activity_day,"
                f" {', '.join(FACTS)} FROM licenses WHERE tenant = :tenant"
                f" AND integration_id = :integration AND {self.backend.member('user_id', 'ids')}",
                {
                    "tenant": tenant,
                    "integration": integration_id,
                    "ids": self.backend.list_param(user_ids[start : start + _CHUNK]),
                },
            ):
                found[row["user_id"]] = row
        return found

    def _upsert(
        self,
        tx: Tx,
        tenant: str,
        integration_id: str,
        rows: list[dict[str, Any]],
        sync_id: str,
        now: float,
    ) -> None:
        params: dict[str, Any] = {
            "tenant": tenant,
            "integration": integration_id,
            "sync": sync_id,
            "now": now,
        }
        source = tx.rows(_COLUMNS, rows, params)
        tx.execute(
            f"WITH w({_NAMES}) AS ({source})"
            f" INSERT INTO licenses (tenant, integration_id, first_seen_at, seen_at, sync_id,"
            f" removed_at, updated_at, {_NAMES})"
            f" SELECT :tenant, :integration, :now, :now, :sync, NULL, :now, {_NAMES} FROM w"
            # SQLite needs a WHERE to read an upsert's SELECT right.
            " WHERE true ON CONFLICT (tenant, integration_id, user_id) DO UPDATE SET"
            f" seen_at = :now, sync_id = :sync, removed_at = NULL, updated_at = :now, {_UPDATED}",
            params,
        )

    def _remove_unlisted(self, tx: Tx, params: dict[str, Any]) -> int:
        removed = tx.execute_count(
            "UPDATE licenses SET removed_at = :now, due_at = :now, updated_at = :now"
            " WHERE tenant = :tenant AND integration_id = :integration"
            " AND removed_at IS NULL AND sync_id <> :sync",
            params,
        )
        if removed:
            tx.execute(_baseline_changed(":removed"), params | {"removed": removed})
        return removed


@dataclass(frozen=True, kw_only=True)
class LicenseFilter:
    tenant: str | None = None
    integration_id: str | None = None
    verdict: str | None = None
    confidence: str | None = None
    #: The open finding's state (`none`: licenses without an open finding).
    finding_state: str | None = None
    removed: bool = False
    #: `savings` (largest first) or `recent` (newest first).
    sort: str = "savings"
    #: The last row of the previous page: (savings, seq) for `savings`, (seq,) for `recent`.
    after: tuple[float, int] | None = None
    limit: int = 50


_LICENSE_SELECT = (
    "SELECT l.*, COALESCE(l.monthly_savings, -1) AS sort_savings, f.id AS finding_id,"
    " f.state AS finding_state FROM licenses l LEFT JOIN license_findings f"
    " ON f.license_id = l.id AND f.closed_at IS NULL"
)


def license_from_row(row: Row) -> License:
    return License(
        id=row["id"],
        tenant=row["tenant"],
        integration_id=row["integration_id"],
        user_id=row["user_id"],
        email=row["email"],
        display_name=row["display_name"],
        role=row["role"],
        tier=row["tier"],
        unit_cost=row["unit_cost"],
        currency=row["currency"],
        billing_period=row["billing_period"],
        assigned_at=row["assigned_at"],
        renewal_at=row["renewal_at"],
        status=row["status"],
        idp_status=row["idp_status"],
        service_account=bool(row["service_account"]),
        app_last_active=row["app_last_active"],
        idp_last_active=row["idp_last_active"],
        active_days=activity_of(row, strict=False).days(),
        first_seen_at=row["first_seen_at"],
        seen_at=row["seen_at"],
        removed_at=row["removed_at"],
        verdict=row["verdict"],
        action=row["action"],
        confidence=row["confidence"],
        reason_code=row["reason_code"],
        reason=row["reason"],
        monthly_savings=row["monthly_savings"],
        savings_currency=row["savings_currency"],
        realizable_at=row["realizable_at"],
        checked_at=row["checked_at"],
        finding_id=row.get("finding_id"),
        finding_state=row.get("finding_state"),
    )
