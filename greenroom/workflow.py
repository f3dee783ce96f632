"""Workflow and step declarations."""

from __future__ import annotations

import inspect
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, ParamSpec, TypeVar, overload

from pydantic import BaseModel

from greenroom.errors import ConfigError, InvalidInput
from greenroom.inputs import InputSpec
from greenroom.retry import RetryPolicy

P = ParamSpec("P")
T = TypeVar("T")

WorkflowFn = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, kw_only=True)
class Workflow:
    name: str
    fn: WorkflowFn
    queue: str = "default"
    session: str | None = None
    #: None: the queue's default retry policy (or no retry) applies.
    retry: RetryPolicy | None = None
    timeout: float | None = None
    priority: int = 0
    #: How many runs of one session key may run at once.
    session_concurrency: int = 1
    #: The connector whose integrations this workflow runs for (and whose credentials it opens).
    connector: str | None = None
    #: "context": runs share the worker's browsers, each session in its own context.
    #: "process": each run executes in its own OS process with its own browser, and the whole
    #: process group is killed at its timeout (for pages or code that may hang the worker).
    isolation: Literal["context", "process"] = "context"
    #: A pydantic model the input is validated as (the function then takes (ctx, input)).
    input_model: type[BaseModel] | None = None
    #: Runs for the default tenant at these slots: a cron expression (or @daily …) or an
    #: interval ("every 15m"), in `schedule_timezone` (greenroom.schedules).
    schedule: str | None = None
    schedule_timezone: str = "UTC"
    #: What the function takes after ctx, read from its signature (greenroom.inputs).
    inputs: InputSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not inspect.iscoroutinefunction(self.fn):
            raise ConfigError(f"workflow {self.name!r} must be an async function")
        object.__setattr__(self, "inputs", InputSpec.of(self.name, self.fn, self.input_model))
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"workflow {self.name!r}: timeout must be positive")
        if self.isolation not in ("context", "process"):
            raise ConfigError(f"workflow {self.name!r}: isolation must be 'context' or 'process'")
        if self.session_concurrency < 1:
            raise ConfigError(f"workflow {self.name!r}: session_concurrency must be at least 1")
        if self.session is not None:
            try:
                list(string.Formatter().parse(self.session))
            except ValueError as exc:
                raise ConfigError(f"workflow {self.name!r}: bad session template: {exc}") from None

    async def call(self, ctx: Any, input: dict[str, Any]) -> Any:
        """Run the function on a stored input (checked again: PermanentError if it no longer
        fits, e.g. enqueued by another version of the code)."""
        args, kwargs = self.inputs.arguments(input)
        return await self.fn(ctx, *args, **kwargs)

    def session_key(
        self, *, tenant: str, input: dict[str, Any], labels: dict[str, str]
    ) -> str | None:
        """Render the session key template from the tenant, labels and input fields."""
        if self.session is None:
            return None
        fields = {**input, **labels, "tenant": tenant}
        try:
            return self.session.format_map(fields)
        except (KeyError, IndexError, AttributeError) as exc:
            raise InvalidInput(
                f"workflow {self.name!r}: session template {self.session!r} needs {exc} "
                "from the run's input, labels or tenant"
            ) from None


@dataclass(frozen=True, kw_only=True)
class StepDef:
    name: str
    retry: RetryPolicy
    timeout: float | None
    #: The workflow's login step: runs again, once, when a later step raises LoggedOut.
    login: bool = False


_DEFAULT_STEP_RETRY = RetryPolicy(max_attempts=3, initial_delay=1.0, max_delay=30.0)


@overload
def step(fn: Callable[P, Awaitable[T]], /) -> Callable[P, Awaitable[T]]: ...


@overload
def step(
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    login: bool = False,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]: ...


def step(
    fn: Callable[P, Awaitable[T]] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    login: bool = False,
) -> Any:
    """Make an async function a checkpointed step.

    Inside a run its result is stored once it completes and replayed from storage when the run
    resumes; outside a run it is a plain call. A login step (login=True) runs one session's
    logins one at a time, and runs again, once, when a later step of the run raises LoggedOut
    (a saved session that expired), even though it was checkpointed.
    """

    def decorate(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        if not inspect.iscoroutinefunction(func):
            raise ConfigError(f"step {func.__qualname__!r} must be an async function")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"step {func.__qualname__!r}: timeout must be positive")
        defn = StepDef(
            name=name or func.__qualname__,
            retry=retry or _DEFAULT_STEP_RETRY,
            timeout=timeout,
            login=login,
        )

        async def run_step(*args: P.args, **kwargs: P.kwargs) -> T:
            from greenroom.context import current_run

            ctx = current_run.get(None)
            if ctx is None:
                return await func(*args, **kwargs)
            result: T = await ctx.run_step(defn, func, args, kwargs)
            return result

        run_step.__name__ = func.__name__
        run_step.__qualname__ = func.__qualname__
        run_step.__doc__ = func.__doc__
        run_step.step = defn  # type: ignore[attr-defined]
        return run_step

    return decorate if fn is None else decorate(fn)
