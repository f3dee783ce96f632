"""Logging: one configuration for greenroom's structlog loggers and the standard `logging`
module (uvicorn, alembic, psycopg, a host application), so every line of a process comes out
in one format on stderr.

Only the commands that run greenroom as a service (`worker`, `api`, `up`, and a run's own
process) call `configure_logging`; an application that embeds greenroom keeps its own.

While a run executes, every line its task emits, through any logger, carries the run's fields
(`run_context`), the step's name inside a step (`step_context`) and the current span's
`trace_id` and `span_id` when tracing is on (greenroom.tracing); the run's secrets are replaced
in every line (`redact_run_secrets`).
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

if TYPE_CHECKING:
    from greenroom.model import Lease
    from greenroom.settings import Settings

#: Replaces the current run's secrets in a text: the redactor its artifacts use.
_redact: contextvars.ContextVar[Callable[[str], str] | None] = contextvars.ContextVar(
    "greenroom_log_redact", default=None
)

#: Loggers that would write URLs at info level (a Slack webhook's URL is its secret): warnings
#: and errors only.
_URL_LOGGERS = ("httpx", "httpcore")
#: Loggers whose info lines say nothing an operator acts on (alembic's on every worker start,
#: though there is nothing to migrate): written at debug level only.
_CHATTY_LOGGERS = ("alembic",)
#: The keys a JSON line starts with, for people reading it raw.
_FIRST_KEYS = ("timestamp", "level", "logger", "event")


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler configure_logging installs, known by its class so that a second call
    replaces it rather than adding another."""


def configure_logging(settings: Settings) -> None:
    """Route structlog and the standard `logging` module to one handler on stderr, at the
    settings' level and in their format. Calling it again replaces the configuration."""
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        _add_trace_id,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: module-level loggers follow a later configure_logging or a reset.
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(_handler(shared, settings.log_format))
    root.setLevel(level)
    for name in _URL_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else logging.WARNING)


def _handler(shared: list[Processor], log_format: str) -> _Handler:
    """The one handler: a structlog line arrives as its event dict, a `logging` record goes
    through `shared` first; both are redacted, then rendered."""
    handler = _Handler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,  # a traceback as text, to be redacted
                _redact_secrets,
                _renderer(log_format),
            ],
        )
    )
    return handler


def _renderer(log_format: str) -> Processor:
    if log_format == "json":
        render = structlog.processors.JSONRenderer(default=str)
        return lambda logger, name, event_dict: render(logger, name, _ordered(event_dict))
    return structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())


def _ordered(event_dict: EventDict) -> EventDict:
    first = {key: event_dict[key] for key in _FIRST_KEYS if key in event_dict}
    return {**first, **event_dict}


def run_context(lease: Lease) -> contextvars.Context:
    """A copy of the current context in which every line names the run: the context for the
    task that executes it, so that the fields end with the task."""
    context = contextvars.copy_context()
    context.run(bind_run, lease)
    return context


def bind_run(lease: Lease) -> None:
    """Every line from now on in this context names the run (for a run's own process)."""
    run = lease.run
    structlog.contextvars.bind_contextvars(
        run_id=run.id,
        tenant=run.tenant,
        workflow=run.workflow,
        attempt=run.attempt,
        worker=lease.worker_id,
    )


@contextmanager
def step_context(step: str) -> Iterator[None]:
    """Lines emitted while a step runs name it."""
    with structlog.contextvars.bound_contextvars(step=step):
        yield


def redact_run_secrets(redact: Callable[[str], str]) -> None:
    """From now on in this context (a run's task, or a run's own process), lines have the
    run's secrets replaced by `redact`, as its artifacts do."""
    _redact.set(redact)


def _add_trace_id(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        event_dict.setdefault("trace_id", trace.format_trace_id(span.trace_id))
        event_dict.setdefault("span_id", trace.format_span_id(span.span_id))
    return event_dict


def _redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    redact = _redact.get()
    if redact is None:
        return event_dict
    return {key: _redacted(value, redact) for key, value in event_dict.items()}


def _redacted(value: Any, redact: Callable[[str], str]) -> Any:
    """Numbers and None as they are; any other value (an exception, a path) becomes its
    text, redacted, since that text is what the line would show."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {k: _redacted(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redacted(v, redact) for v in value]
    return redact(value if isinstance(value, str) else str(value))
