"""App: the registry of workflows, its settings and its store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from greenroom.clock import Clock
from greenroom.connectors import Connector, NoCredentials, NoSettings
from greenroom.errors import ConfigError, InvalidInput
from greenroom.model import INTEGRATION_LABEL, NewRun, Run
from greenroom.retry import RetryPolicy
from greenroom.rules import (
    MAX_NAME,
    MAX_PRIORITY,
    MAX_SECONDS,
    MAX_UNIX_TIME,
    check_keys,
    check_labels,
    check_name,
    check_text,
)
from greenroom.settings import Settings, load_settings
from greenroom.storage import RunStore, open_store
from greenroom.workflow import Workflow, WorkflowFn


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    """One run to enqueue, as callers describe it."""

    workflow: str | Workflow
    #: Keyword arguments of the workflow, or an instance of its input model.
    input: dict[str, Any] | BaseModel = field(default_factory=dict)
    tenant: str = "default"
    idempotency_key: str | None = None
    priority: int | None = None
    delay: float | None = None
    start_at: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    #: Runs for an integration carry it as a label and open its credentials.
    integration: str | None = None
    #: Another queue than the workflow's, e.g. a backfill kept apart from live runs (some
    #: worker must serve it: `greenroom worker --queues`).
    queue: str | None = None


class App:
    """Holds workflows and opens the store lazily, so importing an app module is cheap."""

    def __init__(
        self,
        *,
        db: str | None = None,
        settings: Settings | None = None,
        clock: Clock | None = None,
        migrate: bool = True,
    ) -> None:
        """With migrate=False the store refuses a database whose schema is not current instead
        of upgrading it (API nodes leave that to `greenroom db upgrade`)."""
        base = settings or load_settings()
        self.settings = base if db is None else base.model_copy(update={"db": db})
        self.clock = clock
        self.migrate = migrate
        self.workflows: dict[str, Workflow] = {}
        self.connectors: dict[str, Connector] = {}
        self._store: RunStore | None = None
        self._store_lock = threading.Lock()

    def connector(
        self,
        name: str,
        *,
        credentials: type[BaseModel] = NoCredentials,
        settings: type[BaseModel] = NoSettings,
        title: str = "",
        deactivate: str | None = None,
    ) -> Connector:
        """Declare a connector: give it to the workflows that drive its SaaS app. Its
        integrations hold `credentials` (sealed) and `settings` (set by their admins, read by
        runs as ctx.integration.settings; SecretOrigin fields say where secrets may go).
        `deactivate` names its workflow that deactivates one account (a license reclaim)."""
        if name in self.connectors:
            raise ConfigError(f"connector {name!r} is declared twice")
        self.connectors[name] = Connector(
            name=name,
            credentials=credentials,
            settings=settings,
            title=title or name,
            deactivate=deactivate,
        )
        return self.connectors[name]

    def workflow(
        self,
        *,
        name: str | None = None,
        connector: Connector | None = None,
        queue: str = "default",
        session: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        priority: int = 0,
        session_concurrency: int = 1,
        isolation: Literal["context", "process"] = "context",
        input: type[BaseModel] | None = None,
        schedule: str | None = None,
        schedule_timezone: str = "UTC",
    ) -> Callable[[WorkflowFn], Workflow]:
        """Declare a workflow: an async function of checkpointed steps taking a RunContext,
        then its input as keyword arguments, or (with `input`, a pydantic model) one validated
        instance of the model. Enqueueing checks the input against either (greenroom.inputs).
        With `schedule` (cron, or "every 15m"), workers also run it at those slots for the
        default tenant (docs/schedules.md)."""

        def register(func: WorkflowFn) -> Workflow:
            wf = Workflow(
                name=name or func.__qualname__,
                fn=func,
                queue=queue,
                session=session,
                retry=retry,
                session_concurrency=session_concurrency,
                timeout=timeout,
                priority=priority,
                connector=None if connector is None else connector.name,
                isolation=isolation,
                input_model=input,
                schedule=schedule,
                schedule_timezone=schedule_timezone,
            )
            if wf.name in self.workflows:
                raise ConfigError(f"workflow {wf.name!r} is declared twice")
            if connector is not None:
                if self.connectors.get(connector.name) is not connector:
                    raise ConfigError(f"connector {connector.name!r} belongs to another app")
                connector.workflows.append(wf.name)
            self.workflows[wf.name] = wf
            return wf

        return register

    @property
    def store(self) -> RunStore:
        with self._store_lock:  # two threads opening it at once would both migrate
            if self._store is None:
                self._store = open_store(self.settings.db, clock=self.clock, migrate=self.migrate)
            return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.backend.close()
            self._store = None

    def connector_of(self, workflow: str) -> Connector:
        wf = self.get_workflow(workflow)
        if wf.connector is None:
            raise ConfigError(f"workflow {workflow!r} has no connector, so no credentials")
        return self.connectors[wf.connector]

    def get_workflow(self, name: str) -> Workflow:
        try:
            return self.workflows[name]
        except KeyError:
            known = ", ".join(sorted(self.workflows)) or "none"
            raise InvalidInput(f"unknown workflow {name!r} (known: {known})") from None

    def prepare(self, req: RunRequest) -> NewRun:
        """Validate a request (by the rules of greenroom.rules, as the HTTP API does) and
        render its session key."""
        wf = req.workflow if isinstance(req.workflow, Workflow) else self.get_workflow(req.workflow)
        raw = req.input
        if isinstance(raw, BaseModel):
            raw = raw.model_dump(mode="json", by_alias=True)
        if not isinstance(raw, dict):
            raise InvalidInput("run input must be a JSON object")
        check_keys(raw, "run input")
        check_name(req.tenant, "tenant")
        if req.queue is not None:
            check_text(req.queue, "queue", max_length=200, min_length=1)
        if req.idempotency_key is not None:
            check_text(req.idempotency_key, "idempotency key", max_length=MAX_NAME, min_length=1)
        if req.priority is not None and not -MAX_PRIORITY <= req.priority <= MAX_PRIORITY:
            raise InvalidInput(f"priority must be from {-MAX_PRIORITY} to {MAX_PRIORITY}")
        if req.delay is not None and req.start_at is not None:
            raise InvalidInput("give either delay or start_at, not both")
        if req.delay is not None and not req.delay >= 0:  # NaN too
            raise InvalidInput("delay must not be negative")
        if req.delay is not None and req.delay > MAX_SECONDS:
            raise InvalidInput(f"delay must be at most {MAX_SECONDS:.0f} seconds (366 days)")
        if req.start_at is not None and not 0 <= req.start_at <= MAX_UNIX_TIME:  # NaN too
            raise InvalidInput(
                f"start_at must be a Unix time from 0 to {MAX_UNIX_TIME:.0f} (the year 2100)"
            )
        available_at = req.start_at
        if req.delay:
            available_at = self.store.clock.now() + req.delay
        labels = self._labels(wf, req, raw)
        check_labels(labels)
        run_input = wf.inputs.check(raw)
        session_key = wf.session_key(tenant=req.tenant, input=run_input, labels=labels)
        if session_key is not None:
            check_text(session_key, f"session key of workflow {wf.name!r}", max_length=500)
        return NewRun(
            workflow=wf.name,
            input=run_input,
            tenant=req.tenant,
            queue=wf.queue if req.queue is None else req.queue,
            session_key=session_key,
            priority=wf.priority if req.priority is None else req.priority,
            labels=labels,
            idempotency_key=req.idempotency_key,
            available_at=available_at,
            max_attempts=None if wf.retry is None else wf.retry.max_attempts,
            session_concurrency=wf.session_concurrency,
            timeout=wf.timeout,
        )

    def _labels(self, wf: Workflow, req: RunRequest, input: dict[str, Any]) -> dict[str, str]:
        """The run's labels, its integration's among them; a workflow of a connector takes
        no input named like one of the connector's settings."""
        labels = {str(k): str(v) for k, v in req.labels.items()}
        if wf.connector is not None:
            self.connectors[wf.connector].check_input(input)
        if req.integration is not None:
            labels[INTEGRATION_LABEL] = self._check_integration(wf, req.tenant, req.integration)
        elif INTEGRATION_LABEL in labels:
            raise InvalidInput(f"label {INTEGRATION_LABEL!r} is set by giving the integration")
        return labels

    def _check_integration(self, wf: Workflow, tenant: str, integration_id: str) -> str:
        """The integration must be the tenant's, active, and for the workflow's connector."""
        check_text(integration_id, "integration", min_length=1)
        found = self.store.accounts.integration(integration_id, tenant=tenant)
        if found.connector != wf.connector:
            raise InvalidInput(
                f"integration {integration_id} is for connector {found.connector!r}; "
                f"workflow {wf.name!r} is for {wf.connector or 'no connector'}"
            )
        if found.status != "active":
            raise InvalidInput(f"integration {integration_id} is {found.status}")
        return found.id

    def enqueue_sync(
        self,
        workflow: str | Workflow,
        input: dict[str, Any] | BaseModel | None = None,
        **options: Any,
    ) -> Run:
        """Enqueue one run; with an idempotency key already used, the existing run. An input
        that does not fit the workflow raises InvalidInput naming its fields."""
        req = RunRequest(workflow=workflow, input=input or {}, **options)
        return self.store.runs.enqueue(self.prepare(req))[0]

    async def enqueue(
        self,
        workflow: str | Workflow,
        input: dict[str, Any] | BaseModel | None = None,
        **options: Any,
    ) -> Run:
        return await asyncio.to_thread(self.enqueue_sync, workflow, input, **options)

    def enqueue_many_sync(self, requests: Sequence[RunRequest]) -> list[Run]:
        """Enqueue a batch in one transaction."""
        batch = [self.prepare(r) for r in requests]
        return [run for run, _ in self.store.runs.enqueue_many(batch)]

    async def enqueue_many(self, requests: Sequence[RunRequest]) -> list[Run]:
        return await asyncio.to_thread(self.enqueue_many_sync, requests)
