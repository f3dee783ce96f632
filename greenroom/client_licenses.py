"""The client's license methods (docs/licenses.md): push a sync's accounts, read licenses and
findings, act on findings, savings and the license policy. `Client` inherits them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol, TypedDict, Unpack

import httpx

from greenroom.api.license_schemas import (
    FindingOut,
    LicenseOut,
    PolicyOut,
    PushOut,
    SavingsOut,
)
from greenroom.api.schemas import Page
from greenroom.client_http import _pages, _params, _parse, _q
from greenroom.licenses.ingest import AccountRow
from greenroom.licenses.policy import PolicyIn


class LicenseFilters(TypedDict, total=False):
    """Filters of the licenses list; they combine, and None is no filter."""

    integration: str | None
    verdict: str | None
    confidence: str | None
    #: the open finding's state; "none": licenses without one
    finding_state: str | None
    #: licenses the app no longer lists
    removed: bool
    #: platform keys: one tenant
    tenant: str | None
    #: "savings" (largest first) or "recent"
    sort: str


class FindingFilters(TypedDict, total=False):
    """Filters of the findings list; they combine, and None is no filter."""

    integration: str | None
    state: str | None
    verdict: str | None
    #: False: closed findings too
    open: bool
    tenant: str | None
    sort: str


class _Http(Protocol):
    """What the methods need of the client: its requests, answered or raised as problems."""

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response: ...


def _row(row: AccountRow | dict[str, Any]) -> Any:
    return row.model_dump(mode="json", exclude_none=True) if isinstance(row, AccountRow) else row


class LicensesClient(_Http):
    """License methods over the `_request` of the class that inherits them."""

    def push_accounts(
        self,
        integration_id: str,
        rows: Sequence[AccountRow | dict[str, Any]],
        *,
        complete: bool = False,
        sync: str | None = None,
    ) -> PushOut:
        """Save a sync's accounts (at most 10,000 per call): all of them, or none on a 422
        naming the bad rows. Pages of one sync share `sync`; the last page of a full listing
        says `complete` and removes the accounts no page listed."""
        params = _params(complete=str(complete).lower(), sync=sync)
        path = f"/v1/integrations/{_q(integration_id)}/accounts"
        response = self._request("POST", path, json=[_row(r) for r in rows], params=params)
        return _parse(PushOut, response)

    def licenses(
        self,
        *,
        cursor: str | None = None,
        limit: int = 50,
        **filters: Unpack[LicenseFilters],
    ) -> Page[LicenseOut]:
        """One page of licenses; pass its next_cursor for the next."""
        params = _params(**_flags(filters), cursor=cursor, limit=limit)
        return _parse(Page[LicenseOut], self._request("GET", "/v1/licenses", params=params))

    def iter_licenses(
        self, *, page_size: int = 100, **filters: Unpack[LicenseFilters]
    ) -> Iterator[LicenseOut]:
        return _pages(lambda c: self.licenses(cursor=c, limit=page_size, **filters))

    def get_license(self, license_id: str) -> LicenseOut:
        return _parse(LicenseOut, self._request("GET", f"/v1/licenses/{_q(license_id)}"))

    def findings(
        self,
        *,
        cursor: str | None = None,
        limit: int = 50,
        **filters: Unpack[FindingFilters],
    ) -> Page[FindingOut]:
        """One page of findings (open ones unless open=False); next_cursor for the next."""
        params = _params(**_flags(filters), cursor=cursor, limit=limit)
        return _parse(Page[FindingOut], self._request("GET", "/v1/findings", params=params))

    def iter_findings(
        self, *, page_size: int = 100, **filters: Unpack[FindingFilters]
    ) -> Iterator[FindingOut]:
        return _pages(lambda c: self.findings(cursor=c, limit=page_size, **filters))

    def get_finding(self, finding_id: str) -> FindingOut:
        return _parse(FindingOut, self._request("GET", f"/v1/findings/{_q(finding_id)}"))

    def act_on_finding(
        self,
        finding_id: str,
        action: Literal["keep", "snooze", "reclaim"],
        *,
        note: str,
        until: datetime | float | None = None,
    ) -> FindingOut:
        """Keep, snooze (until a time) or reclaim; a reclaim asked twice answers one run."""
        body: dict[str, Any] = {"action": action, "note": note}
        if until is not None:
            body["until"] = until.isoformat() if isinstance(until, datetime) else until
        path = f"/v1/findings/{_q(finding_id)}/actions"
        return _parse(FindingOut, self._request("POST", path, json=body))

    def savings(self, *, tenant: str | None = None) -> SavingsOut:
        params = _params(tenant=tenant)
        return _parse(SavingsOut, self._request("GET", "/v1/savings", params=params))

    def license_policy(
        self, *, integration: str | None = None, tenant: str | None = None
    ) -> PolicyOut:
        params = _params(integration=integration, tenant=tenant)
        return _parse(PolicyOut, self._request("GET", "/v1/license-policy", params=params))

    def set_license_policy(
        self,
        change: PolicyIn,
        *,
        integration: str | None = None,
        tenant: str | None = None,
    ) -> PolicyOut:
        """Only the fields set on `change` are sent (one set to None clears it); a platform key
        names the tenant, unless the integration says it."""
        params = _params(integration=integration)
        body = change.model_dump(mode="json", exclude_unset=True)
        if tenant is not None:
            body["tenant"] = tenant
        response = self._request("PUT", "/v1/license-policy", json=body, params=params)
        return _parse(PolicyOut, response)


def _flags(filters: Any) -> dict[str, Any]:
    """Booleans as the query takes them."""
    return {k: str(v).lower() if isinstance(v, bool) else v for k, v in dict(filters).items()}
