"""Workers: lease runs, execute them in isolation, heartbeat, recover stalled runs."""

from greenroom.worker.worker import Worker, WorkerStats

__all__ = ["Worker", "WorkerStats"]
