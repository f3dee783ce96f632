"""`greenroom demo`: real browser workflows end to end.

It serves the demo SaaS console, makes a tenant with one integration per demo organization (its
admin's credentials; the console's URL as the setting that says where they may go), enqueues one
`demo.sync_users` run per integration, starts `greenroom worker` processes with the example
connector (each with its own Chromium), shows their progress live and prints a summary. With
--chaos it SIGKILLs a worker while it holds a run past its login step: another worker resumes the
run from its last checkpoint with the saved browser session, so the demo SaaS counts no second
login.
"""

from __future__ import annotations

import base64
import importlib
import math
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.text import Text
from sqlalchemy.engine import make_url

from greenroom.app import App, RunRequest
from greenroom.browser.launch import FoundBrowser, find_browser
from greenroom.crypto import load_keyring
from greenroom.demo.driver import Fleet, Kill, WorkerProc
from greenroom.demo.licenses import LicenseReport, judge_licenses
from greenroom.demo.progress import Header, Observer, Progress, clock_title, render
from greenroom.demo.saas import DemoSaaS, org_slugs, organization, running_demo_saas
from greenroom.demo.setup import connect_org, register_tenant
from greenroom.demo.summary import Outcome, print_summary
from greenroom.errors import ConfigError, GreenroomError
from greenroom.settings import load_settings
from greenroom.storage import RunStore

CONNECTOR = "greenroom.demo.connector:app"
WORKFLOW = "demo.sync_users"
TICK = 0.2
START_SECONDS = 60.0


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    orgs: int = 5
    workers: int = 2
    chaos: bool = False
    db: str | None = None
    #: Users in every organization (default: each org's own size, 20 to 312).
    users_per_org: int | None = None
    #: Latency the demo SaaS adds to every page, so that progress can be watched.
    latency_ms: int = 100
    #: The app the workers load: a connector with a `demo.sync_users` of the same shape.
    app: str = CONNECTOR


@dataclass(frozen=True, kw_only=True)
class OrgPlan:
    slug: str
    users: int
    pages: int


def fresh_db(folder: Path, stem: str) -> str:
    """A SQLite file no earlier demo used, so their runs never mix in."""
    path, n = folder / f"{stem}.db", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.db"
    return f"sqlite:///{path}"


def load_connector(ref: str) -> App:
    """The connector, imported here too: enqueueing renders its session keys."""
    module, _, attr = ref.partition(":")
    app = getattr(importlib.import_module(module), attr, None)
    if not isinstance(app, App) or WORKFLOW not in app.workflows:
        raise ConfigError(f"{ref} is not a greenroom App with a {WORKFLOW!r} workflow")
    return app


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


class BrowserDemo:
    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.options = options
        self.console = console
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.url = options.db or fresh_db(Path(".greenroom"), f"demo-{stamp}")
        base = (
            Path(self.url.removeprefix("sqlite:///")).with_suffix("")
            if self.url.startswith("sqlite:///")
            else Path(".greenroom") / f"demo-{stamp}"
        )
        self.log_path = base.with_name(base.name + ".workers.log")
        self.tenant = f"demo-{stamp}-{os.getpid()}"
        self.settings = load_settings(db=self.url)
        if self.settings.secret_key is None and not self.url.startswith("sqlite:///"):
            # Credentials and browser sessions are encrypted; on a server database the demo and
            # its workers share a key made for this demo (SQLite keeps a key file beside it).
            key = base64.b64encode(os.urandom(32)).decode()
            self.settings = load_settings(db=self.url, secret_key=key)
        self.concurrency = math.ceil(options.orgs / options.workers)
        self.started = time.monotonic()
        self.notes: list[tuple[float, str]] = []
        self.plans: list[OrgPlan] = []
        self.kill: Kill | None = None
        self.fleet: Fleet | None = None
        self.observer: Observer | None = None
        self.saas: DemoSaaS | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        browser = find_browser(self.settings)
        connector = load_connector(self.options.app)
        self.note(f"browser: {escape(browser.path)} ({browser.source})")
        interrupted, logins = False, 0
        with stop_signals_interrupt(), ExitStack() as stack:
            self.saas = stack.enter_context(
                running_demo_saas(
                    orgs=self.options.orgs,
                    users_per_org=self.options.users_per_org,
                    latency_ms=self.options.latency_ms,
                    data_date=datetime.now(UTC).date(),
                )
            )
            self.note(f"demo SaaS console at {self.saas.url}")
            connector.close()
            connector.settings = self.settings  # enqueueing checks the integrations it names
            stack.callback(connector.close)
            store = connector.store
            self.fleet = Fleet(
                db=self.url,
                app=self.options.app,
                concurrency=self.concurrency,
                log_path=self.log_path,
                env=self.worker_env(),
            )
            stack.callback(self.fleet.close)
            self.observer = Observer(store, self.tenant, self.options.orgs)
            with Live(self.view(), console=self.console, auto_refresh=False) as live:
                try:
                    self.drive(live, store, connector)
                except KeyboardInterrupt:
                    interrupted = True
                    self.note("interrupted: stopping the workers")
                finally:
                    stopped = self.fleet.stop()
                    if stopped:
                        self.note(f"stopped {stopped} workers with SIGTERM")
                    self.observer.poll()
                    live.update(self.view(), refresh=True)
            stats = self.saas.stats()
            logins = sum(stats.get(p.slug, {}).get("logins", 0) for p in self.plans)
            licenses = None if interrupted else judge_licenses(store, self.tenant)
        return print_summary(self.console, self.outcome(browser, logins, interrupted, licenses))

    def worker_env(self) -> dict[str, str]:
        env = {"PYTHONUNBUFFERED": "1"}
        if "GREENROOM_SHUTDOWN_GRACE_SECONDS" not in os.environ:
            env["GREENROOM_SHUTDOWN_GRACE_SECONDS"] = "2"
        if self.settings.secret_key is not None:
            env["GREENROOM_SECRET_KEY"] = self.settings.secret_key.get_secret_value()
        return env

    def drive(self, live: Live, store: RunStore, connector: App) -> None:
        assert self.fleet is not None and self.observer is not None
        for _ in range(self.options.workers):
            self.fleet.start()
        self.wait_for_workers(live, store)
        self.enqueue(store, connector)
        deadline = time.monotonic() + 120 + 10 * self.options.orgs
        while time.monotonic() < deadline:
            progress = self.observer.poll()
            self.identify(store)
            self.check_workers()
            self.chaos(progress)
            live.update(self.view(), refresh=True)
            if progress.runs and all(r.state.finished for r in progress.runs):
                self.note("all runs finished")
                return
            time.sleep(TICK)
        self.note("[red]gave up waiting for the runs to finish[/]")

    def wait_for_workers(self, live: Live, store: RunStore) -> None:
        assert self.fleet is not None
        deadline = time.monotonic() + START_SECONDS
        while pending := [wp for wp in self.fleet.procs if wp.worker_id is None]:
            for wp in pending:
                if not wp.running:
                    raise GreenroomError(
                        f"worker {wp.name} exited at start-up (code {wp.proc.returncode}); "
                        f"see {self.log_path}"
                    )
            if time.monotonic() > deadline:
                raise GreenroomError(
                    f"workers did not start in {START_SECONDS:g} s; see {self.log_path}"
                )
            self.identify(store)
            live.update(self.view(), refresh=True)
            time.sleep(0.1)
        self.note(f"{len(self.fleet.procs)} workers up, {self.concurrency} runs at once each")

    def identify(self, store: RunStore) -> None:
        """Match worker processes to their rows in the workers table (same host and pid)."""
        assert self.fleet is not None
        if all(wp.worker_id for wp in self.fleet.procs):
            return
        host = socket.gethostname()
        ids = {w.pid: w.id for w in store.runs.workers() if w.host == host}
        for wp in self.fleet.procs:
            if wp.worker_id is None and wp.pid in ids:
                wp.worker_id = ids[wp.pid]

    def enqueue(self, store: RunStore, connector: App) -> None:
        assert self.saas is not None
        size = self.saas.config.page_size
        for slug in org_slugs(self.options.orgs):
            users = len(organization(slug, self.options.users_per_org).users)
            self.plans.append(OrgPlan(slug=slug, users=users, pages=math.ceil(users / size)))
        ring = load_keyring(self.settings)
        register_tenant(store, self.tenant)
        demo = connector.connector_of(WORKFLOW)
        requests = [
            RunRequest(
                workflow=WORKFLOW,
                input={"org": p.slug},
                tenant=self.tenant,
                idempotency_key=f"sync-{p.slug}",
                labels={"org": p.slug, "pages": str(p.pages)},
                integration=connect_org(
                    store, ring, demo, tenant=self.tenant, org=p.slug, base_url=self.saas.url
                ).id,
            )
            for p in self.plans
        ]
        self.note(f"{len(requests)} integrations with the console for tenant {self.tenant}")
        store.runs.enqueue_many([connector.prepare(r) for r in requests])
        pages = sum(p.pages for p in self.plans)
        self.note(f"enqueued {len(requests)} syncs of {pages} pages of users")

    def check_workers(self) -> None:
        """A worker that died on its own is reported; with none left, the demo cannot go on."""
        assert self.fleet is not None
        alive = [wp for wp in self.fleet.procs if wp.running]
        if not alive:
            raise GreenroomError(f"every worker exited; see {self.log_path}")

    # -- chaos -----------------------------------------------------------------------------

    def chaos(self, p: Progress) -> None:
        """Once, SIGKILL a worker whose runs are all past their login step, with a page read and
        two to go in at least one of them (the most such runs wins); then start a replacement,
        as a supervisor would. A run killed during its login would rightly sign in again."""
        if not self.options.chaos or self.kill is not None or self.fleet is None:
            return
        best: tuple[int, WorkerProc, list[str]] | None = None
        for wp in self.fleet.procs:
            held = p.held_by(wp.worker_id)
            if not wp.running or not held or any(not p.done.get(r.id) for r in held):
                continue
            mid = [
                r
                for r in held
                if p.pages_done(r) >= 1 and p.pages_done(r) + 2 <= int(r.labels.get("pages", 0))
            ]
            if mid and (best is None or len(mid) > best[0]):
                where = [f"{p.org(r)} at page {p.pages_done(r)}/{r.labels['pages']}" for r in held]
                best = (len(mid), wp, where)
        if best is None:
            return
        _, victim, where = best
        at = self.fleet.kill(victim)
        what = ", ".join(where)
        self.note(f"[red]SIGKILL[/] {victim.name} (pid {victim.pid}) holding {escape(what)}")
        new = self.fleet.start()
        self.note(f"{new.name} started to replace {victim.name}")
        self.kill = Kill(victim=victim, at=at, held=what, replacement=new)

    # -- display ---------------------------------------------------------------------------

    def note(self, text: str) -> None:
        self.notes.append((time.monotonic() - self.started, text))

    @property
    def shown_url(self) -> str:
        return escape(make_url(self.url).render_as_string(hide_password=True))

    def view(self) -> RenderableType:
        if self.fleet is None or self.observer is None:
            return Text("starting the demo SaaS and the workers…")
        header = Header(
            title=clock_title(self.started, self.shown_url),
            pages_total=sum(p.pages for p in self.plans),
            users_total=sum(p.users for p in self.plans),
        )
        return render(header, self.observer.progress, self.fleet, self.notes)

    def outcome(
        self,
        browser: FoundBrowser,
        logins: int,
        interrupted: bool,
        licenses: LicenseReport | None,
    ) -> Outcome:
        assert self.fleet is not None and self.observer is not None
        return Outcome(
            progress=self.observer.progress,
            fleet=self.fleet,
            orgs=self.options.orgs,
            expected_users=sum(p.users for p in self.plans),
            logins=logins,
            kill=self.kill,
            chaos=self.options.chaos,
            interrupted=interrupted,
            licenses=licenses,
            seconds=time.monotonic() - self.started,
            browser=browser,
            db=self.shown_url,
            log_path=self.log_path,
        )


def run_demo(options: DemoOptions, *, console: Console | None = None) -> int:
    """Run the demo; exit code 0 when every run succeeded (130 when interrupted)."""
    return BrowserDemo(options, console or Console()).run()
