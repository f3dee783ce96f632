"""Integrations: a tenant's connection to one SaaS app, with credentials sealed at rest.

Credentials are validated against the connector's model, sealed with the key ring (bound to
the tenant and integration id, so a blob copied elsewhere does not open), and opened only for
a run of that integration (RunContext.credentials()). Nothing here logs or returns them.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from greenroom.connectors import Connector, dump_credentials
from greenroom.errors import ConfigError, NotFound, PermanentError
from greenroom.model import Integration, Run
from greenroom.storage import RunStore

if TYPE_CHECKING:
    from greenroom.crypto import KeyRing

#: The run label that ties a run to its integration (set from RunRequest.integration).
INTEGRATION_LABEL = "integration"


def _context(tenant: str, integration_id: str) -> str:
    return f"integration\0{tenant}\0{integration_id}"


def seal(
    ring: KeyRing, tenant: str, integration_id: str, credentials: BaseModel
) -> tuple[str, str]:
    plain = json.dumps(dump_credentials(credentials), separators=(",", ":")).encode()
    return ring.encrypt(plain, _context(tenant, integration_id))


def open_credentials(ring: KeyRing, integration: Integration, connector: Connector) -> BaseModel:
    plain = ring.decrypt(
        integration.key_id, integration.credentials, _context(integration.tenant, integration.id)
    )
    if plain is None:
        raise ConfigError(
            f"integration {integration.id}: its credentials were sealed with key "
            f"{integration.key_id}, which this node does not have (GREENROOM_SECRET_KEY / "
            "GREENROOM_PREVIOUS_SECRET_KEYS)"
        )
    return connector.credentials.model_validate(json.loads(plain))


def create(
    store: RunStore,
    ring: KeyRing,
    connector: Connector,
    *,
    tenant: str,
    name: str,
    credentials: Any,
    settings: dict[str, Any],
    actor: str,
) -> Integration:
    parsed = connector.parse_credentials(credentials)
    integration_id = "int_" + secrets.token_hex(8)
    return store.add_integration(
        tenant=tenant,
        connector=connector.name,
        name=name,
        settings=settings,
        integration_id=integration_id,
        sealed=seal(ring, tenant, integration_id, parsed),
        actor=actor,
    )


def replace_credentials(
    store: RunStore,
    ring: KeyRing,
    connector: Connector,
    integration: Integration,
    credentials: Any,
    *,
    actor: str,
) -> Integration:
    """Credential rotation: the new credentials replace the old ones at once."""
    parsed = connector.parse_credentials(credentials)
    return store.update_integration(
        integration.id,
        tenant=integration.tenant,
        actor=actor,
        sealed=seal(ring, integration.tenant, integration.id, parsed),
    )


def reseal_all(store: RunStore, ring: KeyRing) -> int:
    """Re-encrypt every integration's credentials under the ring's current key (after a key
    rotation: the old key goes to GREENROOM_PREVIOUS_SECRET_KEYS until this has run)."""

    def reseal(integration: Integration) -> tuple[str, str] | None:
        if integration.key_id == ring.current_id:
            return None
        context = _context(integration.tenant, integration.id)
        plain = ring.decrypt(integration.key_id, integration.credentials, context)
        if plain is None:
            raise ConfigError(
                f"integration {integration.id}: key {integration.key_id} is not in the key ring"
            )
        return ring.encrypt(plain, context)

    return store.reseal_credentials(reseal)


def open_for_run(store: RunStore, ring: KeyRing, connector: Connector, run: Run) -> BaseModel:
    """The credentials of the integration a run was started for."""
    integration_id = run.labels.get(INTEGRATION_LABEL)
    if integration_id is None:
        raise PermanentError(f"run {run.id} was not started for an integration: no credentials")
    try:
        integration = store.integration(integration_id, tenant=run.tenant)
    except NotFound:
        raise PermanentError(f"integration {integration_id} no longer exists") from None
    if integration.status != "active":
        raise PermanentError(f"integration {integration_id} is {integration.status}")
    return open_credentials(ring, integration, connector)
