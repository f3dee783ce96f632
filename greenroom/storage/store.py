"""The run store: its parts share one backend and one clock, and each consumer is given the
part it uses (the worker runs, the browser runtime sessions, the API's routers theirs)."""

from __future__ import annotations

from greenroom.clock import Clock, SystemClock
from greenroom.storage.accounts import Accounts
from greenroom.storage.admin import Admin
from greenroom.storage.backend import Backend
from greenroom.storage.controls import Controls
from greenroom.storage.deliveries import Deliveries
from greenroom.storage.dispatch import Dispatch
from greenroom.storage.events import Events
from greenroom.storage.findings import Findings
from greenroom.storage.license_pass import LicensePass
from greenroom.storage.license_upkeep import LicenseUpkeep
from greenroom.storage.licenses import Licenses
from greenroom.storage.repair import Repair
from greenroom.storage.reports import Reports
from greenroom.storage.runs import Runs
from greenroom.storage.schedules import Schedules
from greenroom.storage.sessions import Sessions
from greenroom.storage.subscriptions import Subscriptions
from greenroom.storage.watch import Watch


class RunStore:
    """Runs and workers (`runs`), queue controls (`controls`), operators' retries, errors and
    audit (`admin`), browser sessions (`sessions`), tenants, keys and integrations
    (`accounts`), repairs (`repair`), what happened (`events`), and who hears of it
    (`subscriptions`, `deliveries`, and the workers' `dispatch` of them), schedules
    (`schedules`), the licenses integrations' syncs read (`licenses`), the
    `license_pass` that judges them (and its `license_upkeep`), the `findings` admins
    act on, the `reports` made for tenants, and what the console's live stream `watch`es."""

    def __init__(self, backend: Backend, clock: Clock | None = None) -> None:
        self.backend = backend
        self.clock = clock or SystemClock()
        self.runs = Runs(backend, self.clock)
        self.controls = Controls(backend, self.clock)
        self.admin = Admin(backend, self.clock)
        self.sessions = Sessions(backend, self.clock)
        self.accounts = Accounts(backend, self.clock)
        self.repair = Repair(backend, self.clock)
        self.events = Events(backend, self.clock)
        self.subscriptions = Subscriptions(backend, self.clock)
        self.deliveries = Deliveries(backend, self.clock)
        self.dispatch = Dispatch(backend, self.clock)
        self.schedules = Schedules(backend, self.clock)
        self.licenses = Licenses(backend, self.clock)
        self.license_pass = LicensePass(backend, self.clock)
        self.findings = Findings(backend, self.clock)
        self.license_upkeep = LicenseUpkeep(backend, self.clock)
        self.reports = Reports(backend, self.clock)
        self.watch = Watch(backend, self.clock)
