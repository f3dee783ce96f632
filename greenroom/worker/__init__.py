"""Workers: lease runs, execute them in isolation, heartbeat, recover stalled runs."""

from greenroom.worker.stats import WorkerStats
from greenroom.worker.worker import Worker

__all__ = ["Worker", "WorkerStats"]
