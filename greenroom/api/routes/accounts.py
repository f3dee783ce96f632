"""/v1/tenants and /v1/keys: platform operators register tenants; admins manage their keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from greenroom.api.auth import Admin, Caller, Platform, Viewer
from greenroom.api.database import DatabaseRoute
from greenroom.api.keys import create_key
from greenroom.api.problems import ApiError, responses
from greenroom.api.routes.runs import scope
from greenroom.api.schemas import (
    Id,
    KeyCreate,
    KeyCreated,
    KeyOut,
    TenantCreate,
    TenantOut,
    TenantUpdate,
)
from greenroom.api.state import ApiState, get_state
from greenroom.errors import NotFound
from greenroom.model import Role
from greenroom.rules import Name

router = APIRouter(prefix="/v1", route_class=DatabaseRoute)
State = Annotated[ApiState, Depends(get_state)]
NOT_FOUND = responses(404)


@router.get("/tenants", response_model=list[TenantOut], tags=["tenants"])
def list_tenants(state: State, who: Caller = Platform) -> list[TenantOut]:
    return [TenantOut.of(t) for t in state.store.controls.tenants()]


@router.post(
    "/tenants",
    status_code=201,
    response_model=TenantOut,
    responses=responses(c409="a tenant by this name exists"),
    tags=["tenants"],
)
def create_tenant(body: TenantCreate, state: State, who: Caller = Platform) -> TenantOut:
    return TenantOut.of(state.store.accounts.create_tenant(body.name, actor=who.actor))


@router.get("/tenants/{name}", response_model=TenantOut, responses=NOT_FOUND, tags=["tenants"])
def get_tenant(name: Name, state: State, who: Caller = Viewer) -> TenantOut:
    """A tenant key reads its own tenant; a platform key any."""
    if who.tenant is not None and name != who.tenant:
        raise NotFound(f"tenant {name} not found")
    return TenantOut.of(state.store.accounts.tenant(name))


@router.patch("/tenants/{name}", response_model=TenantOut, responses=NOT_FOUND, tags=["tenants"])
def update_tenant(
    name: Name, body: TenantUpdate, state: State, who: Caller = Platform
) -> TenantOut:
    """Fairness weight and concurrency limit (null clears the limit)."""
    state.store.accounts.tenant(name)
    given = body.model_dump(exclude_unset=True)
    tenant = state.store.controls.set_tenant(
        name,
        actor=who.actor,
        reason=body.reason,
        weight=body.weight,
        concurrency=body.concurrency,
        clear_concurrency="concurrency" in given and body.concurrency is None,
    )
    return TenantOut.of(tenant)


@router.get("/keys", response_model=list[KeyOut], tags=["keys"])
def list_keys(
    state: State,
    who: Caller = Admin,
    tenant: Annotated[Name | None, Query(description="platform keys: one tenant")] = None,
) -> list[KeyOut]:
    """Keys (never their secrets): a tenant admin sees its tenant's, a platform key all."""
    return [KeyOut.of(k) for k in state.store.accounts.api_keys(tenant=scope(who, tenant))]


@router.post(
    "/keys",
    status_code=201,
    response_model=KeyCreated,
    responses=responses(c404="no such registered tenant"),
    tags=["keys"],
)
def create_api_key(body: KeyCreate, state: State, who: Caller = Admin) -> KeyCreated:
    """A new key; its secret is in this response only."""
    if body.role is Role.PLATFORM:
        if not who.platform:
            raise ApiError(403, "only a platform key may create platform keys")
        if body.tenant is not None:
            raise ApiError(422, "platform keys have no tenant")
        tenant = None
    else:
        tenant = who.acting_for(body.tenant)
    key, secret = create_key(
        state.store.accounts,
        tenant=tenant,
        role=body.role,
        name=body.name,
        actor=who.actor,
        expires_at=body.expires_at,
        rate_limit=who.granted_rate(body.rate_limit, state.limiter.rate),
    )
    return KeyCreated(**KeyOut.of(key).model_dump(), key=secret)


@router.delete("/keys/{key_id}", response_model=KeyOut, responses=NOT_FOUND, tags=["keys"])
def revoke_api_key(key_id: Id, state: State, who: Caller = Admin) -> KeyOut:
    """Revoke a key: it is refused from the next request on."""
    revoked = state.store.accounts.revoke_api_key(key_id, actor=who.actor, tenant=who.tenant)
    state.keys.forget(key_id)
    return KeyOut.of(revoked)
