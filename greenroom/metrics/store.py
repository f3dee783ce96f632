"""Gauges read from the database when an API node is scraped: queue depth and oldest ready run
per queue, runs executing and stalled, live workers, and the delivery backlog.

One statement per scrape, run in a daemon thread and given up after the scrape timeout:
a scrape never hangs on the database and never fails because of it. While an earlier read is
still in flight, a scrape does not start another. A scrape without these gauges counts
greenroom_scrape_errors_total{source="store"}.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from greenroom.metrics import SCRAPE_ERRORS

if TYPE_CHECKING:
    from prometheus_client import Metric

    from greenroom.storage import RunStore

log = structlog.get_logger("greenroom.metrics")

#: Queues reported one by one, the deepest first; the rest add up under queue="_other".
MAX_QUEUES = 100
OTHER = "_other"
KINDS = ("ready", "running", "stalled", "workers", "deliveries")

SUMMARY_SQL = """
SELECT 'ready' AS kind, queue AS name, COUNT(*) AS n, MIN(available_at) AS oldest
  FROM runs WHERE state = 'queued' GROUP BY queue
UNION ALL
SELECT 'running', queue, COUNT(*), NULL FROM runs WHERE state = 'running' GROUP BY queue
UNION ALL
SELECT 'stalled', queue, COUNT(*), MIN(lease_expires_at)
  FROM runs WHERE state = 'running' AND lease_expires_at < :now GROUP BY queue
UNION ALL
SELECT 'workers', state, COUNT(*), NULL
  FROM workers WHERE state NOT IN ('stopped', 'dead') GROUP BY state
UNION ALL
SELECT 'deliveries', 'pending', COUNT(*), MIN(created_at) FROM deliveries WHERE state = 'pending'
"""


Read = tuple[float, list[dict[str, Any]]]


class StoreCollector(Collector):
    """Reads the store's summaries at scrape time. `store` opens the store (it may not have
    been opened yet: the database was down when the node started)."""

    def __init__(self, store: Callable[[], RunStore], timeout: float) -> None:
        self.store = store
        self.timeout = timeout
        self._busy = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        read = self._read()
        if read is None:
            SCRAPE_ERRORS.labels("store").inc()
            return
        now, rows = read
        yield from families(rows, now)

    def _read(self) -> Read | None:
        if not self._busy.acquire(blocking=False):
            return None  # the last read has not come back: do not pile more up behind it
        answer: queue.SimpleQueue[Read | BaseException] = queue.SimpleQueue()
        threading.Thread(
            target=self._query, args=(answer,), name="greenroom-metrics", daemon=True
        ).start()
        try:
            got = answer.get(timeout=self.timeout)
        except queue.Empty:
            got = TimeoutError(f"no answer within {self.timeout} s")
        if isinstance(got, BaseException):
            log.warning("metrics: database read failed", error=f"{type(got).__name__}: {got}")
            return None
        return got

    def _query(self, answer: queue.SimpleQueue[Read | BaseException]) -> None:
        try:
            store = self.store()
            now = store.clock.now()
            with store.backend.transaction(write=False) as tx:
                answer.put((now, tx.execute(SUMMARY_SQL, {"now": now})))
        except Exception as exc:
            answer.put(exc)
        finally:
            self._busy.release()


def families(rows: list[dict[str, Any]], now: float) -> list[Metric]:
    """The gauges of one summary read."""
    by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row)
    ready = _capped(by_kind["ready"])
    depth = GaugeMetricFamily(
        "greenroom_queue_ready_runs", "Runs ready to be claimed, per queue.", labels=["queue"]
    )
    age = GaugeMetricFamily(
        "greenroom_queue_oldest_ready_age_seconds",
        "How long the oldest ready run of the queue has been waiting (0: none waits).",
        labels=["queue"],
    )
    for name, n, oldest in ready:
        depth.add_metric([name], n)
        age.add_metric([name], max(0.0, now - oldest) if oldest is not None else 0.0)
    running = _per_queue(
        "greenroom_queue_running_runs", "Runs leased by a worker, per queue.", by_kind["running"]
    )
    stalled = _per_queue(
        "greenroom_queue_stalled_runs",
        "Running runs whose lease expired: their worker stopped renewing it, and recovery has"
        " not taken them back yet.",
        by_kind["stalled"],
    )
    workers = GaugeMetricFamily(
        "greenroom_workers", "Workers registered and not stopped, by state.", labels=["state"]
    )
    for row in by_kind["workers"]:
        workers.add_metric([row["name"]], row["n"])
    return [depth, age, running, stalled, workers, *_deliveries(by_kind, now)]


def _per_queue(name: str, doc: str, rows: list[dict[str, Any]]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=["queue"])
    for name, n, _ in _capped(rows):
        family.add_metric([name], n)
    return family


def _deliveries(by_kind: dict[str, list[dict[str, Any]]], now: float) -> list[Metric]:
    (row,) = by_kind["deliveries"] or [{"n": 0, "oldest": None}]
    pending = GaugeMetricFamily(
        "greenroom_deliveries_pending", "Event deliveries waiting to be sent (or sent again)."
    )
    pending.add_metric([], row["n"])
    oldest = row["oldest"]
    age = GaugeMetricFamily(
        "greenroom_deliveries_oldest_pending_age_seconds",
        "Age of the oldest delivery still pending (0: none pending).",
    )
    age.add_metric([], max(0.0, now - oldest) if oldest is not None else 0.0)
    return [pending, age]


def _capped(rows: list[dict[str, Any]]) -> list[tuple[str, int, float | None]]:
    """Per queue, the deepest MAX_QUEUES queues by name and the rest added up under _other:
    queues can be made at run time, and each is a series."""
    rows = sorted(rows, key=lambda r: (-r["n"], r["name"]))
    kept = [(r["name"], int(r["n"]), r["oldest"]) for r in rows[:MAX_QUEUES]]
    rest = rows[MAX_QUEUES:]
    if rest:
        oldest = [r["oldest"] for r in rest if r["oldest"] is not None]
        kept.append((OTHER, sum(int(r["n"]) for r in rest), min(oldest, default=None)))
    return kept
