"""One execution path for a run, in a worker or in an isolated run's process: build the run's
context, call its workflow, and say how it ended (an `Outcome`), so that both record the same
ends the same way."""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from greenroom.app import App
from greenroom.browser.runtime import BrowserRuntime
from greenroom.context import RunContext, current_run
from greenroom.errors import LeaseLost, RunPaused
from greenroom.failures import describe_error
from greenroom.logs import redact_run_secrets
from greenroom.model import Lease, StepRecord
from greenroom.storage import DbCall, RunStore
from greenroom.storage.codec import dumps
from greenroom.worker.credentials import bind_integration, credentials_source
from greenroom.worker.writer import RunWriter
from greenroom.workflow import Workflow


class OutcomeKind(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: Stopped at a step boundary because a pause was asked for.
    PAUSED = "paused"
    #: The lease was lost (or may have lapsed): the run must write nothing more.
    LOST = "lost"


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How a run's workflow ended: succeeded (with its encoded output), failed (with the
    exception, its stored description and the failed step), paused, or its lease lost; and
    what the run did, for the log."""

    kind: OutcomeKind
    output: str | None = None
    error: BaseException | None = None
    description: dict[str, Any] = field(default_factory=dict)
    failed_step: str | None = None
    seconds: float = 0.0
    steps_executed: int = 0
    steps_replayed: int = 0
    relogins: int = 0

    @classmethod
    def failed(cls, exc: BaseException, **describe: Any) -> Outcome:
        """A failure, described as runs store it (`describe` goes to `describe_error`)."""
        description = describe_error(exc, **describe)
        return cls(
            kind=OutcomeKind.FAILED,
            error=exc,
            description=description,
            failed_step=description["step"],
        )

    def dumps(self) -> str:
        """The outcome as one JSON document, for an isolated run's process to report."""
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["error"] = _pickled(self.error) if self.error is not None else None
        return json.dumps(doc)

    @classmethod
    def loads(cls, text: str) -> Outcome:
        """An outcome an isolated run's process reported. Its exception is rebuilt when the
        worker can import its class; otherwise a RuntimeError carries its type and message."""
        doc = json.loads(text)
        kind = OutcomeKind(doc.pop("kind"))
        error = _unpickled(doc.pop("error"))
        if kind is OutcomeKind.FAILED and error is None:
            desc = doc["description"]
            error = RuntimeError(f"{desc.get('type', 'Error')}: {desc.get('message', '')}")
        return cls(kind=kind, error=error, **doc)


def _pickled(exc: BaseException) -> str | None:
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
    except Exception:
        return None
    return base64.b64encode(data).decode()


def _unpickled(data: str | None) -> BaseException | None:
    if not data:
        return None
    try:
        error = pickle.loads(base64.b64decode(data))
    except Exception:  # a class the worker cannot import: the description stays
        return None
    return error if isinstance(error, BaseException) else None


@dataclass(frozen=True, kw_only=True)
class RunServices:
    """What a run's execution uses where it executes: a worker's, or an isolated run's
    process's own."""

    app: App
    store: RunStore
    writer: RunWriter
    browser: BrowserRuntime
    db: DbCall

    def context(
        self,
        lease: Lease,
        *,
        history: list[StepRecord],
        lease_valid_until: Callable[[], float],
        await_checkpoints: bool = False,
    ) -> RunContext:
        """The run's context, with its browser and its integration's credentials; the rest of
        the run's task (or process) logs with its secrets redacted."""
        ctx = RunContext(
            lease=lease,
            store=self.store,
            writer=self.writer,
            history=history,
            lease_valid_until=lease_valid_until,
            await_checkpoints=await_checkpoints,
        )
        ctx.browser = self.browser.for_run(lease, self.store.sessions, self.db, ctx.log)
        redact_run_secrets(ctx.redact)
        ctx.credentials_source = credentials_source(
            ctx, self.app, self.store, self.browser, self.db
        )
        return ctx


async def execute_workflow(
    services: RunServices, ctx: RunContext, wf: Workflow, *, timeout: float | None = None
) -> Outcome:
    """Call the workflow under `ctx`; a cancellation goes through, every other end is an
    Outcome. The session is saved before a success, the page captured at a failure."""
    run = ctx.run
    assert ctx.browser is not None
    token = current_run.set(ctx)
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            await bind_integration(ctx, services.app, services.store, services.db)
            output = await wf.call(ctx, run.input)
        encoded = dumps(output, f"output of workflow {wf.name!r}")
        await ctx.browser.run_completed()  # the session's final state, before the end
    except RunPaused:
        return Outcome(kind=OutcomeKind.PAUSED)
    except LeaseLost as exc:
        return Outcome(kind=OutcomeKind.LOST, error=exc)
    except Exception as exc:
        await ctx.browser.run_failed(exc)  # diagnostics while the page is still open
        return Outcome.failed(exc, step=ctx.failed_step, attempt=run.attempt, redact=ctx.redact)
    finally:
        current_run.reset(token)
    return Outcome(
        kind=OutcomeKind.SUCCEEDED,
        output=encoded,
        seconds=round(time.monotonic() - started, 3),
        steps_executed=ctx.steps_executed,
        steps_replayed=ctx.steps_replayed,
        relogins=ctx.relogins,
    )
