"""Reports: periods across daylight-saving changes, both reports golden on fixed data (HTML
structure, CSV content), and once per period in the store on SQLite and PostgreSQL: the same
period saved twice is one report and one report.ready event; a resend is another, audited."""

from __future__ import annotations

import csv
import io
import os
import signal
from collections.abc import Iterator
from datetime import date, datetime
from html.parser import HTMLParser
from zoneinfo import ZoneInfo

import pytest

from greenroom import App, RunContext
from greenroom.demo.setup import register_tenant
from greenroom.licenses.records import Finding
from greenroom.reports import gather, render, workflows
from greenroom.reports.gather import RunRow
from greenroom.reports.period import PeriodKind, last_complete, period_containing
from greenroom.reports.workflows import REPORT_WORKFLOW, add_reports, save_report
from greenroom.storage.events import EventFilter
from tests.helpers import fast_app, settle_events, wait_for_states, worker_running

BERLIN = "Europe/Berlin"
H = 3600.0


def at(text: str, tz: str = BERLIN) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


# -- periods ------------------------------------------------------------------------------


def test_a_week_across_the_autumn_change_has_169_hours() -> None:
    # Clocks went back in Berlin on Sunday 2026-10-25: that week is an hour longer.
    week = last_complete(PeriodKind.WEEK, at("2026-10-26T07:00"), BERLIN)
    assert (week.first, week.after) == (date(2026, 10, 19), date(2026, 10, 26))
    assert week.start == at("2026-10-19T00:00") and week.end == at("2026-10-26T00:00")
    assert week.end - week.start == 169 * H
    spring = period_containing(PeriodKind.WEEK, date(2026, 3, 29), BERLIN)
    assert spring.end - spring.start == 167 * H
    day = period_containing(PeriodKind.DAY, date(2026, 10, 25), BERLIN)
    assert day.end - day.start == 25 * H


def test_periods_end_at_local_midnight() -> None:
    # 00:30 on 1 December in Berlin is still 30 November in UTC: the month is November's.
    month = last_complete(PeriodKind.MONTH, at("2026-12-01T00:30"), BERLIN)
    assert month.title == "November 2026"
    assert month.end == at("2026-12-01T00:00")
    assert datetime.fromtimestamp(month.end, ZoneInfo("UTC")).isoformat() == (
        "2026-11-30T23:00:00+00:00"
    )
    # A run at 23:59 on Sunday local time still reports the week before.
    week = last_complete(PeriodKind.WEEK, at("2026-12-06T23:59"), BERLIN)
    assert week.title == "the week of 2026-11-23"
    assert last_complete(PeriodKind.DAY, at("2026-12-07T00:00"), BERLIN).title == "2026-12-06"


# -- golden reports -------------------------------------------------------------------------

T = at("2026-11-30T00:00")
END = at("2026-12-07T00:00")
RUNS = [
    # crm: fails twice at 10:00 and 11:00, repaired at 12:00 (MTTR 2 h), then fails again.
    RunRow(
        workflow="crm.sync",
        integration="int_crm",
        succeeded=True,
        started_at=T + 9 * H - 10,
        finished_at=T + 9 * H,
        error_group=None,
    ),
    RunRow(
        workflow="crm.sync",
        integration="int_crm",
        succeeded=False,
        started_at=T + 10 * H - 30,
        finished_at=T + 10 * H,
        error_group="fp_timeout",
    ),
    RunRow(
        workflow="crm.sync",
        integration="int_crm",
        succeeded=False,
        started_at=T + 11 * H - 30,
        finished_at=T + 11 * H,
        error_group="fp_timeout",
    ),
    RunRow(
        workflow="crm.sync",
        integration="int_crm",
        succeeded=True,
        started_at=T + 12 * H - 20,
        finished_at=T + 12 * H,
        error_group=None,
    ),
    RunRow(
        workflow="crm.sync",
        integration="int_crm",
        succeeded=False,
        started_at=T + 13 * H - 5,
        finished_at=T + 13 * H,
        error_group="fp_login",
    ),
    RunRow(
        workflow="cleanup",
        integration=None,
        succeeded=True,
        started_at=T + 1 * H - 2,
        finished_at=T + 1 * H,
        error_group=None,
    ),
]
INTEGRATIONS = {"int_crm": "Acme CRM", "int_hr": "=HR tool"}
GROUPS = {
    "fp_timeout": {"type": "TimeoutError", "message": "page did not load"},
    "fp_login": {"type": "LoggedOut", "message": "<b>session</b> expired"},
}


def finding(n: int, verdict: str = "idle", savings: float = 10.0, **kw: object) -> Finding:
    values: dict[str, object] = {
        "id": f"f{n}",
        "tenant": "t1",
        "integration_id": "int_crm" if n % 2 else "int_hr",
        "license_id": f"l{n}",
        "user_id": f"u{n}",
        "email": f"user{n:02d}@acme.example",
        "verdict": verdict,
        "action": "reclaim",
        "confidence": "high",
        "state": "candidate",
        "episode_start": T - 40 * 86400,
        "until": None,
        "reason": "idle for 40 days",
        "monthly_savings": savings,
        "currency": "USD",
        "realizable_at": None,
        "action_run_id": None,
        "note": None,
        "opened_at": T - 30 * 86400,
        "updated_at": T,
        "closed_at": None,
        "outcome": None,
    }
    values.update(kw)
    return Finding(**values)  # type: ignore[arg-type]


class Tables(HTMLParser):
    """Rows of each table by id, as cell texts; and whether the page has a script or an SVG."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.tags: set[str] = set()
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "table":
            self._table = dict(attrs).get("id") or "?"
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table:
            self.tables[self._table].append([])
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parsed(page: str) -> Tables:
    tables = Tables()
    tables.feed(page)
    return tables


CONTEXT = {
    "tenant": "t1",
    "title": "the week of 2026-11-30",
    "timezone": BERLIN,
    "period_label": "2026-11-30T00:00 to 2026-12-07T00:00",
    "made": "2026-12-07 07:00",
    "report_key": "health/week/2026-11-30",
}


def test_health_report_golden() -> None:
    data = gather.health(
        RUNS,
        integrations=INTEGRATIONS,
        last_success={"int_crm": T + 12 * H, "int_hr": None},
        groups=GROUPS,
        period_end=END,
    )
    assert data["totals"] == {
        "runs": 6,
        "succeeded": 3,
        "failed": 3,
        "success_rate": 0.5,
        "mttr_seconds": 7200.0,
        "stale": 2,
    }
    files = {f.name: f for f in render.health_files(data, CONTEXT)}
    assert sorted(files) == [
        "health-failures.csv",
        "health-integrations.csv",
        "health.html",
        "health.pdf",  # greenroom[pdf], installed for the tests
    ]
    pdf = files["health.pdf"].body
    assert isinstance(pdf, bytes) and pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert list(csv.reader(io.StringIO(files["health-integrations.csv"].body))) == [
        [
            "integration",
            "kind",
            "runs",
            "succeeded",
            "failed",
            "success_rate",
            "p50_seconds",
            "p95_seconds",
            "mttr_seconds",
            "still_failing",
            "last_success",
            "stale",
        ],
        ["'=HR tool", "integration", "0", "0", "0", "", "", "", "", "0", "", "true"],
        [
            "Acme CRM",
            "integration",
            "5",
            "2",
            "3",
            "0.4",
            "20.0",
            "30.0",
            "7200.0",
            "1",
            "2026-11-30 12:00",
            "true",
        ],
        ["cleanup", "workflow", "1", "1", "0", "1.0", "2.0", "2.0", "", "0", "", "false"],
    ]
    assert list(csv.reader(io.StringIO(files["health-failures.csv"].body))) == [
        ["integration", "error_group", "type", "message", "count"],
        ["Acme CRM", "fp_timeout", "TimeoutError", "page did not load", "2"],
        ["Acme CRM", "fp_login", "LoggedOut", "<b>session</b> expired", "1"],
    ]
    page = parsed(files["health.html"].body)
    assert page.tables["integrations"] == [
        ["=HR tool stale", "0", "—", "—", "—", "—", "—"],
        [
            "Acme CRM stale",
            "5",
            "40.0 %",
            "20.0 s",
            "30.0 s",
            "2.0 h failing",
            "2026-11-30 12:00",
        ],
        ["cleanup", "1", "100.0 %", "2.0 s", "2.0 s", "—", "—"],
    ]
    assert page.tables["failures"] == [
        ["Acme CRM", "TimeoutError page did not load", "2"],
        ["Acme CRM", "LoggedOut <b>session</b> expired", "1"],
    ]
    assert "svg" in page.tags and "script" not in page.tags and "link" not in page.tags
    assert "<b>session" not in files["health.html"].body, "messages are escaped"


def test_savings_report_golden_keeps_20_rows_in_html_and_all_in_csv() -> None:
    open_findings = [finding(n, savings=float(n)) for n in range(1, 26)]
    open_findings += [finding(30, verdict="underused", savings=5.0, action="downgrade")]
    open_findings += [finding(31, savings=50.0, state="snoozed")]
    reclaimed = [finding(40, savings=12.5, state="closed", outcome="reclaimed", closed_at=T + H)]
    data = gather.savings(open_findings, reclaimed, integrations=INTEGRATIONS)
    assert data["available"] == {"USD": 330.0}  # 1..25 and the downgrade; not the snoozed
    assert data["realized"] == {"USD": 12.5}
    assert data["open_findings"] == 27 and data["reclaimed"] == 1
    files = {f.name: f for f in render.savings_files(data, {**CONTEXT, "title": "x"})}
    apps = list(csv.reader(io.StringIO(files["savings-apps.csv"].body)))
    assert apps == [
        [
            "app",
            "integration_id",
            "currency",
            "open_findings",
            "available_monthly",
            "realized_monthly",
        ],
        ["Acme CRM", "int_crm", "USD", "14", "169.0", "0.0"],
        ["'=HR tool", "int_hr", "USD", "13", "161.0", "12.5"],
    ]
    idle = list(csv.reader(io.StringIO(files["savings-idle.csv"].body)))
    assert len(idle) == 1 + 26  # 25 idle and the snoozed one; the underused is not idle
    assert idle[1][:7] == [
        "Acme CRM",
        "user31@acme.example",
        "idle",
        "snoozed",
        "high",
        "50.0",
        "USD",
    ]
    assert idle[1][7] == "2026-10-21 01:00"
    page = parsed(files["savings.html"].body)
    assert len(page.tables["idle"]) == gather.TOP == 20
    assert page.tables["idle"][1] == [
        "Acme CRM",
        "user25@acme.example",
        "idle",
        "25.00 USD",
        "2026-10-21 01:00",
    ]
    assert page.tables["classes"] == [
        ["idle", "=HR tool", "12"],
        ["idle", "Acme CRM", "14"],
        ["underused", "=HR tool", "1"],
    ]
    assert page.tables["apps"][0] == ["Acme CRM", "14", "169.00 USD", "0.00 USD"]


# -- once per period, in the store ------------------------------------------------------------


@pytest.fixture
def app(db_url: str) -> Iterator[App]:
    a = fast_app(db_url, public_url="https://greenroom.example.com")
    add_reports(a)

    @a.workflow(name="sync")
    async def sync(ctx: RunContext, fail: bool = False) -> int:
        if fail:
            raise ValueError("the page changed")
        return 1

    register_tenant(a.store, "t1")
    yield a
    a.close()


def ready_events(app: App) -> list[dict[str, object]]:
    settle_events(app.store)
    events = app.store.events.list_events(EventFilter(tenant="t1", types=["report.ready"]))
    return [e.payload for e, _ in events]


def test_the_same_period_twice_is_one_report_and_one_event(app: App) -> None:
    period = last_complete(PeriodKind.WEEK, at("2026-12-07T07:00"), BERLIN)
    data = gather.health([], integrations={}, last_success={}, groups={}, period_end=period.end)
    first, created = save_report(
        app.store,
        tenant="t1",
        report_type="health",
        period=period,
        data=data,
        run_id="r1",
        public_url="https://greenroom.example.com",
    )
    again, created_again = save_report(
        app.store,
        tenant="t1",
        report_type="health",
        period=period,
        data=data,
        run_id="r2",
        public_url="https://greenroom.example.com",
    )
    assert created and not created_again
    assert again.id == first.id and again.run_id == "r2" and again.published == 1
    (payload,) = ready_events(app)
    assert payload["report_id"] == first.id and payload["title"] == "the week of 2026-11-30"
    assert payload["period_start"] == "2026-11-30T00:00:00+01:00"
    assert payload["labels"] == {"report": "health", "report_period": "week"}
    assert payload["files"][0] == {  # type: ignore[index]
        "name": "health-failures.csv",
        "content_type": "text/csv; charset=utf-8",
        "size": len("integration,error_group,type,message,count\r\n"),
        "url": f"https://greenroom.example.com/v1/reports/{first.id}/files/health-failures.csv",
    }
    resent = app.store.reports.resend(first.id, actor="ops", reason="the CRM data was fixed")
    assert resent.published == 2
    assert [p["resend"] for p in ready_events(app)] == [False, True]
    (entry,) = [a for a in app.store.admin.audit_log(tenant="t1") if a.action == "report.resend"]
    assert entry.reason == "the CRM data was fixed" and entry.target == first.id
    # A run made with --force-resend tells them again once, however often its step runs.
    for _ in range(2):
        forced, _ = save_report(
            app.store,
            tenant="t1",
            report_type="health",
            period=period,
            data=data,
            run_id="r3",
            public_url=None,
            resend=("admin@t1", "forced"),
        )
    assert forced.published == 3 and len(ready_events(app)) == 3


async def test_the_workflow_reports_the_runs_of_its_period(app: App) -> None:
    async with worker_running(app, queues=["default", "reports"]):
        runs = [await app.enqueue("sync", {"fail": n == 2}, tenant="t1") for n in range(3)]
        await wait_for_states(app.store, [r.id for r in runs])
        tomorrow = datetime.fromtimestamp(app.store.clock.now() + 86400, ZoneInfo("UTC"))
        made = [
            await app.enqueue(
                REPORT_WORKFLOW,
                {"report_type": t, "period": "day", "at": tomorrow.isoformat()},
                tenant="t1",
            )
            for t in ("health", "savings", "health")
        ]
        done = await wait_for_states(app.store, [r.id for r in made])
    assert [r.state.value for r in done] == ["succeeded"] * 3
    assert done[0].output["report_id"] == done[2].output["report_id"]  # type: ignore[index]
    # Whichever run saved it first published it; the others (or a step run again after a
    # lost lease) found it made.
    assert sum(r.output["created"] for r in done) <= 2  # type: ignore[index]
    report = app.store.reports.get(done[0].output["report_id"])  # type: ignore[index]
    assert report.summary["runs"] == 3 and report.summary["failed"] == 1
    assert report.published == 1
    assert len(ready_events(app)) == 2
    (row,) = [r for r in gather_rows(app) if r[0] == "sync"]
    assert row[2:5] == ["3", "2", "1"]


def gather_rows(app: App) -> list[list[str]]:
    (report,) = app.store.reports.list_reports(tenant="t1", report_type="health")[0]
    _, body = app.store.reports.file(report.id, "health-integrations.csv", tenant="t1")
    return list(csv.reader(io.StringIO(body.decode())))[1:]


async def test_a_renderer_that_died_is_replaced() -> None:
    """A renderer killed (the OOM killer, say) breaks its pool; the next render gets a new one."""
    data = gather.health(
        RUNS,
        integrations=INTEGRATIONS,
        last_success={"int_crm": T + 12 * H, "int_hr": None},
        groups=GROUPS,
        period_end=END,
    )
    first = await workflows.rendered("health", data, CONTEXT)
    pool = workflows._renderer_pool()
    for process in list(pool._processes.values()):
        os.kill(process.pid, signal.SIGKILL)
        process.join(timeout=10)
    again = await workflows.rendered("health", data, CONTEXT)
    assert [f.name for f in again] == [f.name for f in first]
    assert workflows._renderer_pool() is not pool
