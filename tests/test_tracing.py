"""Traces (OpenTelemetry): one trace per run, a span per attempt and per step, joined to the API
request that created the run, to its webhook deliveries and to its log lines; exported by the
standard OTEL_* variables from the `greenroom` commands (to a real OTLP/HTTP receiver here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from greenroom import App, RetryPolicy, RunContext, RunState, step, tracing
from greenroom.cli import run as cli_run
from greenroom.errors import ConfigError
from tests.api_helpers import ApiSetup
from tests.browser_site import serve_site
from tests.helpers import fast_app, wait_for_states, worker_running
from tests.test_delivery import delivering_app, subscribe, until
from tests.webhook_receiver import Receiver, running_receiver

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """greenroom's tracer provider with an in-memory exporter, for this test only."""
    exporter = InMemorySpanExporter()
    provider = tracing.install("greenroom-test", [SimpleSpanProcessor(exporter)])
    try:
        yield exporter
    finally:
        provider.shutdown()
        # A process sets its provider once; OpenTelemetry's own tests reset it like this.
        trace._TRACER_PROVIDER = None
        trace._TRACER_PROVIDER_SET_ONCE = Once()
        tracing.TRACER = trace.get_tracer("greenroom")


def named(found: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return sorted((s for s in found if s.name == name), key=lambda s: s.start_time or 0)


def children(found: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return sorted(
        (s for s in found if s.parent is not None and s.parent.span_id == parent.context.span_id),
        key=lambda s: s.start_time or 0,
    )


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


@step(name="first")
async def first() -> int:
    return 1


SECOND_CALLS: list[int] = []


@step(name="second", retry=RetryPolicy(max_attempts=1))
async def second(password: str) -> int:
    SECOND_CALLS.append(1)
    if len(SECOND_CALLS) == 1:
        raise RuntimeError(f"second failed once (password {password})")
    return 2


async def test_a_run_is_one_trace_with_a_span_per_attempt_and_per_step(
    db_url: str, spans: InMemorySpanExporter
) -> None:
    SECOND_CALLS.clear()
    app = fast_app(db_url)

    @app.workflow(name="two", retry=RetryPolicy(max_attempts=2, initial_delay=0.01, jitter=0))
    async def two(ctx: RunContext) -> int:
        assert ctx.browser is not None
        ctx.browser.add_secret("pw-9876")  # as the credential API registers a password
        return await first() + await second("pw-9876")

    try:
        run = app.enqueue_sync("two", tenant="acme")
        async with worker_running(app):
            [done] = await wait_for_states(app.store, [run.id])
    finally:
        app.close()
    assert done.state is RunState.SUCCEEDED and done.trace_parent is None
    found = spans.get_finished_spans()
    attempts = named(found, "run two")
    assert [attrs(a)["greenroom.run.attempt"] for a in attempts] == [1, 2]
    # Enqueued with no trace current: the run's id is its trace id, for every attempt.
    assert {a.context.trace_id for a in attempts if a.context} == {uuid.UUID(run.id).int}
    assert all(a.parent is None and a.kind is SpanKind.CONSUMER for a in attempts)
    failed, succeeded = attempts
    assert attrs(failed)["greenroom.run.id"] == run.id
    assert attrs(failed)["greenroom.tenant"] == "acme"
    assert attrs(failed)["greenroom.run.outcome"] == "failed"
    assert failed.status.status_code is StatusCode.ERROR
    assert "second failed once" in (failed.status.description or "")
    assert "pw-9876" not in json.dumps([s.to_json() for s in found]), "secrets are redacted"
    assert attrs(succeeded)["greenroom.run.outcome"] == "succeeded"
    assert succeeded.status.status_code is StatusCode.UNSET

    def steps_of(attempt: ReadableSpan) -> list[tuple[str, bool]]:
        return [
            (attrs(s)["greenroom.step.name"], attrs(s)["greenroom.step.replayed"])
            for s in children(found, attempt)
            if s.name.startswith("step ")
        ]

    assert steps_of(failed) == [("first", False), ("second", False)]
    assert steps_of(succeeded) == [("first", True), ("second", False)]
    [failed_step] = [s for s in children(found, failed) if s.name == "step second"]
    assert failed_step.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed_step.events] == ["exception"]
    assert "(password [redacted])" in str(failed_step.events[0].attributes)


async def test_a_run_created_through_the_api_joins_the_callers_trace(
    api: ApiSetup, spans: InMemorySpanExporter
) -> None:
    with api.as_("acme") as client:
        answer = client.post(
            "/v1/runs",
            json={"workflow": "plain.echo", "input": {}},
            headers={"traceparent": CALLER},
        )
    assert answer.status_code == 201, answer.text
    run_id = answer.json()["id"]
    async with worker_running(api.app):
        await wait_for_states(api.app.store, [run_id])
    found = spans.get_finished_spans()
    [request] = named(found, "POST /v1/runs")
    assert request.kind is SpanKind.SERVER and request.parent is not None
    assert format(request.parent.span_id, "016x") == CALLER_SPAN
    assert attrs(request)["http.route"] == "/v1/runs"
    assert attrs(request)["http.response.status_code"] == 201
    assert request.context is not None
    stored = api.app.store.runs.get_run(run_id).trace_parent
    assert stored == f"00-{CALLER_TRACE}-{request.context.span_id:016x}-01"
    [attempt] = named(found, "run plain.echo")
    assert attempt.context is not None and attempt.parent is not None
    assert format(attempt.context.trace_id, "032x") == CALLER_TRACE
    assert attempt.parent.span_id == request.context.span_id


@pytest.fixture
def delivering(db_url: str) -> Iterator[App]:
    app = delivering_app(db_url)
    yield app
    app.close()


async def test_a_webhook_carries_the_runs_trace(
    delivering: App, spans: InMemorySpanExporter
) -> None:
    with running_receiver() as receiver:
        subscribe(delivering, receiver.url, types=["run.succeeded"])
        with tracing.under(CALLER):
            run = delivering.enqueue_sync("ok", tenant="t1")
        async with worker_running(delivering):
            await wait_for_states(delivering.store, [run.id])
            [request] = await until(lambda: receiver.received() or None)
    parent = request.headers["traceparent"]
    assert parent.split("-")[1] == CALLER_TRACE
    [sent] = named(spans.get_finished_spans(), "webhook run.succeeded")
    assert sent.kind is SpanKind.CLIENT and sent.context is not None
    assert parent == f"00-{CALLER_TRACE}-{sent.context.span_id:016x}-01"
    assert attrs(sent)["http.response.status_code"] == 200
    assert attrs(sent)["greenroom.event.type"] == "run.succeeded"


async def test_a_failed_delivery_marks_its_span(
    delivering: App, spans: InMemorySpanExporter
) -> None:
    with running_receiver() as receiver:
        receiver.answer = lambda request: 503
        subscribe(delivering, receiver.url, types=["run.succeeded"])
        run = delivering.enqueue_sync("ok", tenant="t1")
        async with worker_running(delivering):
            await until(lambda: named(spans.get_finished_spans(), "webhook run.succeeded"))
    [sent] = named(spans.get_finished_spans(), "webhook run.succeeded")
    assert sent.context is not None and sent.context.trace_id == uuid.UUID(run.id).int
    assert sent.status.status_code is StatusCode.ERROR
    assert attrs(sent)["http.response.status_code"] == 503


@step(name="visit")
async def visit(ctx: RunContext, url: str) -> str:
    page = await ctx.page()
    await page.goto(url)
    return page.url


async def test_page_loads_are_noted_on_their_step_with_their_timing(
    sqlite_url: str, spans: InMemorySpanExporter
) -> None:
    app = fast_app(sqlite_url)

    @app.workflow(name="browse")
    async def browse(ctx: RunContext, url: str) -> str:
        return await visit(ctx, url)

    try:
        with serve_site() as site:
            run = app.enqueue_sync("browse", {"url": f"{site.url}/plain?token=s3cret"})
            async with worker_running(app):
                [done] = await wait_for_states(app.store, [run.id], timeout=60)
    finally:
        app.close()
    assert done.state is RunState.SUCCEEDED, done.error
    found = spans.get_finished_spans()
    [visited] = named(found, "step visit")
    [navigation] = [e for e in visited.events if e.name == "navigation"]
    seen = dict(navigation.attributes or {})
    assert seen["url.full"] == f"{site.url}/plain", "the query may hold a token: left out"
    assert seen["greenroom.navigation.main_frame"] is True
    assert float(seen["greenroom.navigation.response_ms"]) >= 0
    [attempt] = named(found, "run browse")
    assert children(found, attempt) == [visited]
    assert [s.name for s in children(found, visited)] == ["browser context"]


def test_exporters_come_from_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    assert tracing.configure_tracing("t") is False, "none by default"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracing.configure_tracing("t") is False
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigError, match="unknown exporter 'zipkin'"):
        tracing.configure_tracing("t")
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ConfigError, match="http/protobuf"):
        tracing.configure_tracing("t")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configure_tracing("t") is False
    assert not tracing.enabled()


# -- the command ---------------------------------------------------------------------------

APP_SOURCE = """
import os

from greenroom import App, step

app = App()


@step(name="where")
async def where() -> int:
    return os.getpid()


@app.workflow(name="inline")
async def inline(ctx) -> int:
    ctx.log.info("inline ran")
    return await where()


@app.workflow(name="isolated", isolation="process")
async def isolated(ctx) -> int:
    return await where()
"""


def exported(receiver: Receiver) -> list[dict[str, Any]]:
    """Every span the receiver got, with its service's name."""
    out = []
    for request in receiver.received("/v1/traces"):
        message = ExportTraceServiceRequest()
        message.ParseFromString(request.body)
        for resource in message.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    out.append(
                        {
                            "service": service["service.name"],
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(),
                        }
                    )
    return out


def test_a_worker_process_exports_to_an_otlp_endpoint(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "traced_app.py").write_text(APP_SOURCE)
    monkeypatch.chdir(tmp_path)
    assert cli_run(["--db", sqlite_url, "db", "upgrade"]) == 0
    with running_receiver() as receiver:
        for workflow in ("inline", "isolated"):
            assert (
                cli_run(["--db", sqlite_url, "enqueue", workflow, "--app", "traced_app:app"]) == 0
            )
        env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
        command = ["worker", "--app", "traced_app:app", "--db", sqlite_url]
        proc = subprocess.Popen(
            [sys.executable, "-m", "greenroom.cli", *command],
            env={
                **env,
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                "OTEL_BSP_SCHEDULE_DELAY": "50",
                "GREENROOM_LOG_FORMAT": "json",
            },
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while len({s["name"] for s in exported(receiver)} & {"run inline", "run isolated"}) < 2:
                assert proc.poll() is None and time.monotonic() < deadline, "no spans came"
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        spans = exported(receiver)
    assert proc.returncode == 0, err
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    [inline] = by_name["run inline"]
    [isolated] = by_name["run isolated"]
    assert inline["service"] == isolated["service"] == "greenroom-worker"
    steps = {s["parent"]: s for s in by_name["step where"]}
    assert steps[inline["span_id"]]["trace_id"] == inline["trace_id"]
    # The isolated run's step ran in its own process, and joined the worker's attempt span.
    assert steps[isolated["span_id"]]["trace_id"] == isolated["trace_id"]
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    [ran] = [line for line in lines if line["event"] == "inline ran"]
    assert (ran["trace_id"], ran["span_id"]) == (inline["trace_id"], inline["span_id"])
