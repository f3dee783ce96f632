"""Prometheus metrics: every metric greenroom exports, defined once (docs/observability.md).

Labels are bounded: workflows by the app's declarations, queues by what workers serve, errors by
their exception class (error groups are fingerprints: unbounded). Tenants are a label only when
the operator opts in (metrics_tenant_label); otherwise the `tenant` label is empty, which
Prometheus treats as absent.

Each process has its own registry (`REGISTRY`). `greenroom api --workers N` runs N processes:
there, prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the command)
keeps the values in files that /metrics adds up (greenroom.metrics.expose).
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from greenroom.settings import Settings

# The *_created samples would double the exposition, for no alert's use.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

RUN_LABELS = ("workflow", "queue", "tenant")
FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STEP = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
LONG = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

# -- runs (workers) -------------------------------------------------------------------------

RUNS_STARTED = Counter(
    "greenroom_runs_started_total",
    "Runs a worker claimed and started executing (each attempt, each lease).",
    RUN_LABELS,
    registry=REGISTRY,
)
RUNS_FINISHED = Counter(
    "greenroom_runs_finished_total",
    "Executions that ended, by outcome: succeeded, failed, retried (delayed for another"
    " attempt), cancelled, released (back to its queue), paused, lost (lease lost).",
    (*RUN_LABELS, "outcome"),
    registry=REGISTRY,
)
RUNS_EXECUTING = Gauge(
    "greenroom_runs_executing",
    "Runs this worker executes now.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
RUN_DURATION = Histogram(
    "greenroom_run_duration_seconds",
    "From a worker's claim of a run to its end written, by outcome.",
    ("workflow", "queue", "outcome"),
    buckets=LONG,
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "greenroom_run_queue_wait_seconds",
    "Claim latency: from a run being ready (enqueued, due, requeued) to a worker claiming it.",
    ("queue",),
    buckets=LONG,
    registry=REGISTRY,
)
CLAIM_QUERY = Histogram(
    "greenroom_claim_query_seconds",
    "How long a worker's claim (one database call, any number of runs) took.",
    buckets=FAST,
    registry=REGISTRY,
)
STEP_DURATION = Histogram(
    "greenroom_step_duration_seconds",
    "Steps executed (not replayed), all attempts, by outcome (completed, failed).",
    ("workflow", "outcome"),
    buckets=STEP,
    registry=REGISTRY,
)
RETRIES = Counter(
    "greenroom_retries_total",
    "Retries, of a step (kind=step) or of a run (kind=run), by the error's exception class.",
    ("kind", "workflow", "error_type"),
    registry=REGISTRY,
)

# -- leases and recovery (workers) -----------------------------------------------------------

LEASE_RENEW_FAILURES = Counter(
    "greenroom_lease_renew_failures_total",
    "Heartbeats that could not renew the worker's leases (the database call failed).",
    registry=REGISTRY,
)
RUNS_RECOVERED = Counter(
    "greenroom_stalled_runs_recovered_total",
    "Stalled runs (of lost workers, or leases expired) this worker's maintenance recovered:"
    " requeued, or failed after max_stalls.",
    ("action",),
    registry=REGISTRY,
)
RECOVERY_TIME = Histogram(
    "greenroom_stalled_run_recovery_seconds",
    "How long a stalled run waited to be recovered: from its lease expiring or its worker"
    " declared lost (whichever came first) to this worker's maintenance taking it back.",
    buckets=LONG,
    registry=REGISTRY,
)
WORKERS_LOST = Counter(
    "greenroom_workers_declared_lost_total",
    "Workers this worker's maintenance declared lost.",
    registry=REGISTRY,
)

# -- browser pool (workers) ------------------------------------------------------------------

BROWSER_LAUNCHES = Counter(
    "greenroom_browser_launches_total", "Chromium processes launched.", registry=REGISTRY
)
BROWSER_CRASHES = Counter(
    "greenroom_browser_crashes_total",
    "Browsers that disconnected without being asked to close.",
    registry=REGISTRY,
)
BROWSER_RECYCLES = Counter(
    "greenroom_browser_recycles_total",
    "Browsers retired: served their contexts, grew too big, or a context would not close.",
    registry=REGISTRY,
)
BROWSER_CONTEXTS_CREATED = Counter(
    "greenroom_browser_contexts_created_total", "Browser contexts created.", registry=REGISTRY
)
BROWSER_CONTEXTS_REUSED = Counter(
    "greenroom_browser_contexts_reused_total",
    "Warm session contexts handed to a run again.",
    registry=REGISTRY,
)

# -- deliveries (workers' side loop) ----------------------------------------------------------

DELIVERIES = Counter(
    "greenroom_deliveries_total",
    "Delivery attempts (a webhook or Slack message for one event, a mail for one or a digest),"
    " by channel and result: ok, failed (sent again later, or given up), gone (410: disabled).",
    ("channel", "result"),
    registry=REGISTRY,
)
DELIVERY_DURATION = Histogram(
    "greenroom_delivery_duration_seconds",
    "How long one delivery attempt took (connect, send, answer), by channel.",
    ("channel",),
    buckets=STEP,
    registry=REGISTRY,
)

# -- schedules and licenses (workers' side loops) --------------------------------------------

SCHEDULE_LAG = Histogram(
    "greenroom_schedule_firing_lag_seconds",
    "From a schedule's slot to its run being enqueued (includes the schedule's jitter).",
    buckets=LONG,
    registry=REGISTRY,
)
LICENSE_PASS = Histogram(
    "greenroom_license_pass_duration_seconds",
    "One license pass: judging every license due, batch after batch.",
    buckets=LONG,
    registry=REGISTRY,
)
LICENSES_JUDGED = Counter(
    "greenroom_licenses_judged_total", "Licenses a license pass judged.", registry=REGISTRY
)

# -- API nodes -------------------------------------------------------------------------------

API_REQUESTS = Counter(
    "greenroom_api_requests_total",
    "API requests answered, by method, route template (never the raw path) and status.",
    ("method", "route", "status"),
    registry=REGISTRY,
)
API_LATENCY = Histogram(
    "greenroom_api_request_duration_seconds",
    "API request handling time, by method and route template.",
    ("method", "route"),
    registry=REGISTRY,
)

# -- scrapes ---------------------------------------------------------------------------------

SCRAPE_ERRORS = Counter(
    "greenroom_scrape_errors_total",
    "Scrapes whose database-read metrics were left out (the database failed or was slow).",
    ("source",),
    registry=REGISTRY,
)


def tenant_label(settings: Settings, tenant: str) -> str:
    """The run's tenant when the operator opted in to the label, else empty (no label)."""
    return tenant if settings.metrics_tenant_label else ""
