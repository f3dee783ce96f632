"""What `greenroom reports` does, one way whether it acts on a database or on a server.

`ReportOperations` names the operations in the API's terms and shapes (the client's report
methods, greenroom.client_reports); `LocalReportOperations` does them on a store as the API's
routes do, so each command is written once and prints the same either way."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

import typer

from greenroom.api.report_schemas import (
    ReportOut,
    ReportRunIn,
    ReportRunOut,
    ReportSubscriptionCreate,
    ReportSubscriptionCreated,
    ReportSubscriptionOut,
    parse_at,
)
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
from greenroom.crypto import load_keyring
from greenroom.delivery.address import AddressPolicy
from greenroom.errors import InvalidInput
from greenroom.model import Channel
from greenroom.reports import service
from greenroom.settings import load_settings

if TYPE_CHECKING:
    from greenroom.app import App
    from greenroom.storage import RunStore


class ReportOperations(Protocol):
    """What the report commands ask: `greenroom.client.Client`'s methods of these names."""

    def report_subscriptions(self, *, tenant: str | None = None) -> list[ReportSubscriptionOut]: ...
    def subscribe_report(self, body: ReportSubscriptionCreate) -> ReportSubscriptionCreated: ...
    def set_report_subscription(
        self, subscription_id: str, *, enabled: bool
    ) -> ReportSubscriptionOut: ...
    def unsubscribe_report(self, subscription_id: str) -> None: ...
    def iter_reports(
        self, *, report_type: str | None = None, tenant: str | None = None, page_size: int = 100
    ) -> Iterator[ReportOut]: ...
    def get_report(self, report_id: str) -> ReportOut: ...
    def report_file(self, report_id: str, name: str) -> bytes: ...
    def run_report(self, body: ReportRunIn) -> ReportRunOut: ...
    def resend_report(self, report_id: str, *, reason: str) -> ReportOut: ...


class LocalReportOperations:
    """The operations on a database as `actor`, across every tenant (a platform key's view);
    subscribing and making reports need the app (its report workflow)."""

    def __init__(self, store: RunStore, actor: str, app: App | None = None) -> None:
        self.store = store
        self.actor = actor
        self.app = app

    def _app(self, what: str) -> App:
        if self.app is None:
            raise InvalidInput(f"--app is needed on a database to {what} (its report workflow)")
        return self.app

    def report_subscriptions(self, *, tenant: str | None = None) -> list[ReportSubscriptionOut]:
        return [
            ReportSubscriptionOut.of(s) for s in self.store.reports.subscriptions(tenant=tenant)
        ]

    def subscribe_report(self, body: ReportSubscriptionCreate) -> ReportSubscriptionCreated:
        if body.tenant is None:
            raise InvalidInput("--tenant is needed on a database: which tenant subscribes?")
        app = self._app("subscribe")
        webhooks = any(c.channel == "webhook" for c in body.channels)
        made = service.subscribe(
            app,
            load_keyring(app.settings) if webhooks else None,
            AddressPolicy.of(app.settings),
            tenant=body.tenant,
            report_type=body.report_type,
            period=body.period,
            timezone=body.timezone,
            cron=body.cron,
            destinations=[
                service.Destination(channel=Channel(c.channel), url=c.url) for c in body.channels
            ],
            actor=self.actor,
        )
        shown = ReportSubscriptionOut.of(made.subscription).model_dump()
        return ReportSubscriptionCreated(**shown, secrets=made.secrets)

    def set_report_subscription(
        self, subscription_id: str, *, enabled: bool
    ) -> ReportSubscriptionOut:
        updated = service.set_enabled(
            self.store, subscription_id, enabled, actor=self.actor, tenant=None
        )
        return ReportSubscriptionOut.of(updated)

    def unsubscribe_report(self, subscription_id: str) -> None:
        service.unsubscribe(self.store, subscription_id, actor=self.actor, tenant=None)

    def iter_reports(
        self, *, report_type: str | None = None, tenant: str | None = None, page_size: int = 100
    ) -> Iterator[ReportOut]:
        after = None
        while True:
            found, after = self.store.reports.list_reports(
                tenant=tenant, report_type=report_type, after=after, limit=page_size
            )
            yield from (ReportOut.of(r) for r in found)
            if after is None:
                return

    def get_report(self, report_id: str) -> ReportOut:
        return ReportOut.of(self.store.reports.get(report_id))

    def report_file(self, report_id: str, name: str) -> bytes:
        return self.store.reports.file(report_id, name)[1]

    def run_report(self, body: ReportRunIn) -> ReportRunOut:
        if body.tenant is None:
            raise InvalidInput("--tenant is needed on a database: whose report?")
        run = service.run_report(
            self._app("make reports"),
            tenant=body.tenant,
            report_type=body.report_type,
            period=body.period,
            timezone=body.timezone,
            at=time.time() if body.at is None else parse_at(body.at),
            again=body.again,
            resend=None if not body.force_resend else (self.actor, body.reason or ""),
        )
        return ReportRunOut(run_id=run.id)

    def resend_report(self, report_id: str, *, reason: str) -> ReportOut:
        public_url = (self.app.settings if self.app else load_settings()).public_url
        resent = self.store.reports.resend(
            report_id, actor=self.actor, reason=reason, public_url=public_url
        )
        return ReportOut.of(resent)


@contextmanager
def report_operations(
    ctx: typer.Context, db: str | None, *, actor: str | None = None, app: str | None = None
) -> Iterator[ReportOperations]:
    """The server of --url (or $GREENROOM_URL) through its API, else the database, acting as
    --actor; `app` (module:attribute) is needed on a database to subscribe and make reports."""
    client = remote_client(ctx, db, {"--actor": actor, "--app": app})
    if client is not None:
        with client:
            yield client
        return
    who = actor or default_actor()
    if app is None:
        with existing_store(db_url(ctx, db)) as store:
            yield LocalReportOperations(store, who)
        return
    the_app = load_app(app)
    try:
        configure(the_app, db=given_db(ctx, db))
        require_database(the_app.settings.db)
        yield LocalReportOperations(the_app.store, who, the_app)
    finally:
        the_app.close()
