"""The run lifecycle: declared moves only, in one place, as the docs draw them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from greenroom.model import NewRun, RunState
from greenroom.storage import RunStore
from greenroom.storage.lifecycle import moves
from greenroom.storage.lifecycle.moves import Change
from greenroom.storage.lifecycle.states import (
    TRANSITIONS,
    IllegalMove,
    Move,
    allows,
    check,
    diagram,
    effects,
)

ROOT = Path(__file__).resolve().parent.parent


def test_the_docs_draw_the_declared_table() -> None:
    text = (ROOT / "docs" / "durability.md").read_text()
    assert f"```mermaid\n{diagram()}\n```" in text


def test_every_state_is_reachable_and_finished_states_are_final() -> None:
    reached = {target for t in TRANSITIONS for target in t.targets}
    assert reached == set(RunState)
    for t in TRANSITIONS:
        assert not any(s is not None and s.finished for s in t.sources), t


def test_moves_say_what_they_do_to_the_summaries() -> None:
    assert "lease cleared" in " ".join(effects(Move.END, RunState.RUNNING, RunState.SUCCEEDED))
    ready = effects(Move.RELEASE, RunState.PAUSED, RunState.QUEUED)
    assert any("notified" in e for e in ready)
    assert not any("lease" in e for e in effects(Move.CANCEL, RunState.DELAYED, RunState.CANCELLED))


@pytest.mark.parametrize(
    ("move", "source", "target"),
    [
        (Move.END, RunState.QUEUED, RunState.SUCCEEDED),
        (Move.CANCEL, RunState.RUNNING, RunState.CANCELLED),
        (Move.CANCEL, RunState.SUCCEEDED, RunState.CANCELLED),
        (Move.RELEASE, RunState.PAUSED, RunState.RUNNING),
        (Move.ENQUEUE, None, RunState.RUNNING),
        (Move.CLAIM, RunState.DELAYED, RunState.RUNNING),
    ],
)
def test_undeclared_moves_are_refused(
    move: Move, source: RunState | None, target: RunState
) -> None:
    assert not allows(move, source, target)
    with pytest.raises(IllegalMove, match=f"{move.value} cannot move a run from"):
        check(move, source, target)


def test_an_illegal_move_writes_nothing(store: RunStore) -> None:
    run, _ = store.runs.enqueue(NewRun(workflow="w", input={}, tenant="t"))
    (lease,) = store.runs.claim("w1", ["default"], 1, 30)
    b = store.backend
    refused = pytest.raises(IllegalMove, match="cancel cannot move a run from running to cancelled")
    with refused, b.transaction() as tx:
        row = tx.execute("SELECT * FROM runs WHERE id = :id", {"id": run.id})[0]
        moves.move(tx, b, Move.CANCEL, [Change(row, RunState.CANCELLED, "no")], 0.0)
    assert store.runs.get_run(run.id).state is RunState.RUNNING
    assert store.runs.finish(lease, RunState.SUCCEEDED, reason="done") is RunState.SUCCEEDED


def test_a_run_moved_since_it_was_read_is_not_moved_again(store: RunStore) -> None:
    """Moves apply only from the state the caller read: a lost race moves nothing."""
    run, _ = store.runs.enqueue(NewRun(workflow="w", input={}, tenant="t"))
    b = store.backend
    with b.transaction() as tx:
        stale = tx.execute("SELECT * FROM runs WHERE id = :id", {"id": run.id})[0]
    store.runs.claim("w1", ["default"], 1, 30)
    with b.transaction() as tx:
        moved = moves.move(tx, b, Move.HOLD, [Change(stale, RunState.PAUSED, "late")], 0.0)
    assert moved == []
    assert store.runs.get_run(run.id).state is RunState.RUNNING
    assert [e.reason for e in store.runs.events(run.id)] == ["enqueued", "leased"]


# Statements that write a run's state: an UPDATE of runs setting state (before its WHERE or
# FROM), or an INSERT into runs.
_STATE_WRITE = re.compile(
    r"UPDATE runs SET(?:(?!WHERE|FROM)[^;]){0,400}?(?<![\w.])state\s*=|INSERT INTO runs\b",
    re.IGNORECASE,
)


def test_only_the_lifecycle_writes_run_states() -> None:
    lifecycle = ROOT / "greenroom" / "storage" / "lifecycle"
    migrations = ROOT / "greenroom" / "storage" / "migrations"
    found = []
    for path in (ROOT / "greenroom").rglob("*.py"):
        if lifecycle in path.parents or migrations in path.parents:
            continue
        for match in _STATE_WRITE.finditer(path.read_text()):
            found.append(f"{path.relative_to(ROOT)}: {match.group(0)[:60]!r}")
    assert found == []


def test_the_state_write_check_finds_what_it_looks_for() -> None:
    assert _STATE_WRITE.search('"UPDATE runs SET labels = :l,"\n " state = \'failed\' WHERE x"')
    assert _STATE_WRITE.search("INSERT INTO runs (id) VALUES (1)")
    assert not _STATE_WRITE.search("UPDATE runs SET pause_requested = true WHERE state = 'running'")
    assert not _STATE_WRITE.search("UPDATE workers SET state = 'lost'")
