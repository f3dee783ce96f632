"""The scheduler loop every worker runs beside its runs: fire the schedules that are due.

Nothing is elected: each round locks the due schedules it takes (others skip them) and fires
them in one transaction, so schedulers racing fire every slot once, and any of them can stop or
die without leaving a slot behind (its transaction rolls back; the next round takes it).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

from greenroom.errors import GreenroomError
from greenroom.metrics import SCHEDULE_LAG
from greenroom.schedules import service
from greenroom.storage.schedule_plans import Fired
from greenroom.storage.threads import StoreThreads

if TYPE_CHECKING:
    from greenroom.app import App

log = structlog.get_logger("greenroom.schedules")

#: Schedules fired in one transaction, at most.
BATCH = 200
PRUNE_EVERY_SECONDS = 600.0


class Scheduler:
    def __init__(self, app: App) -> None:
        self.app = app
        self.settings = app.settings
        self._stopping = asyncio.Event()
        self._db = StoreThreads(1, "schedules")
        self._prepare = service.preparer(app)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        try:
            await self._sync()
            pruned_at = asyncio.get_running_loop().time()
            while not self._stopping.is_set():
                fired = await self._round()
                # A full batch taken: more may be due now (skips and misses make no runs).
                if fired.taken < BATCH:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._stopping.wait(), timeout=self.settings.poll_seconds
                        )
                if asyncio.get_running_loop().time() - pruned_at > PRUNE_EVERY_SECONDS:
                    pruned_at = asyncio.get_running_loop().time()
                    await self._prune()
        finally:
            self._db.shutdown(wait=False)

    async def _sync(self) -> None:
        try:
            await self._db(service.sync_declared, self.app)
        except Exception as exc:
            log.warning("could not make the schedules workflows declare", error=str(exc))

    async def _round(self) -> Fired:
        store = self.app.store
        try:
            fired = await self._db(store.schedules.fire_due, self._prepare, limit=BATCH)
        except Exception as exc:
            log.warning("firing schedules failed; trying again", error=str(exc))
            return Fired()
        for lag in fired.lags:
            SCHEDULE_LAG.observe(max(0.0, lag))
        for schedule_id in fired.paused:
            log.warning("schedule paused: its runs cannot be made", schedule_id=schedule_id)
        for run_id in fired.cancel:
            with contextlib.suppress(GreenroomError):  # it ended meanwhile
                await self._db(
                    store.runs.cancel,
                    run_id,
                    actor="schedule",
                    reason="its schedule fired again (overlap cancel_other)",
                )
        return fired

    async def _prune(self) -> None:
        try:
            days = self.settings.schedule_firings_days
            await self._db(self.app.store.schedules.prune_firings, older_than=days * 86400)
        except Exception as exc:
            log.warning("pruning schedule firings failed", error=str(exc))
