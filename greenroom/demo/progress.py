"""What the demo shows: its runs' progress read from the database (steps, workers, resumes after
a kill) and the live Rich panel drawn from it.

The connector's first step logs in and every later step reads one page of users, so a run's
completed steps tell its page: steps - 1.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table

from greenroom.demo.driver import Fleet, WorkerProc
from greenroom.model import Run, RunEvent, RunState, StepRecord, StepStatus
from greenroom.storage import RunFilter, RunStore

SHOWN_STATES = (RunState.QUEUED, RunState.RUNNING, RunState.SUCCEEDED, RunState.FAILED)


@dataclass(frozen=True, kw_only=True)
class Resume:
    """A run that a worker picked up again after another worker lost it."""

    run_id: str
    org: str
    lost_by: str | None
    resumed_by: str | None
    resumed_at: float
    #: Steps checkpointed before it resumed: replayed from storage, not executed again.
    replayed: int


@dataclass
class Progress:
    runs: list[Run] = field(default_factory=list)
    done: dict[str, list[StepRecord]] = field(default_factory=dict)
    #: Worker id that finished each finished run.
    finished_by: dict[str, str | None] = field(default_factory=dict)
    resumes: dict[str, list[Resume]] = field(default_factory=dict)

    def org(self, run: Run) -> str:
        return str(run.input.get("org", "?"))

    def pages_done(self, run: Run) -> int:
        return max(0, len(self.done.get(run.id, [])) - 1)

    def users_read(self) -> int:
        """Users on the pages read so far (each page step returns its page's users)."""
        return sum(
            len(s.result.get("users", []))
            for steps in self.done.values()
            for s in steps[1:]
            if isinstance(s.result, dict)
        )

    def held_by(self, worker_id: str | None) -> list[Run]:
        return [
            r
            for r in self.runs
            if worker_id and r.state is RunState.RUNNING and r.lease_owner == worker_id
        ]


class Observer:
    """Reads one tenant's runs; finished runs are read once and then kept."""

    def __init__(self, store: RunStore, tenant: str, expected_runs: int) -> None:
        self.store = store
        self.tenant = tenant
        self.limit = expected_runs + 1
        self.progress = Progress()
        self._final: set[str] = set()

    def poll(self) -> Progress:
        p = self.progress
        p.runs = self.store.runs.list_runs(RunFilter(tenant=self.tenant, limit=self.limit))
        for run in p.runs:
            if run.id in self._final or run.started_at is None:
                continue
            p.done[run.id] = [
                s for s in self.store.runs.steps(run.id) if s.status is StepStatus.COMPLETED
            ]
            if run.stalls or run.attempt > 1 or run.state.finished:
                self._read_events(run)
            if run.state.finished:
                self._final.add(run.id)
        return p

    def _read_events(self, run: Run) -> None:
        events = self.store.runs.events(run.id)
        p = self.progress
        p.resumes[run.id] = resumes(run, events, p.done.get(run.id, []))
        if run.state.finished:
            starts = [e for e in events if e.state is RunState.RUNNING]
            p.finished_by[run.id] = starts[-1].worker_id if starts else None


def resumes(run: Run, events: list[RunEvent], done: list[StepRecord]) -> list[Resume]:
    """Each lease after the first (after a stall, a retry or a shutdown): who lost the run, who
    took it, how many checkpoints it found. A step is replayed when it finished before the
    lease that resumed the run."""
    found = []
    holder: str | None = None
    for event in events:
        if event.state is RunState.RUNNING:
            if holder is not None:
                found.append(
                    Resume(
                        run_id=run.id,
                        org=str(run.input.get("org", "?")),
                        lost_by=holder,
                        resumed_by=event.worker_id,
                        resumed_at=event.at,
                        replayed=sum(1 for s in done if s.finished_at <= event.at),
                    )
                )
            holder = event.worker_id
    return found


# -- the live panel ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Header:
    title: str
    pages_total: int
    users_total: int


def render(header: Header, p: Progress, fleet: Fleet, notes: list[tuple[float, str]]) -> Panel:
    counts = Counter(r.state for r in p.runs)
    states = "  ".join(f"{s.value} [bold]{counts.get(s, 0)}[/]" for s in SHOWN_STATES)
    pages = sum(p.pages_done(r) for r in p.runs)
    bar = ProgressBar(total=max(header.pages_total, 1), completed=pages, width=30)
    head = Table.grid(padding=(0, 2))
    head.add_row(
        f"runs: {states}",
        bar,
        f"pages {pages}/{header.pages_total} · users {p.users_read()}/{header.users_total}",
    )
    parts: list[RenderableType] = [head, workers_table(p, fleet)]
    if any(p.resumes.values()):
        parts.append(resumes_table(p, fleet))
    parts.append(notes_table(notes))
    return Panel(Group(*parts), title=header.title, title_align="left")


def name_of(fleet: Fleet, worker_id: str | None) -> str:
    wp = fleet.by_id(worker_id)
    return wp.name if wp else escape(worker_id or "?")


def worker_state(wp: WorkerProc) -> str:
    if wp.killed_at is not None:
        return "[red]SIGKILLed[/]"
    if not wp.running:
        return f"[dim]exited {wp.proc.returncode}[/]"
    return "[green]alive[/]" if wp.worker_id else "[yellow]starting[/]"


def workers_table(p: Progress, fleet: Fleet) -> Table:
    table = Table("WORKER", "PID", "STATE", "RUNNING (org: page done/total)", "SYNCED", expand=True)
    synced = Counter(w for run_id, w in p.finished_by.items() if _succeeded(p, run_id))
    for wp in fleet.procs:
        running = ", ".join(
            f"{escape(p.org(r))} {p.pages_done(r)}/{r.labels.get('pages', '?')}"
            for r in p.held_by(wp.worker_id)
        )
        table.add_row(
            wp.name, str(wp.pid), worker_state(wp), running, str(synced.get(wp.worker_id, 0))
        )
    return table


def _succeeded(p: Progress, run_id: str) -> bool:
    return any(r.id == run_id and r.state is RunState.SUCCEEDED for r in p.runs)


def resumes_table(p: Progress, fleet: Fleet) -> Table:
    table = Table("RESUMED RUN", "LOST BY", "RESUMED BY", "AT", "STEPS REPLAYED", expand=True)
    for found in p.resumes.values():
        for r in found:
            table.add_row(
                escape(r.org),
                name_of(fleet, r.lost_by),
                name_of(fleet, r.resumed_by),
                resumed_at_step(r),
                f"{r.replayed} (login included)" if r.replayed else "0",
            )
    return table


def resumed_at_step(r: Resume) -> str:
    """Login is step 1, page n is step n + 1: a run with k checkpoints goes on at page k."""
    return f"page {r.replayed}" if r.replayed else "login"


def notes_table(notes: list[tuple[float, str]]) -> Table:
    table = Table.grid(padding=(0, 1))
    for at, text in notes[-8:]:
        table.add_row(f"[dim]{at:6.1f}s[/]", text)
    return table


def clock_title(started: float, where: str) -> str:
    return f"greenroom demo · {time.monotonic() - started:.1f} s · {where}"
