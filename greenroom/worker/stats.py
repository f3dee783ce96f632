"""What a worker counts: the runs it claimed, and how each of its runs ended."""

from __future__ import annotations

from dataclasses import dataclass

from greenroom.model import RunState


@dataclass
class WorkerStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    released: int = 0
    lost: int = 0
    recovered: int = 0
    paused: int = 0
    #: Runs failed (or repaired) because the database could not read their labels.
    quarantined: int = 0

    def count_end(self, state: RunState) -> None:
        """Count a run's end by the state it was written in."""
        if state is RunState.SUCCEEDED:
            self.succeeded += 1
        elif state is RunState.FAILED:
            self.failed += 1
        elif state is RunState.DELAYED:
            self.retried += 1
        elif state is RunState.CANCELLED:
            self.cancelled += 1
        elif state is RunState.QUEUED:
            self.released += 1
        elif state is RunState.PAUSED:
            self.paused += 1
        else:
            raise ValueError(f"a run does not end {state.value}")
