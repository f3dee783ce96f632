"""The demo's closing summary: runs, steps executed and replayed, resumes after the kill,
logins counted by the demo SaaS against runs, users collected; and the exit code."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from greenroom.browser.launch import FoundBrowser
from greenroom.demo.driver import Fleet, Kill
from greenroom.demo.licenses import LicenseReport
from greenroom.demo.progress import Progress, Resume, name_of, resumed_at_step
from greenroom.hints import command
from greenroom.model import RunState


@dataclass(frozen=True, kw_only=True)
class Outcome:
    progress: Progress
    fleet: Fleet
    orgs: int
    expected_users: int
    #: Successful logins the demo SaaS counted for the demo's organizations.
    logins: int
    kill: Kill | None
    chaos: bool
    interrupted: bool
    #: The synced organizations' licenses, judged (None when interrupted).
    licenses: LicenseReport | None
    seconds: float
    browser: FoundBrowser
    db: str
    log_path: Path

    @property
    def succeeded(self) -> int:
        return sum(r.state is RunState.SUCCEEDED for r in self.progress.runs)

    @property
    def all_resumes(self) -> list[Resume]:
        return [r for found in self.progress.resumes.values() for r in found]

    @property
    def recoveries(self) -> list[Resume]:
        """Resumes of runs the killed worker held."""
        if self.kill is None or self.kill.victim.worker_id is None:
            return []
        return [r for r in self.all_resumes if r.lost_by == self.kill.victim.worker_id]

    @property
    def users(self) -> int:
        return sum(
            len(r.output.get("users", []))
            for r in self.progress.runs
            if r.state is RunState.SUCCEEDED and isinstance(r.output, dict)
        )

    @property
    def started_runs(self) -> int:
        """Runs that started: each needs one login, and a resumed one none."""
        return sum(1 for r in self.progress.runs if r.started_at is not None)

    @property
    def logins_saved(self) -> int:
        """Resumes after login that would have signed in again without the saved session."""
        past_login = sum(1 for r in self.all_resumes if r.replayed >= 1)
        return max(0, min(past_login, self.started_runs + past_login - self.logins))


def print_summary(console: Console, o: Outcome) -> int:
    """Print the summary table and the verdict; the demo's exit code."""
    p = o.progress
    counts = Counter(r.state for r in p.runs)
    failed = counts.get(RunState.FAILED, 0)
    grid = Table(title="greenroom demo: summary", show_header=False, title_justify="left")
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row(
        "runs",
        f"{o.succeeded} succeeded, {failed} failed, {len(p.runs) - o.succeeded - failed} other "
        f"(of {o.orgs} syncs, one per organization)",
    )
    grid.add_row("steps", steps_line(o))
    grid.add_row("workers", workers_line(o))
    if o.kill is not None:
        grid.add_row("recoveries", recoveries_line(o))
    grid.add_row("logins", logins_line(o))
    grid.add_row("users collected", f"{o.users} of {o.expected_users}")
    if o.licenses is not None:
        grid.add_row("licenses", licenses_line(o.licenses))
        for f in o.licenses.top:
            grid.add_row("", escape(f"{f.email}: {f.reason} ({money(f.monthly_savings)}/month)"))
    grid.add_row("browser", f"{escape(o.browser.path)} ({o.browser.source})")
    grid.add_row("wall time", f"{o.seconds:.1f} s")
    grid.add_row("database", escape(f"{o.db}  (try: {command('--db', o.db, 'runs', 'list')})"))
    grid.add_row("worker logs", escape(str(o.log_path)))
    console.print()
    console.print(grid)
    ok = o.succeeded == o.orgs and not o.interrupted
    console.print(verdict(o, ok), soft_wrap=True)
    return 0 if ok else (130 if o.interrupted else 1)


def steps_line(o: Outcome) -> str:
    done = sum(len(steps) for steps in o.progress.done.values())
    logins = sum(1 for steps in o.progress.done.values() if steps)
    replayed = sum(r.replayed for r in o.all_resumes)
    return (
        f"{done} executed and checkpointed ({logins} logins, {done - logins} pages); "
        f"{replayed} replayed from checkpoints on resume, not executed again"
    )


def workers_line(o: Outcome) -> str:
    line = f"{len(o.fleet.procs)} started"
    if o.kill is not None:
        k = o.kill
        line += (
            f"; {k.victim.name} SIGKILLed holding {escape(k.held)}, "
            f"{k.replacement.name} started to replace it"
        )
    elif o.chaos:
        line += "; none killed: no run was past its login step with pages to go"
    return line + "; all stopped at the end"


def recoveries_line(o: Outcome) -> str:
    assert o.kill is not None
    found = o.recoveries
    if not found:
        return "[red]none[/]: no run of the killed worker was resumed"
    kill_at = o.kill.at
    return "; ".join(
        f"{escape(r.org)} resumed by {name_of(o.fleet, r.resumed_by)} at "
        f"{resumed_at_step(r)}, {r.resumed_at - kill_at:.2f} s after the kill, "
        f"{r.replayed} steps replayed"
        for r in found
    )


def money(amount: float | None, currency: str = "USD") -> str:
    if amount is None:
        return "no price"
    return f"${amount:,.2f}" if currency == "USD" else f"{amount:,.2f} {currency}"


def licenses_line(report: LicenseReport) -> str:
    found = sum(report.by_verdict.values())
    if not found:
        return f"{report.licenses} judged, none to reclaim"
    kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in report.by_verdict.items())
    saves = ", ".join(money(v, c) for c, v in sorted(report.savings.items())) or "no price"
    return (
        f"{report.licenses} judged: {found} to act on ({kinds}); reclaiming them saves "
        f"{saves} a month. Most saved:"
    )


def logins_line(o: Outcome) -> str:
    runs = o.started_runs
    line = f"{o.logins} for {runs} runs (demo SaaS counter)"
    if o.logins_saved:
        line += (
            f": {o.logins_saved} saved, resumed runs reused their saved browser session "
            "instead of signing in again"
        )
    if o.logins > runs and not o.interrupted:
        line += f" [yellow]({o.logins - runs} more than runs)[/]"
    return line


def verdict(o: Outcome, ok: bool) -> str:
    if o.interrupted:
        return f"[yellow]Interrupted[/]: {o.succeeded} of {o.orgs} runs succeeded."
    if not ok:
        return f"[red]FAILED[/]: {o.succeeded} of {o.orgs} runs succeeded; see " + escape(
            command("--db", o.db, "runs", "list", "--state", "failed")
        )
    text = f"[green]OK[/]: all {o.succeeded} syncs succeeded, {o.users} users collected"
    found = o.recoveries
    if found:
        again = o.logins - o.started_runs
        how = "without logging in again" if again <= 0 else f"with {again} logins again"
        runs = "1 run" if len(found) == 1 else f"{len(found)} runs"
        text += (
            f"; {runs} of the killed worker resumed on another worker from the last "
            f"checkpoint {how}"
        )
    return text + "."
