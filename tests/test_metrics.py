"""Prometheus metrics (greenroom.metrics): what a real worker and a real API expose, read back
with prometheus_client's parser; a worker's --metrics-port and `api --workers 2` as real
processes; scrapes while the database is down; the Grafana dashboard's queries."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
from prometheus_client import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from greenroom import App, RetryPolicy, RunContext, RunState, step
from greenroom.clock import ManualClock
from greenroom.metrics import REGISTRY
from greenroom.metrics.expose import exposition
from greenroom.metrics.store import StoreCollector, families
from greenroom.model import NewRun, Role
from greenroom.settings import load_settings
from greenroom.storage import RunStore, open_store
from greenroom.worker.metered import RunMetrics
from tests.api_helpers import ApiSetup, api_setup, build_app
from tests.helpers import fast_app, wait_for_states, worker_running
from tests.test_cli_service import base_url, greenroom
from tests.test_delivery import delivering_app, subscribe, until
from tests.webhook_receiver import running_receiver

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "greenroom.json"
TEST_APP = "tests.apps.api_app:app"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str | bytes) -> Samples:
    """Every sample of an exposition, by name and labels (empty labels dropped, as
    Prometheus does)."""
    if isinstance(text, bytes):
        text = text.decode()
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = frozenset((k, v) for k, v in s.labels.items() if v != "")
            found[(s.name, labels)] = s.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def metrics_app(db_url: str) -> App:
    app = fast_app(db_url)
    flaky_calls: dict[str, int] = {}

    @step(name="metrics.flaky", retry=RetryPolicy(max_attempts=2, initial_delay=0, jitter=0))
    async def flaky(ctx: RunContext) -> int:
        flaky_calls[ctx.run_id] = flaky_calls.get(ctx.run_id, 0) + 1
        if flaky_calls[ctx.run_id] == 1:
            raise ConnectionError("once")
        return 1

    @step(name="metrics.boom")
    async def boom(ctx: RunContext) -> None:
        raise ValueError("boom")

    @app.workflow(name="metrics.ok")
    async def ok(ctx: RunContext) -> int:
        return await flaky(ctx)

    @app.workflow(name="metrics.bad")
    async def bad(ctx: RunContext) -> None:
        await boom(ctx)

    return app


async def test_a_worker_counts_runs_steps_and_their_durations(db_url: str) -> None:
    app = metrics_app(db_url)
    before = parse(exposition())
    good = [await app.enqueue("metrics.ok", {}) for _ in range(3)]
    bad = await app.enqueue("metrics.bad", {})
    async with worker_running(app):
        await wait_for_states(app.store, [r.id for r in [*good, bad]])
    after = parse(exposition())

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("greenroom_runs_started_total", workflow="metrics.ok", queue="default") == 3
    assert grew("greenroom_runs_finished_total", workflow="metrics.ok", outcome="succeeded") == 3
    assert grew("greenroom_runs_finished_total", workflow="metrics.bad", outcome="failed") == 1
    assert not any(label == "tenant" for _, ls in after for label, _ in ls)  # not opted in
    assert grew("greenroom_run_duration_seconds_count", workflow="metrics.ok") == 3
    assert 0 < grew("greenroom_run_duration_seconds_sum", workflow="metrics.ok") < 30
    assert grew("greenroom_step_duration_seconds_count", workflow="metrics.ok") == 3
    assert grew("greenroom_step_duration_seconds_count", outcome="failed") == 1
    assert grew("greenroom_retries_total", kind="step", error_type="ConnectionError") == 3
    assert grew("greenroom_run_queue_wait_seconds_count", queue="default") == 4
    assert grew("greenroom_claim_query_seconds_count") >= 1
    assert value(after, "greenroom_runs_executing") == 0


async def test_the_tenant_label_is_there_only_when_the_operator_opts_in(db_url: str) -> None:
    app = fast_app(db_url, metrics_tenant_label=True)

    @app.workflow(name="metrics.tenanted")
    async def tenanted(ctx: RunContext) -> None:
        return None

    finished = "greenroom_runs_finished_total"
    before = value(parse(exposition()), finished, tenant="acme")
    run = await app.enqueue("metrics.tenanted", {}, tenant="acme")
    async with worker_running(app):
        await wait_for_states(app.store, [run.id])
    assert value(parse(exposition()), finished, tenant="acme") == before + 1


def test_recovery_time_runs_from_the_lease_expiring(store: RunStore, clock: ManualClock) -> None:
    run, _ = store.runs.enqueue(NewRun(workflow="metrics.stalls"))
    [lease] = store.runs.claim("w1", ["default"], 1, lease_seconds=10)
    assert lease.run.id == run.id
    clock.advance(25)  # the lease expired 15 s ago
    recovery = store.runs.recover("w2", max_stalls=3)
    assert recovery.requeued == [run.id] and recovery.waited == [pytest.approx(15)]
    name = "greenroom_stalled_run_recovery_seconds"
    before = parse(exposition())
    RunMetrics(App(), load_settings()).recovered(recovery)
    after = parse(exposition())
    assert value(after, f"{name}_count") - value(before, f"{name}_count") == 1
    assert value(after, f"{name}_sum") - value(before, f"{name}_sum") == pytest.approx(15)
    assert value(after, f"{name}_bucket", le="10.0") == value(before, f"{name}_bucket", le="10.0")
    assert (
        value(after, f"{name}_bucket", le="30.0") == value(before, f"{name}_bucket", le="30.0") + 1
    )


async def test_deliveries_are_counted_by_channel_and_result(db_url: str) -> None:
    app = delivering_app(db_url)
    before = parse(exposition())
    try:
        with running_receiver() as ok, running_receiver() as down:
            down.answer = lambda request: 503
            subscribe(app, ok.url, types=["run.succeeded"])
            subscribe(app, down.url, types=["run.succeeded"])
            await app.enqueue("ok", {}, tenant="t1")
            async with worker_running(app):
                await until(lambda: ok.received() and down.received())
    finally:
        app.close()
    after = parse(exposition())

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("greenroom_deliveries_total", channel="webhook", result="ok") == 1
    assert grew("greenroom_deliveries_total", channel="webhook", result="failed") >= 1
    attempts = grew("greenroom_deliveries_total", channel="webhook")
    assert grew("greenroom_delivery_duration_seconds_count", channel="webhook") == attempts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_worker_serves_its_metrics_on_its_metrics_port(sqlite_url: str) -> None:
    app = build_app(sqlite_url)
    run = app.enqueue_sync("plain.echo", {"value": 1})  # the store opens migrated
    port = free_port()
    argv = ("worker", "--app", TEST_APP, "--db", sqlite_url, "--metrics-port", str(port))
    try:
        with greenroom(*argv) as worker:
            deadline = time.monotonic() + 30
            while app.store.runs.get_run(run.id).state is not RunState.SUCCEEDED:
                assert time.monotonic() < deadline, "".join(worker.lines)
                time.sleep(0.05)
            scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
            code, _ = worker.stop()
    finally:
        app.close()
    assert code == 0, "".join(worker.lines)
    assert scraped.status_code == 200
    found = parse(scraped.text)
    assert value(found, "greenroom_runs_finished_total", workflow="plain.echo") == 1
    assert value(found, "process_resident_memory_bytes") > 0


def test_api_requests_are_counted_by_route_template_and_queues_by_depth(api: ApiSetup) -> None:
    run_id = "run-that-does-not-exist-42"
    with api.as_("acme", Role.OPERATOR) as c:
        assert c.get(f"/v1/runs/{run_id}").status_code == 404
        assert c.post("/v1/runs", json={"workflow": "plain.echo", "input": {}}).status_code == 201
    with api.client(None) as anonymous:
        scraped = anonymous.get("/metrics")
    assert scraped.status_code == 200
    assert run_id not in scraped.text
    found = parse(scraped.text)
    route = {"method": "GET", "route": "/v1/runs/{run_id}"}
    assert value(found, "greenroom_api_requests_total", **route, status="404") >= 1
    assert value(found, "greenroom_api_request_duration_seconds_count", **route) >= 1
    assert value(found, "greenroom_queue_ready_runs", queue="default") >= 1
    assert value(found, "greenroom_queue_oldest_ready_age_seconds", queue="default") >= 0


def test_metrics_can_be_turned_off_on_api_nodes(sqlite_url: str) -> None:
    with api_setup(sqlite_url, metrics_api=False) as setup, setup.client(None) as c:
        assert c.get("/metrics").status_code == 404


def test_a_scrape_with_the_database_gone_still_answers_and_counts_the_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "gone").write_text("a file where the database's directory should be")
    app = App(db=f"sqlite:///{tmp_path}/gone/greenroom.db")
    collector = StoreCollector(lambda: app.store, timeout=5)
    before = parse(exposition())
    found = parse(exposition(collector))
    errors = "greenroom_scrape_errors_total"
    assert value(found, errors, source="store") == value(before, errors, source="store") + 1
    assert value(found, "process_cpu_seconds_total") > 0
    assert not any(name == "greenroom_queue_ready_runs" for name, _ in found)


def test_a_slow_database_read_is_given_up_and_not_piled_up(sqlite_url: str) -> None:
    store = open_store(sqlite_url)

    def slow_to_open() -> RunStore:
        time.sleep(1.5)
        return store

    collector = StoreCollector(slow_to_open, timeout=0.2)
    errors = "greenroom_scrape_errors_total"
    try:
        before = value(parse(exposition()), errors, source="store")
        started = time.monotonic()
        exposition(collector)
        exposition(collector)  # the first read is still in flight: no second one
        assert time.monotonic() - started < 1.0
        assert value(parse(exposition()), errors, source="store") == before + 2
        time.sleep(2)
        collector.timeout = 5
        assert ("greenroom_queue_ready_runs", frozenset()) not in parse(exposition(collector))
        assert value(parse(exposition()), errors, source="store") == before + 2
    finally:
        store.backend.close()


@pytest.mark.postgres
def test_api_processes_add_their_metrics_up(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    (shared / "counter_1.db").write_bytes(b"left by processes gone")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    argv = ("api", "--app", TEST_APP, "--db", pg_url, "--port", "0", "--workers", "2")
    with greenroom(*argv) as server:
        base = base_url(server)
        with httpx.Client(base_url=base, timeout=30) as http:
            deadline = time.monotonic() + 30
            while True:  # each process answers once it has started
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/readyz").status_code == 200:
                        break
                assert time.monotonic() < deadline, "".join(server.lines)
                time.sleep(0.1)
        # New connections each: the two processes take turns accepting them.
        for _ in range(40):
            assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200
        totals = []
        for _ in range(8):
            found = parse(httpx.get(f"{base}/metrics", timeout=30).text)
            totals.append(
                (
                    value(found, "greenroom_api_requests_total", route="/healthz"),
                    value(found, "greenroom_api_requests_total", route="/metrics"),
                )
            )
        processes = {path.stem.rsplit("_", 1)[1] for path in shared.glob("*.db")}
        code, _ = server.stop()
    assert code == 0, "".join(server.lines)
    assert "1" not in processes and processes  # emptied at the start
    assert not list(shared.glob("*.db"))  # and at the end
    assert [healthz for healthz, _ in totals] == [40] * 8
    assert [scrapes for _, scrapes in totals] == list(range(8))


# -- what is exported, and the dashboard --------------------------------------------------


class EmptyStore(Collector):
    """The database-read gauges, as an empty database gives them."""

    def collect(self) -> Iterable[Metric]:
        return families([], 0.0)


def exported_names() -> set[str]:
    """Every sample name greenroom exports (a histogram's _bucket, _count and _sum)."""
    names: set[str] = set()
    for collector in (REGISTRY, EmptyStore()):
        for family in collector.collect():
            names.update(s.name for s in family.samples)
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names.update(f"{family.name}_{part}" for part in ("bucket", "count", "sum"))
            else:
                names.add(family.name)
    return names


def test_metric_names_follow_the_conventions() -> None:
    ours = {n for n in exported_names() if n.startswith("greenroom_")}
    assert len(ours) > 40
    for name in ours:
        assert re.fullmatch(r"greenroom_[a-z0-9_]+", name), name


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_exposition() -> None:
    text = exposition(EmptyStore())
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_dashboard_query_names_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names()
    panels = dashboard["panels"]
    assert panels
    for panel in panels:
        targets = panel.get("targets", [])
        assert targets or panel["type"] == "row", panel["title"]
        for target in targets:
            used = metric_names(target["expr"])
            assert used, (panel["title"], target["expr"])
            assert used <= exported, (panel["title"], used - exported)
    for variable in dashboard["templating"]["list"]:
        assert metric_names(variable.get("definition", "")) <= exported, variable["name"]


def metric_names(promql: str) -> set[str]:
    return set(re.findall(r"\b(?:greenroom|process)_[a-z0-9_]+", promql))
