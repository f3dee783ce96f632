"""/v1/integrations/{id}/accounts, /v1/licenses, /v1/findings, /v1/savings and
/v1/license-policy: accounts pushed by a tenant's own sync, the licenses the pass judged, the
findings admins act on, what acting saves, and the policy the pass follows (docs/licenses.md)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from greenroom.api.auth import Admin, Caller, Operator, Viewer
from greenroom.api.database import DatabaseRoute
from greenroom.api.license_schemas import (
    CURSOR_PATTERN,
    Confidence,
    FindingActionIn,
    FindingOut,
    FindingState,
    FindingStateFilter,
    LicenseOut,
    PolicyOut,
    PolicySet,
    PushOut,
    SavingsOut,
    Sort,
    Verdict,
    account_data,
    decode_cursor,
    encode_cursor,
)
from greenroom.api.problems import ApiError, responses
from greenroom.api.routes.runs import scope
from greenroom.api.schemas import Id, Page
from greenroom.api.state import ApiState, get_state
from greenroom.licenses.actions import act
from greenroom.licenses.ingest import AccountRow, parse_accounts
from greenroom.rules import MAX_NAME, Name, text
from greenroom.storage.findings import FindingFilter
from greenroom.storage.licenses import LicenseFilter

router = APIRouter(prefix="/v1", tags=["licenses"], route_class=DatabaseRoute)
State = Annotated[ApiState, Depends(get_state)]
TenantQuery = Annotated[Name | None, Query(description="platform keys: one tenant")]
IntegrationQuery = Annotated[Id | None, Query(description="one integration's")]
SortQuery = Annotated[Sort, Query(description="savings: largest first; recent: newest first")]
CursorQuery = Annotated[
    str | None,
    Query(max_length=80, pattern=CURSOR_PATTERN, description="next_cursor of the last page"),
]
Limit = Annotated[int, Query(ge=1, le=500)]
NO_INTEGRATION = responses(c404="no such integration (or another tenant's)")
NO_FINDING = responses(c404="no such finding (or another tenant's)")
JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl")

_PUSH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "array", "items": AccountRow.model_json_schema()}
            },
            "application/x-ndjson": {
                "schema": {"type": "string", "description": "one AccountRow object per line"}
            },
        },
    }
}


def _accounts(content_type: str, raw: bytes) -> list[AccountRow]:
    """The rows of a JSON array or of NDJSON, validated as one batch."""
    media = content_type.split(";")[0].strip().lower()
    if media not in (*JSON_TYPES, *NDJSON_TYPES, ""):
        raise ApiError(415, "send application/json (an array) or application/x-ndjson")
    return parse_accounts(account_data(raw, ndjson=media in NDJSON_TYPES))


@router.post(
    "/integrations/{integration_id}/accounts",
    response_model=PushOut,
    openapi_extra=_PUSH_BODY,
    responses={**NO_INTEGRATION, **responses(c415="neither JSON nor NDJSON")},
)
async def push_accounts(
    integration_id: Id,
    request: Request,
    state: State,
    who: Caller = Operator,
    complete: Annotated[
        bool, Query(description="the push lists every account: the others are removed")
    ] = False,
    sync: Annotated[
        Annotated[str, text(MAX_NAME, 1)] | None,
        Query(description="the sync these rows belong to (every page of a complete sync)"),
    ] = None,
) -> PushOut:
    """Accounts read by your own sync of the integration's app: a JSON array of account rows
    (application/json), or one row per line (application/x-ndjson, blank lines skipped).

    Two limits: at most 10,000 rows per request (422), and the server's body limit,
    GREENROOM_API_MAX_BODY_BYTES (1,000,000 bytes by default, about 4,000 rows of 250 bytes;
    413 beyond). A larger sync sends pages under one `sync` id, the last one with
    `complete=true` to remove the accounts no page of that sync listed. A bad row refuses the
    whole request (422 naming `accounts[i].field`): a push is applied entirely or not at all.
    Without `sync`, each request is its own sync."""
    accounts = state.store.accounts
    integration = await run_in_threadpool(accounts.integration, integration_id, tenant=who.tenant)
    raw = await request.body()
    rows = await run_in_threadpool(_accounts, request.headers.get("content-type", ""), raw)
    sync_id = sync or f"push:{uuid.uuid4().hex}"

    def save() -> PushOut:
        saved = state.store.licenses.save(
            integration.tenant, integration.id, rows, sync_id=sync_id, complete=complete
        )
        return PushOut(**vars(saved), sync_id=sync_id)

    return await run_in_threadpool(save)


@router.get("/licenses", response_model=Page[LicenseOut])
def list_licenses(
    state: State,
    who: Caller = Viewer,
    integration: IntegrationQuery = None,
    verdict: Verdict | None = None,
    confidence: Confidence | None = None,
    finding_state: Annotated[
        FindingStateFilter | None,
        Query(description="the open finding's state; none: licenses without one"),
    ] = None,
    removed: Annotated[bool, Query(description="licenses the app no longer lists")] = False,
    tenant: TenantQuery = None,
    sort: SortQuery = "savings",
    cursor: CursorQuery = None,
    limit: Limit = 50,
) -> Page[LicenseOut]:
    """Licenses with their last verdict, largest monthly savings first (or newest first)."""
    found, after = state.store.licenses.list_licenses(
        LicenseFilter(
            tenant=scope(who, tenant),
            integration_id=integration,
            verdict=verdict,
            confidence=confidence,
            finding_state=finding_state,
            removed=removed,
            sort=sort,
            after=None if cursor is None else decode_cursor(cursor),
            limit=limit,
        )
    )
    return Page(
        items=[LicenseOut.of(lic) for lic in found],
        next_cursor=None if after is None else encode_cursor(after),
    )


@router.get(
    "/licenses/{license_id}",
    response_model=LicenseOut,
    responses=responses(c404="no such license (or another tenant's)"),
)
def get_license(license_id: Id, state: State, who: Caller = Viewer) -> LicenseOut:
    return LicenseOut.of(state.store.licenses.get_license(license_id, tenant=who.tenant))


@router.get("/findings", response_model=Page[FindingOut])
def list_findings(
    state: State,
    who: Caller = Viewer,
    integration: IntegrationQuery = None,
    finding_state: Annotated[FindingState | None, Query(alias="state")] = None,
    verdict: Verdict | None = None,
    open: Annotated[bool, Query(description="false: closed findings too")] = True,
    tenant: TenantQuery = None,
    sort: SortQuery = "savings",
    cursor: CursorQuery = None,
    limit: Limit = 50,
) -> Page[FindingOut]:
    """Findings (verdicts worth acting on), largest monthly savings first (or newest first)."""
    found, after = state.store.findings.list_findings(
        FindingFilter(
            tenant=scope(who, tenant),
            integration_id=integration,
            state=finding_state,
            verdict=verdict,
            open_only=open,
            sort=sort,
            after=None if cursor is None else decode_cursor(cursor),
            limit=limit,
        )
    )
    return Page(
        items=[FindingOut.of(f) for f in found],
        next_cursor=None if after is None else encode_cursor(after),
    )


@router.get("/findings/{finding_id}", response_model=FindingOut, responses=NO_FINDING)
def get_finding(finding_id: Id, state: State, who: Caller = Viewer) -> FindingOut:
    return FindingOut.of(state.store.findings.get_finding(finding_id, tenant=who.tenant))


@router.post(
    "/findings/{finding_id}/actions",
    response_model=FindingOut,
    responses={
        **NO_FINDING,
        **responses(c409="the finding is closed or acted on, or its connector cannot deactivate"),
    },
)
def act_on_finding(
    finding_id: Id, body: FindingActionIn, state: State, who: Caller = Admin
) -> FindingOut:
    """Keep the license, snooze the finding until a time, or reclaim the license: the
    connector's deactivate workflow runs once for it (asking again answers the same run).
    Audited, with the note."""
    until = body.until_unix()
    done = act(
        state.app,
        finding_id,
        body.action,
        tenant=who.tenant,
        actor=who.actor,
        note=body.note,
        until=until,
    )
    return FindingOut.of(done)


@router.get("/savings", response_model=SavingsOut)
def savings(state: State, who: Caller = Viewer, tenant: TenantQuery = None) -> SavingsOut:
    """Monthly savings per integration and currency, and per currency over all of them."""
    return SavingsOut.of(state.store.findings.savings(tenant=scope(who, tenant)))


def _policy_tenant(
    state: ApiState, who: Caller, tenant: str | None, integration: str | None
) -> str:
    """The tenant whose policy is read or set: an integration's own, else the caller's."""
    if integration is None:
        return who.acting_for(tenant)
    return state.store.accounts.integration(integration, tenant=scope(who, tenant)).tenant


@router.get("/license-policy", response_model=PolicyOut, responses=NO_INTEGRATION)
def get_policy(
    state: State,
    who: Caller = Viewer,
    integration: IntegrationQuery = None,
    tenant: TenantQuery = None,
) -> PolicyOut:
    """The settings in force: the tenant's default, or with an integration its override over
    that default (defaults filled in)."""
    owner = _policy_tenant(state, who, tenant, integration)
    return PolicyOut(**state.store.findings.policy(owner, integration))


@router.put("/license-policy", response_model=PolicyOut, responses=NO_INTEGRATION)
def set_policy(
    body: PolicySet, state: State, who: Caller = Admin, integration: IntegrationQuery = None
) -> PolicyOut:
    """Change the tenant's default, or with an integration its override: fields left out stay
    as they are, null clears one (back to the default). The licenses it governs are judged
    again on the next pass. Audited."""
    owner = _policy_tenant(state, who, body.tenant, integration)
    changed = state.store.findings.set_policy(
        owner, body.change(), integration_id=integration, actor=who.actor
    )
    return PolicyOut(**changed)
