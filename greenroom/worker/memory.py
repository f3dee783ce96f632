"""Memory admission: a worker with a memory budget claims new runs only while there is room.

What counts is the worker process, its browsers, and its isolated runs' processes with their
browsers. A run is
assumed to need what the runs now executing need on average (or the configured estimate until
some have run), so a worker full of heavy pages admits fewer new runs than one of light pages.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from greenroom.browser.launch import browser_rss_by_owner, group_rss_bytes, process_rss_bytes

MB = 1024 * 1024
#: How long one measurement is trusted (scanning /proc costs a few milliseconds).
MEASURE_EVERY = 1.0


class MemoryAdmission:
    def __init__(
        self,
        budget_mb: int | None,
        per_run_mb: int,
        isolated: Callable[[], Iterable[int]],
    ) -> None:
        self.budget = None if budget_mb is None else budget_mb * MB
        self.per_run = max(per_run_mb * MB, 1)
        self._isolated = isolated
        self._base = process_rss_bytes(os.getpid())
        self._used = 0
        self._measured_at = -MEASURE_EVERY

    def used_bytes(self) -> int:
        """The worker's memory with its browsers and isolated runs (measured at most once a
        second)."""
        now = time.monotonic()
        if now - self._measured_at >= MEASURE_EVERY:
            self._measured_at = now
            browsers = browser_rss_by_owner()
            me = os.getpid()
            self._used = process_rss_bytes(me) + browsers.get(me, 0)
            for child in set(self._isolated()):  # each leads its own group; its browser not
                self._used += group_rss_bytes(child) + browsers.get(child, 0)
        return self._used

    def room(self, running: int) -> int:
        """How many more runs fit under the budget. An idle worker always admits one, so a
        budget below the worker's own size slows work down instead of stopping it."""
        if self.budget is None:
            raise ValueError("no memory budget")
        used = self.used_bytes()
        per_run = self.per_run
        if running:
            per_run = max(per_run, (used - self._base) // running)
        # Runs that just started may not have grown yet: count each at least at the estimate.
        expected = max(used, self._base + running * per_run)
        fits = max(0, (self.budget - expected) // per_run)
        return max(fits, 1) if running == 0 else fits
