"""Integrations: a tenant's connection to one SaaS app, with credentials sealed at rest and
settings its admins decide.

Credentials are validated against the connector's model, sealed with the key ring (bound to
the tenant and integration id, so a blob copied elsewhere does not open), and opened only for
a run of that integration (RunContext.credentials()). Nothing here logs or returns them.
Settings are validated against the connector's settings model on every change and given to the
integration's runs as ctx.integration: among them the origins its secrets may be sent to.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from greenroom.connectors import Connector, dump_credentials
from greenroom.errors import ConfigError, InvalidInput, NotFound, PermanentError
from greenroom.model import INTEGRATION_LABEL, Integration, Run
from greenroom.origins import secret_origins
from greenroom.storage.accounts import Accounts

if TYPE_CHECKING:
    from greenroom.crypto import KeyRing


def _context(tenant: str, integration_id: str) -> str:
    return f"integration\0{tenant}\0{integration_id}"


def seal(
    ring: KeyRing, tenant: str, integration_id: str, credentials: BaseModel
) -> tuple[str, str]:
    plain = json.dumps(dump_credentials(credentials), separators=(",", ":")).encode()
    return ring.encrypt(plain, _context(tenant, integration_id))


def opens(ring: KeyRing, integration: Integration) -> bool:
    """Whether this node's keys open the integration's credentials (greenroom doctor)."""
    context = _context(integration.tenant, integration.id)
    return ring.decrypt(integration.key_id, integration.credentials, context) is not None


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


@dataclass(frozen=True, kw_only=True)
class RunIntegration:
    """What a run sees of its integration (ctx.integration); its credentials stay sealed until
    the run asks for them (ctx.credentials)."""

    id: str
    name: str
    connector: str
    #: The connector's settings model, validated: annotate it as that model to use it
    #: (`settings: CrmSettings = ctx.integration.settings`).
    settings: Any
    #: Where the integration's secrets may be sent: the origins of its SecretOrigin settings.
    secret_origins: frozenset[str]


def create(
    accounts: Accounts,
    ring: KeyRing,
    connector: Connector,
    *,
    tenant: str,
    name: str,
    credentials: Any,
    settings: Any,
    actor: str,
) -> Integration:
    """A new integration; its credentials and settings are validated first (InvalidInput)."""
    parsed = connector.parse_credentials(credentials)
    checked = connector.parse_settings(settings)
    integration_id = "int_" + secrets.token_hex(8)
    return accounts.add_integration(
        tenant=tenant,
        connector=connector.name,
        name=name,
        settings=connector.dump_settings(checked),
        integration_id=integration_id,
        sealed=seal(ring, tenant, integration_id, parsed),
        actor=actor,
    )


def update(
    accounts: Accounts,
    connector: Connector | None,
    integration: Integration,
    *,
    actor: str,
    name: str | None = None,
    settings: Any = None,
    status: str | None = None,
) -> Integration:
    """Rename, replace the settings (validated whole, then audited) or change the status.
    Runs started from now on see the new settings; running ones keep what they started with.
    `connector` (None: the app no longer has it) is needed only to change settings."""
    checked = None
    if settings is not None:
        if connector is None:
            raise InvalidInput(
                f"connector {integration.connector!r} is not in this app: the settings of "
                f"integration {integration.id} cannot be checked"
            )
        checked = connector.dump_settings(connector.parse_settings(settings))
    return accounts.update_integration(
        integration.id,
        tenant=integration.tenant,
        actor=actor,
        name=name,
        settings=checked,
        status=status,
    )


def replace_credentials(
    accounts: Accounts,
    ring: KeyRing,
    connector: Connector,
    integration: Integration,
    credentials: Any,
    *,
    actor: str,
) -> Integration:
    """Credential rotation: the new credentials replace the old ones at once."""
    parsed = connector.parse_credentials(credentials)
    return accounts.update_integration(
        integration.id,
        tenant=integration.tenant,
        actor=actor,
        sealed=seal(ring, integration.tenant, integration.id, parsed),
    )


def reseal_all(accounts: Accounts, ring: KeyRing) -> int:
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

    return accounts.reseal_credentials(reseal)


def for_run(accounts: Accounts, connector: Connector, run: Run) -> RunIntegration | None:
    """The integration a run was started for, its settings validated (None: the run has no
    integration). Refuses input that names a setting, however the run was created."""
    try:
        connector.check_input(run.input)
    except InvalidInput as exc:
        raise PermanentError(str(exc)) from None
    integration_id = run.labels.get(INTEGRATION_LABEL)
    if integration_id is None:
        return None
    try:
        integration = accounts.integration(integration_id, tenant=run.tenant)
    except NotFound:
        raise PermanentError(f"integration {integration_id} no longer exists") from None
    try:
        settings = connector.parse_settings(integration.settings)
    except InvalidInput as exc:
        raise PermanentError(
            f"integration {integration_id}: its settings do not fit connector "
            f"{connector.name!r} (an admin must set them again): {exc}"
        ) from None
    return RunIntegration(
        id=integration.id,
        name=integration.name,
        connector=integration.connector,
        settings=settings,
        secret_origins=secret_origins(settings),
    )


def open_for_run(accounts: Accounts, ring: KeyRing, connector: Connector, run: Run) -> BaseModel:
    """The credentials of the integration a run was started for."""
    integration_id = run.labels.get(INTEGRATION_LABEL)
    if integration_id is None:
        raise PermanentError(f"run {run.id} was not started for an integration: no credentials")
    try:
        integration = accounts.integration(integration_id, tenant=run.tenant)
    except NotFound:
        raise PermanentError(f"integration {integration_id} no longer exists") from None
    if integration.status != "active":
        raise PermanentError(f"integration {integration_id} is {integration.status}")
    return open_credentials(ring, integration, connector)
