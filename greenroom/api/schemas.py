"""Request and response bodies of the HTTP API: the OpenAPI schema is generated from these."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from greenroom.app import RunRequest
from greenroom.model import (
    ApiKey,
    Artifact,
    AuditEntry,
    ErrorGroup,
    Event,
    Integration,
    Pause,
    QueueInfo,
    Role,
    Run,
    RunEvent,
    RunState,
    StepRecord,
    TenantInfo,
    WorkerInfo,
)
from greenroom.rules import (
    LABEL_FILTER_PATTERN,
    MAX_INT,
    MAX_LABEL_KEY,
    MAX_LABEL_VALUE,
    MAX_PAUSE_VALUE,
    MAX_PRIORITY,
    MAX_REASON,
    MAX_SECONDS,
    MAX_UNIX_TIME,
    MAX_WEIGHT,
    OPTIONAL_LABEL_KEY_PATTERN,
    JsonObject,
    Labels,
    Name,
    Text,
    text,
)
from greenroom.storage.controls import QUEUE_LIMITS

if TYPE_CHECKING:
    from greenroom.storage.admin import BulkRetry
    from greenroom.storage.runs import RunDetail as StoredRunDetail

T = TypeVar("T")

Reason = Annotated[
    str, text(MAX_REASON, 1), Field(examples=["vendor outage is over"], description="audited")
]
#: A label filter, `key=value`.
LabelFilter = Annotated[
    str,
    StringConstraints(max_length=MAX_LABEL_KEY + 1 + MAX_LABEL_VALUE, pattern=LABEL_FILTER_PATTERN),
]
#: The id of a run, an integration or an API key.
Id = Annotated[str, text(40, 1)]
#: An id made by the database (pauses, artifacts, audit entries).
RowId = Annotated[int, Field(ge=1, le=2**63 - 1)]


class Body(BaseModel):
    """Request bodies refuse unknown fields (a typo is an error, not silently ignored) and
    values of another JSON type (no 0.0 for false, no "5" for 5; 5.0 is 5). What they hold must be
    storable: finite numbers and valid Unicode everywhere (text fields also follow
    greenroom.text's rule, stated in their patterns)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _integral(cls, value: Any, info: ValidationInfo) -> Any:
        """JSON has numbers, not integers: 5.0 is the integer 5 (as JSON Schema says, so
        clients and generators may send it), 5.5 is not."""
        if isinstance(value, float) and value.is_integer() and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation is int or int in get_args(annotation):
                return int(value)
        return value

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        try:
            json.dumps(value, ensure_ascii=False, default=str).encode()
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode (no lone surrogates)") from None
        return value


class Page(BaseModel, Generic[T]):
    items: list[T]
    #: Pass as `cursor` to get the next page; null on the last page.
    next_cursor: str | None = None


# -- runs ----------------------------------------------------------------------------------


class RunCreate(Body):
    workflow: Annotated[str, text(200, 1)] = Field(
        examples=["demo.sync_users"], description="one of the app's workflows (GET /v1/workflows)"
    )
    input: JsonObject = Field(
        default_factory=dict,
        description="the workflow's arguments; never its integration's settings",
        examples=[{"org": "acme"}],
    )
    integration: Id | None = Field(
        None, description="run for this integration (its credentials, its label)"
    )
    priority: int | None = Field(None, ge=-MAX_PRIORITY, le=MAX_PRIORITY)
    delay: float | None = Field(
        None, ge=0, le=MAX_SECONDS, description="seconds from now; not with start_at"
    )
    start_at: float | None = Field(
        None, ge=0, le=MAX_UNIX_TIME, description="Unix time to start at; not with delay"
    )
    labels: Labels = Field(default_factory=dict, examples=[{"source": "nightly"}])
    queue: Annotated[str, text(200, 1)] | None = Field(
        None, description="another queue than the workflow's (a worker must serve it)"
    )
    tenant: Name | None = Field(None, description="platform keys only")

    def request(self, tenant: str, idempotency_key: str | None) -> RunRequest:
        """The run this body asks for, as `App.prepare` takes it."""
        return RunRequest(
            workflow=self.workflow,
            input=self.input,
            tenant=tenant,
            idempotency_key=idempotency_key,
            priority=self.priority,
            delay=self.delay,
            start_at=self.start_at,
            labels=self.labels,
            integration=self.integration,
            queue=self.queue,
        )


class RunOut(BaseModel):
    id: str
    tenant: str
    workflow: str
    queue: str
    session_key: str | None
    state: RunState
    priority: int
    input: dict[str, Any]
    labels: dict[str, str]
    output: Any = None
    error: dict[str, Any] | None = None
    idempotency_key: str | None = None
    attempt: int
    max_attempts: int
    stalls: int
    cancel_requested: bool
    available_at: float
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    retry_of: str | None = None
    superseded_by: str | None = Field(
        None,
        description="retried: the newest run of its chain of retries, which stands for it",
    )
    error_group: str | None = None

    @classmethod
    def of(cls, run: Run) -> RunOut:
        return cls.model_validate(run, from_attributes=True)


class StepOut(BaseModel):
    position: int
    name: str
    status: str
    result: Any = None
    error: dict[str, Any] | None = None
    attempts: int
    started_at: float
    finished_at: float

    @classmethod
    def of(cls, step: StepRecord) -> StepOut:
        return cls.model_validate(step, from_attributes=True)


class EventOut(BaseModel):
    at: float
    state: RunState
    reason: str
    worker_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, event: RunEvent) -> EventOut:
        return cls.model_validate(event, from_attributes=True)


class ArtifactOut(BaseModel):
    id: int
    attempt: int
    step_position: int | None
    step_name: str | None
    step_attempt: int | None
    kind: str
    content_type: str
    size: int
    truncated: bool
    created_at: float

    @classmethod
    def of(cls, artifact: Artifact) -> ArtifactOut:
        return cls.model_validate(artifact, from_attributes=True)


class RunDetail(RunOut):
    steps: list[StepOut]
    timeline: list[EventOut]
    artifacts: list[ArtifactOut]

    @classmethod
    def of(cls, detail: StoredRunDetail) -> RunDetail:  # type: ignore[override]
        return cls(
            **RunOut.of(detail.run).model_dump(),
            steps=[StepOut.of(s) for s in detail.steps],
            timeline=[EventOut.of(e) for e in detail.events],
            artifacts=[ArtifactOut.of(a) for a in detail.artifacts],
        )


class CancelRequest(Body):
    reason: Reason


class RetryRequest(Body):
    from_scratch: bool = Field(False, description="else from the failed step")
    input: JsonObject | None = Field(None, description="replaces the run's input")
    force: bool = Field(
        False,
        description="retry a run that was retried already (refused with 409 otherwise);"
        " the audit log records it",
    )
    reason: Reason


class BulkRetryRequest(Body):
    state: list[Literal["failed", "cancelled"]] = Field(["failed"], min_length=1, max_length=2)
    workflow: Text | None = None
    queue: Text | None = None
    integration: Id | None = Field(None, description="not with label")
    label: LabelFilter | None = Field(None, description="key=value; not with integration")
    error_group: Text | None = None
    finished_after: float | None = Field(
        None, ge=0, le=MAX_UNIX_TIME, description="Unix time: runs that finished at or after it"
    )
    finished_before: float | None = Field(
        None, ge=0, le=MAX_UNIX_TIME, description="Unix time: runs that finished before it"
    )
    from_scratch: bool = False
    dry_run: bool = True
    reason: Reason
    tenant: Name | None = Field(None, description="platform keys: only this tenant's runs")


class BulkRetryOut(BaseModel):
    matched: int = Field(description="runs retried, or with dry_run to be retried")
    dry_run: bool
    skipped_superseded: int = Field(
        0, description="runs the filter matched that were retried already: left alone"
    )
    rerun_from: dict[str, int]
    new_runs: list[str]

    @classmethod
    def of(cls, done: BulkRetry) -> BulkRetryOut:
        return cls(
            matched=done.matched,
            dry_run=done.dry_run,
            skipped_superseded=done.skipped_superseded,
            rerun_from={str(k): v for k, v in done.rerun_from.items()},
            new_runs=done.new_runs,
        )


class PruneRequest(Body):
    older_than: float = Field(
        ge=0, allow_inf_nan=False, description="seconds: runs that finished longer ago go"
    )
    state: list[Literal["succeeded", "failed", "cancelled"]] = Field(
        ["succeeded", "failed", "cancelled"], min_length=1, max_length=3
    )
    dry_run: bool = Field(True, description="only count the runs that would be deleted")


class PruneOut(BaseModel):
    deleted: int = Field(description="runs deleted, or with dry_run to be deleted")
    dry_run: bool


# -- queues and pauses ---------------------------------------------------------------------


class QueueOut(BaseModel):
    name: str
    concurrency: int | None = None
    rate_limit: int | None = None
    rate_period: float | None = None
    max_attempts: int | None = None
    retry_initial_delay: float | None = None
    retry_backoff: float | None = None
    retry_max_delay: float | None = None
    lease_seconds: float | None = None
    heartbeat_seconds: float | None = None
    max_stalls: int | None = None
    counts: dict[str, int] = Field(
        description="runs by state: every run queued, delayed, running or paused; succeeded,"
        " failed and cancelled runs (not retried since) that ended after ended_since"
    )
    ended_since: float = Field(
        description="seconds since the epoch: a day ago, from when ended runs are counted"
    )
    finished_last_minute: int
    paused: bool

    @classmethod
    def of(cls, queue: QueueInfo) -> QueueOut:
        return cls.model_validate(queue, from_attributes=True)


class EndedOut(BaseModel):
    """Runs that ended in one stretch of time, by outcome (a failure retried since counts)."""

    start: float = Field(description="seconds since the epoch")
    succeeded: int
    failed: int
    cancelled: int


class ThroughputOut(BaseModel):
    since: float = Field(description="seconds since the epoch")
    width: float = Field(description="seconds each stretch lasts")
    stretches: list[EndedOut]


def _queue_setting(name: str, description: str | None = None) -> Any:
    """A queue setting's range, as the store checks it."""
    _, low, high = QUEUE_LIMITS[name]
    return Field(None, ge=low, le=high, description=description)


class QueueUpdate(Body):
    """Only the fields given change; null clears a limit."""

    concurrency: int | None = _queue_setting("concurrency")
    rate_limit: int | None = _queue_setting("rate_limit", "with rate_period")
    rate_period: float | None = _queue_setting("rate_period", "with rate_limit")
    max_attempts: int | None = _queue_setting("max_attempts")
    retry_initial_delay: float | None = _queue_setting("retry_initial_delay")
    retry_backoff: float | None = _queue_setting("retry_backoff")
    retry_max_delay: float | None = _queue_setting("retry_max_delay")
    lease_seconds: float | None = _queue_setting("lease_seconds")
    heartbeat_seconds: float | None = _queue_setting(
        "heartbeat_seconds", "less than half of the queue's lease_seconds, which must be set"
    )
    max_stalls: int | None = _queue_setting("max_stalls")
    reason: Reason


class QueuePause(Body):
    drain: bool = Field(True, description="false: running runs stop at their next step")
    reason: Reason


class QueueResume(Body):
    reason: Reason


class PauseCreate(Body):
    scope: Literal["queue", "tenant", "workflow", "session", "label"]
    value: Annotated[str, text(MAX_PAUSE_VALUE, 1)]
    label: Annotated[
        str, StringConstraints(max_length=MAX_LABEL_KEY, pattern=OPTIONAL_LABEL_KEY_PATTERN)
    ] = Field("", description="the label key: needed for scope=label, else empty")
    drain: bool = True
    reason: Reason
    tenant: Name | None = Field(None, description="platform keys: one tenant, else every tenant")


class PauseOut(BaseModel):
    id: int
    scope: str
    value: str
    label: str
    #: null: the pause holds every tenant's runs (a platform pause).
    tenant: str | None
    drain: bool
    paused_by: str
    reason: str
    created_at: float
    held: int = Field(0, description="runs it holds now (waiting for it to be lifted)")

    @classmethod
    def of(cls, pause: Pause) -> PauseOut:
        return cls(
            id=pause.id,
            scope=pause.scope.value,
            value=pause.value,
            label=pause.label,
            tenant=None if pause.tenant == "*" else pause.tenant,
            drain=pause.drain,
            paused_by=pause.paused_by,
            reason=pause.reason,
            created_at=pause.created_at,
            held=pause.held,
        )


class ResumeOut(BaseModel):
    resumed: int


# -- errors, audit, workers ----------------------------------------------------------------


class ErrorGroupOut(BaseModel):
    tenant: str
    fingerprint: str
    workflow: str
    step: str | None
    type: str
    message: str
    error_class: str
    occurrences: int
    first_seen: float
    last_seen: float
    last_run_id: str
    open: int = Field(0, description="failed runs of the group not retried yet")
    resolved: int = Field(0, description="failed runs of the group whose retries succeeded")

    @classmethod
    def of(cls, group: ErrorGroup) -> ErrorGroupOut:
        return cls.model_validate(group, from_attributes=True)


class AuditOut(BaseModel):
    id: int
    at: float
    tenant: str | None
    actor: str
    action: str
    target: str
    reason: str
    detail: dict[str, Any]

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditOut:
        return cls.model_validate(entry, from_attributes=True)


class OutboxEventOut(BaseModel):
    id: int = Field(description="unique; page with next_cursor, not by id (docs/events.md)")
    tenant: str | None = Field(description="null: a platform event (a pause of every tenant)")
    type: str = Field(examples=["run.succeeded"])
    occurred_at: float
    subject: str = Field(examples=["run:6f1c0e52-5d4b-4a57-9f0e-3b2c1f7a9d10"])
    payload: dict[str, Any] = Field(description="the type's fields; `version` numbers its schema")

    @classmethod
    def of(cls, event: Event) -> OutboxEventOut:
        return cls.model_validate(event, from_attributes=True)


class WorkerOut(BaseModel):
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    state: str
    started_at: float
    heartbeat_at: float
    running: list[str]

    @classmethod
    def of(cls, worker: WorkerInfo) -> WorkerOut:
        return cls.model_validate(worker, from_attributes=True)


# -- connectors and integrations -----------------------------------------------------------


class WorkflowOut(BaseModel):
    name: str
    queue: str
    connector: str | None


class ConnectorOut(BaseModel):
    name: str
    title: str
    workflows: list[str]
    credential_schema: dict[str, Any]
    #: What an integration's admins set; fields marked x-secret-origin say where its secrets
    #: may be sent.
    settings_schema: dict[str, Any]


class IntegrationCreate(Body):
    connector: Annotated[str, text(200, 1)] = Field(
        examples=["demo"], description="one of the app's connectors (GET /v1/connectors)"
    )
    name: Annotated[str, text(200, 1)] = Field(examples=["acme admin console"])
    credentials: dict[str, Any] = Field(
        description="validated against the connector's credential schema; write-only",
        examples=[{"email": "admin@acme.example", "password": "…"}],
    )
    settings: JsonObject = Field(
        default_factory=dict,
        description="validated against the connector's settings schema; shown to viewers",
        examples=[{"base_url": "https://acme.example"}],
    )
    tenant: Name | None = Field(None, description="platform keys only")


class IntegrationUpdate(Body):
    name: Annotated[str, text(200, 1)] | None = None
    settings: JsonObject | None = Field(
        None, description="replaces all settings; validated against the connector's schema"
    )
    status: Literal["active", "disabled"] | None = None


class CredentialsIn(Body):
    credentials: dict[str, Any]


class IntegrationOut(BaseModel):
    """Credentials are never returned: only when they were last set."""

    id: str
    tenant: str
    connector: str
    name: str
    settings: dict[str, Any]
    status: str
    credentials_updated_at: float
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, integration: Integration) -> IntegrationOut:
        return cls.model_validate(integration, from_attributes=True)


# -- tenants and keys ----------------------------------------------------------------------


class TenantCreate(Body):
    name: Name


class TenantUpdate(Body):
    weight: float | None = Field(None, gt=0, le=MAX_WEIGHT)
    concurrency: int | None = Field(None, ge=1, le=MAX_INT)
    reason: Reason


class TenantOut(BaseModel):
    name: str
    weight: float
    concurrency: int | None
    active: int
    ready: int
    registered_at: float | None

    @classmethod
    def of(cls, tenant: TenantInfo) -> TenantOut:
        return cls.model_validate(tenant, from_attributes=True)


class KeyCreate(Body):
    name: Annotated[str, text(200, 1)] = Field(examples=["billing sync"])
    role: Role = Field(examples=[Role.OPERATOR], strict=False)  # from its JSON string
    expires_at: float | None = Field(
        None, ge=0, le=MAX_UNIX_TIME, description="Unix time, in the future"
    )
    rate_limit: int | None = Field(
        None,
        ge=1,
        le=MAX_INT,
        description="requests per second; a tenant admin grants at most its own key's rate",
    )
    tenant: Name | None = Field(None, description="platform keys only")


class KeyOut(BaseModel):
    id: str
    tenant: str | None
    role: Role
    name: str
    rate_limit: int | None
    created_by: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyOut:
        return cls.model_validate(key, from_attributes=True)


class KeyCreated(KeyOut):
    #: The secret: shown this once, never stored.
    key: str
