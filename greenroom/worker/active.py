"""What a worker keeps of each run it executes: its task, how to pause it, why it was stopped."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from greenroom.context import RunContext
from greenroom.model import Lease
from greenroom.worker.isolated import IsolatedRun


class StopReason(enum.Enum):
    """Why a run's task was cancelled by its worker."""

    CANCEL = "cancelled by request"
    LOST = "lease lost"
    SHUTDOWN = "worker shutting down"
    UNCONFIRMED = "worker cannot confirm its liveness lock"
    EXPIRING = "its lease expires before a heartbeat renewed it"


@dataclass
class ActiveRun:
    """A run its worker executes, and what the worker must know to stop or pause it."""

    lease: Lease
    task: asyncio.Task[None]
    stop_reason: StopReason | None = None
    #: Its task has begun: a task cancelled before it begins never runs its code, so a run
    #: stopped before then is told by `stop_reason` alone.
    begun: bool = False
    ctx: RunContext | None = None
    #: Set while the run executes in its own process (isolation="process").
    isolated: IsolatedRun | None = None
    #: Its end is being written: heartbeats and controls leave it alone.
    finishing: bool = False
    #: time.monotonic() at its claim, for greenroom_run_duration_seconds.
    started: float = 0.0
    #: Its end was counted in the metrics.
    counted: bool = False

    def request_pause(self) -> None:
        if self.isolated is not None:
            self.isolated.request_pause()
        elif self.ctx is not None:
            self.ctx.request_pause()
