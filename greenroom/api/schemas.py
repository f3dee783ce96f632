"""Request and response bodies of the HTTP API: the OpenAPI schema is generated from these."""

from __future__ import annotations

import json
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from greenroom.model import (
    ApiKey,
    Artifact,
    AuditEntry,
    ErrorGroup,
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

T = TypeVar("T")

#: The largest count or limit a request may set (the database's integer columns hold 32 bits).
MAX_INT = 2**31 - 1

Reason = Field(min_length=1, max_length=2000, examples=["vendor outage is over"])


class Body(BaseModel):
    """Request bodies refuse unknown fields (a typo is an error, not silently ignored) and
    values of another JSON type (no 0.0 for false, no "5" for 5). What they hold must be
    storable: finite numbers, valid Unicode, and no NUL in text fields (PostgreSQL text cannot
    hold it)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
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
    workflow: str = Field(min_length=1, max_length=200, examples=["demo.sync_users"])
    input: dict[str, Any] = Field(
        default_factory=dict,
        description="the workflow's arguments; never its integration's settings",
        examples=[{"org": "acme"}],
    )
    integration: str | None = Field(
        None, max_length=40, description="run for this integration (its credentials, its label)"
    )
    priority: int | None = Field(None, ge=-1_000_000, le=1_000_000)
    delay: float | None = Field(None, ge=0, le=366 * 86400, description="seconds from now")
    start_at: float | None = Field(None, ge=0, description="Unix time to start at")
    labels: dict[str, str] = Field(default_factory=dict, examples=[{"source": "nightly"}])
    tenant: str | None = Field(None, max_length=200, description="platform keys only")


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


class CancelRequest(Body):
    reason: str = Reason


class RetryRequest(Body):
    from_scratch: bool = Field(False, description="else from the failed step")
    input: dict[str, Any] | None = Field(None, description="replaces the run's input")
    force: bool = Field(
        False,
        description="retry a run that was retried already (refused with 409 otherwise);"
        " the audit log records it",
    )
    reason: str = Reason


class BulkRetryRequest(Body):
    state: list[Literal["failed", "cancelled"]] = ["failed"]
    workflow: str | None = None
    queue: str | None = None
    integration: str | None = None
    label: str | None = Field(None, description="key=value")
    error_group: str | None = None
    from_scratch: bool = False
    dry_run: bool = True
    reason: str = Reason
    tenant: str | None = Field(None, description="platform keys: only this tenant's runs")


class BulkRetryOut(BaseModel):
    matched: int = Field(description="runs retried, or with dry_run to be retried")
    dry_run: bool
    skipped_superseded: int = Field(
        0, description="runs the filter matched that were retried already: left alone"
    )
    rerun_from: dict[str, int]
    new_runs: list[str]


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
    counts: dict[str, int]
    finished_last_minute: int
    paused: bool

    @classmethod
    def of(cls, queue: QueueInfo) -> QueueOut:
        return cls.model_validate(queue, from_attributes=True)


class QueueUpdate(Body):
    """Only the fields given change; null clears a limit."""

    concurrency: int | None = Field(None, ge=1, le=MAX_INT)
    rate_limit: int | None = Field(None, ge=1, le=MAX_INT)
    rate_period: float | None = Field(None, gt=0)
    max_attempts: int | None = Field(None, ge=1, le=MAX_INT)
    retry_initial_delay: float | None = Field(None, ge=0)
    retry_backoff: float | None = Field(None, ge=1)
    retry_max_delay: float | None = Field(None, ge=0)
    lease_seconds: float | None = Field(None, gt=0)
    heartbeat_seconds: float | None = Field(None, gt=0)
    max_stalls: int | None = Field(None, ge=1, le=MAX_INT)
    reason: str = Reason


class QueuePause(Body):
    drain: bool = Field(True, description="false: running runs stop at their next step")
    reason: str = Reason


class QueueResume(Body):
    reason: str = Reason


class PauseCreate(Body):
    scope: Literal["queue", "tenant", "workflow", "session", "label"]
    value: str = Field(min_length=1, max_length=500)
    label: str = Field("", max_length=200, description="the label key, for scope=label")
    drain: bool = True
    reason: str = Reason
    tenant: str | None = Field(
        None, max_length=200, description="platform keys: one tenant, else every tenant"
    )


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
    connector: str = Field(min_length=1, max_length=200, examples=["demo"])
    name: str = Field(min_length=1, max_length=200, examples=["acme admin console"])
    credentials: dict[str, Any] = Field(
        description="validated against the connector's credential schema; write-only",
        examples=[{"email": "admin@acme.example", "password": "…"}],
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="validated against the connector's settings schema; shown to viewers",
        examples=[{"base_url": "https://acme.example"}],
    )
    tenant: str | None = Field(None, max_length=200, description="platform keys only")


class IntegrationUpdate(Body):
    name: str | None = Field(None, min_length=1, max_length=200)
    settings: dict[str, Any] | None = Field(
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
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^*\s][^\s]*$")


class TenantUpdate(Body):
    weight: float | None = Field(None, gt=0, le=1_000_000)
    concurrency: int | None = Field(None, ge=1, le=MAX_INT)
    reason: str = Reason


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
    name: str = Field(min_length=1, max_length=200, examples=["billing sync"])
    role: Role = Field(examples=[Role.OPERATOR], strict=False)  # from its JSON string
    expires_at: float | None = Field(None, ge=0, description="Unix time")
    rate_limit: int | None = Field(None, ge=1, le=MAX_INT, description="requests per second")
    tenant: str | None = Field(None, max_length=200, description="platform keys only")


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
