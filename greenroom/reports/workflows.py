"""The report workflow: gather → render → store → publish, as a greenroom run, so a report is
durable, retried and observable like any run. Its runs go to their own queue (`reports`, with a
concurrency limit), so a platform's worth of reports at 07:00 on a Monday does not hold back
ordinary runs; tenant fairness applies within it.

Once per period: the store saves a report once per tenant, type and period and writes its
report.ready event only when it first saves it (storage.reports), so a run retried, resumed by
another worker after a SIGKILL, or made again for the period tells each subscriber once."""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from typing import TYPE_CHECKING, Any

from greenroom.context import RunContext
from greenroom.errors import InvalidInput, PermanentError
from greenroom.reports import gather, render
from greenroom.reports.period import Period, PeriodKind, last_complete
from greenroom.reports.records import Report, ReportType
from greenroom.retry import RetryPolicy
from greenroom.schedules.spec import zone
from greenroom.storage.reports import FileBody
from greenroom.workflow import Workflow, step

if TYPE_CHECKING:
    from greenroom.app import App
    from greenroom.storage import RunStore

REPORT_WORKFLOW = "greenroom.report"
REPORTS_QUEUE = "reports"
#: Renderer processes per worker process (each report's HTML, CSV and PDF are made in one).
RENDERERS = 2
#: The reports queue's concurrency limit when a first subscription makes it (`greenroom queues
#: set reports --concurrency N` changes it).
DEFAULT_CONCURRENCY = 4


def period_of(report_type: str, period: str, timezone: str, at: float) -> Period:
    """The period a run made at `at` reports on: the last one that has ended."""
    try:
        ReportType(report_type)
        kind = PeriodKind(period)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    zone(timezone)
    return last_complete(kind, at, timezone)


def gather_data(
    store: RunStore, tenant: str, report_type: str, start: float, end: float
) -> dict[str, Any]:
    """Read the tenant's rows of the period and compute the report's numbers."""
    names = {i.id: i.name for i in store.accounts.integrations(tenant=tenant)}
    if report_type == ReportType.HEALTH:
        runs = store.reports.finished_runs(tenant, start, end)
        fingerprints = sorted({r.error_group for r in runs if r.error_group})
        return gather.health(
            runs,
            integrations=names,
            last_success=store.reports.last_successes(tenant, sorted(names), end),
            groups=store.reports.error_groups(tenant, fingerprints),
            period_end=end,
        )
    open_findings, reclaimed = store.reports.findings(tenant, start, end)
    return gather.savings(open_findings, reclaimed, integrations=names)


def _iso(moment: float, timezone: str) -> str:
    return datetime.fromtimestamp(moment, zone(timezone)).isoformat()


def render_context(tenant: str, report_type: str, period: Period, made: float) -> dict[str, Any]:
    """What the templates say besides the data: whose report, of which period, made when."""
    return {
        "tenant": tenant,
        "title": period.title,
        "timezone": period.timezone,
        "period_label": f"{_iso(period.start, period.timezone)[:16]} to "
        f"{_iso(period.end, period.timezone)[:16]}",
        "made": render.local(made, period.timezone),
        "report_key": f"{report_type}/{period.kind.value}/{period.first.isoformat()}",
    }


def render_files(report_type: str, data: dict[str, Any], context: dict[str, Any]) -> list[FileBody]:
    """The report's files (runs in a renderer process: see `rendered`)."""
    return render.FILES[report_type](data, context)


def save_report(
    store: RunStore,
    *,
    tenant: str,
    report_type: str,
    period: Period,
    data: dict[str, Any],
    run_id: str | None,
    public_url: str | None,
    made: float | None = None,
    resend: tuple[str, str] | None = None,
    files: list[FileBody] | None = None,
) -> tuple[Report, bool]:
    """Save the report's files (rendered here unless given); the report, and whether it is new
    (only a new one is published)."""
    if files is None:
        moment = store.clock.now() if made is None else made
        files = render_files(report_type, data, render_context(tenant, report_type, period, moment))
    return store.reports.save(
        tenant=tenant,
        report_type=report_type,
        period=period.kind.value,
        period_start=period.start,
        period_end=period.end,
        timezone=period.timezone,
        summary=_summary(report_type, data),
        files=files,
        run_id=run_id,
        public_url=public_url,
        resend=resend,
    )


def _die_with(parent: int) -> None:
    """A renderer dies with its worker (a SIGKILLed worker leaves none behind): the kernel
    kills it when its parent goes (PR_SET_PDEATHSIG, Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the worker died before the line above
            os._exit(1)


_renderers: ProcessPoolExecutor | None = None
_renderers_lock = threading.Lock()


async def rendered(
    report_type: str, data: dict[str, Any], context: dict[str, Any]
) -> list[FileBody]:
    """Render in a process of its own: templates over thousands of rows and a PDF are seconds
    of CPU, which in the worker's process would hold the GIL from its heartbeats and liveness
    probes (a worker that cannot confirm its liveness lock for 0.25 s stops its runs). A pool
    broken by a renderer that died (the OOM killer, say) is replaced, once per render."""
    loop = asyncio.get_running_loop()
    pool = _renderer_pool()
    try:
        return await loop.run_in_executor(pool, render_files, report_type, data, context)
    except BrokenProcessPool:
        pool = _renderer_pool(broken=pool)
        return await loop.run_in_executor(pool, render_files, report_type, data, context)


def _renderer_pool(broken: ProcessPoolExecutor | None = None) -> ProcessPoolExecutor:
    global _renderers
    with _renderers_lock:
        if _renderers is not None and _renderers is broken:
            _renderers.shutdown(wait=False, cancel_futures=True)
            _renderers = None
        if _renderers is None:
            _renderers = ProcessPoolExecutor(
                max_workers=RENDERERS,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_die_with,
                initargs=(os.getpid(),),
            )
        return _renderers


def _summary(report_type: str, data: dict[str, Any]) -> dict[str, Any]:
    if report_type == ReportType.HEALTH:
        return dict(data["totals"])
    return {
        "open_findings": data["open_findings"],
        "reclaimed": data["reclaimed"],
        "available": data["available"],
        "realized": data["realized"],
    }


def add_reports(app: App, *, queue: str = REPORTS_QUEUE) -> Workflow:
    """Declare the report workflow in an app (its workers, API and CLI then make reports)."""

    @step(name="reports.gather")
    async def gather_step(
        tenant: str, report_type: str, start: float, end: float
    ) -> dict[str, Any]:
        return await asyncio.to_thread(gather_data, app.store, tenant, report_type, start, end)

    @step(name="reports.store")
    async def store_step(
        tenant: str,
        report_type: str,
        period: Period,
        data: dict[str, Any],
        run_id: str,
        resend: tuple[str, str] | None,
    ) -> dict[str, Any]:
        context = render_context(tenant, report_type, period, app.store.clock.now())
        files = await rendered(report_type, data, context)
        report, created = await asyncio.to_thread(
            save_report,
            app.store,
            tenant=tenant,
            report_type=report_type,
            period=period,
            data=data,
            run_id=run_id,
            public_url=app.settings.public_url,
            resend=resend,
            files=files,
        )
        return {"report_id": report.id, "created": created, "files": [f.name for f in report.files]}

    @app.workflow(
        name=REPORT_WORKFLOW,
        queue=queue,
        retry=RetryPolicy(max_attempts=5, initial_delay=5.0, max_delay=300.0),
        timeout=1800,
    )
    async def report(
        ctx: RunContext,
        report_type: str,
        period: str = PeriodKind.WEEK.value,
        timezone: str = "UTC",
        at: str = "",
        resend_actor: str = "",
        resend_reason: str = "",
    ) -> dict[str, Any]:
        """`at`: an ISO time (a schedule's `{slot}`) in or after the period; none: when the
        run was made. `resend_actor` and `resend_reason`: an admin asked that the period's
        subscribers be told again even if it was made before (audited; greenroom reports run
        --force-resend)."""
        try:
            moment = datetime.fromisoformat(at).timestamp() if at else ctx.run.created_at
            span = period_of(report_type, period, timezone, moment)
        except (InvalidInput, ValueError) as exc:
            raise PermanentError(f"report input: {exc}") from None
        data = await gather_step(ctx.tenant, report_type, span.start, span.end)
        resend = (resend_actor, resend_reason) if resend_actor and resend_reason else None
        saved = await store_step(ctx.tenant, report_type, span, data, ctx.run_id, resend)
        ctx.log.info("report saved", report_id=saved["report_id"], created=saved["created"])
        return {**saved, "period_start": span.first.isoformat(), "period": span.kind.value}

    return report


def run_key(tenant: str, report_type: str, period: Period) -> str:
    """The idempotency key of a period's run made by hand (`greenroom reports run`)."""
    return f"report:{tenant}:{report_type}:{period.kind.value}:{period.first.isoformat()}"
