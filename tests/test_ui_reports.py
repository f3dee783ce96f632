"""The console's reports page over HTTP: a tenant's reports with their files to download, another
tenant's neither listed nor downloadable."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from ui_helpers import sign_in

from greenroom.model import Role
from greenroom.reports import gather
from greenroom.reports.period import PeriodKind, last_complete
from greenroom.reports.workflows import save_report
from tests.api_helpers import ApiSetup, api_setup


@pytest.fixture
def console(sqlite_url: str) -> Iterator[ApiSetup]:
    with api_setup(sqlite_url) as setup:
        yield setup


def made(api: ApiSetup, tenant: str) -> str:
    period = last_complete(PeriodKind.WEEK, time.time(), "Europe/Berlin")
    data = gather.health([], integrations={}, last_success={}, groups={}, period_end=period.end)
    report, _ = save_report(
        api.app.store,
        tenant=tenant,
        report_type="health",
        period=period,
        data=data,
        run_id=None,
        public_url=None,
    )
    return report.id


def test_reports_are_listed_with_their_files_per_tenant(console: ApiSetup) -> None:
    acme, globex = made(console, "acme"), made(console, "globex")
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        listed = c.get("/ui/reports").text
        assert f'data-report="{acme}"' in listed and globex not in listed
        csv = c.get(f"/ui/reports/{acme}/files/health-integrations.csv")
        assert csv.status_code == 200 and csv.text.startswith("integration,kind,runs")
        assert "attachment" in csv.headers["content-disposition"]
        assert c.get(f"/ui/reports/{globex}/files/health.html").status_code == 404
