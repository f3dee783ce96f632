"""RunContext: what a workflow sees of its run, and the replay of checkpointed steps."""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from greenroom.diagnostics import describe_error
from greenroom.errors import LeaseLost, NonDeterminismError, RunCancelled, RunPaused
from greenroom.model import Lease, Run, StepRecord, StepStatus
from greenroom.storage.codec import dumps

if TYPE_CHECKING:
    from greenroom.storage import RunStore
    from greenroom.workflow import StepDef

T = TypeVar("T")

current_run: contextvars.ContextVar[RunContext] = contextvars.ContextVar("greenroom_run")

#: Runs a blocking store call off the event loop.
DbCall = Callable[..., Awaitable[Any]]


class RunContext:
    """Handed to every workflow as its first argument."""

    def __init__(
        self,
        *,
        lease: Lease,
        store: RunStore,
        db: DbCall,
        history: list[StepRecord],
        lease_valid_until: Callable[[], float],
    ) -> None:
        self._lease = lease
        self._store = store
        self._db = db
        self._history = {s.position: s for s in history}
        self._position = 0
        self._lease_valid_until = lease_valid_until
        self.failed_step: str | None = None
        self._pause_requested = False
        self.steps_executed = 0
        self.steps_replayed = 0
        self.log = structlog.get_logger("greenroom.run").bind(
            run_id=self.run.id,
            tenant=self.run.tenant,
            workflow=self.run.workflow,
            attempt=self.run.attempt,
        )

    @property
    def run(self) -> Run:
        return self._lease.run

    @property
    def run_id(self) -> str:
        return self.run.id

    @property
    def attempt(self) -> int:
        return self.run.attempt

    @property
    def tenant(self) -> str:
        return self.run.tenant

    @property
    def labels(self) -> dict[str, str]:
        return self.run.labels

    @property
    def session_key(self) -> str | None:
        return self.run.session_key

    @property
    def worker_id(self) -> str:
        return self._lease.worker_id

    def request_pause(self) -> None:
        """Stop this run before its next step (a pause with drain=False)."""
        self._pause_requested = True

    def _check_lease(self) -> None:
        """Stop before doing work whose results could not be stored anyway."""
        if self._store.clock.now() >= self._lease_valid_until():
            raise LeaseLost(f"run {self.run_id}: lease not renewed in time; stopping")
        if self._pause_requested:
            raise RunPaused(f"run {self.run_id}: paused before its next step")

    async def run_step(
        self,
        defn: StepDef,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        position = self._position
        self._position += 1
        recorded = self._history.get(position)
        if recorded is not None:
            if recorded.name != defn.name:
                raise NonDeterminismError(
                    f"run {self.run_id}: step {position} was {recorded.name!r} when recorded but "
                    f"the workflow now calls {defn.name!r}; workflow code must call its steps in "
                    "the same order on every replay"
                )
            if recorded.status is StepStatus.COMPLETED:
                self.steps_replayed += 1
                return recorded.result  # type: ignore[no-any-return]
        return await self._execute_step(defn, position, fn, args, kwargs)

    async def _execute_step(
        self,
        defn: StepDef,
        position: int,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        clock = self._store.clock
        started = clock.now()
        attempt = 0
        while True:
            attempt += 1
            self._check_lease()
            try:
                async with asyncio.timeout(defn.timeout):
                    value = await fn(*args, **kwargs)
                encoded = dumps(value, f"result of step {defn.name!r}")
            except (LeaseLost, RunCancelled, RunPaused):
                raise
            except Exception as exc:
                if defn.retry.should_retry(exc, attempt):
                    delay = defn.retry.delay(attempt)
                    self.log.warning(
                        "step failed, retrying",
                        step=defn.name,
                        step_attempt=attempt,
                        error=f"{type(exc).__name__}: {exc}",
                        retry_in=round(delay, 3),
                    )
                    await clock.sleep(delay)
                    continue
                self.failed_step = defn.name
                await self._db(
                    self._store.save_step,
                    self._lease,
                    position=position,
                    name=defn.name,
                    status=StepStatus.FAILED,
                    result=None,
                    error=describe_error(exc, step=defn.name, attempt=attempt),
                    attempts=attempt,
                    started_at=started,
                )
                raise
            await self._db(
                self._store.save_step,
                self._lease,
                position=position,
                name=defn.name,
                status=StepStatus.COMPLETED,
                result=encoded,
                error=None,
                attempts=attempt,
                started_at=started,
            )
            self.steps_executed += 1
            return json.loads(encoded)  # type: ignore[no-any-return]
