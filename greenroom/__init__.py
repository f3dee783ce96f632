"""greenroom: durable, multi-tenant browser-automation workflows."""

from greenroom.app import App, RunRequest
from greenroom.clock import Clock, ManualClock, SystemClock
from greenroom.context import RunContext
from greenroom.errors import (
    ConfigError,
    Conflict,
    GreenroomError,
    InvalidInput,
    LeaseLost,
    LoggedOut,
    NonDeterminismError,
    NotFound,
    NotSerializable,
    PermanentError,
    SecretRefused,
)
from greenroom.failures import TransientError
from greenroom.model import Run, RunEvent, RunState, StepRecord, StepStatus, WorkerInfo
from greenroom.origins import SecretOrigin
from greenroom.retry import RetryPolicy
from greenroom.settings import Settings, load_settings
from greenroom.worker import Worker
from greenroom.workflow import Workflow, step

__all__ = [
    "App",
    "Clock",
    "ConfigError",
    "Conflict",
    "GreenroomError",
    "InvalidInput",
    "LeaseLost",
    "LoggedOut",
    "ManualClock",
    "NonDeterminismError",
    "NotFound",
    "NotSerializable",
    "PermanentError",
    "RetryPolicy",
    "Run",
    "RunContext",
    "RunEvent",
    "RunRequest",
    "RunState",
    "SecretOrigin",
    "SecretRefused",
    "Settings",
    "StepRecord",
    "StepStatus",
    "SystemClock",
    "TransientError",
    "Worker",
    "WorkerInfo",
    "Workflow",
    "load_settings",
    "step",
]
