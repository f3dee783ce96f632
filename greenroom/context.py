"""RunContext: what a workflow sees of its run, and the replay of checkpointed steps."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from opentelemetry import trace

from greenroom import metrics, tracing
from greenroom.errors import (
    ConfigError,
    InvalidInput,
    LeaseLost,
    LoggedOut,
    NonDeterminismError,
    PermanentError,
    RunCancelled,
    RunPaused,
)
from greenroom.failures import describe_error
from greenroom.logs import step_context
from greenroom.model import Lease, Run, StepRecord, StepStatus
from greenroom.storage.codec import dumps
from greenroom.storage.writes import Checkpoint

if TYPE_CHECKING:
    from playwright.async_api import Page
    from pydantic import BaseModel

    from greenroom.browser.runtime import RunBrowser
    from greenroom.integrations import RunIntegration
    from greenroom.licenses.ingest import AccountRow
    from greenroom.storage import RunStore
    from greenroom.storage.licenses import Saved
    from greenroom.worker.writer import RunWriter
    from greenroom.workflow import StepDef

T = TypeVar("T")
M = TypeVar("M", bound="BaseModel")

#: The timeline's entry for a login step run again after a step raised LoggedOut.
RELOGIN_REASON = "session logged out; login step re-run"

current_run: contextvars.ContextVar[RunContext] = contextvars.ContextVar("greenroom_run")


def _step(defn: StepDef, position: int, replayed: bool) -> dict[str, Any]:
    """What a step's span says of it."""
    return {
        "greenroom.step.name": defn.name,
        "greenroom.step.position": position,
        "greenroom.step.replayed": replayed,
    }


@dataclass(frozen=True)
class _LoginCall:
    """How the workflow called its login step, to call it again after a LoggedOut."""

    defn: StepDef
    fn: Callable[..., Awaitable[Any]]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class RunContext:
    """Handed to every workflow as its first argument."""

    def __init__(
        self,
        *,
        lease: Lease,
        store: RunStore,
        writer: RunWriter,
        history: list[StepRecord],
        lease_valid_until: Callable[[], float],
        await_checkpoints: bool = False,
    ) -> None:
        self._lease = lease
        self._store = store
        self._writer = writer
        #: Wait for each checkpoint's commit before going on (else the next step, or the end,
        #: does): for a run whose process can be killed with no end to carry its checkpoint.
        self._await_checkpoints = await_checkpoints
        #: The last checkpoint handed to the writer, until the next step waits for its commit.
        self._saving: tuple[Checkpoint, asyncio.Future[None]] | None = None
        self._history = {s.position: s for s in history}
        self._position = 0
        self._lease_valid_until = lease_valid_until
        self.failed_step: str | None = None
        self._pause_requested = False
        self.steps_executed = 0
        self.steps_replayed = 0
        #: Logins run again because a step found the session logged out (at most one).
        self.relogins = 0
        self._login: _LoginCall | None = None
        #: The run's browser (pages, saved session, diagnostics); set by the worker.
        self.browser: RunBrowser | None = None
        #: Opens the run's integration credentials; set by the worker.
        self.credentials_source: Callable[[], Awaitable[BaseModel]] | None = None
        self._credentials: BaseModel | None = None
        self._integration: RunIntegration | None = None
        self.log = structlog.get_logger("greenroom.run").bind(
            run_id=self.run.id,
            tenant=self.run.tenant,
            workflow=self.run.workflow,
            attempt=self.run.attempt,
            worker=self.worker_id,
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

    async def page(self, *, restore_url: bool = False) -> Page:
        """A Playwright page in this run's session context (a private context for a run without
        a session key). Call it inside steps: after a browser crash it returns a new page whose
        context starts from the session's saved state. With restore_url, a new page goes back
        to the URL saved with the session."""
        if self.browser is None:
            raise ConfigError(f"run {self.run_id} has no browser runtime")
        return await self.browser.page(restore_url=restore_url)

    @property
    def integration(self) -> RunIntegration:
        """The integration this run was started for: its id, name and settings (validated,
        as its admins set them), never its credentials (see credentials())."""
        if self._integration is None:
            raise PermanentError(f"run {self.run_id} was not started for an integration")
        return self._integration

    def bind_integration(self, integration: RunIntegration) -> None:
        """Set by the worker before the workflow starts. From then on the browser sends the
        integration's secrets only to pages and URLs of its secret origins."""
        self._integration = integration
        if self.browser is not None:
            self.browser.guard_secrets(integration.secret_origins, integration=integration.id)

    async def credentials(self, model: type[M]) -> M:
        """The credentials of the integration this run was started for, as the connector's
        model. Their secrets are redacted from this run's artifacts from now on; never log or
        return them."""
        if self._credentials is None:
            if self.credentials_source is None:
                raise ConfigError(f"run {self.run_id} has no credential source")
            self._credentials = await self.credentials_source()
        if not isinstance(self._credentials, model):
            raise ConfigError(
                f"workflow {self.run.workflow!r}: its connector's credentials are "
                f"{type(self._credentials).__name__}, not {model.__name__}"
            )
        return self._credentials

    async def save_accounts(
        self, rows: Sequence[Mapping[str, Any] | AccountRow], *, complete: bool = False
    ) -> Saved:
        """Keep accounts this run read from its integration's app (a page at a time, as they
        come): rows as licenses.ingest.AccountRow. `complete=True` on the last page of a sync
        that listed every account: the integration's accounts it did not list are removed.
        Saving a page again (a retried step) changes nothing; a bad row fails the step for good,
        saving none of the batch."""
        from greenroom.licenses.ingest import parse_accounts

        self._check_lease()
        integration = self.integration
        try:
            batch = parse_accounts(list(rows))
        except InvalidInput as exc:
            raise PermanentError(f"save_accounts: {exc}") from None
        return await asyncio.to_thread(
            self._store.licenses.save,
            self.tenant,
            integration.id,
            batch,
            sync_id=self.run_id,
            complete=complete,
        )

    async def save_seats(self, seats: Mapping[str, int]) -> None:
        """The seats bought per tier, as the app's billing page says (`{"pro": 50}`): seats
        bought but assigned to no active account are reported (`seats.unassigned`)."""
        from greenroom.licenses.ingest import parse_seats

        self._check_lease()
        integration = self.integration
        try:
            counts = parse_seats(dict(seats))
        except InvalidInput as exc:
            raise PermanentError(f"save_seats: {exc}") from None
        await asyncio.to_thread(
            self._store.licenses.save_seats, self.tenant, integration.id, counts
        )

    def redact(self, text: str) -> str:
        """Text with this run's secrets (registered or from its credentials) replaced."""
        return text if self.browser is None else self.browser.redactor.text(text)

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
        if defn.login:
            self._login = _LoginCall(defn, fn, args, kwargs)
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
                with tracing.span(f"step {defn.name}", attributes=_step(defn, position, True)):
                    return recorded.result  # type: ignore[no-any-return]
        with (
            step_context(defn.name),
            tracing.span(f"step {defn.name}", attributes=_step(defn, position, False)),
        ):
            return await self._execute_step(defn, position, fn, args, kwargs)

    async def _execute_step(
        self,
        defn: StepDef,
        position: int,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        await self.saved()  # a step runs only once the one before it is checkpointed
        started = self._store.clock.now()
        attempt = 0
        while True:
            attempt += 1
            self._check_lease()
            if self.browser is not None:
                self.browser.step_started(position, defn.name, attempt)
            try:
                async with self._login_lock(defn), asyncio.timeout(defn.timeout):
                    value = await fn(*args, **kwargs)
                encoded = dumps(value, f"result of step {defn.name!r}")
            except (LeaseLost, RunCancelled, RunPaused):
                raise
            except Exception as exc:
                error = await self._unless_logged_in_again(defn, attempt, exc)
                if error is None:
                    attempt -= 1  # the logged-out attempt does not count as a retry
                    continue
                if await self._retrying(defn, attempt, error):
                    continue
                await self._fail_step(defn, position, attempt, started, error)
                if error is not exc:
                    raise error from exc
                raise
            stored = await self._complete_step(defn, position, attempt, started, encoded)
            return stored  # type: ignore[no-any-return]

    async def _retrying(self, defn: StepDef, attempt: int, error: BaseException) -> bool:
        """Whether the step's retry policy gives it another attempt; if so, after its delay."""
        if not defn.retry.should_retry(error, attempt):
            return False
        delay = defn.retry.delay(attempt)
        metrics.RETRIES.labels("step", self.run.workflow, type(error).__name__).inc()
        trace.get_current_span().add_event(
            "step attempt failed",
            {"greenroom.step.attempt": attempt, "exception.type": type(error).__name__},
        )
        self.log.warning(
            "step failed, retrying",
            step=defn.name,
            step_attempt=attempt,
            error=self.redact(f"{type(error).__name__}: {error}"),
            retry_in=round(delay, 3),
        )
        await self._store.clock.sleep(delay)
        return True

    async def _fail_step(
        self, defn: StepDef, position: int, attempt: int, started: float, error: BaseException
    ) -> None:
        """A step out of attempts: its failure is checkpointed (a retry of the run starts
        here), then its page is captured for the failure's artifacts."""
        self.failed_step = defn.name
        self._step_took(started, "failed")
        described = describe_error(error, step=defn.name, attempt=attempt, redact=self.redact)
        tracing.failed(trace.get_current_span(), described)
        await self._checkpoint(
            position=position,
            name=defn.name,
            status=StepStatus.FAILED,
            result=None,
            error=described,
            attempts=attempt,
            started_at=started,
        )
        if self.browser is not None:
            await self.browser.step_failed(position, defn.name, attempt, error)

    async def _complete_step(
        self, defn: StepDef, position: int, attempt: int, started: float, encoded: str
    ) -> Any:
        """A step that returned: its result is checkpointed, and the workflow gets it as a
        replay would (decoded from what was stored), so both paths see the same value."""
        if self.browser is not None:
            await self.browser.step_completed(position, defn.name)
        self._step_took(started, "completed")
        await self._checkpoint(
            position=position,
            name=defn.name,
            status=StepStatus.COMPLETED,
            result=encoded,
            error=None,
            attempts=attempt,
            started_at=started,
        )
        self.steps_executed += 1
        return json.loads(encoded)

    def _step_took(self, started: float, outcome: str) -> None:
        seconds = self._store.clock.now() - started
        metrics.STEP_DURATION.labels(self.run.workflow, outcome).observe(max(0.0, seconds))

    async def _checkpoint(self, **fields: Any) -> None:
        checkpoint = Checkpoint(lease=self._lease, finished_at=self._store.clock.now(), **fields)
        self._saving = (checkpoint, self._writer.checkpoint(checkpoint))
        if self._await_checkpoints:
            await self.saved()

    async def saved(self) -> None:
        """Wait until the last step's checkpoint is committed (LeaseLost if it was refused)."""
        if self._saving is not None:
            await self._saving[1]
            self._saving = None

    def unsaved(self) -> Checkpoint | None:
        """The last checkpoint, unless it is known to be committed: the run's end carries it."""
        if self._saving is None:
            return None
        checkpoint, future = self._saving
        if future.done() and not future.cancelled() and future.exception() is None:
            return None
        return checkpoint

    async def _note(self, reason: str, detail: dict[str, Any]) -> None:
        """A timeline entry; one the database could not take is logged, not the run's failure
        (a lost lease still stops the run)."""
        try:
            await self._writer.note(self._lease, reason, detail)
        except LeaseLost:
            raise
        except Exception as exc:
            self.log.warning("could not add to the run's timeline", reason=reason, error=str(exc))

    # -- logins ----------------------------------------------------------------------------

    def _login_lock(self, defn: StepDef) -> AbstractAsyncContextManager[None]:
        if defn.login and self.browser is not None:
            return self.browser.login_lock()
        return contextlib.nullcontext()

    async def _unless_logged_in_again(
        self, defn: StepDef, attempt: int, exc: Exception
    ) -> Exception | None:
        """The error that counts for a failed step attempt; None when it was a LoggedOut and
        the login step ran again, so the step is retried. That happens once per run attempt,
        after the workflow called its login step (executed or replayed)."""
        if not isinstance(exc, LoggedOut) or defn.login or self._login is None or self.relogins:
            return exc
        try:
            await self._log_in_again(defn, attempt)
        except (LeaseLost, RunCancelled, RunPaused):
            raise
        except Exception as login_error:
            return login_error  # the failed login is the step's error
        return None

    async def _log_in_again(self, failed: StepDef, attempt: int) -> None:
        """Discard the session's saved state and run the login step again (its checkpoint is
        kept: the new login's result is not recorded), then save the new session. The run's
        timeline says so, where operators look (`greenroom runs show`)."""
        login = self._login
        assert login is not None
        self.relogins += 1
        self._check_lease()
        self.log.warning(
            "session logged out; logging in again", step=failed.name, step_attempt=attempt
        )
        await self._note(
            f"{RELOGIN_REASON} (step {failed.name!r}, attempt {attempt})",
            {"step": failed.name, "attempt": attempt, "login_step": login.defn.name},
        )
        async with self._login_lock(login.defn):
            if self.browser is not None:
                await self.browser.discard_session()
            with step_context(login.defn.name):
                async with asyncio.timeout(login.defn.timeout):
                    await login.fn(*login.args, **login.kwargs)
            if self.browser is not None:
                await self.browser.save()
