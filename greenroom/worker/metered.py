"""What a worker reports to Prometheus about its runs (greenroom.metrics): kept out of the
worker's control flow, one call per event."""

from __future__ import annotations

import time

from greenroom import metrics
from greenroom.app import App
from greenroom.model import Run, RunState
from greenroom.settings import Settings
from greenroom.storage.runs import Recovery

#: A run's end as written, named as runs_finished_total's `outcome` label.
OUTCOMES = {
    RunState.SUCCEEDED: "succeeded",
    RunState.FAILED: "failed",
    RunState.DELAYED: "retried",
    RunState.CANCELLED: "cancelled",
    RunState.QUEUED: "released",
    RunState.PAUSED: "paused",
}
LOST = "lost"
#: Its end could not be written (logged): the run stays leased until recovery takes it back.
UNRECORDED = "unrecorded"


class RunMetrics:
    def __init__(self, app: App, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def _labels(self, run: Run) -> tuple[str, str, str]:
        """Workflow, queue and tenant labels: a workflow the app does not declare is
        "unknown", so that stray rows cannot add series."""
        workflow = run.workflow if run.workflow in self.app.workflows else "unknown"
        return workflow, run.queue, metrics.tenant_label(self.settings, run.tenant)

    def claimed(self, seconds: float) -> None:
        metrics.CLAIM_QUERY.observe(seconds)

    def started(self, run: Run, now: float) -> float:
        """A run claimed: when it started, for its duration."""
        metrics.RUNS_STARTED.labels(*self._labels(run)).inc()
        metrics.QUEUE_WAIT.labels(run.queue).observe(max(0.0, now - run.available_at))
        metrics.RUNS_EXECUTING.inc()
        return time.monotonic()

    def ended(self, run: Run, outcome: str, started: float) -> None:
        workflow, queue, tenant = self._labels(run)
        metrics.RUNS_FINISHED.labels(workflow, queue, tenant, outcome).inc()
        metrics.RUN_DURATION.labels(workflow, queue, outcome).observe(time.monotonic() - started)

    def gone(self) -> None:
        """A run's task is over (ended or not): its slot is free."""
        metrics.RUNS_EXECUTING.dec()

    def retried(self, run: Run, error_type: str) -> None:
        metrics.RETRIES.labels("run", self._labels(run)[0], error_type).inc()

    def renew_failed(self) -> None:
        metrics.LEASE_RENEW_FAILURES.inc()

    def recovered(self, recovery: Recovery) -> None:
        if recovery.requeued:
            metrics.RUNS_RECOVERED.labels("requeued").inc(len(recovery.requeued))
        if recovery.failed:
            metrics.RUNS_RECOVERED.labels("failed").inc(len(recovery.failed))
        for seconds in recovery.waited:
            metrics.RECOVERY_TIME.observe(max(0.0, seconds))
        if recovery.lost_workers:
            metrics.WORKERS_LOST.inc(len(recovery.lost_workers))
