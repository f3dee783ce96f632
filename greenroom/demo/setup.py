"""Integrations with the demo console, made as a tenant's admin would make them: one per
organization, holding its admin's credentials and the console's URL as the setting that says
where they may be sent. `greenroom demo`, the benchmarks and the tests start their runs for
these."""

from __future__ import annotations

import contextlib

from greenroom import integrations
from greenroom.connectors import Connector
from greenroom.crypto import KeyRing
from greenroom.demo.saas import admin_credentials
from greenroom.demo.saas.data import DEFAULT_SECRET
from greenroom.errors import Conflict
from greenroom.model import Integration
from greenroom.storage import RunStore

ACTOR = "greenroom demo"


def register_tenant(store: RunStore, tenant: str) -> None:
    """Register the tenant unless it already is."""
    with contextlib.suppress(Conflict):
        store.accounts.create_tenant(tenant, actor=ACTOR)


def connect_org(
    store: RunStore,
    ring: KeyRing,
    connector: Connector,
    *,
    tenant: str,
    org: str,
    base_url: str,
    secret: str = DEFAULT_SECRET,
) -> Integration:
    """An integration of `tenant` with organization `org` of the console at `base_url`."""
    creds = admin_credentials(org, secret)
    return integrations.create(
        store.accounts,
        ring,
        connector,
        tenant=tenant,
        name=f"demo console {org}",
        credentials={"email": creds.email, "password": creds.password},
        settings={"base_url": base_url},
        actor=ACTOR,
    )
