"""The run store: its parts share one backend and one clock, and each consumer is given the
part it uses (the worker runs, the browser runtime sessions, the API's routers theirs)."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from greenroom.clock import Clock, SystemClock
from greenroom.storage.backend import Backend
from greenroom.storage.controls import Controls
from greenroom.storage.runs import Runs
from greenroom.storage.sessions import Sessions

if TYPE_CHECKING:
    from greenroom.storage.accounts import Accounts
    from greenroom.storage.admin import Admin
    from greenroom.storage.deliveries import Deliveries
    from greenroom.storage.dispatch import Dispatch
    from greenroom.storage.events import Events
    from greenroom.storage.findings import Findings
    from greenroom.storage.license_pass import LicensePass
    from greenroom.storage.license_upkeep import LicenseUpkeep
    from greenroom.storage.licenses import Licenses
    from greenroom.storage.repair import Repair
    from greenroom.storage.reports import Reports
    from greenroom.storage.schedules import Schedules
    from greenroom.storage.subscriptions import Subscriptions
    from greenroom.storage.watch import Watch


class RunStore:
    """Runs and workers (`runs`), queue controls (`controls`), operators' retries, errors and
    audit (`admin`), browser sessions (`sessions`), tenants, keys and integrations
    (`accounts`), repairs (`repair`), what happened (`events`), and who hears of it
    (`subscriptions`, `deliveries`, and the workers' `dispatch` of them), schedules
    (`schedules`), the licenses integrations' syncs read (`licenses`), the
    `license_pass` that judges them (and its `license_upkeep`), the `findings` admins
    act on, the `reports` made for tenants, and what the console's live stream `watch`es. All but
    what every worker uses are made (and their modules imported) when first used: a worker
    starts sooner."""

    def __init__(self, backend: Backend, clock: Clock | None = None) -> None:
        self.backend = backend
        self.clock = clock or SystemClock()
        self.runs = Runs(backend, self.clock)
        self.controls = Controls(backend, self.clock)
        self.sessions = Sessions(backend, self.clock)

    @cached_property
    def admin(self) -> Admin:
        from greenroom.storage.admin import Admin

        return Admin(self.backend, self.clock)

    @cached_property
    def accounts(self) -> Accounts:
        from greenroom.storage.accounts import Accounts

        return Accounts(self.backend, self.clock)

    @cached_property
    def repair(self) -> Repair:
        from greenroom.storage.repair import Repair

        return Repair(self.backend, self.clock)

    @cached_property
    def events(self) -> Events:
        from greenroom.storage.events import Events

        return Events(self.backend, self.clock)

    @cached_property
    def subscriptions(self) -> Subscriptions:
        from greenroom.storage.subscriptions import Subscriptions

        return Subscriptions(self.backend, self.clock)

    @cached_property
    def deliveries(self) -> Deliveries:
        from greenroom.storage.deliveries import Deliveries

        return Deliveries(self.backend, self.clock)

    @cached_property
    def dispatch(self) -> Dispatch:
        from greenroom.storage.dispatch import Dispatch

        return Dispatch(self.backend, self.clock)

    @cached_property
    def schedules(self) -> Schedules:
        from greenroom.storage.schedules import Schedules

        return Schedules(self.backend, self.clock)

    @cached_property
    def licenses(self) -> Licenses:
        from greenroom.storage.licenses import Licenses

        return Licenses(self.backend, self.clock)

    @cached_property
    def license_pass(self) -> LicensePass:
        from greenroom.storage.license_pass import LicensePass

        return LicensePass(self.backend, self.clock)

    @cached_property
    def findings(self) -> Findings:
        from greenroom.storage.findings import Findings

        return Findings(self.backend, self.clock)

    @cached_property
    def license_upkeep(self) -> LicenseUpkeep:
        from greenroom.storage.license_upkeep import LicenseUpkeep

        return LicenseUpkeep(self.backend, self.clock)

    @cached_property
    def reports(self) -> Reports:
        from greenroom.storage.reports import Reports

        return Reports(self.backend, self.clock)

    @cached_property
    def watch(self) -> Watch:
        from greenroom.storage.watch import Watch

        return Watch(self.backend, self.clock)
