"""The client's report methods (docs/reports.md): subscribe to reports, list and download the
reports made, make a period's report now, resend one. `Client` inherits them."""

from __future__ import annotations

from collections.abc import Iterator

from greenroom.api.report_schemas import (
    ReportOut,
    ReportRunIn,
    ReportRunOut,
    ReportSubscriptionCreate,
    ReportSubscriptionCreated,
    ReportSubscriptionOut,
)
from greenroom.api.schemas import Page
from greenroom.client_http import _body, _pages, _params, _parse, _q
from greenroom.client_licenses import _Http


class ReportsClient(_Http):
    """Report methods over the `_request` of the class that inherits them."""

    def report_subscriptions(self, *, tenant: str | None = None) -> list[ReportSubscriptionOut]:
        response = self._request("GET", "/v1/report-subscriptions", params=_params(tenant=tenant))
        return _parse(list[ReportSubscriptionOut], response)

    def subscribe_report(self, body: ReportSubscriptionCreate) -> ReportSubscriptionCreated:
        """Webhooks' signing secrets are in the answer only."""
        response = self._request("POST", "/v1/report-subscriptions", json=_body(body))
        return _parse(ReportSubscriptionCreated, response)

    def set_report_subscription(
        self, subscription_id: str, *, enabled: bool
    ) -> ReportSubscriptionOut:
        path = f"/v1/report-subscriptions/{_q(subscription_id)}"
        response = self._request("PATCH", path, json={"enabled": enabled})
        return _parse(ReportSubscriptionOut, response)

    def unsubscribe_report(self, subscription_id: str) -> None:
        self._request("DELETE", f"/v1/report-subscriptions/{_q(subscription_id)}")

    def reports(
        self,
        *,
        report_type: str | None = None,
        tenant: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[ReportOut]:
        """One page of reports, newest period first; next_cursor for the next."""
        params = _params(type=report_type, tenant=tenant, cursor=cursor, limit=limit)
        return _parse(Page[ReportOut], self._request("GET", "/v1/reports", params=params))

    def iter_reports(
        self, *, report_type: str | None = None, tenant: str | None = None, page_size: int = 100
    ) -> Iterator[ReportOut]:
        return _pages(
            lambda c: self.reports(
                report_type=report_type, tenant=tenant, cursor=c, limit=page_size
            )
        )

    def get_report(self, report_id: str) -> ReportOut:
        return _parse(ReportOut, self._request("GET", f"/v1/reports/{_q(report_id)}"))

    def report_file(self, report_id: str, name: str) -> bytes:
        path = f"/v1/reports/{_q(report_id)}/files/{_q(name)}"
        return self._request("GET", path).content

    def run_report(self, body: ReportRunIn) -> ReportRunOut:
        """Make a period's report now (the run's id); `again` after a data fix."""
        return _parse(ReportRunOut, self._request("POST", "/v1/reports", json=_body(body)))

    def resend_report(self, report_id: str, *, reason: str) -> ReportOut:
        """Tell the report's subscribers again: audited, with the reason."""
        path = f"/v1/reports/{_q(report_id)}/resend"
        return _parse(ReportOut, self._request("POST", path, json={"reason": reason}))
