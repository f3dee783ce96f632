"""OpenTelemetry traces: one trace per run, a span per attempt and per step, carried from the
API request that created the run into the run (stored with it), its events' webhook deliveries
(`traceparent`) and its log lines (`trace_id`, `span_id`).

greenroom makes its spans with the global tracer provider: an application that embeds greenroom
and installs its own gets them. The commands that run greenroom as a service install one when
the standard OTEL_* variables ask for an exporter (`configure_tracing`); by default none, and
spans cost next to nothing.

A run created with no trace context (tracing off where it was enqueued) takes its id as its
trace id, so that its attempts, in any worker, and its deliveries still make one trace.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from greenroom.errors import ConfigError, LeaseLost, RunCancelled, RunPaused

if TYPE_CHECKING:
    from greenroom.model import Lease

TRACER = trace.get_tracer("greenroom")
_PROPAGATOR = TraceContextTextMapPropagator()
#: The trace id the next root span takes (a run's, derived from its id).
_next_trace_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "greenroom_next_trace_id", default=None
)


class _RunTraceIds(RandomIdGenerator):
    def generate_trace_id(self) -> int:
        wanted = _next_trace_id.get()
        return wanted if wanted is not None else super().generate_trace_id()


def configure_tracing(service: str) -> bool:
    """Install a tracer provider exporting as OTEL_TRACES_EXPORTER (otlp, console, none) or,
    unset, to OTLP when an OTLP endpoint is set; nothing otherwise, or when OTEL_SDK_DISABLED is
    true, or when the process has a provider already. Whether one was installed."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or enabled():
        return False
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n and n != "none"]
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if "OTEL_TRACES_EXPORTER" not in env and endpoint:
        names = ["otlp"]
    if not names:
        return False
    install(service, [BatchSpanProcessor(_exporter(name)) for name in names])
    return True


def install(service: str, processors: list[SpanProcessor]) -> TracerProvider:
    """Make greenroom's provider the process's (tests give an in-memory exporter)."""
    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service}))
    provider = TracerProvider(resource=resource, id_generator=_RunTraceIds())
    for processor in processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console, none)")
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol.strip() not in ("", "http/protobuf"):
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: greenroom exports OTLP over"
            " http/protobuf (point it at the collector's HTTP port, 4318)"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout: the OTEL_EXPORTER_OTLP_* variables


def shutdown_tracing() -> None:
    """Export what is left (a process about to exit)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()


def enabled() -> bool:
    """Whether a real tracer provider is installed (greenroom's or the host application's)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def current_traceparent() -> str | None:
    """The W3C traceparent of the span current here, if any: what a new run stores."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def extract(headers: Mapping[str, str]) -> Context:
    """The trace context a request carries (its traceparent and tracestate headers)."""
    return _PROPAGATOR.extract(headers)


def inject(headers: dict[str, str]) -> None:
    """Add the current span's traceparent to outgoing headers."""
    _PROPAGATOR.inject(headers)


@contextmanager
def under(traceparent: str | None) -> Iterator[None]:
    """Spans made inside are children of this traceparent's span (one in another process)."""
    if not traceparent:
        yield
        return
    token = otel_context.attach(extract({"traceparent": traceparent}))
    try:
        yield
    finally:
        otel_context.detach(token)


def _trace_id_of(run_id: str) -> int | None:
    try:
        return uuid.UUID(run_id).int or None
    except ValueError:
        return None


def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> _Current:
    """A child of the current span, current inside the block."""
    return _Current(TRACER.start_span(name, kind=kind, attributes=_attributes(attributes)))


def run_span(
    name: str,
    *,
    traceparent: str | None,
    run_id: str | None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> _Current:
    """A span of a run, current inside the block: a child of the run's stored trace context,
    or else a root whose trace id is the run's id."""
    parent = extract({"traceparent": traceparent}) if traceparent else Context()
    token = _next_trace_id.set(_trace_id_of(run_id) if run_id and not traceparent else None)
    try:
        return _Current(
            TRACER.start_span(name, context=parent, kind=kind, attributes=_attributes(attributes))
        )
    finally:
        _next_trace_id.reset(token)


def attempt_attributes(lease: Lease, worker: str) -> dict[str, Any]:
    """What a run attempt's span says of it."""
    run = lease.run
    return {
        "greenroom.run.id": run.id,
        "greenroom.workflow": run.workflow,
        "greenroom.tenant": run.tenant,
        "greenroom.queue": run.queue,
        "greenroom.run.attempt": run.attempt,
        "greenroom.session_key": run.session_key,
        "greenroom.worker": worker,
    }


def _attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (attributes or {}).items() if v is not None}


class _Current:
    """A started span, current inside the block and ended after it. An exception escaping it
    marks the span failed by its class name only: messages and tracebacks may hold secrets
    (`failed` records a redacted one). A class, not a generator: it is on every run's path."""

    __slots__ = ("_token", "span")

    def __init__(self, started: Span) -> None:
        self.span = started

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        otel_context.detach(self._token)
        if exc is not None and _unset(self.span) and not _stopped(exc):
            self.span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        self.span.end()


def _unset(started: Span) -> bool:
    """A recording span whose status nothing has set (`failed` sets a fuller one)."""
    return isinstance(started, ReadableSpan) and started.status.status_code is StatusCode.UNSET


def _stopped(exc: BaseException) -> bool:
    """A run told to stop (cancelled, paused, lease lost) did not fail."""
    return isinstance(
        exc, LeaseLost | RunCancelled | RunPaused | asyncio.CancelledError | GeneratorExit
    )


def failed(current: Span, description: Mapping[str, Any]) -> None:
    """Mark a span failed with an error as runs store it (already redacted)."""
    if not current.is_recording():
        return
    kind = str(description.get("type") or "Error")
    message = str(description.get("message") or "")
    current.set_status(Status(StatusCode.ERROR, f"{kind}: {message}"[:500]))
    attributes = {"exception.type": kind, "exception.message": message[:2000]}
    if description.get("traceback"):
        attributes["exception.stacktrace"] = str(description["traceback"])[:8000]
    current.add_event("exception", attributes)
