"""Every move a run can make between states, and what each move does besides its state.

The table is the contract: `moves.move` and `lease.lease` refuse a move it does not declare, and
docs/durability.md's diagram is checked against it (tests/test_lifecycle.py). On PostgreSQL the
claim function `greenroom_claim` (migrations/sql/0019_claim.sql) makes the CLAIM move, and the
HOLD move of a run a pause caught while it was being claimed, in the same statement as the claim.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from greenroom.model import FINISHED_STATES, RunState

Q, D, R, P = RunState.QUEUED, RunState.DELAYED, RunState.RUNNING, RunState.PAUSED
S, F, C = RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED


#: The states of runs that have not ended, as an index's or a query's condition.
LIVE_WHERE = "state IN ('queued', 'delayed', 'running', 'paused')"


class IllegalMove(RuntimeError):
    """A move the table does not declare: a bug in greenroom, never a user's mistake."""


class Move(enum.StrEnum):
    ENQUEUE = "enqueue"
    CLAIM = "claim"
    HOLD = "hold"
    RELEASE = "release"
    PROMOTE = "promote"
    END = "end"
    STALL = "stall"
    CANCEL = "cancel"
    QUARANTINE = "quarantine"


@dataclass(frozen=True)
class Transition:
    move: Move
    #: None: a run that does not exist yet.
    sources: frozenset[RunState | None]
    targets: frozenset[RunState]
    #: Who makes the move, and why.
    why: str


def _t(move: Move, sources: set[RunState | None], targets: set[RunState], why: str) -> Transition:
    return Transition(move, frozenset(sources), frozenset(targets), why)


TRANSITIONS: tuple[Transition, ...] = (
    _t(Move.ENQUEUE, {None}, {Q, D, P}, "enqueue, admin retry: delayed until its time, "
       "paused while a pause holds it"),
    _t(Move.CLAIM, {Q}, {R}, "a worker's claim leases it"),
    _t(Move.HOLD, {Q}, {P}, "a pause holds it (or held it while it was being claimed)"),
    _t(Move.RELEASE, {P}, {Q}, "its last pause was lifted"),
    _t(Move.PROMOTE, {D}, {Q, P}, "its delay elapsed"),
    _t(Move.END, {R}, {S, F, C, D, Q, P}, "its worker ended the lease: a result, a final "
       "failure, a cancel, a retry after a delay, or handed back (shutdown, a pause)"),
    _t(Move.STALL, {R}, {Q, P, F, C}, "its lease expired or its worker was lost: ready again, "
       "or failed after max_stalls, or cancelled if a cancel was asked for"),
    _t(Move.CANCEL, {Q, D, P}, {C}, "an operator cancelled it before it started (a running "
       "run is asked to stop, and its worker ends it)"),
    _t(Move.QUARANTINE, {Q, D, P}, {F}, "its stored labels cannot be read (storage.repair)"),
)  # fmt: skip

#: The outbox event a move writes, by the state it moves a run to (docs/events.md). Subscribers
#: hear how runs end, and of runs that stalled or will be tried again; enqueues, claims, holds,
#: releases, promotions and hand-backs write none: they are the bulk of moves, and the drain
#: would pay for each (bench/README.md).
EVENTS: dict[tuple[Move, RunState], str] = {
    (Move.END, S): "run.succeeded",
    (Move.END, F): "run.failed",
    (Move.END, C): "run.cancelled",
    (Move.END, D): "run.retry_scheduled",
    (Move.STALL, Q): "run.stalled",
    (Move.STALL, P): "run.stalled",
    (Move.STALL, F): "run.failed",
    (Move.STALL, C): "run.cancelled",
    (Move.CANCEL, C): "run.cancelled",
    (Move.QUARANTINE, F): "run.failed",
}

_ALLOWED = {
    (t.move, source, target) for t in TRANSITIONS for source in t.sources for target in t.targets
}


def allows(move: Move, source: RunState | None, target: RunState) -> bool:
    return (move, source, target) in _ALLOWED


def check(move: Move, source: RunState | None, target: RunState) -> None:
    if not allows(move, source, target):
        begin = "a new run" if source is None else source.value
        raise IllegalMove(f"{move.value} cannot move a run from {begin} to {target.value}")


def effects(move: Move, source: RunState | None, target: RunState) -> list[str]:
    """What a move does besides setting the state, in the order it does it."""
    done = ["a timeline event (run_events) with the reason"]
    if source is RunState.RUNNING:
        done.append("lease cleared; its lane, queue and tenant slots given back")
    if move is Move.CLAIM:
        done.append(
            "leased (owner, token + 1, expiry); its lane counts it running and offers its next"
            " run; its tenant counts one ready run less and its turn moves on; it takes the"
            " queue's and tenant's slots where a limit is set, and a rate-limit start"
        )
    elif source is RunState.QUEUED:
        done.append("its lane offers its next run; its tenant counts one ready run less")
    if target is RunState.QUEUED:
        done.append("its lane is offered it; its tenant counts one ready run more; idle workers")
        done[-1] += " of its queue are notified"
    if source is RunState.RUNNING and target is RunState.DELAYED:
        done.append("attempt + 1; available at the retry time")
    if move is Move.STALL:
        done.append("stalls + 1")
    if target in FINISHED_STATES:
        done.append("finished_at set")
    if move is Move.END and target is RunState.FAILED:
        done.append("counted in its error group")
    if (move, target) in EVENTS:
        done.append(f"an outbox event ({EVENTS[move, target]}) in the same transaction")
    return done


def diagram() -> str:
    """The state diagram in Mermaid, as docs/durability.md shows it."""
    lines = ["stateDiagram-v2"]
    order = [None, Q, D, P, R, S, F, C]
    edges: dict[tuple[RunState | None, RunState], list[str]] = {}
    for t in TRANSITIONS:
        for source in t.sources:
            for target in t.targets:
                edges.setdefault((source, target), []).append(t.move.value)
    for (source, target), moves in sorted(
        edges.items(), key=lambda e: (order.index(e[0][0]), order.index(e[0][1]))
    ):
        begin = "[*]" if source is None else source.value
        lines.append(f"    {begin} --> {target.value}: {', '.join(moves)}")
    return "\n".join(lines)
