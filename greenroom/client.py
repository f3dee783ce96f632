"""A typed Python client for greenroom's HTTP API.

    with Client("https://greenroom.example", "grk_….…") as api:
        run, created = api.create_run(RunCreate(workflow="demo.sync_users", input={"org": "acme"}),
                                      idempotency_key="sync-acme-2026-11-25")
        for failed in api.iter_runs(state=["failed"]):
            api.retry_run(failed.id, reason="vendor outage is over")

Responses are the API's own models (greenroom.api.schemas). Request bodies with more than a few
fields are passed as their schema model, so only the fields set are sent (a field set to None
clears a setting); the rest are keyword arguments. Every error answer raises ApiProblem, built
from its problem+json body; a 404 is also a greenroom NotFound, a 409 a Conflict and a 422 an
InvalidInput, so code written against the library catches the same errors. A server that does
not answer raises ApiUnreachable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypedDict, TypeVar, Unpack

import httpx

from greenroom.api.delivery_schemas import (
    DeliveryAttemptOut,
    DeliveryOut,
    RecoverIn,
    RecoverOut,
    ReplayIn,
    SubscriptionCreate,
    SubscriptionOut,
    SubscriptionUpdate,
    SubscriptionWithSecret,
)
from greenroom.api.schedule_schemas import (
    BackfillIn,
    BackfillOut,
    ScheduleCreate,
    ScheduleFiringOut,
    ScheduleOut,
    SchedulePause,
    ScheduleUpdate,
)
from greenroom.api.schemas import (
    AuditOut,
    BulkRetryOut,
    BulkRetryRequest,
    ConnectorOut,
    ErrorGroupOut,
    IntegrationCreate,
    IntegrationOut,
    IntegrationUpdate,
    KeyCreate,
    KeyCreated,
    KeyOut,
    OutboxEventOut,
    Page,
    PauseCreate,
    PauseOut,
    PruneOut,
    PruneRequest,
    QueueOut,
    QueueUpdate,
    ResumeOut,
    RunCreate,
    RunDetail,
    RunOut,
    TenantOut,
    TenantUpdate,
    WorkerOut,
    WorkflowOut,
)
from greenroom.client_http import _body, _pages, _params, _parse, _q
from greenroom.client_licenses import LicensesClient
from greenroom.client_reports import ReportsClient
from greenroom.errors import ConfigError, Conflict, GreenroomError, InvalidInput, NotFound
from greenroom.model import RunState

T = TypeVar("T")


class ApiProblem(GreenroomError):
    """The API answered with an error: its problem+json status, title, detail and, for a 422,
    one entry per invalid field; for a 429, the seconds to wait before trying again."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        fields = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in errors or [])
        super().__init__(f"{detail or title}" + (f" ({fields})" if fields else ""))
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors or []  # after __init__: InvalidInput's would reset it
        self.retry_after = retry_after


class ApiNotFound(ApiProblem, NotFound):
    """404: no such resource, or another tenant's."""


class ApiConflict(ApiProblem, Conflict):
    """409: e.g. an Idempotency-Key used for another request, a name taken."""


class ApiInvalid(ApiProblem, InvalidInput):
    """422: the request named invalid fields (see `errors`)."""


class ApiUnreachable(GreenroomError):
    """No answer from the server: refused, timed out, or not an HTTP server."""


_KINDS: dict[int, type[ApiProblem]] = {404: ApiNotFound, 409: ApiConflict, 422: ApiInvalid}


def _problem(response: httpx.Response) -> ApiProblem:
    """The error a failed response stands for, from its problem+json body when it has one."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"detail": " ".join(response.text.split())[:200] or None}
    retry_after = response.headers.get("Retry-After", "")
    errors = body.get("errors")
    return _KINDS.get(response.status_code, ApiProblem)(
        response.status_code,
        str(body.get("title") or response.reason_phrase),
        None if body.get("detail") is None else str(body["detail"]),
        errors=errors if isinstance(errors, list) else None,
        retry_after=float(retry_after) if retry_after.isascii() and retry_after.isdigit() else None,
    )


class RunFilters(TypedDict, total=False):
    """Filters of the runs list; they combine, and None is no filter."""

    state: Sequence[RunState | str] | None
    workflow: str | None
    queue: str | None
    integration: str | None
    #: key=value
    label: str | None
    error_group: str | None
    #: a datetime, or Unix time
    created_after: datetime | float | None
    created_before: datetime | float | None
    finished_after: datetime | float | None
    finished_before: datetime | float | None
    #: platform keys: one tenant
    tenant: str | None
    #: also failed or cancelled runs that were retried
    include_superseded: bool


class EventFilters(TypedDict, total=False):
    """Filters of the events list; they combine, and None is no filter."""

    #: types, or prefixes as run.*
    type: Sequence[str] | None
    #: kind:id, as run:<run id>
    subject: str | None
    #: a datetime, or Unix time
    since: datetime | float | None
    #: platform keys: one tenant
    tenant: str | None


class Client(LicensesClient, ReportsClient):
    """A connection to one greenroom API server, acting with one API key."""

    def __init__(self, url: str, key: str, *, timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"the API URL must start with http:// or https://, got {url!r}")
        if not key:
            raise ConfigError("an API key is needed: pass key (or set GREENROOM_API_KEY)")
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout
        )

    @classmethod
    def from_env(cls, *, timeout: float = 30.0) -> Client:
        """A client for $GREENROOM_URL with $GREENROOM_API_KEY."""
        url = os.environ.get("GREENROOM_URL")
        if not url:
            raise ConfigError("GREENROOM_URL is not set")
        return cls(url, os.environ.get("GREENROOM_API_KEY", ""), timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from exc
        if response.is_error:
            raise _problem(response)
        return response

    # -- runs ------------------------------------------------------------------------------

    def create_run(
        self, run: RunCreate, *, idempotency_key: str | None = None
    ) -> tuple[RunOut, bool]:
        """Start a run; with an idempotency key used before for the same request, that run.
        The run, and whether this call created it."""
        headers = {} if idempotency_key is None else {"Idempotency-Key": idempotency_key}
        response = self._request("POST", "/v1/runs", json=_body(run), headers=headers)
        return _parse(RunOut, response), response.status_code == 201

    def list_runs(
        self, *, cursor: str | None = None, limit: int = 50, **filters: Unpack[RunFilters]
    ) -> Page[RunOut]:
        """One page of runs, newest first; pass its next_cursor for the next."""
        params = _params(**filters, cursor=cursor, limit=limit)
        return _parse(Page[RunOut], self._request("GET", "/v1/runs", params=params))

    def iter_runs(self, *, page_size: int = 100, **filters: Unpack[RunFilters]) -> Iterator[RunOut]:
        """Every matching run, newest first, fetched a page at a time as you iterate."""
        return _pages(lambda c: self.list_runs(cursor=c, limit=page_size, **filters))

    def get_run(self, run_id: str) -> RunDetail:
        return _parse(RunDetail, self._request("GET", f"/v1/runs/{_q(run_id)}"))

    def cancel_run(self, run_id: str, *, reason: str) -> RunOut:
        body = {"reason": reason}
        return _parse(RunOut, self._request("POST", f"/v1/runs/{_q(run_id)}/cancel", json=body))

    def retry_run(
        self,
        run_id: str,
        *,
        reason: str,
        from_scratch: bool = False,
        input: dict[str, Any] | None = None,
        force: bool = False,
    ) -> RunOut:
        """A new run for a failed or cancelled one, from its failed step unless from_scratch.
        A run retried already raises Conflict, naming its retry, unless force."""
        body = {"reason": reason, "from_scratch": from_scratch, "input": input, "force": force}
        return _parse(RunOut, self._request("POST", f"/v1/runs/{_q(run_id)}/retry", json=body))

    def retry_runs(self, request: BulkRetryRequest) -> BulkRetryOut:
        """Retry every matching run; a dry run (the default) only counts them."""
        return _parse(BulkRetryOut, self._request("POST", "/v1/runs/retry", json=_body(request)))

    def prune_runs(self, request: PruneRequest) -> PruneOut:
        """Delete finished runs that finished longer ago than `older_than` seconds (platform
        keys); a dry run (the default) only counts them."""
        return _parse(PruneOut, self._request("POST", "/v1/runs/prune", json=_body(request)))

    def download_artifact(self, run_id: str, artifact_id: int) -> bytes:
        return self._request("GET", f"/v1/runs/{_q(run_id)}/artifacts/{artifact_id}").content

    # -- workflows, connectors, integrations -----------------------------------------------

    def workflows(self) -> list[WorkflowOut]:
        return _parse(list[WorkflowOut], self._request("GET", "/v1/workflows"))

    def connectors(self) -> list[ConnectorOut]:
        return _parse(list[ConnectorOut], self._request("GET", "/v1/connectors"))

    def integrations(
        self, *, connector: str | None = None, tenant: str | None = None
    ) -> list[IntegrationOut]:
        params = _params(connector=connector, tenant=tenant)
        return _parse(list[IntegrationOut], self._request("GET", "/v1/integrations", params=params))

    def create_integration(self, integration: IntegrationCreate) -> IntegrationOut:
        body = _body(integration)
        return _parse(IntegrationOut, self._request("POST", "/v1/integrations", json=body))

    def get_integration(self, integration_id: str) -> IntegrationOut:
        path = f"/v1/integrations/{_q(integration_id)}"
        return _parse(IntegrationOut, self._request("GET", path))

    def update_integration(self, integration_id: str, update: IntegrationUpdate) -> IntegrationOut:
        path = f"/v1/integrations/{_q(integration_id)}"
        return _parse(IntegrationOut, self._request("PATCH", path, json=_body(update)))

    def replace_credentials(
        self, integration_id: str, credentials: dict[str, Any]
    ) -> IntegrationOut:
        path = f"/v1/integrations/{_q(integration_id)}/credentials"
        body = {"credentials": credentials}
        return _parse(IntegrationOut, self._request("PUT", path, json=body))

    def delete_integration(self, integration_id: str) -> None:
        self._request("DELETE", f"/v1/integrations/{_q(integration_id)}")

    # -- queues and pauses -----------------------------------------------------------------

    def queues(self, *, tenant: str | None = None) -> list[QueueOut]:
        params = _params(tenant=tenant)
        return _parse(list[QueueOut], self._request("GET", "/v1/queues", params=params))

    def get_queue(self, name: str) -> QueueOut:
        return _parse(QueueOut, self._request("GET", f"/v1/queues/{_q(name)}"))

    def update_queue(self, name: str, update: QueueUpdate) -> QueueOut:
        """Change a queue's settings (platform keys); a queue that does not exist is created."""
        path = f"/v1/queues/{_q(name)}"
        return _parse(QueueOut, self._request("PATCH", path, json=_body(update)))

    def pause_queue(self, name: str, *, reason: str, drain: bool = True) -> PauseOut:
        body = {"reason": reason, "drain": drain}
        return _parse(PauseOut, self._request("POST", f"/v1/queues/{_q(name)}/pause", json=body))

    def resume_queue(self, name: str, *, reason: str) -> ResumeOut:
        body = {"reason": reason}
        return _parse(ResumeOut, self._request("POST", f"/v1/queues/{_q(name)}/resume", json=body))

    def pauses(self) -> list[PauseOut]:
        return _parse(list[PauseOut], self._request("GET", "/v1/pauses"))

    def create_pause(self, pause: PauseCreate) -> PauseOut:
        """Pausing what is already paused returns the existing pause."""
        return _parse(PauseOut, self._request("POST", "/v1/pauses", json=_body(pause)))

    def resume_pause(self, pause_id: int, *, reason: str) -> ResumeOut:
        body = {"reason": reason}
        path = f"/v1/pauses/{pause_id}/resume"
        return _parse(ResumeOut, self._request("POST", path, json=body))

    # -- errors, audit, workers ------------------------------------------------------------

    def error_groups(self, *, tenant: str | None = None, limit: int = 50) -> list[ErrorGroupOut]:
        params = _params(tenant=tenant, limit=limit)
        return _parse(list[ErrorGroupOut], self._request("GET", "/v1/errors", params=params))

    def audit_log(
        self, *, tenant: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> Page[AuditOut]:
        """One page of the audit log, newest first."""
        params = _params(tenant=tenant, cursor=cursor, limit=limit)
        return _parse(Page[AuditOut], self._request("GET", "/v1/audit", params=params))

    def iter_audit_log(
        self, *, tenant: str | None = None, page_size: int = 100
    ) -> Iterator[AuditOut]:
        return _pages(lambda c: self.audit_log(tenant=tenant, cursor=c, limit=page_size))

    def events(
        self,
        *,
        cursor: str | None = None,
        after: int | None = None,
        limit: int = 100,
        **filters: Unpack[EventFilters],
    ) -> Page[OutboxEventOut]:
        """One page of events in commit order; its next_cursor is where the next one starts
        (also on the last page: ask again later for newer events)."""
        params = _params(cursor=cursor, after=after, limit=limit, **filters)
        return _parse(Page[OutboxEventOut], self._request("GET", "/v1/events", params=params))

    def iter_events(
        self, *, after: int | None = None, page_size: int = 100, **filters: Unpack[EventFilters]
    ) -> Iterator[OutboxEventOut]:
        """Every matching event so far, in commit order, a page at a time as you iterate."""
        page = self.events(after=after, limit=page_size, **filters)
        while page.items:
            yield from page.items
            page = self.events(cursor=page.next_cursor, limit=page_size, **filters)

    def get_event(self, event_id: int) -> OutboxEventOut:
        return _parse(OutboxEventOut, self._request("GET", f"/v1/events/{int(event_id)}"))

    # -- schedules -------------------------------------------------------------------------

    def schedules(
        self, *, tenant: str | None = None, integration: str | None = None
    ) -> list[ScheduleOut]:
        params = _params(tenant=tenant, integration=integration)
        return _parse(list[ScheduleOut], self._request("GET", "/v1/schedules", params=params))

    def create_schedule(self, schedule: ScheduleCreate) -> ScheduleOut:
        body = _body(schedule)
        return _parse(ScheduleOut, self._request("POST", "/v1/schedules", json=body))

    def get_schedule(self, schedule_id: str) -> ScheduleOut:
        return _parse(ScheduleOut, self._request("GET", f"/v1/schedules/{_q(schedule_id)}"))

    def update_schedule(self, schedule_id: str, update: ScheduleUpdate) -> ScheduleOut:
        path = f"/v1/schedules/{_q(schedule_id)}"
        return _parse(ScheduleOut, self._request("PATCH", path, json=_body(update)))

    def delete_schedule(self, schedule_id: str) -> None:
        self._request("DELETE", f"/v1/schedules/{_q(schedule_id)}")

    def pause_schedule(self, schedule_id: str, *, note: str) -> ScheduleOut:
        path = f"/v1/schedules/{_q(schedule_id)}/pause"
        body = _body(SchedulePause(note=note))
        return _parse(ScheduleOut, self._request("POST", path, json=body))

    def resume_schedule(self, schedule_id: str) -> ScheduleOut:
        path = f"/v1/schedules/{_q(schedule_id)}/resume"
        return _parse(ScheduleOut, self._request("POST", path))

    def trigger_schedule(self, schedule_id: str) -> RunOut:
        """A run of the schedule now, whatever its slots and overlap policy."""
        path = f"/v1/schedules/{_q(schedule_id)}/trigger"
        return _parse(RunOut, self._request("POST", path))

    def backfill_schedule(self, schedule_id: str, request: BackfillIn) -> BackfillOut:
        """The slots from start to end with their runs; unless dry_run, the missing runs made."""
        path = f"/v1/schedules/{_q(schedule_id)}/backfill"
        body = request.model_dump(mode="json")
        return _parse(BackfillOut, self._request("POST", path, json=body))

    def schedule_firings(self, schedule_id: str, *, limit: int = 50) -> list[ScheduleFiringOut]:
        path = f"/v1/schedules/{_q(schedule_id)}/firings"
        response = self._request("GET", path, params=_params(limit=limit))
        return _parse(list[ScheduleFiringOut], response)

    # -- subscriptions and deliveries ------------------------------------------------------

    def subscriptions(self, *, tenant: str | None = None) -> list[SubscriptionOut]:
        params = _params(tenant=tenant)
        return _parse(
            list[SubscriptionOut], self._request("GET", "/v1/subscriptions", params=params)
        )

    def create_subscription(self, subscription: SubscriptionCreate) -> SubscriptionWithSecret:
        """The new subscription with its signing secret (webhooks), shown this once."""
        body = _body(subscription)
        return _parse(SubscriptionWithSecret, self._request("POST", "/v1/subscriptions", json=body))

    def get_subscription(self, subscription_id: str) -> SubscriptionOut:
        path = f"/v1/subscriptions/{_q(subscription_id)}"
        return _parse(SubscriptionOut, self._request("GET", path))

    def update_subscription(
        self, subscription_id: str, update: SubscriptionUpdate
    ) -> SubscriptionOut:
        path = f"/v1/subscriptions/{_q(subscription_id)}"
        return _parse(SubscriptionOut, self._request("PATCH", path, json=_body(update)))

    def delete_subscription(self, subscription_id: str) -> None:
        self._request("DELETE", f"/v1/subscriptions/{_q(subscription_id)}")

    def rotate_subscription_secret(self, subscription_id: str) -> SubscriptionWithSecret:
        path = f"/v1/subscriptions/{_q(subscription_id)}/rotate-secret"
        return _parse(SubscriptionWithSecret, self._request("POST", path))

    def deliveries(
        self,
        *,
        subscription: str | None = None,
        event: int | None = None,
        failed: bool = False,
        tenant: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[DeliveryOut]:
        """Newest first, a page at a time."""
        params = _params(
            subscription=subscription,
            event=event,
            failed=failed or None,
            tenant=tenant,
            cursor=cursor,
            limit=limit,
        )
        return _parse(Page[DeliveryOut], self._request("GET", "/v1/deliveries", params=params))

    def iter_deliveries(
        self,
        *,
        page_size: int = 100,
        subscription: str | None = None,
        event: int | None = None,
        failed: bool = False,
        tenant: str | None = None,
    ) -> Iterator[DeliveryOut]:
        """Every matching delivery, newest first, a page at a time as you iterate."""
        cursor = None
        while True:
            page = self.deliveries(
                subscription=subscription,
                event=event,
                failed=failed,
                tenant=tenant,
                cursor=cursor,
                limit=page_size,
            )
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def delivery_attempts(self, delivery_id: int) -> list[DeliveryAttemptOut]:
        path = f"/v1/deliveries/{int(delivery_id)}/attempts"
        return _parse(list[DeliveryAttemptOut], self._request("GET", path))

    def replay_event(self, event_id: int, *, subscription: str | None = None) -> list[DeliveryOut]:
        """Send the event again (same webhook-id) to one subscription, or every one that
        wants it."""
        body = _body(ReplayIn(subscription=subscription))
        path = f"/v1/events/{int(event_id)}/replay"
        return _parse(list[DeliveryOut], self._request("POST", path, json=body))

    def recover_deliveries(self, request: RecoverIn) -> RecoverOut:
        path = "/v1/deliveries/recover"
        return _parse(RecoverOut, self._request("POST", path, json=_body(request)))

    def workers(self, *, include_gone: bool = False) -> list[WorkerOut]:
        params = _params(include_gone=include_gone)
        return _parse(list[WorkerOut], self._request("GET", "/v1/workers", params=params))

    # -- tenants and keys ------------------------------------------------------------------

    def tenants(self) -> list[TenantOut]:
        return _parse(list[TenantOut], self._request("GET", "/v1/tenants"))

    def create_tenant(self, name: str) -> TenantOut:
        return _parse(TenantOut, self._request("POST", "/v1/tenants", json={"name": name}))

    def get_tenant(self, name: str) -> TenantOut:
        return _parse(TenantOut, self._request("GET", f"/v1/tenants/{_q(name)}"))

    def update_tenant(self, name: str, update: TenantUpdate) -> TenantOut:
        path = f"/v1/tenants/{_q(name)}"
        return _parse(TenantOut, self._request("PATCH", path, json=_body(update)))

    def api_keys(self, *, tenant: str | None = None) -> list[KeyOut]:
        params = _params(tenant=tenant)
        return _parse(list[KeyOut], self._request("GET", "/v1/keys", params=params))

    def create_api_key(self, key: KeyCreate) -> KeyCreated:
        """A new key; its secret (`.key`) is in this answer only."""
        return _parse(KeyCreated, self._request("POST", "/v1/keys", json=_body(key)))

    def revoke_api_key(self, key_id: str) -> KeyOut:
        return _parse(KeyOut, self._request("DELETE", f"/v1/keys/{_q(key_id)}"))

    # -- health ----------------------------------------------------------------------------

    def healthz(self) -> dict[str, Any]:
        """The process answers."""
        return _parse(dict[str, Any], self._request("GET", "/healthz"))

    def readyz(self) -> dict[str, Any]:
        """Its database answers and is migrated; else ApiProblem with status 503."""
        return _parse(dict[str, Any], self._request("GET", "/readyz"))
