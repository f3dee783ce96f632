"""Which licenses go unused, and how sure we are: the verdict for one license, from facts only.

Vendors flag a seat after a fixed number of idle days, and get noise: stale data counted as
inactivity, new hires flagged, every user of a monthly-use app reported. The rules, in order:

1. Freshness: with no fresh source the verdict is UNKNOWN, never IDLE; old data says nothing.
2. Hard facts: deactivated or suspended at the source or at the identity provider while holding a
   paid license is a reclaim with high confidence (with the price unknown, the other rules judge).
3. Exclusions, each with its reason code: a free tier ("unpaid"), service accounts, exempt users
   and roles (case-insensitive), and new licenses within the grace period.
4. Never used since it was assigned (after the grace period): reclaim.
5. Idle for at least T days: reclaim. T is learned per app (see `baseline`): how long this app's
   own users usually stay away, doubled, kept within 14..120 days; a tenant's fixed threshold wins.
6. Underused, when a cheaper paid tier exists: a premium tier unused for 90 days, or active on
   fewer than 30 % of the last 30 days: downgrade, at most medium confidence.
7. Otherwise active.

Confidence: high for hard facts, idle for 2T or more, or never used for twice the grace period;
medium at T with a learned or tenant threshold; low when T is the fallback (review only).

`episode_start` stays the same from pass to pass while nothing new happens, so the finding state
machine can tell "still the same idle spell" from "active, then idle again". For underuse it is the
first day of the current run of underused days (a day is underused when the 30 days ending on it
are under the share); this is stable while that day lies within the activity window.

`due_at` is when the verdict would change with no new data, so a pass can sleep until then.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from greenroom.licenses.activity import DAY, WINDOW_DAYS, Activity, day_of

RECENT_DAYS = 30
MIN_THRESHOLD_DAYS = 14
MAX_THRESHOLD_DAYS = 120
#: Reason codes that mean the seat is gone at the source (see `findings`: an actioned reclaim ends).
#: `removed_at_source`: a complete sync no longer lists the account (the pass's verdict).
RECLAIMED_CODES = frozenset(
    {"deactivated_at_source", "deactivated_at_idp", "unpaid", "removed_at_source"}
)
_INACTIVE = ("deactivated", "suspended")


class LicenseClass(StrEnum):
    NEVER_USED = "never_used"
    IDLE = "idle"
    UNDERUSED = "underused"
    ACTIVE = "active"
    EXCLUDED = "excluded"
    INACTIVE_AT_SOURCE = "inactive_at_source"
    UNKNOWN = "unknown"


class Action(StrEnum):
    RECLAIM = "reclaim"
    DOWNGRADE = "downgrade"


class Confidence(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass(frozen=True, kw_only=True)
class Account:
    """What detection reads of one license row."""

    user_id: str
    email: str | None
    role: str | None
    tier: str | None
    unit_cost: float | None  # per billing period, in `currency`
    currency: str | None  # ISO 4217, upper case
    billing_period: str  # "month" | "year"
    assigned_at: float | None  # None: unknown, first_seen_at is used
    first_seen_at: float
    status: str  # at the source: "active" | "suspended" | "deactivated"
    idp_status: str | None  # the same values, from an identity provider, if any
    last_active: float | None  # latest activity over the fresh sources
    activity: Activity
    service_account: bool
    renewal_at: float | None
    #: Listed by the integration's first sync: with no assignment date, when it began is
    #: unknown, and it is no new hire (no grace: an app connected today is judged today).
    listed_at_start: bool = False


@dataclass(frozen=True, kw_only=True)
class Policy:
    """A tenant's settings, optionally overridden per integration."""

    grace_days: int = 60
    threshold_days: int | None = None  # a fixed idle threshold: wins over the baseline
    exempt_roles: frozenset[str] = frozenset()  # compared case-insensitively
    exempt_users: frozenset[str] = frozenset()  # user ids or e-mail addresses, case-insensitive
    underuse_share: float = 0.30
    premium_idle_days: int = 90
    kept_days: int = 90
    min_users: int = 20
    fallback_days: int = 60


@dataclass(frozen=True, kw_only=True)
class Baseline:
    threshold_days: int  # T
    baseline_days: float | None  # B (None when the fallback was used)
    active_users: int  # users the baseline was computed from
    fallback: bool


@dataclass(frozen=True, kw_only=True)
class Tier:
    """What the cheapest paid alternative costs, for downgrades."""

    name: str
    unit_cost: float
    currency: str
    billing_period: str


@dataclass(frozen=True, kw_only=True)
class Verdict:
    cls: LicenseClass
    action: Action | None
    confidence: Confidence | None
    reason_code: str
    reason: str
    monthly_savings: float | None
    currency: str | None
    realizable_at: float | None
    episode_start: float | None
    due_at: float | None


def _p90(values: Sequence[float]) -> float:
    """Nearest-rank 90th percentile: always one of the values, so B is a gap someone really had."""
    ordered = sorted(values)
    return ordered[math.ceil(0.9 * len(ordered)) - 1]


def _recent_gaps(activity: Activity, today: int) -> list[int]:
    latest = activity.latest()
    if latest is None or latest <= today - RECENT_DAYS:
        return []
    return activity.gaps()


def baseline(activities: Iterable[Activity], today: int, policy: Policy) -> Baseline:
    """How long this app's users stay away: B = p90 over recently active users of each one's p90
    gap between active days, T = clamp(ceil(2B), 14, 120); too few users to learn from gives the
    fallback; a tenant's fixed threshold wins (B is still reported when it could be learned)."""
    per_user = [_p90(gaps) for activity in activities if (gaps := _recent_gaps(activity, today))]
    learned = len(per_user) >= policy.min_users
    b = float(_p90(per_user)) if learned else None
    if policy.threshold_days is not None:
        return Baseline(
            threshold_days=policy.threshold_days,
            baseline_days=b,
            active_users=len(per_user),
            fallback=False,
        )
    if b is None:
        return Baseline(
            threshold_days=policy.fallback_days,
            baseline_days=None,
            active_users=len(per_user),
            fallback=True,
        )
    t = min(max(math.ceil(2 * b), MIN_THRESHOLD_DAYS), MAX_THRESHOLD_DAYS)
    return Baseline(threshold_days=t, baseline_days=b, active_users=len(per_user), fallback=False)


def classify(
    account: Account,
    baseline: Baseline,
    policy: Policy,
    *,
    fresh: bool,
    cheaper: Tier | None,
    now: float,
) -> Verdict:
    """The first rule that applies decides (see the module docstring). `fresh`: some source of
    activity is recent enough to trust; `cheaper`: the cheapest paid alternative tier, if any."""
    if not fresh:
        return _quiet(LicenseClass.UNKNOWN, "no_fresh_data", "no fresh activity data to judge by")
    return (
        _hard_fact(account, now)
        or _excluded(account, policy, now)
        or _unused(account, baseline, policy, now)
        or _underused(account, baseline, policy, cheaper, now)
        or _active(account, baseline, policy, cheaper, now)
    )


# --- building verdicts


def _quiet(cls: LicenseClass, code: str, reason: str, due_at: float | None = None) -> Verdict:
    return Verdict(
        cls=cls,
        action=None,
        confidence=None,
        reason_code=code,
        reason=reason,
        monthly_savings=None,
        currency=None,
        realizable_at=None,
        episode_start=None,
        due_at=due_at,
    )


@dataclass(frozen=True, kw_only=True)
class _Grounds:
    """Why an action is recommended; money and timing are added by `_act`."""

    cls: LicenseClass
    confidence: Confidence
    code: str
    reason: str
    episode_start: float
    due_at: float | None


def _reclaim(account: Account, found: _Grounds, now: float) -> Verdict:
    savings = _monthly(account.unit_cost, account.billing_period)
    known = savings is not None and account.currency is not None
    return _act(found, Action.RECLAIM, savings if known else None, account, now)


def _downgrade(account: Account, cheaper: Tier, found: _Grounds, now: float) -> Verdict:
    return _act(found, Action.DOWNGRADE, _difference(account, cheaper), account, now)


def _act(
    found: _Grounds, action: Action, savings: float | None, account: Account, now: float
) -> Verdict:
    renewal = account.renewal_at
    return Verdict(
        cls=found.cls,
        action=action,
        confidence=found.confidence,
        reason_code=found.code,
        reason=found.reason,
        monthly_savings=None if savings is None else round(savings, 2),
        currency=None if savings is None else account.currency,
        realizable_at=renewal if renewal is not None and renewal > now else now,
        episode_start=found.episode_start,
        due_at=found.due_at,
    )


# --- money


def _monthly(cost: float | None, period: str) -> float | None:
    if cost is None:
        return None
    if period == "month":
        return cost
    if period == "year":
        return cost / 12
    return None


def _difference(account: Account, cheaper: Tier) -> float | None:
    """Monthly price difference, or None when the two prices cannot be compared."""
    if account.currency is None or account.currency != cheaper.currency:
        return None
    mine = _monthly(account.unit_cost, account.billing_period)
    theirs = _monthly(cheaper.unit_cost, cheaper.billing_period)
    if mine is None or theirs is None:
        return None
    return mine - theirs


# --- words


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _whole_days(seconds: float) -> int:
    return max(int(seconds // DAY), 0)


def _start(account: Account) -> tuple[float, str]:
    """When the license began, and how we know: the assignment date, else when we first saw it."""
    if account.assigned_at is not None:
        return account.assigned_at, "assigned"
    return account.first_seen_at, "first seen"


# --- the rules


def _inactive(account: Account) -> tuple[str, str] | None:
    """Deactivated wins over suspended, the source over the identity provider."""
    for wanted in _INACTIVE:
        for status, where in ((account.status, "source"), (account.idp_status, "idp")):
            if status is not None and status.lower() == wanted:
                return wanted, where
    return None


def _hard_fact(account: Account, now: float) -> Verdict | None:
    inactive = _inactive(account)
    if inactive is None or account.unit_cost is None or account.unit_cost <= 0:
        return None
    status, where = inactive
    place = "the source" if where == "source" else "the identity provider"
    start = account.last_active if account.last_active is not None else _start(account)[0]
    found = _Grounds(
        cls=LicenseClass.INACTIVE_AT_SOURCE,
        confidence=Confidence.HIGH,
        code=f"{status}_at_{where}",
        reason=f"{status} at {place} but still holds a paid license",
        episode_start=start,
        due_at=None,
    )
    return _reclaim(account, found, now)


def _excluded(account: Account, policy: Policy, now: float) -> Verdict | None:
    excluded = LicenseClass.EXCLUDED
    if account.unit_cost is not None and account.unit_cost <= 0:
        return _quiet(excluded, "unpaid", "holds no paid license")
    if account.service_account:
        return _quiet(excluded, "service_account", "a service account")
    exempt_users = {user.lower() for user in policy.exempt_users}
    names = [account.user_id, account.email or ""]
    if any(name.lower() in exempt_users for name in names if name):
        return _quiet(excluded, "exempt_user", "an exempt user")
    if account.role and account.role.lower() in {role.lower() for role in policy.exempt_roles}:
        return _quiet(excluded, "exempt_role", f"holds the exempt role {account.role!r}")
    if account.assigned_at is None and account.listed_at_start:
        return None
    start, how = _start(account)
    grace_end = start + policy.grace_days * DAY
    if now < grace_end:
        ago = _plural(_whole_days(now - start), "day")
        reason = f"{how} {ago} ago: within the {policy.grace_days}-day grace period"
        return _quiet(excluded, "grace", reason, grace_end)
    return None


def _unused(account: Account, baseline: Baseline, policy: Policy, now: float) -> Verdict | None:
    if account.last_active is None:
        return _never_used(account, policy, now)
    idle = now - account.last_active
    t = baseline.threshold_days
    if idle < t * DAY:
        return None
    high = idle >= 2 * t * DAY
    confidence = Confidence.HIGH if high else _threshold_confidence(baseline)
    found = _Grounds(
        cls=LicenseClass.IDLE,
        confidence=confidence,
        code="idle",
        reason=_idle_reason(baseline, policy, _whole_days(idle)),
        episode_start=account.last_active,
        due_at=None if high else account.last_active + 2 * t * DAY,
    )
    return _reclaim(account, found, now)


def _threshold_confidence(baseline: Baseline) -> Confidence:
    return Confidence.LOW if baseline.fallback else Confidence.MEDIUM


def _idle_reason(baseline: Baseline, policy: Policy, idle_days: int) -> str:
    idle = _plural(idle_days, "day")
    t = baseline.threshold_days
    if policy.threshold_days is not None:
        return f"idle for {idle}, past this tenant's {t}-day threshold"
    if baseline.fallback or baseline.baseline_days is None:
        return (
            f"idle for {idle}, past the default {t}-day threshold "
            f"(too few active users to learn this app's rhythm)"
        )
    within = _plural(math.ceil(baseline.baseline_days), "day")
    return f"users of this app return within {within}; this one has been idle for {idle_days}"


def _never_used(account: Account, policy: Policy, now: float) -> Verdict:
    if account.assigned_at is None and account.listed_at_start:
        days = _whole_days(now - account.first_seen_at)
        since = "first synced today" if not days else f"synced for {_plural(days, 'day')}"
        found = _Grounds(
            cls=LicenseClass.NEVER_USED,
            confidence=Confidence.MEDIUM,
            code="never_used",
            reason=f"no login on record (this app was {since})",
            episode_start=account.first_seen_at,
            due_at=None,
        )
        return _reclaim(account, found, now)
    start, how = _start(account)
    certain_at = start + 2 * policy.grace_days * DAY
    high = now >= certain_at
    action = "it was assigned" if how == "assigned" else "greenroom first saw it"
    found = _Grounds(
        cls=LicenseClass.NEVER_USED,
        confidence=Confidence.HIGH if high else Confidence.MEDIUM,
        code="never_used",
        reason=f"never used since {action} {_plural(_whole_days(now - start), 'day')} ago",
        episode_start=start,
        due_at=None if high else certain_at,
    )
    return _reclaim(account, found, now)


def _can_downgrade(account: Account, cheaper: Tier | None) -> bool:
    """A cheaper tier that is not, by its known price, as dear as this one."""
    if cheaper is None or (account.tier is not None and account.tier == cheaper.name):
        return False
    difference = _difference(account, cheaper)
    return difference is None or difference > 0


def _premium(account: Account, cheaper: Tier) -> bool:
    difference = _difference(account, cheaper)
    return difference is not None and difference > 0


def _underused_on(activity: Activity, day: int, share: float) -> bool:
    return activity.count(day - RECENT_DAYS + 1, day) / RECENT_DAYS < share


def _eligible_from(account: Account) -> int:
    """The first day the account is old enough, and greenroom has watched it long enough (its
    activity is known only since it was first seen), for its 30-day share to mean anything."""
    return day_of(max(_start(account)[0], account.first_seen_at)) + RECENT_DAYS


@cache
def _days_needed(share: float) -> int | None:
    """The fewest active days of RECENT_DAYS that are not underused (None: no number is)."""
    return next((n for n in range(RECENT_DAYS + 1) if not n / RECENT_DAYS < share), None)


def _underuse_start(activity: Activity, today: int, eligible_from: int, share: float) -> int:
    """The first day of the current run of underused days (today is one of them): the day after
    the newest day, going back from today, whose 30 days before it held enough active days.

    Read from the active days, newest first, as far back as needed (an underused user has few),
    not day by day: for a day d between two active days, the days before it hold enough when the
    `need`-th newest active day before d is at most 30 days before it.
    """
    if today <= eligible_from:
        return today
    earliest = activity.last_day - WINDOW_DAYS + 1 if activity.bits else today
    lowest = max(eligible_from, earliest)  # no day at or before this one starts the run
    need = _days_needed(share)
    if need is None:
        return eligible_from
    if need == 0:
        return today if today > lowest else eligible_from
    digits = format(activity.bits, f"0{WINDOW_DAYS}b") if activity.bits else ""  # earliest first
    newer: list[int] = []  # active days before today, newest first
    end = min(today - 1, activity.last_day) - earliest + 1
    t, upper = 0, today
    while True:
        while len(newer) < t + need:
            end = digits.rfind("1", 0, end)
            if end < 0:
                return eligible_from
            newer.append(earliest + end)
        # Days d in (newer[t], upper] have newer[t:] before them.
        best = min(upper, newer[t + need - 1] + RECENT_DAYS)
        if best > newer[t]:
            return best if best > lowest else eligible_from
        if newer[t] <= lowest:
            return eligible_from
        upper, t = newer[t], t + 1


def _underuse_episode(account: Account, policy: Policy, now: float) -> float | None:
    """When the current run of underused days began, or None if today is not one. A premium tier
    that then goes unused keeps this start, so it stays the same episode (no second event)."""
    today = day_of(now)
    eligible_from = _eligible_from(account)
    share = policy.underuse_share
    if today < eligible_from or not _underused_on(account.activity, today, share):
        return None
    return _underuse_start(account.activity, today, eligible_from, share) * DAY


def _underused(
    account: Account, baseline: Baseline, policy: Policy, cheaper: Tier | None, now: float
) -> Verdict | None:
    if cheaper is None or account.last_active is None or not _can_downgrade(account, cheaper):
        return None
    last_active = account.last_active
    idle_at = last_active + baseline.threshold_days * DAY
    if _premium(account, cheaper) and now - last_active >= policy.premium_idle_days * DAY:
        found = _Grounds(
            cls=LicenseClass.UNDERUSED,
            confidence=Confidence.MEDIUM,
            code="premium_unused",
            reason=(
                f"the {account.tier or 'current'} tier has gone unused for "
                f"{_plural(_whole_days(now - last_active), 'day')}; {cheaper.name} costs less"
            ),
            episode_start=_underuse_episode(account, policy, now) or last_active,
            due_at=idle_at,
        )
        return _downgrade(account, cheaper, found, now)
    episode_start = _underuse_episode(account, policy, now)
    if episode_start is None:
        return None
    today = day_of(now)
    share = policy.underuse_share
    active = account.activity.count(today - RECENT_DAYS + 1, today)
    premium_at = last_active + policy.premium_idle_days * DAY
    found = _Grounds(
        cls=LicenseClass.UNDERUSED,
        confidence=Confidence.MEDIUM,
        code="underused",
        reason=(
            f"active on {active} of the last {RECENT_DAYS} days (under {round(share * 100)} %)"
        ),
        episode_start=episode_start,
        due_at=min(idle_at, premium_at) if _premium(account, cheaper) else idle_at,
    )
    return _downgrade(account, cheaper, found, now)


def _next_underuse(account: Account, policy: Policy, today: int) -> int | None:
    """The first later day on which the 30-day share drops under, if no one logs in again."""
    first = max(today + 1, _eligible_from(account))
    for day in range(first, first + RECENT_DAYS + 1):
        if _underused_on(account.activity, day, policy.underuse_share):
            return day
    return None


def _active(
    account: Account, baseline: Baseline, policy: Policy, cheaper: Tier | None, now: float
) -> Verdict:
    last_active = account.last_active if account.last_active is not None else now
    crossings = [last_active + baseline.threshold_days * DAY]
    if cheaper is not None and _can_downgrade(account, cheaper):
        underuse = _next_underuse(account, policy, day_of(now))
        if underuse is not None:
            crossings.append(underuse * DAY)
        if _premium(account, cheaper):
            crossings.append(last_active + policy.premium_idle_days * DAY)
    days = _whole_days(now - last_active)
    reason = "active today" if days == 0 else f"last active {_plural(days, 'day')} ago"
    return _quiet(LicenseClass.ACTIVE, "active", reason, min(crossings))
