"""What a new verdict does to a license's finding: the state machine behind "reported once".

Vendors report the same idle seat every day. Here a finding is opened once per episode (one idle
or underused spell, known by the verdict's `episode_start`) and events are emitted only on
transitions:

- nothing open + an actionable verdict: NOTIFIED with an event at medium confidence or above;
  CANDIDATE without one at low confidence (review only). A CANDIDATE whose confidence rises
  becomes NOTIFIED, with its event, once.
- a later episode (the user came back, then went idle again) or a different action (underused,
  then idle): the old finding closes and a new one opens, with a new event. An episode counts as
  later only when it starts after the open one, so a reopened finding (whose episode starts at the
  end of its hold) is not mistaken for a new one on the next pass.
- an ACTIVE or EXCLUDED verdict closes the finding silently, except an ACTIONED reclaim, which
  stays until the seat is gone at the source (deactivated, or no longer paid): `license.reclaimed`,
  and the finding is returned CLOSED rather than dropped. Passed back in, it keeps the next passes
  quiet while the source still lists the account as deactivated (a deactivated account with a
  paid tier is otherwise a reclaim, which would report the seat again); once the account is
  reactivated and paid again, it starts afresh.
  An ACTIONED downgrade ends once the verdict no longer recommends one: silently, or with a new
  finding when a reclaim is due instead.
- KEPT and SNOOZED hold, whatever the verdicts say, until `until`; then a still actionable
  license reopens as a new episode starting at `until`, with an event. KEPT with no `until`
  holds for ever.
- an UNKNOWN verdict (no fresh data) changes nothing: stale data must not close or open findings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from greenroom.licenses.activity import DAY
from greenroom.licenses.detect import (
    RECLAIMED_CODES,
    Action,
    Confidence,
    LicenseClass,
    Policy,
    Verdict,
)

IDLE_EVENT = "license.idle"
UNDERUSED_EVENT = "license.underused"
RECLAIMED_EVENT = "license.reclaimed"
_NOTIFY = frozenset({Confidence.HIGH, Confidence.MEDIUM})


class FindingState(StrEnum):
    CANDIDATE = "candidate"
    NOTIFIED = "notified"
    ACTIONED = "actioned"
    KEPT = "kept"
    SNOOZED = "snoozed"
    CLOSED = "closed"


@dataclass(frozen=True, kw_only=True)
class Finding:
    state: FindingState
    verdict_class: LicenseClass
    action: Action
    episode_start: float | None
    until: float | None = None  # when KEPT or SNOOZED ends
    opened_at: float


@dataclass(frozen=True, kw_only=True)
class Step:
    """What to store and say. `finding` None: nothing open, or the open finding closes silently;
    a reclaimed finding comes back CLOSED instead, to be passed in again (see `advance`)."""

    finding: Finding | None
    event: str | None = None
    new_episode: bool = False


def keep(finding: Finding, now: float, policy: Policy) -> Finding:
    """Someone decided to keep this license: hold it for the tenant's cooldown."""
    return replace(finding, state=FindingState.KEPT, until=now + policy.kept_days * DAY)


def advance(current: Finding | None, verdict: Verdict, now: float, policy: Policy) -> Step:
    """`current` is the license's open finding, or its CLOSED reclaimed one: a seat the source
    still lists as deactivated after it was reclaimed must not be reported again."""
    if verdict.cls is LicenseClass.UNKNOWN:
        return Step(finding=current)
    if current is not None and current.state is FindingState.CLOSED:
        return _reclaimed(current, verdict, now)
    if current is None:
        return _open(verdict, verdict.action, now) if verdict.action else Step(finding=None)
    if current.state in (FindingState.KEPT, FindingState.SNOOZED):
        return _held(current, verdict, now)
    if current.state is FindingState.ACTIONED:
        return _actioned(current, verdict, now)
    return _pending(current, verdict, now)


def _event(cls: LicenseClass) -> str:
    return UNDERUSED_EVENT if cls is LicenseClass.UNDERUSED else IDLE_EVENT


def _open(verdict: Verdict, action: Action, now: float, episode_start: float | None = None) -> Step:
    notify = verdict.confidence in _NOTIFY
    finding = Finding(
        state=FindingState.NOTIFIED if notify else FindingState.CANDIDATE,
        verdict_class=verdict.cls,
        action=action,
        episode_start=verdict.episode_start if episode_start is None else episode_start,
        opened_at=now,
    )
    return Step(finding=finding, event=_event(verdict.cls) if notify else None, new_episode=True)


def _held(current: Finding, verdict: Verdict, now: float) -> Step:
    """KEPT or SNOOZED: quiet until the hold ends, unless the seat is gone meanwhile."""
    if _gone(verdict):
        return _closed(current)
    if current.until is None or now < current.until:
        return Step(finding=current)
    if verdict.action is None:
        return Step(finding=None)
    start = current.until
    if verdict.episode_start is not None:
        start = max(start, verdict.episode_start)
    return _open(verdict, verdict.action, now, start)


def _gone(verdict: Verdict) -> bool:
    """The seat is gone: removed at the source, deactivated, or no longer paid."""
    return verdict.action is None and verdict.reason_code in RECLAIMED_CODES


def _closed(current: Finding) -> Step:
    """Someone reclaimed the seat: said once, and kept CLOSED (a seat the source still lists
    as gone is not reported again)."""
    closed = replace(current, state=FindingState.CLOSED, until=None)
    return Step(finding=closed, event=RECLAIMED_EVENT)


def _actioned(current: Finding, verdict: Verdict, now: float) -> Step:
    if verdict.reason_code in RECLAIMED_CODES:
        return _closed(current)
    if current.action is Action.DOWNGRADE and verdict.action is not Action.DOWNGRADE:
        return _open(verdict, verdict.action, now) if verdict.action else Step(finding=None)
    return Step(finding=current)


def _reclaimed(current: Finding, verdict: Verdict, now: float) -> Step:
    """Quiet while the source still says the seat is gone; anything else starts afresh."""
    if verdict.reason_code in RECLAIMED_CODES:
        return Step(finding=current)
    return _open(verdict, verdict.action, now) if verdict.action else Step(finding=None)


def _later_episode(current: Finding, verdict: Verdict) -> bool:
    if verdict.action is not current.action:
        return True
    if verdict.episode_start is None or current.episode_start is None:
        return False
    return verdict.episode_start > current.episode_start


def _pending(current: Finding, verdict: Verdict, now: float) -> Step:
    """CANDIDATE or NOTIFIED: waiting for someone to act."""
    if _gone(verdict):
        return _closed(current)
    if verdict.action is None:
        return Step(finding=None)
    if _later_episode(current, verdict):
        return _open(verdict, verdict.action, now)
    if current.state is FindingState.CANDIDATE and verdict.confidence in _NOTIFY:
        raised = replace(current, state=FindingState.NOTIFIED, verdict_class=verdict.cls)
        return Step(finding=raised, event=_event(verdict.cls))
    if current.verdict_class is not verdict.cls:
        return Step(finding=replace(current, verdict_class=verdict.cls))
    return Step(finding=current)
