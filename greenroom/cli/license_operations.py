"""What `greenroom licenses` does, one way whether it acts on a database or on a server.

`LicenseOperations` names the operations in the API's terms and shapes (the client's license
methods, greenroom.client_licenses); `LocalLicenseOperations` does them on a store as the API's
routes do, so that each command is written once and prints the same either way.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, Unpack

import typer

from greenroom.api.license_schemas import FindingOut, LicenseOut, PolicyOut, PushOut, SavingsOut
from greenroom.cli import (
    configure,
    db_url,
    default_actor,
    existing_store,
    given_db,
    load_app,
    remote_client,
    require_database,
)
from greenroom.errors import InvalidInput
from greenroom.licenses import actions
from greenroom.licenses.ingest import AccountRow, parse_accounts
from greenroom.licenses.policy import PolicyIn
from greenroom.licenses.runner import judge_all, upkeep
from greenroom.schedules.service import DEFAULT_TENANT
from greenroom.storage.findings import FindingFilter
from greenroom.storage.licenses import LicenseFilter

if TYPE_CHECKING:
    from greenroom.app import App
    from greenroom.client_licenses import FindingFilters, LicenseFilters
    from greenroom.storage import RunStore

Kind = Literal["keep", "snooze", "reclaim"]


class LicenseOperations(Protocol):
    """What the license commands ask: `greenroom.client.Client`'s methods of these names."""

    def push_accounts(
        self,
        integration_id: str,
        rows: Sequence[AccountRow | dict[str, Any]],
        *,
        complete: bool = False,
        sync: str | None = None,
    ) -> PushOut: ...
    def iter_licenses(
        self, *, page_size: int = 100, **filters: Unpack[LicenseFilters]
    ) -> Iterator[LicenseOut]: ...
    def get_license(self, license_id: str) -> LicenseOut: ...
    def iter_findings(
        self, *, page_size: int = 100, **filters: Unpack[FindingFilters]
    ) -> Iterator[FindingOut]: ...
    def get_finding(self, finding_id: str) -> FindingOut: ...
    def act_on_finding(
        self,
        finding_id: str,
        action: Kind,
        *,
        note: str,
        until: datetime | float | None = None,
    ) -> FindingOut: ...
    def savings(self, *, tenant: str | None = None) -> SavingsOut: ...
    def license_policy(
        self, *, integration: str | None = None, tenant: str | None = None
    ) -> PolicyOut: ...
    def set_license_policy(
        self, change: PolicyIn, *, integration: str | None = None, tenant: str | None = None
    ) -> PolicyOut: ...


@dataclass(frozen=True, kw_only=True)
class PassDone:
    """What one local run of the license pass did."""

    stale: int
    baselines: int
    seats: int
    digests: int
    judged: int
    opened: int
    closed: int
    events: dict[str, int]


class LocalLicenseOperations:
    """The license operations on a database, as `actor`, across every tenant (as a platform
    key). A reclaim runs the connector's deactivate workflow: it needs the `app`."""

    def __init__(self, store: RunStore, actor: str, app: App | None = None) -> None:
        self.store = store
        self.actor = actor
        self.app = app

    def push_accounts(
        self,
        integration_id: str,
        rows: Sequence[AccountRow | dict[str, Any]],
        *,
        complete: bool = False,
        sync: str | None = None,
    ) -> PushOut:
        integration = self.store.accounts.integration(integration_id)
        batch = parse_accounts(list(rows))
        sync_id = sync or f"push:{uuid.uuid4().hex}"
        saved = self.store.licenses.save(
            integration.tenant, integration.id, batch, sync_id=sync_id, complete=complete
        )
        return PushOut(**vars(saved), sync_id=sync_id)

    def iter_licenses(
        self, *, page_size: int = 100, **filters: Unpack[LicenseFilters]
    ) -> Iterator[LicenseOut]:
        f = LicenseFilter(
            tenant=filters.get("tenant"),
            integration_id=filters.get("integration"),
            verdict=filters.get("verdict"),
            confidence=filters.get("confidence"),
            finding_state=filters.get("finding_state"),
            removed=filters.get("removed", False),
            sort=filters.get("sort", "savings"),
            limit=page_size,
        )
        while True:
            found, after = self.store.licenses.list_licenses(f)
            yield from (LicenseOut.of(lic) for lic in found)
            if after is None:
                return
            f = LicenseFilter(**{**vars(f), "after": after})

    def get_license(self, license_id: str) -> LicenseOut:
        return LicenseOut.of(self.store.licenses.get_license(license_id))

    def iter_findings(
        self, *, page_size: int = 100, **filters: Unpack[FindingFilters]
    ) -> Iterator[FindingOut]:
        f = FindingFilter(
            tenant=filters.get("tenant"),
            integration_id=filters.get("integration"),
            state=filters.get("state"),
            verdict=filters.get("verdict"),
            open_only=filters.get("open", True),
            sort=filters.get("sort", "savings"),
            limit=page_size,
        )
        while True:
            found, after = self.store.findings.list_findings(f)
            yield from (FindingOut.of(finding) for finding in found)
            if after is None:
                return
            f = FindingFilter(**{**vars(f), "after": after})

    def get_finding(self, finding_id: str) -> FindingOut:
        return FindingOut.of(self.store.findings.get_finding(finding_id))

    def act_on_finding(
        self,
        finding_id: str,
        action: Kind,
        *,
        note: str,
        until: datetime | float | None = None,
    ) -> FindingOut:
        at = until.timestamp() if isinstance(until, datetime) else until
        if action == "reclaim":
            if self.app is None:
                raise InvalidInput(
                    "--app module:attribute is needed to reclaim on a database: the app's"
                    " connector deactivates the account (or give --url)"
                )
            done = actions.reclaim(self.app, finding_id, tenant=None, actor=self.actor, note=note)
            return FindingOut.of(done)
        findings = self.store.findings
        if action == "keep":
            return FindingOut.of(
                findings.keep(finding_id, tenant=None, actor=self.actor, note=note)
            )
        if at is None:
            raise InvalidInput("a snooze needs --until")
        done = findings.snooze(finding_id, tenant=None, until=at, actor=self.actor, note=note)
        return FindingOut.of(done)

    def savings(self, *, tenant: str | None = None) -> SavingsOut:
        return SavingsOut.of(self.store.findings.savings(tenant=tenant))

    def license_policy(
        self, *, integration: str | None = None, tenant: str | None = None
    ) -> PolicyOut:
        owner = self._owner(integration, tenant)
        return PolicyOut(**self.store.findings.policy(owner, integration))

    def set_license_policy(
        self, change: PolicyIn, *, integration: str | None = None, tenant: str | None = None
    ) -> PolicyOut:
        owner = self._owner(integration, tenant)
        changed = self.store.findings.set_policy(
            owner, change, integration_id=integration, actor=self.actor
        )
        return PolicyOut(**changed)

    def run_pass(self) -> PassDone:
        """The license loop's work, now: upkeep, then every due license."""
        done = upkeep(self.store)
        judged = judge_all(self.store)
        return PassDone(
            stale=done["stale"],
            baselines=done["baselines"],
            seats=done["seats"],
            digests=done["digests"],
            judged=judged.licenses,
            opened=judged.opened,
            closed=judged.closed,
            events=judged.events,
        )

    def _owner(self, integration: str | None, tenant: str | None) -> str:
        """The tenant of a policy: the integration's, else the one named (else `default`)."""
        if integration is None:
            return tenant or DEFAULT_TENANT
        return self.store.accounts.integration(integration, tenant=tenant).tenant


@contextmanager
def license_operations(
    ctx: typer.Context, db: str | None, *, actor: str | None = None, app: str | None = None
) -> Iterator[LicenseOperations]:
    """The server of --url (or $GREENROOM_URL) through its API, else the database, acting as
    --actor; `app` (module:attribute) is needed on a database to reclaim (the server has its
    own)."""
    client = remote_client(ctx, db, {"--actor": actor})
    if client is not None:
        with client:
            yield client
        return
    with local_license_operations(ctx, db, actor=actor, app=app) as local:
        yield local


@contextmanager
def local_license_operations(
    ctx: typer.Context, db: str | None, *, actor: str | None = None, app: str | None = None
) -> Iterator[LocalLicenseOperations]:
    """The license operations on the database (--db, $GREENROOM_DB, or the app's)."""
    who = actor or default_actor()
    if app is None:
        with existing_store(db_url(ctx, db)) as store:
            yield LocalLicenseOperations(store, who)
        return
    the_app = load_app(app)
    try:
        configure(the_app, db=given_db(ctx, db))
        require_database(the_app.settings.db)
        yield LocalLicenseOperations(the_app.store, who, the_app)
    finally:
        the_app.close()
