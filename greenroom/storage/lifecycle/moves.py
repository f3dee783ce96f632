"""The one place that changes the state of existing runs (`lease` claims, `enqueue` inserts).

Callers decide which runs move where, read them under lock, and call `move`: it checks each move
against the table (`states`), writes the new states in one statement, and applies what every
move does: lease columns reset, slots given back, summaries moved, a timeline event, the
outbox event the table declares (`states.EVENTS`), and a notification for runs that became
ready.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from greenroom.model import FINISHED_STATES, RunState
from greenroom.storage.backend import Backend, Column, Row, Tx
from greenroom.storage.base import ROWS_CHUNK, event_params, insert_events
from greenroom.storage.lifecycle import summaries
from greenroom.storage.lifecycle.states import EVENTS, Move, allows, check
from greenroom.storage.outbox import NewEvent, emit

#: What a moved run's row returns: what the summaries, pauses, error groups and events read.
RETURNED = ", ".join(
    f"runs.{c}"
    for c in (
        "id",
        "seq",
        "state",
        "tenant",
        "workflow",
        "queue",
        "session_key",
        "priority",
        "labels",
        "trace_parent",
    )
)
_FINISHED = ", ".join(f"'{s.value}'" for s in sorted(FINISHED_STATES))


@dataclass(frozen=True)
class Change:
    """One run's move: `row` is the run as read under lock before it (its seq, id, state,
    tenant, queue, session key, and for a running run the slots it holds)."""

    row: Row
    to: RunState
    reason: str
    worker_id: str | None = None
    detail: dict[str, Any] | None = None
    #: The values of the move's own columns (`move`'s `columns`).
    values: dict[str, Any] = field(default_factory=dict)


def move(
    tx: Tx,
    backend: Backend,
    kind: Move,
    changes: Sequence[Change],
    now: float,
    *,
    columns: Sequence[Column] = (),
    sets: str = "",
) -> list[Row]:
    """Move these runs, each to its target; the moved rows as they are now. A run moved to
    `queued` that a pause holds is `paused` instead, where the table allows. `sets` are the
    move's own assignments (SQL reading `w.<column>` for `columns`)."""
    for c in changes:
        check(kind, RunState(c.row["state"]), c.to)
    by_seq = {c.row["seq"]: c for c in changes}
    rows: list[Row] = []
    for start in range(0, len(changes), ROWS_CHUNK):
        rows += _update(tx, changes[start : start + ROWS_CHUNK], now, columns, sets)
    moved = {r["seq"]: r for r in rows}
    holdable = [
        r
        for r in rows
        if r["state"] == RunState.QUEUED.value
        and allows(kind, RunState(by_seq[r["seq"]].row["state"]), RunState.PAUSED)
    ]
    if holdable and holdable[0]["pauses"]:
        moved.update((r["seq"], r) for r in hold_paused(tx, backend, holdable))
    insert_events(
        tx,
        [
            event_params(r["id"], RunState(r["state"]), c.reason, now, c.worker_id, c.detail)
            for c in changes
            if (r := moved.get(c.row["seq"])) is not None
        ],
    )
    _emit(tx, backend, kind, [(by_seq[seq], r) for seq, r in moved.items()], now)
    before = [by_seq[seq].row for seq in moved]
    summaries.leave_running(tx, [r for r in before if r["state"] == RunState.RUNNING.value])
    summaries.leave_ready(tx, [r for r in before if r["state"] == RunState.QUEUED.value])
    summaries.enter_ready(
        tx, backend, [r for r in moved.values() if r["state"] == RunState.QUEUED.value]
    )
    return [moved[c.row["seq"]] for c in changes if c.row["seq"] in moved]


def _emit(
    tx: Tx, backend: Backend, kind: Move, moved: Sequence[tuple[Change, Row]], now: float
) -> None:
    """The outbox events of these moved runs, where the table declares one."""
    events = []
    for change, row in moved:
        state = RunState(row["state"])
        if (kind, state) in EVENTS:
            payload = {
                "run_id": row["id"],
                "workflow": row["workflow"],
                "queue": row["queue"],
                "state": state.value,
                "reason": change.reason,
                "detail": change.detail,
                "labels": _labels(row["labels"]),
            }
            event = EVENTS[kind, state]
            subject = f"run:{row['id']}"
            events.append(NewEvent(row["tenant"], event, subject, payload, row["trace_parent"]))
    emit(tx, backend, events, now)


def _labels(text: str) -> dict[str, Any]:
    """A run's labels for its events (subscriptions filter on them); none if unreadable (a
    quarantined run's)."""
    try:
        labels = json.loads(text)
    except ValueError:
        return {}
    return labels if isinstance(labels, dict) else {}


def _update(
    tx: Tx, changes: Sequence[Change], now: float, columns: Sequence[Column], sets: str
) -> list[Row]:
    params: dict[str, Any] = {"now": now}
    names = ", ".join(["seq", "source", "target", *(name for name, _ in columns)])
    source = tx.rows(
        [("seq", "bigint"), ("source", "text"), ("target", "text"), *columns],
        [
            {"seq": c.row["seq"], "source": c.row["state"], "target": c.to.value, **c.values}
            for c in changes
        ],
        params,
    )
    return tx.execute(
        f"WITH w({names}) AS ({source}) UPDATE runs SET state = w.target, updated_at = :now,"
        f" finished_at = CASE WHEN w.target IN ({_FINISHED}) THEN :now ELSE runs.finished_at"
        f" END, {summaries.CLEAR_LEASE}{', ' + sets if sets else ''}"
        " FROM w WHERE runs.seq = w.seq AND runs.state = w.source"
        # Whether any pause exists, in the same round trip (there rarely is one).
        f" RETURNING {RETURNED}, (SELECT COUNT(*) FROM pauses) AS pauses",
        params,
    )


def hold_paused(tx: Tx, backend: Backend, rows: Sequence[Row]) -> list[Row]:
    """Of these runs about to be ready (new, leased or handed back), those a pause holds, made
    `paused` in one statement; as rows in their new state."""
    pauses = summaries.load_pauses(tx)
    held = [r for r in rows if pauses and summaries.waiting_state(r, pauses) is RunState.PAUSED]
    if held:
        tx.execute(
            f"UPDATE runs SET state = 'paused', {summaries.CLEAR_LEASE}"
            f" WHERE {backend.member('seq', 'seqs')}",
            {"seqs": backend.list_param([r["seq"] for r in held])},
        )
    return [{**r, "state": RunState.PAUSED.value} for r in held]
