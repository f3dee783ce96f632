"""The license pass: verdicts for the licenses that are due, their findings and events.

A license is due when a sync changed it, or when its verdict could change with no new data (it
crosses its idle threshold, leaves its grace period, a snooze ends). The pass reads only those
(one index on `due_at`), a batch per transaction, locked so that passes on several workers never
judge one license twice; its work grows with changes, not with the number of licenses. Each
batch writes the verdicts, the findings' moves and their events in one transaction: an event is
sent once per license and episode (the findings' unique key), however often the pass runs.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from greenroom.licenses import detect, findings
from greenroom.licenses.activity import DAY, day_of
from greenroom.licenses.detect import Account, Baseline, LicenseClass, Policy, Tier, Verdict
from greenroom.licenses.findings import Finding, FindingState, Step
from greenroom.licenses.policy import loads, merged
from greenroom.storage.backend import Column, Row, Tx
from greenroom.storage.base import StoreBase
from greenroom.storage.licenses import activity_of
from greenroom.storage.outbox import NewEvent, emit

log = structlog.get_logger("greenroom.licenses")

#: Licenses judged per transaction.
BATCH = 2000
#: A baseline older than this is learned again.
BASELINE_DAYS = 7
#: Learned again sooner when this share of an app's licenses changed.
BASELINE_CHANGE = 0.2
#: What a license removed at its source is judged as: the seat is gone.
REMOVED = Verdict(
    cls=LicenseClass.EXCLUDED,
    action=None,
    confidence=None,
    reason_code="removed_at_source",
    reason="no longer listed by the app",
    monthly_savings=None,
    currency=None,
    realizable_at=None,
    episode_start=None,
    due_at=None,
)
_VERDICT_COLUMNS: list[Column] = [
    ("seq", "bigint"),
    ("verdict", "text"),
    ("action", "text"),
    ("confidence", "text"),
    ("reason_code", "text"),
    ("reason", "text"),
    ("monthly_savings", "double precision"),
    ("savings_currency", "text"),
    ("realizable_at", "double precision"),
    ("episode_start", "double precision"),
    ("due_at", "double precision"),
]

_CLOSE_COLUMNS: list[Column] = [("id", "text"), ("outcome", "text")]
_UPDATE_COLUMNS: list[Column] = [
    ("id", "text"),
    ("state", "text"),
    ("verdict", "text"),
    ("confidence", "text"),
    ("reason", "text"),
    ("monthly_savings", "double precision"),
    ("currency", "text"),
    ("realizable_at", "double precision"),
]
_FINDING_COLUMNS: list[Column] = [
    ("id", "text"),
    ("tenant", "text"),
    ("integration_id", "text"),
    ("license_id", "text"),
    ("verdict", "text"),
    ("action", "text"),
    ("confidence", "text"),
    ("state", "text"),
    ("episode_start", "double precision"),
    ("until", "double precision"),
    ("reason", "text"),
    ("monthly_savings", "double precision"),
    ("currency", "text"),
    ("realizable_at", "double precision"),
    ("opened_at", "double precision"),
    ("updated_at", "double precision"),
]


@dataclass
class Judged:
    """What one pass batch did."""

    licenses: int = 0
    opened: int = 0
    closed: int = 0
    events: dict[str, int] = field(default_factory=dict)

    def add(self, other: Judged) -> None:
        self.licenses += other.licenses
        self.opened += other.opened
        self.closed += other.closed
        for kind, n in other.events.items():
            self.events[kind] = self.events.get(kind, 0) + n


@dataclass(frozen=True)
class _App:
    """What the pass needs to know of one integration."""

    tenant: str
    policy: Policy
    baseline: Baseline
    #: The cheapest paid tier, per currency.
    tiers: dict[str, Tier]
    fresh_sources: frozenset[str]
    #: When greenroom first synced the app: accounts listed then are no new hires.
    first_synced_at: float


def new_finding_id() -> str:
    return "fnd_" + secrets.token_hex(10)


class LicensePass(StoreBase):
    def judge_due(self, *, limit: int = BATCH) -> Judged:
        """Judge up to `limit` due licenses in one transaction; fewer judged: none is left."""
        now = self.clock.now()
        judged = Judged()
        with self.backend.transaction() as tx:
            rows = tx.execute(
                "SELECT * FROM licenses WHERE due_at IS NOT NULL AND due_at <= :now"
                f" ORDER BY due_at LIMIT :limit {self.backend.for_update}"
                f" {self.backend.skip_locked}",
                {"now": now, "limit": limit},
            )
            if not rows:
                return judged
            apps = self._apps(tx, rows, now)
            opened = self._open_findings(tx, [r["id"] for r in rows])
            verdicts, moves = [], []
            for row in rows:
                current = opened.get(row["id"])
                app = apps.get(row["integration_id"])
                try:
                    if app is None:
                        raise ValueError("its integration's policy or baseline is unreadable")
                    verdict = _verdict(row, app, now)
                    finding = None if current is None else _finding(current)
                except (ValueError, TypeError, KeyError) as exc:
                    # One unreadable row is left aside, never the pass of every tenant.
                    log.warning("license unreadable", license_id=row["id"], error=repr(exc))
                    verdicts.append(_verdict_row(row, unreadable(exc), Step(finding=None), now))
                    continue
                step = findings.advance(finding, verdict, now, app.policy)
                verdicts.append(_verdict_row(row, verdict, step, now))
                moves.append((row, verdict, current, step))
            self._write_verdicts(tx, verdicts, now)
            self._move_findings(tx, moves, judged, now)
            judged.licenses = len(rows)
        return judged

    # -- what the pass reads -------------------------------------------------------------

    def _apps(self, tx: Tx, rows: Sequence[Row], now: float) -> dict[str, _App]:
        """What the pass needs of each integration of these rows (an unreadable one is left
        out, and its licenses with it): read for all of them at once, a statement per table,
        since a batch of changes can span thousands of integrations."""
        pairs = sorted({(r["tenant"], r["integration_id"]) for r in rows})
        ids = self.backend.list_param([i for _, i in pairs])
        member = self.backend.member
        layers: dict[str, dict[str, str]] = {}
        for r in tx.execute(
            "SELECT tenant, integration_id, policy FROM license_policies"
            f" WHERE {member('tenant', 'tenants')}",
            {"tenants": self.backend.list_param(sorted({t for t, _ in pairs}))},
        ):
            layers.setdefault(r["tenant"], {})[r["integration_id"]] = r["policy"]
        every = {
            r["integration"]: r["every"]
            for r in tx.execute(
                "SELECT integration, MIN(every_seconds) AS every FROM schedules"
                f" WHERE {member('integration', 'ids')} AND NOT paused"
                " AND every_seconds IS NOT NULL GROUP BY integration",
                {"ids": ids},
            )
        }
        sources: dict[str, list[Row]] = {}
        for r in tx.execute(
            "SELECT integration_id, source, synced_at, first_synced_at FROM license_sources"
            f" WHERE {member('integration_id', 'ids')}",
            {"ids": ids},
        ):
            sources.setdefault(r["integration_id"], []).append(r)
        baselines = {
            r["integration_id"]: r
            for r in tx.execute(
                f"SELECT * FROM license_baselines WHERE {member('integration_id', 'ids')}",
                {"ids": ids},
            )
        }
        apps: dict[str, _App] = {}
        # Most integrations have no policy of their own: their tenant's is merged once.
        policies: dict[tuple[str, str | None], tuple[Policy, float]] = {}
        for tenant, integration_id in pairs:
            try:
                tenant_layers = layers.get(tenant, {})
                own = tenant_layers.get(integration_id)
                if (tenant, own) not in policies:
                    policies[tenant, own] = merged(loads(tenant_layers.get("")), loads(own))
                policy, sync_hours = policies[tenant, own]
                seconds = every.get(integration_id)
                interval = float(seconds) if seconds else sync_hours * 3600
                synced = sources.get(integration_id, [])
                fresh = frozenset(
                    r["source"] for r in synced if r["synced_at"] >= now - 2 * interval
                )
                first = min((r["first_synced_at"] for r in synced), default=now)
                known = baselines.get(integration_id)
                if known is not None:
                    baseline, tiers = _baseline_of(known)
                else:
                    baseline, tiers = learn(tx, tenant, integration_id, policy, now)
                apps[integration_id] = _App(tenant, policy, baseline, tiers, fresh, first)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("integration unreadable", integration=integration_id, error=repr(exc))
        return apps

    def _open_findings(self, tx: Tx, license_ids: Sequence[str]) -> dict[str, Row]:
        """Each license's open finding, else its reclaimed one (which keeps a seat the source
        still lists as deactivated from being reported again)."""
        found: dict[str, Row] = {}
        for r in tx.execute(
            "SELECT * FROM license_findings WHERE (closed_at IS NULL OR outcome = 'reclaimed')"
            f" AND {self.backend.member('license_id', 'ids')} ORDER BY seq",
            {"ids": self.backend.list_param(list(license_ids))},
        ):
            known = found.get(r["license_id"])
            if known is None or known["closed_at"] is not None:
                found[r["license_id"]] = r
        return found

    # -- what the pass writes ------------------------------------------------------------

    def _write_verdicts(self, tx: Tx, rows: list[dict[str, Any]], now: float) -> None:
        params: dict[str, Any] = {"now": now}
        names = ", ".join(name for name, _ in _VERDICT_COLUMNS)
        sets = ", ".join(f"{n} = w.{n}" for n, _ in _VERDICT_COLUMNS if n != "seq")
        source = tx.rows(_VERDICT_COLUMNS, rows, params)
        tx.execute(
            f"WITH w({names}) AS ({source}) UPDATE licenses SET {sets}, checked_at = :now"
            " FROM w WHERE licenses.seq = w.seq",
            params,
        )

    def _move_findings(
        self,
        tx: Tx,
        moves: list[tuple[Row, Verdict, Row | None, Step]],
        judged: Judged,
        now: float,
    ) -> None:
        events: list[NewEvent] = []
        found_before = self._episodes_found(tx, moves)
        closed: list[dict[str, Any]] = []
        reopened: list[dict[str, Any]] = []
        inserted: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        for row, verdict, current, step in moves:
            new = step.finding
            is_open = current is not None and current["closed_at"] is None
            ends = new is None or step.new_episode or new.state is FindingState.CLOSED
            if current is not None and is_open and ends:
                closed.append(_closed(current, verdict))
                judged.closed += 1
            finding_id = None if current is None else str(current["id"])
            send = step.event is not None
            if new is not None and step.new_episode:
                # Written after every close of this batch: a license has one open finding.
                finding = _opened(row, verdict, new, now)
                before = found_before.get((row["id"], finding["verdict"], finding["episode_start"]))
                if before is None:
                    inserted.append(finding)
                    finding_id = finding["id"]
                else:  # found before: reopened, without a second event
                    reopened.append({**finding, "id": before})
                    finding_id = before
                judged.opened += 1
                send = send and before is None  # an episode found before had its event then
            elif current is not None and is_open and new is not None and not ends:
                moved = _moved(current, verdict, new)
                if moved is not None:
                    updated.append(moved)
            if send:
                events.append(_event(row, verdict, step, finding_id))
                judged.events[str(step.event)] = judged.events.get(str(step.event), 0) + 1
        # Closes first: a license has one open finding, the one this batch may open next.
        if closed:
            self._close(tx, closed, now)
        if updated:
            self._update(tx, updated, now)
        for finding in reopened:
            tx.execute(
                "UPDATE license_findings SET state = :state, closed_at = NULL, outcome = NULL,"
                " confidence = :confidence, reason = :reason, monthly_savings = :monthly_savings,"
                " currency = :currency, realizable_at = :realizable_at, until = :until,"
                " updated_at = :updated_at WHERE id = :id",
                finding,
            )
        if inserted:
            self._insert_findings(tx, inserted)
        emit(tx, self.backend, events, now)

    def _episodes_found(
        self, tx: Tx, moves: list[tuple[Row, Verdict, Row | None, Step]]
    ) -> dict[tuple[str, str, float], str]:
        """The findings, by (license, class, episode start), of the episodes this batch opens
        that were found before (one statement for the batch)."""
        licenses = [
            row["id"] for row, _, _, step in moves if step.finding is not None and step.new_episode
        ]
        if not licenses:
            return {}
        return {
            (r["license_id"], r["verdict"], r["episode_start"]): r["id"]
            for r in tx.execute(
                "SELECT id, license_id, verdict, episode_start FROM license_findings"
                f" WHERE {self.backend.member('license_id', 'ids')}",
                {"ids": self.backend.list_param(licenses)},
            )
        }

    def _insert_findings(self, tx: Tx, findings_: list[dict[str, Any]]) -> None:
        params: dict[str, Any] = {}
        names = ", ".join(name for name, _ in _FINDING_COLUMNS)
        source = tx.rows(_FINDING_COLUMNS, findings_, params)
        tx.execute(
            f"WITH w({names}) AS ({source}) INSERT INTO license_findings ({names})"
            f" SELECT {names} FROM w",
            params,
        )

    def _close(self, tx: Tx, closed: list[dict[str, Any]], now: float) -> None:
        params: dict[str, Any] = {"now": now}
        source = tx.rows(_CLOSE_COLUMNS, closed, params)
        tx.execute(
            f"WITH w(id, outcome) AS ({source}) UPDATE license_findings SET state = 'closed',"
            " closed_at = :now, updated_at = :now, outcome = w.outcome FROM w"
            " WHERE license_findings.id = w.id",
            params,
        )

    def _update(self, tx: Tx, updated: list[dict[str, Any]], now: float) -> None:
        """Findings that stay in their episode: one statement for the batch."""
        params: dict[str, Any] = {"now": now}
        source = tx.rows(_UPDATE_COLUMNS, updated, params)
        names = ", ".join(name for name, _ in _UPDATE_COLUMNS)
        sets = ", ".join(f"{n} = w.{n}" for n, _ in _UPDATE_COLUMNS if n != "id")
        tx.execute(
            f"WITH w({names}) AS ({source}) UPDATE license_findings SET {sets},"
            " updated_at = :now FROM w WHERE license_findings.id = w.id",
            params,
        )


def learn(
    tx: Tx, tenant: str, integration_id: str, policy: Policy, now: float
) -> tuple[Baseline, dict[str, Tier]]:
    """Learn an app's baseline and tier prices from all its licenses, and keep them."""
    rows = tx.execute(
        "SELECT activity, activity_day, tier, unit_cost, currency, billing_period"
        " FROM licenses WHERE integration_id = :i AND removed_at IS NULL",
        {"i": integration_id},
    )
    activities = (activity_of(r, strict=False) for r in rows)
    baseline = detect.baseline(activities, day_of(now), policy)
    tiers = _cheapest_tiers(rows)
    params = {
        "tenant": tenant,
        "i": integration_id,
        "threshold": baseline.threshold_days,
        "b": baseline.baseline_days,
        "users": baseline.active_users,
        "fallback": baseline.fallback,
        "tiers": json.dumps({c: t.__dict__ for c, t in tiers.items()}),
        "now": now,
        "n": len(rows),
    }
    tx.execute(
        "INSERT INTO license_baselines (tenant, integration_id, threshold_days,"
        " baseline_days, active_users, fallback, tiers, computed_at, licenses, changed)"
        " VALUES (:tenant, :i, :threshold, :b, :users, :fallback, :tiers, :now, :n, 0)"
        " ON CONFLICT (integration_id) DO UPDATE SET threshold_days = :threshold,"
        " baseline_days = :b, active_users = :users, fallback = :fallback, tiers = :tiers,"
        " computed_at = :now, licenses = :n, changed = 0",
        params,
    )
    return baseline, tiers


def unreadable(exc: Exception) -> Verdict:
    """The verdict of a row greenroom cannot read: looked at again when a sync changes it."""
    return replace(
        REMOVED,
        cls=LicenseClass.UNKNOWN,
        reason_code="unreadable",
        reason=f"greenroom cannot read this license's stored data ({type(exc).__name__})",
    )


def _verdict(row: Row, app: _App, now: float) -> Verdict:
    if row["removed_at"] is not None:
        return REMOVED
    fresh_active = [
        row[f"{source}_last_active"]
        for source in ("app", "idp")
        if source in app.fresh_sources and row[f"{source}_last_active"] is not None
    ]
    account = Account(
        user_id=row["user_id"],
        email=row["email"],
        role=row["role"],
        tier=row["tier"],
        unit_cost=row["unit_cost"],
        currency=row["currency"],
        billing_period=row["billing_period"],
        assigned_at=row["assigned_at"],
        first_seen_at=row["first_seen_at"],
        status=row["status"],
        idp_status=row["idp_status"],
        last_active=max(fresh_active) if fresh_active else None,
        activity=activity_of(row),
        service_account=bool(row["service_account"]),
        renewal_at=row["renewal_at"],
        listed_at_start=row["first_seen_at"] < app.first_synced_at + DAY,
    )
    cheaper = app.tiers.get(row["currency"] or "")
    return detect.classify(
        account, app.baseline, app.policy, fresh=bool(app.fresh_sources), cheaper=cheaper, now=now
    )


def _verdict_row(row: Row, verdict: Verdict, step: Step, now: float) -> dict[str, Any]:
    due = verdict.due_at
    held = step.finding is not None and step.finding.state in (
        FindingState.KEPT,
        FindingState.SNOOZED,
    )
    if held and step.finding is not None and step.finding.until is not None:
        due = step.finding.until if due is None else min(due, step.finding.until)
    return {
        "seq": row["seq"],
        "verdict": verdict.cls.value,
        "action": None if verdict.action is None else verdict.action.value,
        "confidence": None if verdict.confidence is None else verdict.confidence.value,
        "reason_code": verdict.reason_code,
        "reason": verdict.reason,
        "monthly_savings": verdict.monthly_savings,
        "savings_currency": verdict.currency,
        "realizable_at": verdict.realizable_at,
        "episode_start": verdict.episode_start,
        # Never again in this pass: a due time in the past is the next pass's.
        "due_at": None if due is None else max(due, now + 1.0),
    }


def _moved(current: Row, verdict: Verdict, finding: Finding) -> dict[str, Any] | None:
    """The same episode: its state, class and the verdict's words and savings move on (None:
    nothing to write)."""
    if finding == _finding(current) and verdict.reason == current["reason"]:
        return None
    acted = verdict.action is not None
    return {
        "id": current["id"],
        "state": finding.state.value,
        "verdict": finding.verdict_class.value,
        "confidence": verdict.confidence.value if verdict.confidence else current["confidence"],
        "reason": verdict.reason if acted else current["reason"],
        "monthly_savings": verdict.monthly_savings if acted else current["monthly_savings"],
        "currency": verdict.currency if acted else current["currency"],
        "realizable_at": verdict.realizable_at or current["realizable_at"],
    }


def _closed(current: Row, verdict: Verdict) -> dict[str, Any]:
    outcome = "reclaimed" if verdict.reason_code in detect.RECLAIMED_CODES else "resolved"
    return {"id": current["id"], "outcome": outcome}


def _opened(row: Row, verdict: Verdict, finding: Finding, now: float) -> dict[str, Any]:
    """The finding row a new episode opens."""
    return {
        "id": new_finding_id(),
        "tenant": row["tenant"],
        "integration_id": row["integration_id"],
        "license_id": row["id"],
        "verdict": finding.verdict_class.value,
        "action": finding.action.value,
        "confidence": (verdict.confidence or detect.Confidence.LOW).value,
        "state": finding.state.value,
        "episode_start": finding.episode_start if finding.episode_start is not None else now,
        "until": finding.until,
        "reason": verdict.reason,
        "monthly_savings": verdict.monthly_savings,
        "currency": verdict.currency,
        "realizable_at": verdict.realizable_at,
        "opened_at": now,
        "updated_at": now,
    }


def _finding(row: Row) -> Finding:
    return Finding(
        state=FindingState(row["state"]),
        verdict_class=LicenseClass(row["verdict"]),
        action=detect.Action(row["action"]),
        episode_start=row["episode_start"],
        until=row["until"],
        opened_at=row["opened_at"],
    )


def _event(row: Row, verdict: Verdict, step: Step, finding_id: str | None) -> NewEvent:
    payload = {
        "license_id": row["id"],
        "integration_id": row["integration_id"],
        "user_id": row["user_id"],
        "email": row["email"],
        "finding_id": finding_id,
        "verdict": verdict.cls.value,
        "action": None if verdict.action is None else verdict.action.value,
        "confidence": None if verdict.confidence is None else verdict.confidence.value,
        "reason": verdict.reason,
        "monthly_savings": verdict.monthly_savings,
        "currency": verdict.currency,
        "realizable_at": verdict.realizable_at,
        "episode_start": step.finding.episode_start if step.finding else verdict.episode_start,
    }
    return NewEvent(row["tenant"], str(step.event), f"license:{row['id']}", payload)


def _baseline_of(row: Row) -> tuple[Baseline, dict[str, Tier]]:
    baseline = Baseline(
        threshold_days=int(row["threshold_days"]),
        baseline_days=row["baseline_days"],
        active_users=int(row["active_users"]),
        fallback=bool(row["fallback"]),
    )
    tiers = {c: Tier(**t) for c, t in loads(row["tiers"]).items()}
    return baseline, tiers


def _cheapest_tiers(rows: Sequence[Row]) -> dict[str, Tier]:
    """Per currency, the paid tier with the lowest monthly price."""
    cheapest: dict[str, Tier] = {}
    for r in rows:
        cost, currency = r["unit_cost"], r["currency"]
        if not cost or currency is None or r["tier"] is None:
            continue
        monthly = cost / 12 if r["billing_period"] == "year" else cost
        known = cheapest.get(currency)
        if known is None or monthly < _monthly(known):
            cheapest[currency] = Tier(
                name=r["tier"],
                unit_cost=cost,
                currency=currency,
                billing_period=r["billing_period"],
            )
    return cheapest


def _monthly(tier: Tier) -> float:
    return tier.unit_cost / 12 if tier.billing_period == "year" else tier.unit_cost
