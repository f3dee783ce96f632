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

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})


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


@dataclass(frozen=True, kw_only=True)
class Lease:
    """What a worker holds while it executes a run: every write it makes carries the token."""

    run: Run
    worker_id: str
    token: int
    expires_at: float


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
    """One transition of a run: its timeline entry and the seam for the event outbox."""

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
    max_attempts: int = 1
    timeout: float | None = None
