"""The engine demo: an example app of multi-step workflows, and a driver that runs it on real
worker processes, SIGKILLs one of them mid-step and shows its runs resume elsewhere from their
last checkpoint.

Run it with `greenroom demo`. Workers run `greenroom worker --app greenroom.demo.engine:app`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from sqlalchemy.engine import make_url

from greenroom.app import App, RunRequest
from greenroom.context import RunContext
from greenroom.errors import GreenroomError
from greenroom.model import Run, RunState, StepRecord, StepStatus, WorkerInfo
from greenroom.storage import RunFilter, RunStore, open_store
from greenroom.workflow import step

# -- the example app -----------------------------------------------------------------------

app = App()

QUEUE = "demo"
TRACE_ENV = "GREENROOM_DEMO_TRACE"
PAGE_SECONDS = 0.35
USERS_PER_PAGE = 25
LICENSES = ("basic", "pro", "enterprise")


def _hash(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def trace(ctx: RunContext, label: str) -> None:
    """Record every real execution of a step, so the driver can prove none ran twice."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    line = json.dumps({"run": ctx.run_id, "step": label, "worker": ctx.worker_id}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one small O_APPEND write: atomic across processes
    finally:
        os.close(fd)


@step(name="login")
async def login(ctx: RunContext, org: str) -> dict[str, str]:
    trace(ctx, "login")
    await asyncio.sleep(0.3)
    return {"org": org, "session": f"{org}-{random.randrange(16**8):08x}"}


@step(name="load_users_page")
async def load_users_page(ctx: RunContext, org: str, page: int) -> list[dict[str, Any]]:
    trace(ctx, f"page {page}")
    await asyncio.sleep(PAGE_SECONDS * random.uniform(0.7, 1.3))  # a slow admin console
    users = []
    for i in range(USERS_PER_PAGE):
        n = _hash(org, page, i)
        users.append(
            {
                "email": f"user{page:02d}{i:02d}@{org}.example",
                "role": "admin" if n % 13 == 0 else "member",
                "license": LICENSES[n % 3],
                "last_login_days": n % 120,
            }
        )
    return users


@step(name="summarize")
async def summarize(ctx: RunContext, org: str, users: list[dict[str, Any]]) -> dict[str, Any]:
    trace(ctx, "summarize")
    await asyncio.sleep(0.1)
    idle = [u for u in users if u["last_login_days"] > 60]
    return {
        "org": org,
        "users": len(users),
        "admins": sum(u["role"] == "admin" for u in users),
        "idle_licenses": len(idle),
    }


@app.workflow(name="demo.sync_org", queue=QUEUE, session="{tenant}:{org}")
async def sync_org(ctx: RunContext, org: str, pages: int) -> dict[str, Any]:
    """Log into one org's admin console, read every page of users, summarize its licenses."""
    await login(ctx, org)
    users: list[dict[str, Any]] = []
    for page in range(1, pages + 1):
        users += await load_users_page(ctx, org, page)
    return await summarize(ctx, org, users)


# -- the driver ----------------------------------------------------------------------------

ORGS = ("acme", "globex", "initech", "umbrella", "hooli", "wonka", "stark", "tyrell")
FINISHED = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    runs: int = 24
    orgs: int = 6
    workers: int = 3
    chaos: bool = True
    db: str | None = None


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen[bytes]
    worker_id: str | None = None
    killed: bool = False

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Kill:
    victim: WorkerProc
    at: float
    replaced: bool = False


@dataclass(frozen=True, kw_only=True)
class Recovery:
    run: Run
    resumed_by: str
    resumed_at: float
    replayed: int
    total: int


@dataclass
class Snapshot:
    runs: list[Run]
    done: dict[str, list[StepRecord]]
    workers: dict[int, WorkerInfo] = field(default_factory=dict)


def plan(tenant: str, runs: int, orgs: int) -> list[RunRequest]:
    names = [ORGS[i] if i < len(ORGS) else f"org{i + 1}" for i in range(orgs)]
    out = []
    for i in range(runs):
        org, n = names[i % orgs], i // orgs + 1
        out.append(
            RunRequest(
                workflow=sync_org,
                input={"org": org, "pages": 5 + _hash(org, n) % 5},
                tenant=tenant,
                idempotency_key=f"{org}-{n}",
                labels={"org": org, "n": str(n)},
            )
        )
    return out


def total_steps(run: Run) -> int:
    return int(run.input["pages"]) + 2


def fresh_path(folder: Path, stem: str) -> Path:
    """A database file no earlier demo used, so their runs never mix in."""
    path, n = folder / f"{stem}.db", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.db"
    return path


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def label(run: Run) -> str:
    return f"{run.labels.get('org', '?')}#{run.labels.get('n', '?')}"


def read_trace(path: Path) -> list[tuple[str, str, str]]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["run"], r["step"], r["worker"]) for r in rows]


def reexecutions(executions: list[tuple[str, str, str]], killed: set[str]) -> tuple[int, int]:
    """(steps that ran again because they were in flight at a kill, steps run after checkpoint)."""
    last: dict[tuple[str, str], str] = {}  # (run, worker) -> last step that worker started
    by_step: dict[tuple[str, str], list[str]] = {}
    for run_id, step_label, worker in executions:
        last[(run_id, worker)] = step_label
        by_step.setdefault((run_id, step_label), []).append(worker)
    in_flight = after = 0
    for (run_id, step_label), workers in by_step.items():
        for worker in workers[:-1]:
            if worker in killed and last[(run_id, worker)] == step_label:
                in_flight += 1
            else:
                after += 1
    return in_flight, after


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo like Ctrl-C does: workers are stopped on the way out."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class Demo:
    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.options = options
        self.console = console
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.url = options.db or f"sqlite:///{fresh_path(Path('.greenroom'), f'demo-{stamp}')}"
        if self.url.startswith("sqlite:///"):
            base = Path(self.url.removeprefix("sqlite:///")).with_suffix("")
        else:
            base = Path(".greenroom") / f"demo-{stamp}"
        base.parent.mkdir(parents=True, exist_ok=True)
        self.trace_path = base.with_name(base.name + ".trace.jsonl")
        self.log_path = base.with_name(base.name + ".workers.log")
        self.tenant = f"demo-{stamp}-{os.getpid()}"
        self.concurrency = math.ceil(options.orgs / max(1, options.workers - 1))
        self.store: RunStore | None = None
        self.procs: list[WorkerProc] = []
        self.log_file: IO[bytes] | None = None
        self.kill: Kill | None = None
        self.recoveries: dict[str, Recovery] = {}
        self.final_steps: dict[str, list[StepRecord]] = {}
        self.notes: list[tuple[float, str]] = []
        self.started = time.monotonic()
        self.started_at = time.time()
        self.total = 0
        self.snap = Snapshot(runs=[], done={})

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        interrupted = False
        try:
            with stop_signals_interrupt():
                self.store = open_store(self.url)
                with Live(self.render(), console=self.console, auto_refresh=False) as live:
                    try:
                        self.drive(live)
                    except KeyboardInterrupt:
                        interrupted = True
                        self.note("interrupted: stopping the workers")
                    finally:
                        self.stop_workers()
                        live.update(self.render(), refresh=True)
                if self.store is not None:
                    self.snapshot()
                return self.summary(interrupted)
        finally:
            self.stop_workers()
            if self.log_file is not None:
                self.log_file.close()
            if self.store is not None:
                self.store.backend.close()

    def drive(self, live: Live) -> None:
        for _ in range(self.options.workers):
            self.start_worker()
        self.wait_for_workers(live)
        assert self.store is not None
        requests = plan(self.tenant, self.options.runs, self.options.orgs)
        runs = [run for run, _ in self.store.enqueue_many([app.prepare(r) for r in requests])]
        self.total = sum(total_steps(r) for r in runs)
        self.note(f"enqueued {len(runs)} runs over {self.options.orgs} orgs ({self.total} steps)")
        deadline = time.monotonic() + 60 + 5 * self.options.runs
        while time.monotonic() < deadline:
            self.snapshot()
            self.chaos()
            self.heal()
            live.update(self.render(), refresh=True)
            if self.snap.runs and all(r.state in FINISHED for r in self.snap.runs):
                self.note("all runs finished")
                return
            time.sleep(0.2)
        self.note("gave up waiting for the runs to finish")

    def start_worker(self, why: str = "") -> WorkerProc:
        if self.log_file is None:
            self.log_file = self.log_path.open("ab")
        cmd = [sys.executable, "-m", "greenroom.cli", "--db", self.url, "worker"]
        cmd += ["--app", "greenroom.demo.engine:app", "--queues", QUEUE]
        cmd += ["--concurrency", str(self.concurrency)]
        env = {**os.environ, TRACE_ENV: str(self.trace_path)}
        env.setdefault("GREENROOM_SHUTDOWN_GRACE_SECONDS", "1")
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the driver only; it stops the workers
        )
        wp = WorkerProc(name=f"W{len(self.procs) + 1}", proc=proc)
        self.procs.append(wp)
        self.note(f"{wp.name} started (pid {proc.pid}) {why}".rstrip())
        return wp

    def wait_for_workers(self, live: Live) -> None:
        deadline = time.monotonic() + 60
        while any(wp.worker_id is None for wp in self.procs):
            for wp in self.procs:
                if not wp.running:
                    raise GreenroomError(
                        f"worker {wp.name} exited at start-up (code {wp.proc.returncode}); "
                        f"see {self.log_path}"
                    )
            if time.monotonic() > deadline:
                raise GreenroomError(f"workers did not start within 60 s; see {self.log_path}")
            self.snapshot()
            live.update(self.render(), refresh=True)
            time.sleep(0.1)
        self.note(f"{len(self.procs)} workers up, concurrency {self.concurrency} each")

    def stop_workers(self) -> None:
        live = [wp for wp in self.procs if wp.running]
        for wp in live:
            with suppress(ProcessLookupError):
                wp.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        try:
            for wp in live:
                try:
                    wp.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    wp.proc.kill()
                    wp.proc.wait()
        finally:
            for wp in self.procs:  # interrupted while waiting: leave nothing behind
                if wp.running:
                    wp.proc.kill()
                    wp.proc.wait()
        if live:
            self.note(f"stopped {len(live)} workers with SIGTERM")

    @property
    def shown_url(self) -> str:
        return escape(make_url(self.url).render_as_string(hide_password=True))

    def note(self, text: str) -> None:
        self.notes.append((time.monotonic() - self.started, text))

    # -- observing -------------------------------------------------------------------------

    def snapshot(self) -> None:
        assert self.store is not None
        store = self.store
        runs = store.list_runs(RunFilter(tenant=self.tenant, limit=self.options.runs + 1))
        done: dict[str, list[StepRecord]] = {}
        for run in runs:
            if run.id in self.final_steps:
                done[run.id] = self.final_steps[run.id]
            elif run.started_at is not None:
                steps = [s for s in store.steps(run.id) if s.status is StepStatus.COMPLETED]
                done[run.id] = steps
                if run.state in FINISHED:
                    self.final_steps[run.id] = steps
        host = socket.gethostname()
        mine = {wp.proc.pid for wp in self.procs}
        workers = {
            w.pid: w
            for w in store.workers(include_gone=True)
            if w.host == host and w.pid in mine and w.started_at >= self.started_at - 1
        }
        for wp in self.procs:
            if wp.worker_id is None and wp.proc.pid in workers:
                wp.worker_id = workers[wp.proc.pid].id
        self.snap = Snapshot(runs=runs, done=done, workers=workers)
        self.track_recoveries()

    def track_recoveries(self) -> None:
        """A run the killed worker held is recovered once another worker leased it again."""
        if self.kill is None or self.store is None:
            return
        kill = self.kill
        for run in self.snap.runs:
            if run.stalls == 0 or run.id in self.recoveries:
                continue
            events = self.store.events(run.id)
            stalled = [e for e in events if e.reason.startswith("stalled") and e.at >= kill.at]
            if not stalled:
                continue
            resumed = [
                e
                for e in events
                if e.state is RunState.RUNNING and e.at >= stalled[0].at and e.worker_id
            ]
            if not resumed:
                continue
            steps = self.snap.done.get(run.id, [])
            self.recoveries[run.id] = Recovery(
                run=run,
                resumed_by=self.worker_name(resumed[0].worker_id),
                resumed_at=resumed[0].at,
                replayed=sum(1 for s in steps if s.finished_at <= kill.at),
                total=total_steps(run),
            )
            r = self.recoveries[run.id]
            self.note(
                f"{label(run)} resumed by {r.resumed_by} at step {r.replayed + 1}/{r.total} "
                f"({plural(r.replayed, 'step')} replayed), "
                f"{r.resumed_at - kill.at:.2f} s after the kill"
            )

    def worker_name(self, worker_id: str | None) -> str:
        for wp in self.procs:
            if wp.worker_id is not None and wp.worker_id == worker_id:
                return wp.name
        return worker_id or "?"

    def held_by(self, wp: WorkerProc) -> list[Run]:
        return [
            r
            for r in self.snap.runs
            if r.state is RunState.RUNNING and wp.worker_id and r.lease_owner == wp.worker_id
        ]

    # -- chaos -----------------------------------------------------------------------------

    def chaos(self) -> None:
        """Once 30% of the steps are done, SIGKILL the worker holding the most runs mid-way."""
        if not self.options.chaos or self.kill is not None or not self.total:
            return
        done = sum(len(s) for s in self.snap.done.values())
        if done < 0.3 * self.total:
            return
        candidates = []
        for wp in self.procs:
            if wp.running and not wp.killed:
                held = [r for r in self.held_by(wp) if self.snap.done.get(r.id)]
                if held:
                    candidates.append((len(held), wp, held))
        if not candidates:
            return
        _, victim, held = max(candidates, key=lambda c: c[0])
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait()
        victim.killed = True
        self.kill = Kill(victim=victim, at=time.time())
        where = ", ".join(
            f"{label(r)} at step {len(self.snap.done[r.id]) + 1}/{total_steps(r)}" for r in held
        )
        self.note(f"SIGKILL {victim.name} (pid {victim.proc.pid}) holding {where}")

    def heal(self) -> None:
        """Start a replacement once the killed worker's runs moved on (or nobody is left)."""
        kill = self.kill
        alive = [wp for wp in self.procs if wp.running]
        if kill is not None and not kill.replaced:
            settled = not self.held_by(kill.victim) and time.time() - kill.at > 1.0
            if settled or time.time() - kill.at > 3.0 or not alive:
                kill.replaced = True
                self.start_worker(f"to replace {kill.victim.name}")
            return
        if not alive and len(self.procs) < 2 * self.options.workers + 1:
            self.start_worker("because no worker was left running")

    # -- display ---------------------------------------------------------------------------

    def render(self) -> Panel:
        counts = Counter(r.state for r in self.snap.runs)
        done = sum(len(s) for s in self.snap.done.values())
        states = "  ".join(
            f"{state.value} [bold]{counts.get(state, 0)}[/]"
            for state in (RunState.QUEUED, RunState.RUNNING, RunState.SUCCEEDED, RunState.FAILED)
        )
        bar = ProgressBar(total=max(self.total, 1), completed=done, width=40)
        head = Table.grid(padding=(0, 2))
        head.add_row(f"runs: {states}", bar, f"steps {done}/{self.total}")
        return Panel(
            Group(head, self.render_workers(), self.render_recoveries(), self.render_notes()),
            title=f"greenroom demo · {time.monotonic() - self.started:.1f} s · {self.shown_url}",
            title_align="left",
        )

    def render_workers(self) -> Table:
        table = Table("WORKER", "PID", "STATE", "RUNNING (org#n at step)", expand=True)
        for wp in self.procs:
            if wp.killed:
                state = "[red]SIGKILLed[/]"
            elif not wp.running:
                state = f"[dim]exited {wp.proc.returncode}[/]"
            else:
                state = "[green]alive[/]" if wp.worker_id else "[yellow]starting[/]"
            running = ", ".join(
                f"{label(r)} {len(self.snap.done.get(r.id, [])) + 1}/{total_steps(r)}"
                for r in self.held_by(wp)
            )
            table.add_row(wp.name, str(wp.proc.pid), state, running)
        return table

    def render_recoveries(self) -> Table:
        table = Table(
            "RECOVERED RUN", "RESUMED BY", "FROM STEP", "REPLAYED", "TIME TO RECOVERY", expand=True
        )
        for r in self.recoveries.values():
            table.add_row(*self.recovery_row(r))
        return table

    def recovery_row(self, r: Recovery) -> tuple[str, str, str, str, str]:
        kill_at = self.kill.at if self.kill else r.resumed_at
        return (
            label(r.run),
            r.resumed_by,
            f"{r.replayed + 1}/{r.total}",
            plural(r.replayed, "step"),
            f"{r.resumed_at - kill_at:.2f} s",
        )

    def render_notes(self) -> Table:
        table = Table.grid(padding=(0, 1))
        for at, text in self.notes[-8:]:
            table.add_row(f"[dim]{at:6.1f}s[/]", text)
        return table

    # -- summary ---------------------------------------------------------------------------

    def summary(self, interrupted: bool) -> int:
        counts = Counter(r.state for r in self.snap.runs)
        succeeded = counts.get(RunState.SUCCEEDED, 0)
        mine = {r.id for r in self.snap.runs}
        executions = [e for e in read_trace(self.trace_path) if e[0] in mine]
        killed = {wp.worker_id for wp in self.procs if wp.killed and wp.worker_id}
        in_flight, after = reexecutions(executions, killed)
        checkpointed = sum(len(s) for s in self.snap.done.values())
        grid = Table(title="greenroom demo: summary", show_header=False, title_justify="left")
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row(
            "runs",
            f"{succeeded} succeeded, {counts.get(RunState.FAILED, 0)} failed, "
            f"{len(self.snap.runs) - succeeded - counts.get(RunState.FAILED, 0)} other "
            f"(of {self.options.runs})",
        )
        steps = f"{checkpointed} checkpointed, {len(executions)} executed"
        if self.kill is not None:
            steps += f": {in_flight} ran again because they were in flight at the kill"
        grid.add_row("steps", f"{steps}, {after} re-executed after a checkpoint")
        grid.add_row("workers", self.workers_line())
        if self.recoveries:
            grid.add_row("recovered runs", self.recoveries_line())
        grid.add_row("wall time", f"{time.monotonic() - self.started:.1f} s")
        url = self.shown_url
        grid.add_row("database", f"{url}  (try: greenroom --db {url} runs list)")
        grid.add_row("worker logs", str(self.log_path))
        self.console.print()
        self.console.print(grid)
        ok = succeeded == self.options.runs and after == 0 and not interrupted
        self.console.print(self.verdict(ok, succeeded, after, interrupted), soft_wrap=True)
        return 0 if ok else (130 if interrupted else 1)

    def recoveries_line(self) -> str:
        kill_at = self.kill.at if self.kill else 0.0
        times = [
            f"{t:.2f}" for t in sorted(r.resumed_at - kill_at for r in self.recoveries.values())
        ]
        span = times[0] if times[0] == times[-1] else f"{times[0]}-{times[-1]}"
        replayed = sum(r.replayed for r in self.recoveries.values())
        return (
            f"{len(self.recoveries)}, resumed {span} s after the kill, "
            f"{plural(replayed, 'step')} replayed from checkpoints"
        )

    def workers_line(self) -> str:
        started = len(self.procs)
        if self.kill is None:
            kill = "none killed" + ("" if self.options.chaos else " (--no-chaos)")
        else:
            kill = f"{self.kill.victim.name} SIGKILLed mid-step"
            if self.kill.replaced:
                kill += f", {self.procs[-1].name} started to replace it"
        return f"{started} started, {kill}, all stopped with SIGTERM at the end"

    def verdict(self, ok: bool, succeeded: int, after: int, interrupted: bool) -> str:
        if interrupted:
            return f"[yellow]Interrupted[/]: {succeeded} of {self.options.runs} runs succeeded."
        if not ok:
            return (
                f"[red]FAILED[/]: {succeeded} of {self.options.runs} runs succeeded, "
                f"{after} steps re-executed after a checkpoint."
            )
        text = f"[green]OK[/]: all {succeeded} runs succeeded"
        if self.recoveries:
            text += (
                f"; {len(self.recoveries)} runs of the killed worker resumed on another worker "
                "from their last checkpoint, no completed step executed again"
            )
        elif self.options.chaos:
            text += "; no run was mid-way when the worker was killed"
        return text + "."


def run_demo(options: DemoOptions, *, console: Console | None = None) -> int:
    """Run the demo; the exit code is 0 when every run succeeded and no step ran twice."""
    return Demo(options, console or Console()).run()
