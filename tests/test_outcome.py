"""An isolated run's process reports its Outcome serialised: what the worker reads back must be
what a worker's own execution would have given it."""

from __future__ import annotations

from typing import Any

import pytest

from greenroom.errors import LeaseLost
from greenroom.model import RunState
from greenroom.worker import WorkerStats
from greenroom.worker.execute import Outcome, OutcomeKind


class _Unpicklable(Exception):
    """An exception the worker cannot rebuild (it holds a lambda)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.hook: Any = lambda: None


def _round_trip(outcome: Outcome) -> Outcome:
    return Outcome.loads(outcome.dumps())


def test_success_and_pause_come_back_as_they_went() -> None:
    done = Outcome(kind=OutcomeKind.SUCCEEDED, output='{"n": 1}', seconds=0.5, steps_executed=2)
    assert _round_trip(done) == done
    paused = Outcome(kind=OutcomeKind.PAUSED)
    assert _round_trip(paused) == paused


def test_a_lost_lease_keeps_its_exception() -> None:
    back = _round_trip(Outcome(kind=OutcomeKind.LOST, error=LeaseLost("run r: lease lost")))
    assert back.kind is OutcomeKind.LOST
    assert isinstance(back.error, LeaseLost) and str(back.error) == "run r: lease lost"


def test_a_failure_keeps_its_exception_step_and_description() -> None:
    try:
        raise ValueError("no row 42")
    except ValueError as exc:
        failed = Outcome.failed(exc, step="fetch", attempt=2)
    back = _round_trip(failed)
    assert back.kind is OutcomeKind.FAILED and back.failed_step == "fetch"
    assert isinstance(back.error, ValueError) and str(back.error) == "no row 42"
    assert back.description == failed.description
    assert back.description["attempt"] == 2 and "no row 42" in back.description["traceback"]


def test_a_failure_the_worker_cannot_rebuild_keeps_its_type_and_message() -> None:
    back = _round_trip(Outcome.failed(_Unpicklable("layout changed")))
    assert isinstance(back.error, RuntimeError)
    assert str(back.error) == "_Unpicklable: layout changed"
    assert back.description["type"] == "_Unpicklable"


@pytest.mark.parametrize(
    ("state", "counter"),
    [
        (RunState.SUCCEEDED, "succeeded"),
        (RunState.FAILED, "failed"),
        (RunState.DELAYED, "retried"),
        (RunState.CANCELLED, "cancelled"),
        (RunState.QUEUED, "released"),
        (RunState.PAUSED, "paused"),
    ],
)
def test_worker_stats_count_each_end(state: RunState, counter: str) -> None:
    stats = WorkerStats()
    stats.count_end(state)
    assert {name: n for name, n in vars(stats).items() if n} == {counter: 1}
