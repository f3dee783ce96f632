"""Browser pool gauges, read from this process's live pools when it is scraped: browsers,
contexts open and in use, and the browsers' resident memory (Linux; their process groups)."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from greenroom.browser.launch import group_rss_bytes
from greenroom.metrics import REGISTRY

if TYPE_CHECKING:
    from prometheus_client import Metric

    from greenroom.browser.pool import BrowserPool

_POOLS: weakref.WeakSet[BrowserPool] = weakref.WeakSet()


def track(pool: BrowserPool) -> None:
    """Report `pool` while it lives."""
    _POOLS.add(pool)


class BrowserCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        browsers = contexts = in_use = rss = 0
        for pool in list(_POOLS):
            pids = pool.browser_pids()
            live = pool.live_contexts()
            browsers += len(pids)
            contexts += len(live)
            in_use += sum(1 for entry in live if entry.users)
            rss += sum(group_rss_bytes(pid) for pid in pids)
        yield _gauge("greenroom_browsers", "Chromium processes running.", browsers)
        yield _gauge(
            "greenroom_browser_contexts", "Browser contexts open, in use or warm.", contexts
        )
        yield _gauge("greenroom_browser_contexts_in_use", "Browser contexts runs hold now.", in_use)
        yield _gauge(
            "greenroom_browser_memory_bytes",
            "Resident memory of the browsers' processes (Linux; 0 elsewhere).",
            rss,
        )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


REGISTRY.register(BrowserCollector())
