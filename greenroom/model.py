"""Domain records: runs, steps, events and workers as frozen dataclasses."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class RunState(enum.StrEnum):
    QUEUED = "queued"
    DELAYED = "delayed"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})

#: The run label that ties a run to its integration (set from RunRequest.integration).
INTEGRATION_LABEL = "integration"


class StepStatus(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class Run:
    id: str
    seq: int
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
    attempt: int = 1
    max_attempts: int = 1
    timeout: float | None = None
    stalls: int = 0
    cancel_requested: bool = False
    lease_owner: str | None = None
    lease_token: int = 0
    lease_expires_at: float | None = None
    available_at: float = 0.0
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    pause_requested: bool = False
    retry_of: str | None = None
    #: The newest run of this failed or cancelled run's chain of retries: it stands for this
    #: one now.
    superseded_by: str | None = None
    error_group: str | None = None
    request_hash: str | None = None
    #: The W3C traceparent it was created under (greenroom.tracing).
    trace_parent: str | None = None


@dataclass(frozen=True, kw_only=True)
class Lease:
    """What a worker holds while it executes a run: every write it makes carries the token."""

    run: Run
    worker_id: str
    token: int
    expires_at: float
    #: Lease duration for this run (its queue's lock tuning, or the worker's setting).
    seconds: float


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    run_id: str
    position: int
    name: str
    status: StepStatus
    result: Any = None
    error: dict[str, Any] | None = None
    attempts: int = 1
    started_at: float = 0.0
    finished_at: float = 0.0


@dataclass(frozen=True, kw_only=True)
class RunEvent:
    """One transition of a run: its timeline entry (what subscribers read is an `Event`)."""

    id: int
    run_id: str
    at: float
    state: RunState
    reason: str
    worker_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    state: str
    started_at: float
    heartbeat_at: float
    running: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class NewRun:
    """A run to enqueue, already validated and with its session key rendered."""

    workflow: str
    input: dict[str, Any] = field(default_factory=dict)
    tenant: str = "default"
    queue: str = "default"
    session_key: str | None = None
    priority: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    available_at: float | None = None
    #: None: the queue's default retry policy decides.
    max_attempts: int | None = None
    timeout: float | None = None
    session_concurrency: int = 1
    retry_of: str | None = None
    #: What an idempotent create asked for, so the same key with another request is refused.
    request_hash: str | None = None


class PauseScope(enum.StrEnum):
    QUEUE = "queue"
    TENANT = "tenant"
    WORKFLOW = "workflow"
    SESSION = "session"
    LABEL = "label"


ALL_TENANTS = "*"


@dataclass(frozen=True, kw_only=True)
class Pause:
    """Holds every matching run that is not running yet; with drain=False, running ones stop at
    their next step."""

    scope: PauseScope
    value: str
    label: str = ""
    tenant: str = ALL_TENANTS
    drain: bool = True
    paused_by: str = ""
    reason: str = ""
    created_at: float = 0.0
    id: int = 0
    #: Runs it holds (paused, waiting): counted by the store's pause() and pauses() only, so
    #: that whoever sets a pause sees what it caught; 0 elsewhere.
    held: int = 0

    def matches(self, run: dict[str, Any]) -> bool:
        """Whether a run (as a row or a dict with the run's fields) falls under this pause."""
        if self.tenant != ALL_TENANTS and run["tenant"] != self.tenant:
            return False
        if self.scope is PauseScope.LABEL:
            labels = run["labels"]
            return bool(labels.get(self.label) == self.value)
        column = {
            "queue": "queue",
            "tenant": "tenant",
            "workflow": "workflow",
            "session": "session_key",
        }[self.scope.value]
        return bool(run[column] == self.value)

    def describe(self) -> str:
        what = (
            f"label {self.label}={self.value}"
            if self.scope is PauseScope.LABEL
            else (f"{self.scope.value} {self.value}")
        )
        return what if self.tenant == ALL_TENANTS else f"{what} (tenant {self.tenant})"


@dataclass(frozen=True, kw_only=True)
class QueueInfo:
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
    #: Runs by state: every run not ended; ended ones (not retried since) if they ended after
    #: `ended_since`.
    counts: dict[str, int] = field(default_factory=dict)
    ended_since: float = 0.0
    finished_last_minute: int = 0
    paused: bool = False


@dataclass(frozen=True, kw_only=True)
class EndedRuns:
    """Runs that ended in one stretch of time, by outcome: a failure retried since counts too
    (it did fail then)."""

    start: float
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


@dataclass(frozen=True, kw_only=True)
class TenantInfo:
    name: str
    weight: float
    concurrency: int | None
    active: int
    ready: int
    registered_at: float | None = None


@dataclass(frozen=True, kw_only=True)
class Event:
    """Something that happened, for subscribers (the outbox, docs/events.md): written in the
    transaction of the change that made it happen."""

    id: int
    tenant: str | None
    type: str
    occurred_at: float
    #: What it happened to, as `kind:id` (`run:<run id>`, `integration:<id>`, `pause:<id>`).
    subject: str
    #: The type's payload; `version` numbers its schema.
    payload: dict[str, Any] = field(default_factory=dict)
    #: The W3C traceparent it was written under: its deliveries join that trace.
    trace_parent: str | None = None


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    id: int
    at: float
    tenant: str | None
    actor: str
    action: str
    target: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ErrorGroup:
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
    #: Failed runs of the group not retried yet.
    open: int = 0
    #: Failed runs of the group whose retries succeeded.
    resolved: int = 0


class Role(enum.StrEnum):
    """What an API key may do; each role may do everything the ones before it may."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    #: Acts on every tenant (a key without a tenant).
    PLATFORM = "platform"

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    """An API key as stored: its id is the visible prefix of the secret; only a hash is kept."""

    id: str
    tenant: str | None
    role: Role
    name: str
    hash: str
    created_by: str
    created_at: float
    rate_limit: int | None = None
    expires_at: float | None = None
    revoked_at: float | None = None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, kw_only=True)
class Integration:
    """A tenant's connection to one SaaS app. Its credentials stay sealed here: only a run's
    context opens them."""

    id: str
    tenant: str
    connector: str
    name: str
    settings: dict[str, Any]
    status: str
    key_id: str
    credentials: str
    credentials_updated_at: float
    created_at: float
    updated_at: float


@dataclass(frozen=True, kw_only=True)
class SavedSession:
    """A session's encrypted storage state as stored: decrypt it with greenroom.browser.state."""

    tenant: str
    session_key: str
    version: int
    key_id: str
    state: str
    cookie_count: int
    run_id: str
    saved_at: float


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """One diagnostic file of a run: where it is in the artifact store and what it shows."""

    id: int
    run_id: str
    tenant: str
    attempt: int
    step_position: int | None
    step_name: str | None
    step_attempt: int | None
    kind: str
    content_type: str
    location: str
    size: int
    truncated: bool
    created_at: float


class Channel(enum.StrEnum):
    """How a subscription is told: a signed webhook, a Slack-compatible incoming webhook, or
    e-mail."""

    WEBHOOK = "webhook"
    SLACK = "slack"
    EMAIL = "email"


class DeliveryState(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    #: Every attempt of the retry schedule failed (`deliveries recover` sends it again).
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class Subscription:
    """A tenant's endpoint for events of some types (and labels). Its signing secrets stay
    sealed here: only greenroom.delivery opens them, to sign."""

    id: str
    tenant: str
    channel: Channel
    #: The endpoint: an https URL (webhook, Slack) or an e-mail address.
    url: str
    description: str
    #: Event types or prefixes (`run.failed`, `run.*`, `*`): events of any of them.
    types: list[str]
    #: Label values an event's run must have, all of them (`integration`: its integration).
    labels: dict[str, str]
    enabled: bool
    disabled_reason: str | None
    key_id: str | None
    secret: str | None
    previous_key_id: str | None
    previous_secret: str | None
    #: Until when the previous secret still signs too (rotation without downtime).
    previous_until: float | None
    #: E-mail only: one mail per this many minutes with every event since the last.
    digest_minutes: int | None
    max_in_flight: int
    rate_per_second: float | None
    #: Since when every attempt failed (none: the last one succeeded).
    failing_since: float | None
    last_success_at: float | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """One event to one subscription, tried until it is delivered or the retry schedule ends."""

    id: int
    tenant: str
    subscription_id: str
    event_id: int
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    created_at: float
    updated_at: float
    delivered_at: float | None


@dataclass(frozen=True, kw_only=True)
class DeliveryAttempt:
    id: int
    delivery_id: int
    subscription_id: str
    event_id: int
    attempt: int
    at: float
    #: delivered, retry (another attempt is scheduled), failed (no more), disabled (410).
    outcome: str
    status: int | None
    latency_ms: float
    #: The start of the answer's body.
    response: str
    error: str | None
    worker_id: str


class Overlap(enum.StrEnum):
    """What a schedule does at a slot while its previous run has not finished."""

    #: Fire nothing (counted as skipped).
    SKIP = "skip"
    #: Fire one run that waits for the running one; more are skipped.
    BUFFER_ONE = "buffer_one"
    #: Fire every slot; the runs go one after another.
    BUFFER_ALL = "buffer_all"
    #: Cancel the previous run and fire.
    CANCEL_OTHER = "cancel_other"
    #: Fire; runs may go at the same time.
    ALLOW_ALL = "allow_all"


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """Runs of a workflow started at cron or interval slots (greenroom.schedules.spec)."""

    id: str
    tenant: str
    name: str
    workflow: str
    integration: str | None
    cron: str | None
    every_seconds: float | None
    phase_seconds: float
    timezone: str
    start_at: float | None
    end_at: float | None
    jitter_seconds: float
    input: dict[str, Any]
    labels: dict[str, str]
    overlap: Overlap
    #: Slots missed by downtime that are still fired when found within this long.
    catchup_seconds: float
    paused: bool
    pause_note: str | None
    paused_by: str | None
    paused_at: float | None
    #: The first slot not handled yet (none: the schedule has ended).
    next_slot: float | None
    #: When it fires: the slot plus its jitter.
    next_due: float | None
    last_slot: float | None
    last_fired_at: float | None
    last_run_id: str | None
    fired: int
    skipped: int
    missed: int
    #: `app` for schedules a workflow declares, `api` for the ones admins make.
    origin: str
    created_at: float
    updated_at: float


@dataclass(frozen=True, kw_only=True)
class ScheduleFiring:
    id: int
    schedule_id: str
    #: The slot (none for a run triggered by hand).
    slot: float | None
    at: float
    #: fired, skipped, missed (with the count in detail), triggered, backfilled, cancelled.
    outcome: str
    run_id: str | None
    detail: dict[str, Any] | None
