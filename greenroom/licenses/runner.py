"""The license loop every worker runs beside its runs: judge the licenses that are due, and now
and then look after stale data, baselines and digests.

Nothing is elected: a batch locks the licenses it judges (others skip them), so loops on many
workers share the work and any of them can stop or die without losing any (its transaction rolls
back; the licenses stay due). A sync's changes make licenses due at once, so a finding follows
its sync within `license_pass_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import structlog

from greenroom.metrics import LICENSE_PASS, LICENSES_JUDGED
from greenroom.storage.license_pass import BATCH, Judged
from greenroom.storage.threads import StoreThreads

if TYPE_CHECKING:
    from greenroom.settings import Settings
    from greenroom.storage import RunStore

log = structlog.get_logger("greenroom.licenses")


class LicenseLoop:
    def __init__(self, store: RunStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._stopping = asyncio.Event()
        self._db = StoreThreads(1, "licenses")

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        upkeep_at = 0.0
        while not self._stopping.is_set():
            try:
                if loop.time() >= upkeep_at:
                    await self._db(self.upkeep)
                    upkeep_at = loop.time() + self.settings.license_upkeep_seconds
                await self.judge()
            except Exception as exc:  # the next round tries again; a worker never dies of it
                log.warning("license pass failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), timeout=self.settings.license_pass_seconds
                )

    async def judge(self) -> None:
        """Judge batches until none is full (or the worker stops)."""
        started = time.monotonic()
        while not self._stopping.is_set():
            batch = await self._db(self.store.license_pass.judge_due)
            LICENSES_JUDGED.inc(batch.licenses)
            if batch.events:
                log.info("licenses judged", licenses=batch.licenses, events=batch.events)
            if batch.licenses < BATCH:
                break
        LICENSE_PASS.observe(time.monotonic() - started)

    def upkeep(self) -> None:
        done = upkeep(self.store)
        if any(done.values()):
            log.info("license upkeep", **done)


def upkeep(store: RunStore) -> dict[str, int]:
    """The loop's upkeep, once: integrations gone stale, baselines learned again, seats
    unassigned and the day's digests; how many of each."""
    kept = store.license_upkeep
    return {
        "stale": kept.mark_stale(),
        "baselines": kept.relearn_baselines(),
        "seats": kept.unassigned_seats(),
        "digests": kept.digest(),
    }


def judge_all(store: RunStore) -> Judged:
    """Judge every due license now, batch after batch (the command line and the demo)."""
    judged = Judged()
    while True:
        batch = store.license_pass.judge_due()
        judged.add(batch)
        if batch.licenses < BATCH:
            return judged
