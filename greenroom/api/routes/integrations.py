"""/v1/connectors, /v1/workflows and /v1/integrations: what the app can drive, and each
tenant's connections with their write-only credentials."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from greenroom import integrations
from greenroom.api.auth import Admin, Caller, Viewer
from greenroom.api.database import DatabaseRoute
from greenroom.api.problems import responses
from greenroom.api.routes.runs import scope
from greenroom.api.schemas import (
    ConnectorOut,
    CredentialsIn,
    Id,
    IntegrationCreate,
    IntegrationOut,
    IntegrationUpdate,
    WorkflowOut,
)
from greenroom.api.state import ApiState, get_state
from greenroom.connectors import Connector
from greenroom.errors import InvalidInput
from greenroom.rules import Name, Text

router = APIRouter(prefix="/v1", tags=["integrations"], route_class=DatabaseRoute)
State = Annotated[ApiState, Depends(get_state)]
NOT_FOUND = responses(c404="no such integration (or another tenant's)")
NAME_TAKEN = responses(c409="the tenant has an integration by this name")


def _connector(state: ApiState, name: str) -> Connector:
    try:
        return state.app.connectors[name]
    except KeyError:
        known = ", ".join(sorted(state.app.connectors)) or "none"
        raise InvalidInput(f"unknown connector {name!r} (known: {known})") from None


@router.get("/connectors", response_model=list[ConnectorOut])
def list_connectors(state: State, who: Caller = Viewer) -> list[ConnectorOut]:
    """Connectors with their workflows and the credentials an integration must give."""
    return [
        ConnectorOut(
            name=c.name,
            title=c.title,
            workflows=list(c.workflows),
            credential_schema=c.credential_schema(),
            settings_schema=c.settings_schema(),
        )
        for c in state.app.connectors.values()
    ]


@router.get("/workflows", response_model=list[WorkflowOut], tags=["runs"])
def list_workflows(state: State, who: Caller = Viewer) -> list[WorkflowOut]:
    return [
        WorkflowOut(name=w.name, queue=w.queue, connector=w.connector)
        for w in state.app.workflows.values()
    ]


@router.get("/integrations", response_model=list[IntegrationOut])
def list_integrations(
    state: State,
    who: Caller = Viewer,
    connector: Text | None = None,
    tenant: Annotated[Name | None, Query(description="platform keys: one tenant")] = None,
) -> list[IntegrationOut]:
    found = state.store.accounts.integrations(tenant=scope(who, tenant), connector=connector)
    return [IntegrationOut.of(i) for i in found]


@router.post(
    "/integrations",
    status_code=201,
    response_model=IntegrationOut,
    responses={**responses(c404="no such registered tenant"), **NAME_TAKEN},
)
def create_integration(
    body: IntegrationCreate, state: State, who: Caller = Admin
) -> IntegrationOut:
    """Connect a tenant to a SaaS app; the credentials are checked against the connector's
    schema, sealed, and never returned."""
    created = integrations.create(
        state.store.accounts,
        state.keyring,
        _connector(state, body.connector),
        tenant=who.acting_for(body.tenant),
        name=body.name,
        credentials=body.credentials,
        settings=body.settings,
        actor=who.actor,
    )
    return IntegrationOut.of(created)


@router.get("/integrations/{integration_id}", response_model=IntegrationOut, responses=NOT_FOUND)
def get_integration(integration_id: Id, state: State, who: Caller = Viewer) -> IntegrationOut:
    return IntegrationOut.of(state.store.accounts.integration(integration_id, tenant=who.tenant))


@router.patch(
    "/integrations/{integration_id}",
    response_model=IntegrationOut,
    responses={**NOT_FOUND, **NAME_TAKEN},
)
def update_integration(
    integration_id: Id, body: IntegrationUpdate, state: State, who: Caller = Admin
) -> IntegrationOut:
    """Rename, replace the settings (validated against the connector's schema; audited with
    what they were), or disable (new runs for it are refused; running ones fail when they open
    its credentials)."""
    current = state.store.accounts.integration(integration_id, tenant=who.tenant)
    updated = integrations.update(
        state.store.accounts,
        state.app.connectors.get(current.connector),
        current,
        actor=who.actor,
        name=body.name,
        settings=body.settings,
        status=body.status,
    )
    return IntegrationOut.of(updated)


@router.put(
    "/integrations/{integration_id}/credentials",
    response_model=IntegrationOut,
    responses=NOT_FOUND,
)
def replace_credentials(
    integration_id: Id, body: CredentialsIn, state: State, who: Caller = Admin
) -> IntegrationOut:
    """Rotate credentials: runs that open them from now on get the new ones."""
    current = state.store.accounts.integration(integration_id, tenant=who.tenant)
    updated = integrations.replace_credentials(
        state.store.accounts,
        state.keyring,
        _connector(state, current.connector),
        current,
        body.credentials,
        actor=who.actor,
    )
    return IntegrationOut.of(updated)


@router.delete(
    "/integrations/{integration_id}",
    status_code=204,
    response_class=Response,
    responses=NOT_FOUND,
)
def delete_integration(integration_id: Id, state: State, who: Caller = Admin) -> Response:
    state.store.accounts.delete_integration(integration_id, actor=who.actor, tenant=who.tenant)
    return Response(status_code=204)
