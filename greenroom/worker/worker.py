"""The worker: leases runs, executes them, renews leases, recovers others' stalled runs."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog
from opentelemetry.trace import SpanKind

from greenroom import tracing
from greenroom.app import App
from greenroom.browser.runtime import BrowserRuntime
from greenroom.context import RunContext
from greenroom.errors import LeaseLost
from greenroom.failures import describe_error
from greenroom.logs import run_context
from greenroom.metrics.expose import MetricsServer, serve_metrics
from greenroom.model import Lease, QueueInfo, RunState
from greenroom.retry import RetryPolicy
from greenroom.settings import Settings, redact
from greenroom.storage import RunStore
from greenroom.storage.backend import ANY_QUEUE, Liveness
from greenroom.storage.runs import ControlRequests
from greenroom.storage.threads import StoreThreads
from greenroom.storage.writes import End
from greenroom.tracing import attempt_attributes
from greenroom.worker.active import ActiveRun, StopReason
from greenroom.worker.execute import Outcome, OutcomeKind, RunServices, execute_workflow
from greenroom.worker.isolated import IsolatedRun
from greenroom.worker.memory import MemoryAdmission
from greenroom.worker.metered import LOST, OUTCOMES, UNRECORDED, RunMetrics
from greenroom.worker.side_loops import SideLoops
from greenroom.worker.stats import WorkerStats
from greenroom.worker.writer import RunWriter
from greenroom.workflow import Workflow

log = structlog.get_logger("greenroom.worker")
SETTINGS_REFRESH_SECONDS = 2.0
LIVENESS_CHECK_SECONDS = 0.05


class Worker:
    def __init__(
        self,
        app: App,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        settings: Settings | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.app = app
        self.settings = settings or app.settings
        self.queues = queues or sorted({wf.queue for wf in app.workflows.values()}) or ["default"]
        self.concurrency = concurrency or self.settings.concurrency
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.stats = WorkerStats()
        self.metrics = RunMetrics(app, self.settings)
        self._metrics_server: MetricsServer | None = None
        self._active: dict[str, ActiveRun] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stop_requested = False
        self._db = StoreThreads(4, "greenroom-db")
        self.writer = RunWriter(self.store.runs, self._db)
        self._renewed_at = 0.0
        self.memory = MemoryAdmission(
            self.settings.memory_budget_mb, self.settings.memory_per_run_mb, self._isolated_pids
        )
        self._queue_settings: dict[str, QueueInfo] = {}
        self._settings_due = 0.0
        self._lock_key = secrets.randbelow(2**31 - 2) + 1
        self._liveness: Liveness | None = None
        self._listener: Liveness | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.log = log.bind(worker=self.id)
        # Browser pool, saved sessions, diagnostics: Chromium starts at a run's first page.
        self.browser = BrowserRuntime(self.settings)
        self.services = RunServices(
            app=app, store=self.store, writer=self.writer, browser=self.browser, db=self._db
        )

    @property
    def store(self) -> RunStore:
        return self.app.store

    def wake(self) -> None:
        """Thread-safe: there may be work to claim."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        """Stop claiming; in-flight runs get the grace period to finish. Thread-safe."""
        self._stop_requested = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stopping.set)
        if self._stop_requested:
            self._stopping.set()
        await self._start()
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._maintenance_loop(), name="maintenance"),
            asyncio.create_task(self._liveness_loop(), name="liveness"),
        ]
        side = SideLoops(self.app, self.settings)
        side.start()
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            await side.stop()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._close()

    async def _start(self) -> None:
        store = self.store
        if self.settings.metrics_port:
            self._metrics_server = serve_metrics(
                self.settings.metrics_host, self.settings.metrics_port
            )
        await self._register()
        self._renewed_at = store.clock.now()
        self._queue_settings = await self._db(store.controls.queue_settings)
        self._listener = store.backend.listen(self._on_notify)
        self.log.info(
            "worker started",
            queues=self.queues,
            concurrency=self.concurrency,
            database=redact(self.settings.db),
        )

    async def _register(self) -> None:
        """Take this identity's liveness lock, then record the worker."""
        self._liveness = await self._db(self.store.backend.hold_liveness, self._lock_key, self.id)
        await self._db(
            self.store.runs.register_worker,
            self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.concurrency,
            lock_key=self._lock_key,
        )

    def _on_notify(self, queue: str) -> None:
        if queue == ANY_QUEUE or queue in self.queues:
            self.wake()

    async def _drain(self) -> None:
        """Give in-flight runs the grace period, then hand the rest back to the queue."""
        pending = [active.task for active in self._active.values()]
        if pending:
            self.log.info(
                "draining", runs=len(pending), grace_seconds=self.settings.shutdown_grace_seconds
            )
            await asyncio.wait(pending, timeout=self.settings.shutdown_grace_seconds)
        for active in list(self._active.values()):
            self._interrupt(active, StopReason.SHUTDOWN)
        remaining = [active.task for active in self._active.values()]
        if remaining:
            await asyncio.gather(*remaining, return_exceptions=True)

    async def _close(self) -> None:
        await self.browser.close()
        if self._listener is not None:
            await self._db(self._listener.close)
        try:
            await self._db(self.store.runs.stop_worker, self.id)
        except Exception as exc:  # the database may be gone; liveness tells the others
            self.log.warning("could not mark worker stopped", error=str(exc))
        if self._liveness is not None:
            self._liveness.close()
        self._db.shutdown(wait=True)
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.close)
        self.log.info("worker stopped", **self.stats.__dict__)

    # -- loops -----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        idle_wait = self.settings.poll_seconds
        while not self._stopping.is_set():
            executing = self._executing()
            free = self.concurrency - executing
            if self.memory.budget is not None and free > 0:
                free = min(free, await asyncio.to_thread(self.memory.room, executing))
            got = 0
            if free > 0 and self._liveness is not None and self._liveness.unconfirmed():
                free = 0  # it could not stop in time runs it claimed now
            if free > 0:
                try:
                    asked = time.monotonic()
                    leases = await self._db(
                        self.store.runs.claim,
                        self.id,
                        self.queues,
                        free,
                        self.settings.lease_seconds,
                    )
                    self.metrics.claimed(time.monotonic() - asked)
                except Exception as exc:
                    if await self._quarantine(exc):
                        continue  # the runs that failed it are out of the way: claim again
                    self.log.warning("claim failed", error=str(exc))
                    leases = []
                for lease in leases:
                    self._start_run(lease)
                got = len(leases)
            if got:
                await asyncio.sleep(0)  # the runs start before the next claim takes the GIL
            if got and got == free:
                if self._executing() >= self.concurrency:
                    await self._wait_wake(None)  # all we could: again once a slot frees
                continue
            if not got:
                await self._wait_wake(idle_wait)

    async def _quarantine(self, exc: Exception) -> bool:
        """After a claim failed on data the database could not read (a run stored before the
        rules held), quarantine such runs so that they stop no one's claims; whether any was."""
        if not self.store.backend.is_data_error(exc):
            return False
        try:
            found = await self._db(self.store.repair.quarantine_unreadable)
        except Exception as repair_exc:
            self.log.error("quarantine failed", error=str(repair_exc), claim_error=str(exc))
            return False
        for quarantined in found:
            self.log.error(
                "run quarantined",
                run_id=quarantined.run_id,
                tenant=quarantined.tenant,
                state=quarantined.state.value,
                reason=quarantined.reason,
                claim_error=str(exc),
            )
        self.stats.quarantined += len(found)
        return bool(found)

    async def _wait_wake(self, timeout: float | None) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({stop, wake}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            wake.cancel()
            self._wake.clear()

    def _executing(self) -> int:
        """Runs that hold a slot: a run whose end is being written has given its slot back."""
        return sum(1 for active in self._active.values() if not active.finishing)

    def _heartbeat_interval(self) -> float:
        """The worker's setting, or a served queue's shorter one (per-queue lock tuning)."""
        tuned = [
            queue.heartbeat_seconds
            for name, queue in self._queue_settings.items()
            if name in self.queues and queue.heartbeat_seconds
        ]
        return min([self.settings.heartbeat_seconds, *tuned])

    async def _heartbeat_loop(self) -> None:
        settings = self.settings
        while True:
            await asyncio.sleep(self._heartbeat_interval())
            started = self.store.clock.now()
            # Only runs held before the beat can be missing from it: a run claimed or finished
            # while the beat was in flight is not lost. A run whose end is being written is
            # renewed too: its end may be waiting out a database outage.
            known = {run_id for run_id, active in self._active.items() if not active.finishing}
            renew = set(self._active)
            try:
                beat = await self._db(
                    self.store.runs.heartbeat, self.id, settings.lease_seconds, renew
                )
            except Exception as exc:
                self.metrics.renew_failed()
                self.log.warning("heartbeat failed", error=str(exc))
                continue
            self._renewed_at = started
            for run_id in beat.held:
                active = self._active.get(run_id)
                if active is not None and active.isolated is not None:
                    active.isolated.lease_renewed(self._lease_valid_until(active.lease)())
            for run_id in known - beat.held:
                active = self._active.get(run_id)
                if active is not None and not active.finishing:
                    self._interrupt(active, StopReason.LOST)
            self._apply_controls(beat)

    def _apply_controls(self, requests: ControlRequests) -> None:
        for run_id in requests.cancel_requested:
            if run_id in self._active:
                self._interrupt(self._active[run_id], StopReason.CANCEL)
        for run_id in requests.pause_requested:
            active = self._active.get(run_id)
            if active is not None:
                active.request_pause()

    async def _maintenance_loop(self) -> None:
        settings = self.settings
        while True:
            wait = settings.poll_seconds
            try:
                recovery = await self._db(self.store.runs.recover, self.id, settings.max_stalls)
                promoted = await self._db(self.store.runs.promote_delayed)
                if self._active:
                    self._apply_controls(await self._db(self.store.runs.control_requests, self.id))
                if self.store.clock.now() >= self._settings_due:
                    self._queue_settings = await self._db(self.store.controls.queue_settings)
                    self._settings_due = self.store.clock.now() + SETTINGS_REFRESH_SECONDS
            except Exception as exc:
                self.log.warning("maintenance failed", error=str(exc))
            else:
                self.metrics.recovered(recovery)
                if recovery.lost_workers:
                    self.log.warning("workers declared lost", workers=recovery.lost_workers)
                if recovery.requeued or recovery.failed:
                    self.stats.recovered += len(recovery.requeued) + len(recovery.failed)
                    self.log.info(
                        "recovered stalled runs",
                        requeued=len(recovery.requeued),
                        failed=len(recovery.failed),
                    )
                if recovery.requeued or promoted:
                    self._wake.set()
                if recovery.next_due is not None:  # hand a lost worker's runs out on time
                    wait = min(wait, max(0.0, recovery.next_due - self.store.clock.now()))
            await asyncio.sleep(wait)

    async def _liveness_loop(self) -> None:
        """Stop the runs this worker can no longer prove it owns, before others may take them;
        take a new identity once another worker declared this one lost."""
        while True:
            await asyncio.sleep(LIVENESS_CHECK_SECONDS)
            liveness = self._liveness
            if liveness is None or not liveness.unconfirmed():
                self._stop_expiring()
                continue
            ended = liveness.ended()
            reason = StopReason.LOST if ended else StopReason.UNCONFIRMED
            stopping = [active for active in self._active.values() if active.stop_reason is None]
            if stopping:
                self.log.warning(
                    f"stopping runs: {StopReason.UNCONFIRMED.value}", runs=len(stopping)
                )
            for active in stopping:
                self._interrupt(active, reason)
            if ended:
                await self._new_identity()

    def _stop_expiring(self) -> None:
        """Stop the runs whose lease expires before a heartbeat could still renew it (the
        heartbeats failed, or waited for a connection): once expired, another worker may
        take them."""
        now = self.store.clock.now()
        for active in list(self._active.values()):
            lease = active.lease
            margin = min(1.0, lease.seconds / 4)
            if active.stop_reason is None and self._lease_valid_until(lease)() - now < margin:
                self.log.warning(f"stopping run: {StopReason.EXPIRING.value}", run_id=lease.run.id)
                self._interrupt(active, StopReason.EXPIRING)

    async def _new_identity(self) -> None:
        """Declared lost, this worker's runs are being handed out; it goes on as a new worker."""
        old = self.id
        assert self._liveness is not None
        await self._db(self._liveness.close)
        self.id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._lock_key = secrets.randbelow(2**31 - 2) + 1
        self.log = log.bind(worker=self.id)
        self.log.warning("declared lost by another worker; its runs were stopped", previous=old)
        while True:
            try:
                await self._register()
                return
            except Exception as exc:
                self.log.warning("could not register", error=str(exc))
                await asyncio.sleep(self.settings.poll_seconds)

    # -- executing runs --------------------------------------------------------------------

    def _isolated_pids(self) -> list[int]:
        """The processes of this worker's isolated runs (each leads its own process group)."""
        return [
            active.isolated.pid
            for active in list(self._active.values())
            if active.isolated and active.isolated.pid
        ]

    def _start_run(self, lease: Lease) -> None:
        self.stats.claimed += 1
        started = self.metrics.started(lease.run, self.store.clock.now())
        task = asyncio.create_task(
            self._execute(lease), name=f"run-{lease.run.id}", context=run_context(lease)
        )
        self._active[lease.run.id] = ActiveRun(lease=lease, task=task, started=started)

    def _interrupt(self, active: ActiveRun, reason: StopReason) -> None:
        if active.stop_reason is None and not active.finishing and not active.task.done():
            active.stop_reason = reason
            if active.begun:
                active.task.cancel(reason.value)

    def _lease_valid_until(self, lease: Lease) -> Callable[[], float]:
        return lambda: max(lease.expires_at, self._renewed_at + lease.seconds)

    async def _execute(self, lease: Lease) -> None:
        run = lease.run
        active = self._active.get(run.id)
        if active is not None:
            active.begun = True
        try:
            if active is not None and active.stop_reason is not None:
                await self._stopped(lease)  # stopped between its claim and its start
            else:
                await self._execute_run(lease)
        except LeaseLost as exc:
            self.stats.lost += 1
            self._count_end(lease, LOST)
            self.log.warning("lease lost; run abandoned", run_id=run.id, reason=str(exc))
        except Exception as exc:
            self._count_end(lease, UNRECORDED)
            self.log.exception("could not record the end of a run", run_id=run.id, error=str(exc))
        finally:
            self.metrics.gone()
            active = self._active.get(run.id)
            if active is not None and active.task is asyncio.current_task():
                del self._active[run.id]  # not a later lease of the same run, claimed meanwhile
                if active.ctx is not None and active.ctx.browser is not None:
                    await active.ctx.browser.close()
            self._wake.set()

    async def _execute_run(self, lease: Lease) -> None:
        run = lease.run
        with tracing.run_span(
            f"run {run.workflow}",
            traceparent=run.trace_parent,
            run_id=run.id,
            kind=SpanKind.CONSUMER,
            attributes=attempt_attributes(lease, self.id),
        ) as span:
            outcome = await self._execute_attempt(lease)
            if outcome is not None:
                span.set_attribute("greenroom.run.outcome", outcome.kind.value)
                if outcome.kind is OutcomeKind.FAILED and outcome.error is not None:
                    tracing.failed(span, outcome.description or describe_error(outcome.error))

    async def _execute_attempt(self, lease: Lease) -> Outcome | None:
        """Execute the run and record its end: the outcome, if the workflow got to one."""
        run = lease.run
        wf = self.app.workflows.get(run.workflow)
        if wf is None:
            err = {"type": "UnknownWorkflow", "message": f"no workflow {run.workflow!r} in app"}
            await self._finish(lease, RunState.FAILED, "unknown workflow", error=err)
            return None
        run_log = self.log.bind(run_id=run.id, workflow=run.workflow, attempt=run.attempt)
        if wf.isolation == "process":
            execution = self._execute_isolated(lease, wf)
            facts: dict[str, Any] = {"isolation": "process"}
        else:
            ctx = await self._context(lease)
            execution = execute_workflow(self.services, ctx, wf, timeout=run.timeout)
            run_log, facts = ctx.log, {}
        try:
            outcome = await execution
        except asyncio.CancelledError:
            await self._stopped(lease)
            return None
        await self._record(lease, outcome, run_log, **facts)
        return outcome

    async def _context(self, lease: Lease) -> RunContext:
        """The context of a run executing in this worker, known to its controls."""
        run = lease.run
        # Steps are only written under a lease: a run leased for the first time has no history.
        fresh = lease.token == 1 and run.retry_of is None  # a retry starts with copied steps
        history = [] if fresh else await self._db(self.store.runs.steps, run.id)
        ctx = self.services.context(
            lease, history=history, lease_valid_until=self._lease_valid_until(lease)
        )
        if run.id in self._active:
            self._active[run.id].ctx = ctx
            if run.pause_requested:
                ctx.request_pause()
        return ctx

    async def _execute_isolated(self, lease: Lease, wf: Workflow) -> Outcome:
        """The run executes in its own process group; this worker keeps its lease."""
        run = lease.run
        isolated = IsolatedRun(self.settings, lease, wf)
        active = self._active.get(run.id)
        if active is not None:
            active.isolated = isolated
            if run.pause_requested:
                isolated.request_pause()
        try:
            async with asyncio.timeout(run.timeout):
                return await isolated.run()
        except Exception as exc:  # the run timed out, or its process died before reporting
            return Outcome(kind=OutcomeKind.FAILED, error=exc)

    async def _record(self, lease: Lease, outcome: Outcome, log: Any, **facts: Any) -> None:
        """Write the run's end as its outcome says; a lost lease leaves it to its next owner."""
        if outcome.kind is OutcomeKind.SUCCEEDED:
            log.info(
                "run succeeded",
                seconds=outcome.seconds,
                steps_executed=outcome.steps_executed,
                steps_replayed=outcome.steps_replayed,
                relogins=outcome.relogins,
                **facts,
            )
            await self._finish(lease, RunState.SUCCEEDED, "completed", output=outcome.output)
        elif outcome.kind is OutcomeKind.PAUSED:
            await self._finish(lease, RunState.QUEUED, "stopped at a step boundary for a pause")
        elif outcome.kind is OutcomeKind.LOST:
            if isinstance(outcome.error, LeaseLost):
                raise outcome.error
            raise LeaseLost(f"run {lease.run.id}: lease lost")
        else:
            assert outcome.error is not None
            await self._failed(
                lease,
                outcome.error,
                failed_step=outcome.failed_step,
                log=log,
                error=outcome.description or None,
            )

    async def _stopped(self, lease: Lease) -> None:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # we asked for this cancellation; record the outcome below
        active = self._active.get(lease.run.id)
        reason = active.stop_reason if active else None
        if reason == StopReason.CANCEL:
            await self._finish(lease, RunState.CANCELLED, "cancelled while running")
        elif reason == StopReason.SHUTDOWN:
            await self._finish(lease, RunState.QUEUED, "released: worker shutting down")
        elif reason in (StopReason.UNCONFIRMED, StopReason.EXPIRING):
            await self._finish(lease, RunState.QUEUED, f"released: {reason.value}")
        elif reason == StopReason.LOST:
            raise LeaseLost(f"run {lease.run.id}: lease lost")
        else:
            raise asyncio.CancelledError

    async def _failed(
        self,
        lease: Lease,
        exc: BaseException,
        *,
        failed_step: str | None,
        log: Any,
        error: dict[str, Any] | None = None,
    ) -> None:
        """Retry the run later or fail it; `error` is the stored description when it was made
        elsewhere (an isolated run's process, with its traceback)."""
        run = lease.run
        wf = self.app.workflows[run.workflow]
        policy = wf.retry or RetryPolicy.of_queue(self._queue_settings.get(run.queue))
        error = error or describe_error(exc, step=failed_step, attempt=run.attempt)
        if run.attempt < run.max_attempts and policy.should_retry(exc, run.attempt):
            self.metrics.retried(run, error["type"])
            delay = policy.delay(run.attempt)
            log.warning("run failed; will retry", error=error["message"], retry_in=delay)
            await self._finish(
                lease,
                RunState.DELAYED,
                f"attempt {run.attempt} failed: {error['type']}",
                error=error,
                retry_at=self.store.clock.now() + delay,
            )
        else:
            log.error("run failed", error=error["message"], error_type=error["type"])
            await self._finish(lease, RunState.FAILED, f"failed: {error['type']}", error=error)

    async def _finish(self, lease: Lease, state: RunState, reason: str, **kw: Any) -> None:
        active = self._active.get(lease.run.id)
        checkpoint = None
        if active is not None:
            active.finishing = True
            self._wake.set()  # its slot is free: claim the next run while the end is written
            if active.ctx is not None:
                checkpoint = active.ctx.unsaved()
                if active.ctx.browser is not None:
                    await active.ctx.browser.close()  # back in the pool before the end
        end = End(lease=lease, state=state, reason=reason, checkpoint=checkpoint, **kw)
        state = await self.writer.end(end)
        self.stats.count_end(state)
        self._count_end(lease, OUTCOMES[state])

    def _count_end(self, lease: Lease, outcome: str) -> None:
        """Count the run's end once (a failed write of a counted end is not counted again)."""
        active = self._active.get(lease.run.id)
        if active is not None and active.lease is lease and not active.counted:
            active.counted = True
            self.metrics.ended(lease.run, outcome, active.started)
