"""What the commands do, one way whether they act on a database or on a server.

`Operations` names the operations in the API's terms and shapes (greenroom.api.schemas); the
HTTP `Client` implements it as it is, and `LocalOperations` over a store, converting results as
the API's routes do, so that a command is written once and prints the same either way.
`connect.operations` gives the one that --url, --key and --db ask for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, Unpack

from greenroom.api.delivery_schemas import (
    DeliveryAttemptOut,
    DeliveryOut,
    RecoverIn,
    RecoverOut,
    SubscriptionCreate,
    SubscriptionOut,
    SubscriptionUpdate,
    SubscriptionWithSecret,
)
from greenroom.api.filters import optional_time, retry_filter, runs_filter
from greenroom.api.schedule_schemas import (
    BackfillIn,
    BackfillOut,
    ScheduleCreate,
    ScheduleFiringOut,
    ScheduleOut,
    ScheduleUpdate,
    run_backfill,
)
from greenroom.api.schemas import (
    AuditOut,
    BulkRetryOut,
    BulkRetryRequest,
    ErrorGroupOut,
    IntegrationOut,
    IntegrationUpdate,
    KeyCreate,
    KeyCreated,
    KeyOut,
    OutboxEventOut,
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
)
from greenroom.cli import quiet_driver_logs, require_database
from greenroom.crypto import load_keyring
from greenroom.delivery import subscriptions as delivery_subscriptions
from greenroom.delivery.address import AddressPolicy
from greenroom.errors import InvalidInput, NotFound
from greenroom.model import ALL_TENANTS, Channel, Role, RunState
from greenroom.schedules import service as schedule_service
from greenroom.settings import Settings, load_settings
from greenroom.storage.deliveries import DeliveryFilter
from greenroom.storage.events import EventFilter

if TYPE_CHECKING:
    from greenroom.app import App
    from greenroom.client import EventFilters, RunFilters
    from greenroom.storage import RunStore


class Operations(Protocol):
    """What the commands ask of greenroom: `greenroom.client.Client`'s methods of these names."""

    def create_run(
        self, run: RunCreate, *, idempotency_key: str | None = None
    ) -> tuple[RunOut, bool]: ...
    def iter_runs(
        self, *, page_size: int = 100, **filters: Unpack[RunFilters]
    ) -> Iterator[RunOut]: ...
    def get_run(self, run_id: str) -> RunDetail: ...
    def iter_events(
        self, *, after: int | None = None, page_size: int = 100, **filters: Unpack[EventFilters]
    ) -> Iterator[OutboxEventOut]: ...
    def cancel_run(self, run_id: str, *, reason: str) -> RunOut: ...
    def retry_run(
        self,
        run_id: str,
        *,
        reason: str,
        from_scratch: bool = False,
        input: dict[str, Any] | None = None,
        force: bool = False,
    ) -> RunOut: ...
    def retry_runs(self, request: BulkRetryRequest) -> BulkRetryOut: ...
    def prune_runs(self, request: PruneRequest) -> PruneOut: ...
    def integrations(
        self, *, connector: str | None = None, tenant: str | None = None
    ) -> list[IntegrationOut]: ...
    def get_integration(self, integration_id: str) -> IntegrationOut: ...
    def update_integration(
        self, integration_id: str, update: IntegrationUpdate
    ) -> IntegrationOut: ...
    def queues(self, *, tenant: str | None = None) -> list[QueueOut]: ...
    def get_queue(self, name: str) -> QueueOut: ...
    def update_queue(self, name: str, update: QueueUpdate) -> QueueOut: ...
    def pauses(self) -> list[PauseOut]: ...
    def create_pause(self, pause: PauseCreate) -> PauseOut: ...
    def resume_pause(self, pause_id: int, *, reason: str) -> ResumeOut: ...
    def error_groups(
        self, *, tenant: str | None = None, limit: int = 50
    ) -> list[ErrorGroupOut]: ...
    def iter_audit_log(
        self, *, tenant: str | None = None, page_size: int = 100
    ) -> Iterator[AuditOut]: ...
    def workers(self, *, include_gone: bool = False) -> list[WorkerOut]: ...
    def tenants(self) -> list[TenantOut]: ...
    def create_tenant(self, name: str) -> TenantOut: ...
    def get_tenant(self, name: str) -> TenantOut: ...
    def update_tenant(self, name: str, update: TenantUpdate) -> TenantOut: ...
    def api_keys(self, *, tenant: str | None = None) -> list[KeyOut]: ...
    def create_api_key(self, key: KeyCreate) -> KeyCreated: ...
    def revoke_api_key(self, key_id: str) -> KeyOut: ...
    def subscriptions(self, *, tenant: str | None = None) -> list[SubscriptionOut]: ...
    def create_subscription(self, subscription: SubscriptionCreate) -> SubscriptionWithSecret: ...
    def get_subscription(self, subscription_id: str) -> SubscriptionOut: ...
    def update_subscription(
        self, subscription_id: str, update: SubscriptionUpdate
    ) -> SubscriptionOut: ...
    def delete_subscription(self, subscription_id: str) -> None: ...
    def rotate_subscription_secret(self, subscription_id: str) -> SubscriptionWithSecret: ...
    def iter_deliveries(
        self,
        *,
        page_size: int = 100,
        subscription: str | None = None,
        event: int | None = None,
        failed: bool = False,
        tenant: str | None = None,
    ) -> Iterator[DeliveryOut]: ...
    def delivery_attempts(self, delivery_id: int) -> list[DeliveryAttemptOut]: ...
    def replay_event(
        self, event_id: int, *, subscription: str | None = None
    ) -> list[DeliveryOut]: ...
    def recover_deliveries(self, request: RecoverIn) -> RecoverOut: ...
    def schedules(
        self, *, tenant: str | None = None, integration: str | None = None
    ) -> list[ScheduleOut]: ...
    def create_schedule(self, schedule: ScheduleCreate) -> ScheduleOut: ...
    def get_schedule(self, schedule_id: str) -> ScheduleOut: ...
    def update_schedule(self, schedule_id: str, update: ScheduleUpdate) -> ScheduleOut: ...
    def delete_schedule(self, schedule_id: str) -> None: ...
    def pause_schedule(self, schedule_id: str, *, note: str) -> ScheduleOut: ...
    def resume_schedule(self, schedule_id: str) -> ScheduleOut: ...
    def trigger_schedule(self, schedule_id: str) -> RunOut: ...
    def backfill_schedule(self, schedule_id: str, request: BackfillIn) -> BackfillOut: ...
    def schedule_firings(self, schedule_id: str, *, limit: int = 50) -> list[ScheduleFiringOut]: ...


class LocalOperations:
    """The operations on a database, as `actor` (who acts, for the audit log: locally there is
    no key to say it), across every tenant as a platform key. Over `store` (opened on `url`),
    or over the store of `app`, which also checks what only the app knows (workflows,
    connectors' settings) for the operations that need it."""

    def __init__(
        self, store: RunStore | None, actor: str, app: App | None = None, url: str | None = None
    ) -> None:
        assert store is not None or app is not None
        self._store = store
        self.actor = actor
        self.app = app
        self.url = url

    def settings(self) -> Settings:
        """The settings that say where this database's artifact files are."""
        return self.app.settings if self.app is not None else load_settings(db=self.url)

    @property
    def store(self) -> RunStore:
        """The store given, else the app's, opened when first needed: what the app alone can
        say (an unknown workflow) is said first."""
        if self._store is not None:
            return self._store
        assert self.app is not None
        require_database(self.app.settings.db)
        quiet_driver_logs()
        return self.app.store

    # -- runs ------------------------------------------------------------------------------

    def create_run(
        self, run: RunCreate, *, idempotency_key: str | None = None
    ) -> tuple[RunOut, bool]:
        if self.app is None:
            raise InvalidInput("--app is needed to enqueue on a database (or give --url)")
        self.app.get_workflow(run.workflow)  # an unknown one is the first thing to say
        request = run.request(run.tenant or "default", idempotency_key)
        made, created = self.store.runs.enqueue(self.app.prepare(request))
        return RunOut.of(made), created

    def iter_runs(self, *, page_size: int = 100, **filters: Unpack[RunFilters]) -> Iterator[RunOut]:
        given: dict[str, Any] = dict(filters)
        f = runs_filter(states=given.pop("state", None), limit=page_size, **given)
        while True:
            page = self.store.runs.list_runs(f)
            yield from (RunOut.of(r) for r in page)
            if len(page) < page_size:
                return
            f = replace(f, before_seq=page[-1].seq)

    def get_run(self, run_id: str) -> RunDetail:
        return RunDetail.of(self.store.runs.run_detail(run_id))

    def iter_events(
        self, *, after: int | None = None, page_size: int = 100, **filters: Unpack[EventFilters]
    ) -> Iterator[OutboxEventOut]:
        since, tenant = filters.get("since"), filters.get("tenant")
        f = EventFilter(
            tenant=tenant,
            types=filters.get("type") or (),
            subject=filters.get("subject"),
            since=optional_time(since),
            after=None if after is None else self.store.events.position(after, tenant=tenant),
            limit=page_size,
        )
        while page := self.store.events.list_events(f):
            yield from (OutboxEventOut.of(event) for event, _ in page)
            f = replace(f, after=page[-1][1])

    def cancel_run(self, run_id: str, *, reason: str) -> RunOut:
        return RunOut.of(self.store.runs.cancel(run_id, actor=self.actor, reason=reason))

    def retry_run(
        self,
        run_id: str,
        *,
        reason: str,
        from_scratch: bool = False,
        input: dict[str, Any] | None = None,
        force: bool = False,
    ) -> RunOut:
        new = self.store.admin.retry_run(
            run_id,
            actor=self.actor,
            reason=reason,
            from_scratch=from_scratch,
            input=input,
            force=force,
        )
        return RunOut.of(new)

    def retry_runs(self, request: BulkRetryRequest) -> BulkRetryOut:
        done = self.store.admin.retry_where(
            retry_filter(request, request.tenant),
            actor=self.actor,
            reason=request.reason,
            dry_run=request.dry_run,
            from_scratch=request.from_scratch,
        )
        return BulkRetryOut.of(done)

    def prune_runs(self, request: PruneRequest) -> PruneOut:
        from greenroom.browser.artifacts import default_artifact_store

        files = default_artifact_store(self.settings())
        deleted = self.store.admin.prune(
            older_than=request.older_than,
            states=[RunState(s) for s in request.state],
            delete_files=files.delete_run,
            dry_run=request.dry_run,
        )
        return PruneOut(deleted=deleted, dry_run=request.dry_run)

    # -- integrations ----------------------------------------------------------------------

    def integrations(
        self, *, connector: str | None = None, tenant: str | None = None
    ) -> list[IntegrationOut]:
        found = self.store.accounts.integrations(tenant=tenant, connector=connector)
        return [IntegrationOut.of(i) for i in found]

    def get_integration(self, integration_id: str) -> IntegrationOut:
        return IntegrationOut.of(self.store.accounts.integration(integration_id))

    def update_integration(self, integration_id: str, update: IntegrationUpdate) -> IntegrationOut:
        """New settings are checked by the app's connector: on a database, --app says which."""
        from greenroom import integrations

        current = self.store.accounts.integration(integration_id)
        if update.settings is not None and self.app is None:
            raise InvalidInput("--settings on a database needs --app: its connector checks them")
        connector = None if self.app is None else self.app.connectors.get(current.connector)
        if self.app is not None and connector is None:
            raise InvalidInput(f"the app has no connector {current.connector!r}")
        updated = integrations.update(
            self.store.accounts,
            connector,
            current,
            actor=self.actor,
            name=update.name,
            settings=update.settings,
            status=update.status,
        )
        return IntegrationOut.of(updated)

    # -- queues and pauses -----------------------------------------------------------------

    def queues(self, *, tenant: str | None = None) -> list[QueueOut]:
        return [QueueOut.of(q) for q in self.store.controls.queues(tenant=tenant)]

    def get_queue(self, name: str) -> QueueOut:
        return QueueOut.of(self.store.controls.queue(name))

    def update_queue(self, name: str, update: QueueUpdate) -> QueueOut:
        changes = update.model_dump(exclude_unset=True, exclude={"reason"})
        self.store.controls.set_queue(name, actor=self.actor, reason=update.reason, **changes)
        return self.get_queue(name)

    def pauses(self) -> list[PauseOut]:
        return [PauseOut.of(p) for p in self.store.controls.pauses()]

    def create_pause(self, pause: PauseCreate) -> PauseOut:
        made = self.store.controls.pause(
            pause.scope,
            pause.value,
            actor=self.actor,
            reason=pause.reason,
            label=pause.label,
            tenant=pause.tenant or ALL_TENANTS,
            drain=pause.drain,
        )
        return PauseOut.of(made)

    def resume_pause(self, pause_id: int, *, reason: str) -> ResumeOut:
        for pause in self.store.controls.pauses():
            if pause.id == pause_id:
                resumed = self.store.controls.resume(
                    pause.scope,
                    pause.value,
                    actor=self.actor,
                    reason=reason,
                    label=pause.label,
                    tenant=pause.tenant,
                )
                return ResumeOut(resumed=resumed)
        raise NotFound(f"pause {pause_id} not found")

    # -- errors, audit, workers ------------------------------------------------------------

    def error_groups(self, *, tenant: str | None = None, limit: int = 50) -> list[ErrorGroupOut]:
        found = self.store.admin.error_groups(tenant=tenant, limit=limit)
        return [ErrorGroupOut.of(g) for g in found]

    def iter_audit_log(
        self, *, tenant: str | None = None, page_size: int = 100
    ) -> Iterator[AuditOut]:
        before = None
        while True:
            page = self.store.admin.audit_log(tenant=tenant, limit=page_size, before_id=before)
            yield from (AuditOut.of(e) for e in page)
            if len(page) < page_size:
                return
            before = page[-1].id

    def workers(self, *, include_gone: bool = False) -> list[WorkerOut]:
        return [WorkerOut.of(w) for w in self.store.runs.workers(include_gone=include_gone)]

    # -- tenants and keys ------------------------------------------------------------------

    def tenants(self) -> list[TenantOut]:
        return [TenantOut.of(t) for t in self.store.controls.tenants()]

    def create_tenant(self, name: str) -> TenantOut:
        return TenantOut.of(self.store.accounts.create_tenant(name, actor=self.actor))

    def get_tenant(self, name: str) -> TenantOut:
        return TenantOut.of(self.store.accounts.tenant(name))

    def update_tenant(self, name: str, update: TenantUpdate) -> TenantOut:
        given = update.model_dump(exclude_unset=True)
        tenant = self.store.controls.set_tenant(
            name,
            actor=self.actor,
            reason=update.reason,
            weight=update.weight,
            concurrency=update.concurrency,
            clear_concurrency="concurrency" in given and update.concurrency is None,
        )
        return TenantOut.of(tenant)

    def api_keys(self, *, tenant: str | None = None) -> list[KeyOut]:
        return [KeyOut.of(k) for k in self.store.accounts.api_keys(tenant=tenant)]

    def create_api_key(self, key: KeyCreate) -> KeyCreated:
        """On a database no key says which tenant: every role but platform needs one."""
        from greenroom.api.keys import create_key  # FastAPI is slow to import: only here

        if key.role is not Role.PLATFORM and key.tenant is None:
            raise InvalidInput(
                f"--tenant is required for role {key.role.value} (only platform keys have none)"
            )
        made, secret = create_key(
            self.store.accounts,
            tenant=key.tenant,
            role=key.role,
            name=key.name,
            actor=self.actor,
            expires_at=key.expires_at,
            rate_limit=key.rate_limit,
        )
        return KeyCreated(**KeyOut.of(made).model_dump(), key=secret)

    def revoke_api_key(self, key_id: str) -> KeyOut:
        return KeyOut.of(self.store.accounts.revoke_api_key(key_id, actor=self.actor))

    # -- subscriptions and deliveries ------------------------------------------------------

    def subscriptions(self, *, tenant: str | None = None) -> list[SubscriptionOut]:
        found = self.store.subscriptions.list_subscriptions(tenant=tenant)
        return [SubscriptionOut.of(s) for s in found]

    def create_subscription(self, subscription: SubscriptionCreate) -> SubscriptionWithSecret:
        if subscription.tenant is None:
            raise InvalidInput("--tenant is needed on a database: which tenant subscribes?")
        channel = Channel(subscription.channel)
        created, secret = delivery_subscriptions.create(
            self.store,
            load_keyring(self.settings()) if channel is Channel.WEBHOOK else None,
            AddressPolicy.of(self.settings()),
            tenant=subscription.tenant,
            channel=channel,
            spec=subscription.spec(),
            actor=self.actor,
        )
        return SubscriptionWithSecret(**SubscriptionOut.of(created).model_dump(), secret=secret)

    def get_subscription(self, subscription_id: str) -> SubscriptionOut:
        return SubscriptionOut.of(self.store.subscriptions.get(subscription_id))

    def update_subscription(
        self, subscription_id: str, update: SubscriptionUpdate
    ) -> SubscriptionOut:
        policy = AddressPolicy.of(self.settings())
        updated = delivery_subscriptions.update(
            self.store, policy, subscription_id, update.spec(), actor=self.actor, tenant=None
        )
        return SubscriptionOut.of(updated)

    def delete_subscription(self, subscription_id: str) -> None:
        self.store.subscriptions.delete(subscription_id, actor=self.actor)

    def rotate_subscription_secret(self, subscription_id: str) -> SubscriptionWithSecret:
        ring = load_keyring(self.settings())
        rotated, secret = delivery_subscriptions.rotate_secret(
            self.store, ring, subscription_id, actor=self.actor, tenant=None
        )
        return SubscriptionWithSecret(**SubscriptionOut.of(rotated).model_dump(), secret=secret)

    def iter_deliveries(
        self,
        *,
        page_size: int = 100,
        subscription: str | None = None,
        event: int | None = None,
        failed: bool = False,
        tenant: str | None = None,
    ) -> Iterator[DeliveryOut]:
        f = DeliveryFilter(
            tenant=tenant,
            subscription_id=subscription,
            event_id=event,
            failed=failed,
            limit=page_size,
        )
        while page := self.store.deliveries.list_deliveries(f):
            yield from (DeliveryOut.of(d) for d in page)
            if len(page) < page_size:
                return
            f = replace(f, before=page[-1].id)

    def delivery_attempts(self, delivery_id: int) -> list[DeliveryAttemptOut]:
        return [DeliveryAttemptOut.of(a) for a in self.store.deliveries.attempts(delivery_id)]

    def replay_event(self, event_id: int, *, subscription: str | None = None) -> list[DeliveryOut]:
        made = self.store.deliveries.replay(
            event_id, actor=self.actor, subscription_id=subscription
        )
        return [DeliveryOut.of(d) for d in made]

    def recover_deliveries(self, request: RecoverIn) -> RecoverOut:
        if request.tenant is None:
            raise InvalidInput("--tenant is needed on a database: whose deliveries?")
        made = self.store.deliveries.recover(
            since=request.since,
            actor=self.actor,
            tenant=request.tenant,
            subscription_id=request.subscription,
        )
        return RecoverOut(deliveries=made)

    # -- schedules -------------------------------------------------------------------------

    def _app(self, doing: str) -> App:
        """The app: its workflows make a schedule's runs, so a database alone cannot."""
        if self.app is None:
            raise InvalidInput(
                f"--app module:attribute is needed to {doing} on a database: the app's"
                " workflows make the schedule's runs (or give --url)"
            )
        require_database(self.app.settings.db)
        return self.app

    def schedules(
        self, *, tenant: str | None = None, integration: str | None = None
    ) -> list[ScheduleOut]:
        found = self.store.schedules.list_schedules(tenant=tenant, integration=integration)
        return [ScheduleOut.of(s) for s in found]

    def create_schedule(self, schedule: ScheduleCreate) -> ScheduleOut:
        app = self._app("create a schedule")
        tenant = schedule.tenant or schedule_service.DEFAULT_TENANT
        made = schedule_service.create(app, tenant, schedule.request(), actor=self.actor)
        return ScheduleOut.of(made)

    def get_schedule(self, schedule_id: str) -> ScheduleOut:
        return ScheduleOut.of(self.store.schedules.get(schedule_id))

    def update_schedule(self, schedule_id: str, update: ScheduleUpdate) -> ScheduleOut:
        app = self._app("change a schedule")
        changed = schedule_service.update(
            app, schedule_id, update.request(), actor=self.actor, tenant=None
        )
        return ScheduleOut.of(changed)

    def delete_schedule(self, schedule_id: str) -> None:
        self.store.schedules.delete(schedule_id, actor=self.actor)

    def pause_schedule(self, schedule_id: str, *, note: str) -> ScheduleOut:
        return ScheduleOut.of(self.store.schedules.pause(schedule_id, note=note, actor=self.actor))

    def resume_schedule(self, schedule_id: str) -> ScheduleOut:
        return ScheduleOut.of(self.store.schedules.resume(schedule_id, actor=self.actor))

    def trigger_schedule(self, schedule_id: str) -> RunOut:
        prepare = schedule_service.preparer(self._app("trigger a schedule"))
        return RunOut.of(self.store.schedules.trigger(schedule_id, prepare, actor=self.actor))

    def backfill_schedule(self, schedule_id: str, request: BackfillIn) -> BackfillOut:
        app = self._app("backfill a schedule")
        return run_backfill(app, schedule_id, request, actor=self.actor, tenant=None)

    def schedule_firings(self, schedule_id: str, *, limit: int = 50) -> list[ScheduleFiringOut]:
        found = self.store.schedules.firings(schedule_id, limit=limit)
        return [ScheduleFiringOut.of(f) for f in found]
