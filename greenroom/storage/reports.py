"""Reports in the store: the rows they are gathered from, each report saved once per tenant,
type and period with its files, and its report.ready event written in the same transaction.

A report saved again for its period (a run retried or re-run after a data fix) keeps its id and
gets its new files, and writes no event: a subscriber hears of a period once, unless an admin
resends it (audited)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from greenroom.errors import InvalidInput, NotFound
from greenroom.licenses.records import Finding
from greenroom.reports.gather import RunRow
from greenroom.reports.period import PeriodKind, period_containing
from greenroom.reports.records import (
    PERIOD_LABEL,
    REPORT_LABEL,
    Report,
    ReportFile,
    ReportSubscription,
)
from greenroom.schedules.spec import zone
from greenroom.storage.backend import Row, Tx
from greenroom.storage.base import StoreBase, require_reason, retry_conflicts
from greenroom.storage.codec import dumps, loads
from greenroom.storage.findings import _SELECT as FINDINGS_SELECT
from greenroom.storage.findings import finding_from_row
from greenroom.storage.outbox import NewEvent, emit


@dataclass(frozen=True, kw_only=True)
class FileBody:
    name: str
    content_type: str
    #: Text (HTML, CSV), or the bytes of a binary file (PDF).
    body: str | bytes

    def stored(self) -> tuple[str, str, int]:
        """(encoding, text, size in bytes) as report_files keeps it."""
        if isinstance(self.body, bytes):
            return "base64", base64.b64encode(self.body).decode(), len(self.body)
        return "utf-8", self.body, len(self.body.encode())


class Reports(StoreBase):
    """Every read scoped to a tenant unless a platform asks (tenant=None)."""

    # -- what reports are made of ----------------------------------------------------------

    def finished_runs(self, tenant: str, start: float, end: float) -> list[RunRow]:
        """The tenant's runs that ended (succeeded or failed) in [start, end)."""
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT workflow, labels, state, started_at, finished_at, error_group FROM runs"
                " WHERE tenant = :tenant AND state IN ('succeeded', 'failed')"
                " AND finished_at >= :start AND finished_at < :end",
                {"tenant": tenant, "start": start, "end": end},
            )
        return [
            RunRow(
                workflow=r["workflow"],
                integration=(loads(r["labels"]) or {}).get("integration"),
                succeeded=r["state"] == "succeeded",
                started_at=r["started_at"],
                finished_at=r["finished_at"],
                error_group=r["error_group"],
            )
            for r in rows
        ]

    def last_successes(
        self, tenant: str, integration_ids: Sequence[str], end: float
    ) -> dict[str, float | None]:
        """Each integration's last successful run before `end` (None: none yet)."""
        found: dict[str, float | None] = {}
        with self.backend.transaction(write=False) as tx:
            for integration_id in integration_ids:
                rows = tx.execute(
                    "SELECT MAX(finished_at) AS last FROM runs WHERE tenant = :tenant"
                    " AND state = 'succeeded' AND finished_at < :end AND "
                    + self.backend.label_equals("key", "value"),
                    {"tenant": tenant, "end": end, "key": "integration", "value": integration_id},
                )
                found[integration_id] = rows[0]["last"] if rows else None
        return found

    def error_groups(self, tenant: str, fingerprints: Sequence[str]) -> dict[str, dict[str, str]]:
        if not fingerprints:
            return {}
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT fingerprint, type, message FROM error_groups WHERE tenant = :tenant AND "
                + self.backend.member("fingerprint", "fingerprints"),
                {"tenant": tenant, "fingerprints": self.backend.list_param(list(fingerprints))},
            )
        return {r["fingerprint"]: {"type": r["type"], "message": r["message"]} for r in rows}

    def findings(
        self, tenant: str, start: float, end: float
    ) -> tuple[list[Finding], list[Finding]]:
        """The tenant's open findings, and those closed as reclaimed in [start, end)."""
        with self.backend.transaction(write=False) as tx:
            open_rows = tx.execute(
                f"{FINDINGS_SELECT} WHERE f.tenant = :tenant AND f.closed_at IS NULL",
                {"tenant": tenant},
            )
            reclaimed = tx.execute(
                f"{FINDINGS_SELECT} WHERE f.tenant = :tenant AND f.outcome = 'reclaimed'"
                " AND f.closed_at >= :start AND f.closed_at < :end",
                {"tenant": tenant, "start": start, "end": end},
            )
        return [finding_from_row(r) for r in open_rows], [finding_from_row(r) for r in reclaimed]

    # -- saving a report ---------------------------------------------------------------------

    @retry_conflicts
    def save(
        self,
        *,
        tenant: str,
        report_type: str,
        period: str,
        period_start: float,
        period_end: float,
        timezone: str,
        summary: Mapping[str, Any],
        files: Sequence[FileBody],
        run_id: str | None,
        public_url: str | None = None,
        resend: tuple[str, str] | None = None,
    ) -> tuple[Report, bool]:
        """Save the period's report, and whether it is new. Only a new one writes its
        report.ready event, in this transaction, unless `resend` (actor, reason) asks to tell
        its subscribers again (audited, once per run):
        a report made twice, or by a run resumed after its worker died, is told once."""
        now = self.clock.now()
        key = {"tenant": tenant, "type": report_type, "period": period, "start": period_start}
        with self.backend.transaction() as tx:
            tx.execute(
                "INSERT INTO reports (id, tenant, report_type, period, period_start, period_end,"
                " timezone, summary, run_id, created_at, updated_at, published) VALUES (:id,"
                " :tenant, :type, :period, :start, :end, :tz, :summary, :run, :now, :now, 0)"
                " ON CONFLICT (tenant, report_type, period, period_start) DO UPDATE SET"
                " summary = excluded.summary, run_id = excluded.run_id,"
                " updated_at = excluded.updated_at",
                {
                    **key,
                    "id": str(uuid.uuid4()),
                    "end": period_end,
                    "tz": timezone,
                    "summary": dumps(dict(summary)),
                    "run": run_id,
                    "now": now,
                },
            )
            # The upsert holds the row's lock: a second save of the period waits for this one.
            row = tx.execute(
                "SELECT * FROM reports WHERE tenant = :tenant AND report_type = :type"
                " AND period = :period AND period_start = :start",
                key,
            )[0]
            tx.execute("DELETE FROM report_files WHERE report_id = :id", {"id": row["id"]})
            stored = [(f, *f.stored()) for f in files]
            tx.execute_many(
                "INSERT INTO report_files (report_id, name, content_type, size, encoding, body)"
                " VALUES (:report_id, :name, :content_type, :size, :encoding, :body)",
                [
                    {
                        "report_id": row["id"],
                        "name": f.name,
                        "content_type": f.content_type,
                        "size": size,
                        "encoding": encoding,
                        "body": text,
                    }
                    for f, encoding, text, size in stored
                ],
            )
            created = row["published"] == 0
            if created:
                self._publish(tx, row, public_url, now)
            elif resend is not None and not self._resent_by(tx, row["id"], run_id):
                self._publish(tx, row, public_url, now)
                self._audit_resend(tx, row, resend[0], resend[1], run_id)
            return self._get(tx, row["id"], tenant), created

    def _resent_by(self, tx: Tx, report_id: str, run_id: str | None) -> bool:
        """Whether this run resent the report already (its step ran again after a crash)."""
        if run_id is None:
            return False
        rows = tx.execute(
            "SELECT detail FROM audit_log WHERE action = 'report.resend' AND target = :id",
            {"id": report_id},
        )
        return any((loads(r["detail"]) or {}).get("run_id") == run_id for r in rows)

    def _audit_resend(
        self, tx: Tx, row: Row, actor: str, reason: str, run_id: str | None = None
    ) -> None:
        self._audit(
            tx,
            tenant=row["tenant"],
            actor=actor,
            action="report.resend",
            target=row["id"],
            reason=reason,
            detail={
                "report_type": row["report_type"],
                "period_start": row["period_start"],
                "run_id": run_id,
            },
        )

    def _publish(self, tx: Tx, row: Row, public_url: str | None, now: float) -> None:
        """Write the report's report.ready event (docs/reports.md), its links on `public_url`
        (the API's address, if known)."""
        tx.execute("UPDATE reports SET published = published + 1 WHERE id = :id", {"id": row["id"]})
        files = tx.execute(
            "SELECT name, content_type, size FROM report_files WHERE report_id = :id ORDER BY name",
            {"id": row["id"]},
        )
        emit(
            tx,
            self.backend,
            [
                NewEvent(
                    row["tenant"],
                    "report.ready",
                    f"report:{row['id']}",
                    ready_payload(row, files, public_url),
                )
            ],
            now,
        )

    @retry_conflicts
    def resend(
        self,
        report_id: str,
        *,
        actor: str,
        reason: str,
        tenant: str | None = None,
        public_url: str | None = None,
    ) -> Report:
        """Tell the report's subscribers again (a new report.ready event): an admin's action,
        audited."""
        require_reason(reason)
        with self.backend.transaction() as tx:
            row = self._row(tx, report_id, tenant)
            self._publish(tx, row, public_url, self.clock.now())
            self._audit_resend(tx, row, actor, reason)
            return self._get(tx, row["id"], tenant)

    # -- reading reports ---------------------------------------------------------------------

    def get(self, report_id: str, *, tenant: str | None = None) -> Report:
        with self.backend.transaction(write=False) as tx:
            return self._get(tx, report_id, tenant)

    def list_reports(
        self,
        *,
        tenant: str | None = None,
        report_type: str | None = None,
        after: tuple[float, str] | None = None,
        limit: int = 50,
    ) -> tuple[list[Report], tuple[float, str] | None]:
        """A page of reports, newest period first, and the `after` of the next page."""
        clauses = ["1 = 1"]
        params: dict[str, Any] = {"limit": limit, "tenant": tenant, "type": report_type}
        if tenant is not None:
            clauses.append("tenant = :tenant")
        if report_type is not None:
            clauses.append("report_type = :type")
        if after is not None:
            clauses.append(
                "(period_start < :after_start OR (period_start = :after_start AND id < :after_id))"
            )
            params |= {"after_start": after[0], "after_id": after[1]}
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT * FROM reports WHERE {' AND '.join(clauses)}"
                " ORDER BY period_start DESC, id DESC LIMIT :limit",
                params,
            )
            reports = [self._with_files(tx, r) for r in rows]
        more = (rows[-1]["period_start"], rows[-1]["id"]) if len(rows) == limit else None
        return reports, more

    def file(
        self, report_id: str, name: str, *, tenant: str | None = None
    ) -> tuple[ReportFile, bytes]:
        with self.backend.transaction(write=False) as tx:
            row = self._row(tx, report_id, tenant)
            found = tx.execute(
                "SELECT * FROM report_files WHERE report_id = :id AND name = :name",
                {"id": row["id"], "name": name},
            )
        if not found:
            raise NotFound(f"report {report_id} has no file {name!r}")
        f = found[0]
        body = base64.b64decode(f["body"]) if f["encoding"] == "base64" else f["body"].encode()
        return ReportFile(name=f["name"], content_type=f["content_type"], size=f["size"]), body

    def _row(self, tx: Tx, report_id: str, tenant: str | None) -> Row:
        scope = "" if tenant is None else " AND tenant = :tenant"
        rows = tx.execute(
            f"SELECT * FROM reports WHERE id = :id{scope}", {"id": report_id, "tenant": tenant}
        )
        if not rows:
            raise NotFound(f"report {report_id} not found")
        return rows[0]

    def _get(self, tx: Tx, report_id: str, tenant: str | None) -> Report:
        return self._with_files(tx, self._row(tx, report_id, tenant))

    def _with_files(self, tx: Tx, row: Row) -> Report:
        files = tx.execute(
            "SELECT name, content_type, size FROM report_files WHERE report_id = :id ORDER BY name",
            {"id": row["id"]},
        )
        return Report(
            id=row["id"],
            tenant=row["tenant"],
            report_type=row["report_type"],
            period=row["period"],
            period_start=row["period_start"],
            period_end=row["period_end"],
            timezone=row["timezone"],
            summary=loads(row["summary"]),
            run_id=row["run_id"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            published=row["published"],
            files=tuple(ReportFile(**f) for f in files),
        )

    # -- subscriptions -----------------------------------------------------------------------

    @retry_conflicts
    def subscribe(
        self,
        *,
        tenant: str,
        report_type: str,
        period: str,
        timezone: str,
        schedule_id: str,
        subscription_ids: Sequence[str],
        actor: str,
    ) -> ReportSubscription:
        subscription_id, now = str(uuid.uuid4()), self.clock.now()
        with self.backend.transaction() as tx:
            tx.execute(
                "INSERT INTO report_subscriptions (id, tenant, report_type, period, timezone,"
                " schedule_id, subscription_ids, enabled, created_by, created_at, updated_at)"
                " VALUES (:id, :tenant, :type, :period, :tz, :schedule, :subs, :enabled, :actor,"
                " :now, :now)",
                {
                    "id": subscription_id,
                    "tenant": tenant,
                    "type": report_type,
                    "period": period,
                    "tz": timezone,
                    "schedule": schedule_id,
                    "subs": dumps(list(subscription_ids)),
                    "enabled": True,
                    "actor": actor,
                    "now": now,
                },
            )
            self._audit(
                tx,
                tenant=tenant,
                actor=actor,
                action="report_subscription.create",
                target=subscription_id,
                reason="created",
                detail={"report_type": report_type, "period": period, "timezone": timezone},
            )
            return self._subscription(tx, subscription_id, tenant)

    def subscription(
        self, subscription_id: str, *, tenant: str | None = None
    ) -> ReportSubscription:
        with self.backend.transaction(write=False) as tx:
            return self._subscription(tx, subscription_id, tenant)

    def subscriptions(self, *, tenant: str | None = None) -> list[ReportSubscription]:
        scope = "" if tenant is None else " WHERE tenant = :tenant"
        with self.backend.transaction(write=False) as tx:
            rows = tx.execute(
                f"SELECT * FROM report_subscriptions{scope} ORDER BY created_at, id",
                {"tenant": tenant},
            )
        return [_subscription_from_row(r) for r in rows]

    @retry_conflicts
    def set_enabled(
        self, subscription_id: str, enabled: bool, *, actor: str, tenant: str | None = None
    ) -> ReportSubscription:
        with self.backend.transaction() as tx:
            current = self._subscription(tx, subscription_id, tenant)
            tx.execute(
                "UPDATE report_subscriptions SET enabled = :enabled, updated_at = :now"
                " WHERE id = :id",
                {"enabled": enabled, "now": self.clock.now(), "id": current.id},
            )
            self._audit(
                tx,
                tenant=current.tenant,
                actor=actor,
                action="report_subscription.update",
                target=current.id,
                reason="updated",
                detail={"enabled": enabled},
            )
            return self._subscription(tx, current.id, tenant)

    @retry_conflicts
    def unsubscribe(self, subscription_id: str, *, actor: str, tenant: str | None = None) -> None:
        with self.backend.transaction() as tx:
            current = self._subscription(tx, subscription_id, tenant)
            tx.execute("DELETE FROM report_subscriptions WHERE id = :id", {"id": current.id})
            self._audit(
                tx,
                tenant=current.tenant,
                actor=actor,
                action="report_subscription.delete",
                target=current.id,
                reason="deleted",
            )

    def _subscription(self, tx: Tx, subscription_id: str, tenant: str | None) -> ReportSubscription:
        scope = "" if tenant is None else " AND tenant = :tenant"
        rows = tx.execute(
            f"SELECT * FROM report_subscriptions WHERE id = :id{scope}",
            {"id": subscription_id, "tenant": tenant},
        )
        if not rows:
            raise NotFound(f"report subscription {subscription_id} not found")
        return _subscription_from_row(rows[0])


def _subscription_from_row(row: Row) -> ReportSubscription:
    return ReportSubscription(
        id=row["id"],
        tenant=row["tenant"],
        report_type=row["report_type"],
        period=row["period"],
        timezone=row["timezone"],
        schedule_id=row["schedule_id"],
        subscription_ids=tuple(loads(row["subscription_ids"])),
        enabled=bool(row["enabled"]),
        created_by=row["created_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def ready_payload(row: Row, files: Sequence[Row], public_url: str | None) -> dict[str, Any]:
    """What a report.ready event says: the report, its period in its time zone, its headline
    numbers, its files and where to download them; `labels` are what report subscriptions'
    event subscriptions match."""
    tz = zone(row["timezone"])
    first = datetime.fromtimestamp(row["period_start"], tz).date()
    period = period_containing(PeriodKind(row["period"]), first, row["timezone"])
    base = f"{public_url.rstrip('/')}/v1/reports/{row['id']}" if public_url else None
    return {
        "report_id": row["id"],
        "report_type": row["report_type"],
        "period": row["period"],
        "title": period.title,
        "period_start": datetime.fromtimestamp(row["period_start"], tz).isoformat(),
        "period_end": datetime.fromtimestamp(row["period_end"], tz).isoformat(),
        "timezone": row["timezone"],
        "summary": loads(row["summary"]),
        "resend": row["published"] > 0,
        "url": base,
        "files": [
            {
                "name": f["name"],
                "content_type": f["content_type"],
                "size": f["size"],
                "url": f"{base}/files/{f['name']}" if base else None,
            }
            for f in files
        ],
        "labels": {REPORT_LABEL: row["report_type"], PERIOD_LABEL: row["period"]},
    }


def check_file_name(name: str) -> str:
    if not name or "/" in name or len(name) > 100:
        raise InvalidInput(f"{name!r} is not a report file name")
    return name
