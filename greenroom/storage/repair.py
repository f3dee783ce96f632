"""Repairs: summaries that drifted from their runs (`greenroom doctor`), and runs stored before
greenroom.rules held, whose labels the database cannot read.

PostgreSQL's JSON functions refuse a NUL (`\\u0000`) or a lone surrogate in a document, so a
query that reads such a run's labels as JSON fails as a whole: a label filter, a label pause,
and the claim of every worker while a label pause exists (the claim checks the runs it leases
against the pauses). The store no longer takes such labels; this repairs runs stored before.
A caller that meets a data error (a claim, an API request) quarantines them and tries again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from greenroom.model import RunState
from greenroom.storage.backend import Row
from greenroom.storage.base import StoreBase, require_reason, retry_conflicts
from greenroom.storage.codec import dumps
from greenroom.storage.lifecycle import moves, summaries
from greenroom.storage.lifecycle.check import (
    Drift,
    check_summaries,
    drift_detail,
    repair_summaries,
)
from greenroom.storage.lifecycle.moves import Change
from greenroom.storage.lifecycle.states import Move

#: States in which a run waits to start: a quarantined one is failed rather than started.
_WAITING = (RunState.QUEUED, RunState.DELAYED, RunState.PAUSED)


@dataclass(frozen=True, kw_only=True)
class Quarantined:
    run_id: str
    tenant: str
    #: The run's state before; waiting runs are now failed, the others keep theirs.
    state: RunState
    #: Why, as the run's timeline says.
    reason: str


def _unreadable(text: str) -> bool:
    """What the database's JSON functions cannot read: a NUL or a lone surrogate."""
    if "\x00" in text:
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


class Repair(StoreBase):
    def summary_drift(self) -> list[Drift]:
        """Where the summaries the claim reads differ from the runs; none when sound."""
        with self.backend.transaction(write=False) as tx:
            return check_summaries(tx)

    @retry_conflicts
    def repair_summaries(self, *, actor: str, reason: str) -> list[Drift]:
        """Recompute the summaries from the runs (audited, when anything drifted); the drift
        it mended."""
        require_reason(reason)
        with self.backend.transaction() as tx:
            drift = check_summaries(tx)
            if drift:
                repair_summaries(tx, self.backend, self.clock.now())
                self._audit(
                    tx,
                    tenant=None,
                    actor=actor,
                    action="summaries.repair",
                    target="summaries",
                    reason=reason,
                    detail=drift_detail(drift),
                )
        return drift

    @retry_conflicts
    def quarantine_unreadable(self) -> list[Quarantined]:
        """Find runs whose labels the database cannot read; remove those labels (the original
        ones are kept in the run's timeline) and fail the runs that wait to start, with a
        reason that says so. The runs repaired; none when there are none."""
        backend = self.backend
        now = self.clock.now()
        out: list[Quarantined] = []
        with backend.transaction() as tx:
            # Such labels are stored as JSON escapes (the encoder escapes all non-ASCII text).
            found = tx.execute(
                "SELECT seq, tenant, session_key, labels FROM runs"
                " WHERE labels LIKE :escape ESCAPE '!' ORDER BY seq",
                {"escape": "%\\u%"},
            )
            bad = [r for r in found if _bad_keys(json.loads(r["labels"]))]
            if not bad:
                return []
            summaries.lock_lanes(tx, backend, bad)  # lock order: lanes, then runs
            rows = tx.execute(
                f"SELECT * FROM runs WHERE {backend.member('seq', 'seqs')}"
                f" ORDER BY seq {backend.for_update}",
                {"seqs": backend.list_param([r["seq"] for r in bad])},
            )
            failing: list[Change] = []
            for row in rows:
                fix = _quarantine(row)
                if fix is None:
                    continue
                if fix.to is RunState.FAILED:  # it waited to start: failed rather than started
                    failing.append(fix)
                else:
                    tx.execute(
                        "UPDATE runs SET labels = :labels, updated_at = :now WHERE seq = :seq",
                        {"labels": fix.values["labels"], "now": now, "seq": row["seq"]},
                    )
                    self._event(tx, row["id"], fix.to, fix.reason, at=now, detail=fix.detail)
                out.append(
                    Quarantined(
                        run_id=row["id"],
                        tenant=row["tenant"],
                        state=RunState(row["state"]),
                        reason=fix.reason,
                    )
                )
            moves.move(
                tx,
                backend,
                Move.QUARANTINE,
                failing,
                now,
                columns=[("labels", "text"), ("error", "text")],
                sets="labels = w.labels, error = w.error",
            )
        return out


def _quarantine(row: Row) -> Change | None:
    """What quarantine does to a run: its unreadable labels go (kept in the event's detail),
    and a run waiting to start fails; None for a run whose labels are readable."""
    labels: dict[str, Any] = json.loads(row["labels"])
    keys = _bad_keys(labels)
    if not keys:
        return None
    state = RunState(row["state"])
    reason = (
        f"quarantined: labels {', '.join(keys)} hold text the database cannot read"
        " (NUL or invalid Unicode); they were removed, the original labels are in"
        " this event's detail"
    )
    kept = dumps({k: v for k, v in labels.items() if repr(k) not in keys})
    values: dict[str, Any] = {"labels": kept, "error": None}
    if state in _WAITING:
        state = RunState.FAILED
        error = {"type": "UnreadableLabels", "message": reason, "class": "permanent"}
        values["error"] = dumps(error)
    return Change(row, state, reason, detail={"labels": row["labels"]}, values=values)


def _bad_keys(labels: dict[str, Any]) -> list[str]:
    """The keys (as repr, which shows what is wrong) of labels the database cannot read."""
    return [
        repr(k)
        for k, v in labels.items()
        if _unreadable(str(k)) or (isinstance(v, str) and _unreadable(v))
    ]
