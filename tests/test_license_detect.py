"""License intelligence without a database: the activity bitmap, the per-app baseline, the verdict
for one license and the finding state machine, which together keep the noise vendors are known
for (stale data, new hires, the same seat reported every day) out of what reaches people."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from typing import Any

import pytest

from greenroom.clock import ManualClock
from greenroom.licenses.activity import DAY, WINDOW_DAYS, Activity
from greenroom.licenses.detect import (
    RECENT_DAYS,
    Account,
    Action,
    Baseline,
    Confidence,
    LicenseClass,
    Policy,
    Tier,
    Verdict,
    _underuse_start,
    baseline,
    classify,
)
from greenroom.licenses.findings import Finding, FindingState, Step, advance, keep
from greenroom.storage.license_pass import REMOVED

TODAY = 20_000
NOW = TODAY * DAY + 12 * 3600.0
POLICY = Policy()
#: A learned baseline: users come back within 9 days, so T is 18.
LEARNED = Baseline(threshold_days=18, baseline_days=9.0, active_users=40, fallback=False)
FALLBACK = Baseline(threshold_days=60, baseline_days=None, active_users=5, fallback=True)
BASIC = Tier(name="basic", unit_cost=8.0, currency="EUR", billing_period="month")


def active_on(*days: int) -> Activity:
    activity = Activity()
    for day in days:
        activity = activity.mark(day)
    return activity


def daily(first: int, last: int) -> Activity:
    return active_on(*range(first, last + 1))


def account(**changes: Any) -> Account:
    base = Account(
        user_id="u1",
        email="ann@example.com",
        role="member",
        tier="pro",
        unit_cost=20.0,
        currency="EUR",
        billing_period="month",
        assigned_at=NOW - 400 * DAY,
        first_seen_at=NOW - 400 * DAY,
        status="active",
        idp_status=None,
        last_active=NOW - DAY,
        activity=daily(TODAY - 25, TODAY - 1),
        service_account=False,
        renewal_at=None,
    )
    return replace(base, **changes)


def judge(
    acc: Account,
    *,
    base: Baseline = LEARNED,
    policy: Policy = POLICY,
    fresh: bool = True,
    cheaper: Tier | None = None,
    now: float = NOW,
) -> Verdict:
    return classify(acc, base, policy, fresh=fresh, cheaper=cheaper, now=now)


# --- activity


def test_marking_a_day_twice_changes_nothing() -> None:
    once = Activity().mark(TODAY)
    assert once.mark(TODAY) == once
    assert once.mark(TODAY - 3).mark(TODAY - 3) == once.mark(TODAY - 3)
    assert once.days() == [TODAY] and once.latest() == TODAY


def test_gaps_are_the_days_between_active_days() -> None:
    assert Activity().gaps() == [] and active_on(TODAY).gaps() == []
    activity = active_on(TODAY - WINDOW_DAYS + 1, TODAY - 9, TODAY - 8, TODAY - 5, TODAY)
    assert activity.gaps() == [WINDOW_DAYS - 10, 1, 3, 5]
    days = activity.days()
    assert activity.gaps() == [b - a for a, b in itertools.pairwise(days)]


def test_a_newer_day_shifts_the_window_and_trims_it() -> None:
    activity = active_on(TODAY - WINDOW_DAYS + 1, TODAY - 5, TODAY)
    assert activity.days() == [TODAY - WINDOW_DAYS + 1, TODAY - 5, TODAY]
    shifted = activity.mark(TODAY + 1)
    assert shifted.days() == [TODAY - 5, TODAY, TODAY + 1]
    assert shifted.last_day == TODAY + 1 and shifted.bits < 1 << WINDOW_DAYS
    far = activity.mark(TODAY + 1000)
    assert far.days() == [TODAY + 1000]


def test_a_day_older_than_the_window_is_ignored() -> None:
    activity = active_on(TODAY)
    assert activity.mark(TODAY - WINDOW_DAYS) == activity
    assert activity.mark(TODAY - WINDOW_DAYS + 1).days() == [TODAY - WINDOW_DAYS + 1, TODAY]


def test_count_reads_a_range_of_days() -> None:
    activity = active_on(TODAY - 40, TODAY - 29, TODAY - 10, TODAY)
    assert activity.count(TODAY - 29, TODAY) == 3
    assert activity.count(TODAY - 1000, TODAY + 1000) == 4
    assert activity.count(TODAY - 9, TODAY - 1) == 0
    assert activity.count(TODAY + 1, TODAY + 5) == 0
    assert Activity().count(0, TODAY) == 0


def test_activity_survives_bytes() -> None:
    activity = active_on(TODAY - WINDOW_DAYS + 1, TODAY - 77, TODAY)
    data = activity.to_bytes()
    assert len(data) == 23
    assert Activity.from_bytes(data, activity.last_day) == activity
    assert Activity.from_bytes(None, None) == Activity()
    assert Activity.from_bytes(bytes(23), None) == Activity()
    assert Activity().latest() is None and Activity().days() == []
    with pytest.raises(ValueError):
        Activity.from_bytes(data, None)


# --- freshness, hard facts, exclusions


def test_stale_data_is_unknown_not_idle() -> None:
    verdict = judge(account(last_active=NOW - 300 * DAY), fresh=False)
    assert verdict.cls is LicenseClass.UNKNOWN and verdict.reason_code == "no_fresh_data"
    assert verdict.action is None and verdict.due_at is None


@pytest.mark.parametrize(
    ("changes", "code", "reason"),
    [
        (
            {"status": "deactivated"},
            "deactivated_at_source",
            "deactivated at the source but still holds a paid license",
        ),
        (
            {"status": "Suspended"},
            "suspended_at_source",
            "suspended at the source but still holds a paid license",
        ),
        (
            {"idp_status": "deactivated"},
            "deactivated_at_idp",
            "deactivated at the identity provider but still holds a paid license",
        ),
    ],
)
def test_inactive_at_the_source_with_a_paid_tier_is_reclaimed(
    changes: dict[str, str], code: str, reason: str
) -> None:
    # Hard facts win over the grace period and recent activity.
    acc = account(assigned_at=NOW - 3 * DAY, **changes)
    verdict = judge(acc)
    assert verdict.cls is LicenseClass.INACTIVE_AT_SOURCE
    assert (verdict.action, verdict.confidence) == (Action.RECLAIM, Confidence.HIGH)
    assert (verdict.reason_code, verdict.reason) == (code, reason)
    assert (verdict.monthly_savings, verdict.currency) == (20.0, "EUR")


def test_a_deactivated_free_seat_is_not_reclaimed() -> None:
    verdict = judge(account(status="deactivated", unit_cost=0.0))
    assert verdict.cls is LicenseClass.EXCLUDED and verdict.reason_code == "unpaid"


def test_a_new_hire_in_grace_is_not_flagged() -> None:
    assigned = NOW - 12 * DAY - 3600
    verdict = judge(account(assigned_at=assigned, last_active=None, activity=Activity()))
    assert verdict.cls is LicenseClass.EXCLUDED and verdict.action is None
    assert verdict.reason_code == "grace"
    assert verdict.reason == "assigned 12 days ago: within the 60-day grace period"
    assert verdict.due_at == assigned + 60 * DAY
    after = judge(account(assigned_at=assigned, last_active=None), now=assigned + 60 * DAY)
    assert after.cls is LicenseClass.NEVER_USED


def test_grace_falls_back_to_when_greenroom_first_saw_the_account() -> None:
    acc = account(assigned_at=None, first_seen_at=NOW - 5 * DAY, last_active=None)
    verdict = judge(acc)
    assert verdict.reason == "first seen 5 days ago: within the 60-day grace period"
    assert verdict.due_at == NOW + 55 * DAY


@pytest.mark.parametrize(
    ("changes", "policy", "code"),
    [
        ({"role": "Admin"}, Policy(exempt_roles=frozenset({"admin"})), "exempt_role"),
        ({"role": "owner"}, Policy(exempt_roles=frozenset({"OWNER"})), "exempt_role"),
        ({}, Policy(exempt_users=frozenset({"ANN@Example.com"})), "exempt_user"),
        ({"user_id": "U-42"}, Policy(exempt_users=frozenset({"u-42"})), "exempt_user"),
        ({"service_account": True}, POLICY, "service_account"),
    ],
)
def test_exempt_roles_users_and_service_accounts(
    changes: dict[str, Any], policy: Policy, code: str
) -> None:
    verdict = judge(account(last_active=NOW - 300 * DAY, **changes), policy=policy)
    assert verdict.cls is LicenseClass.EXCLUDED and verdict.reason_code == code
    assert verdict.action is None and verdict.due_at is None


# --- never used, idle


def test_never_used() -> None:
    assigned = NOW - 75 * DAY
    verdict = judge(account(assigned_at=assigned, last_active=None, activity=Activity()))
    assert verdict.cls is LicenseClass.NEVER_USED and verdict.action is Action.RECLAIM
    assert verdict.reason == "never used since it was assigned 75 days ago"
    assert verdict.confidence is Confidence.MEDIUM and verdict.episode_start == assigned
    assert verdict.due_at == assigned + 120 * DAY
    later = judge(account(assigned_at=assigned, last_active=None), now=assigned + 120 * DAY)
    assert later.confidence is Confidence.HIGH and later.due_at is None
    assert later.episode_start == assigned


def test_idle_at_exactly_t_and_not_a_day_before() -> None:
    at_t = judge(account(last_active=NOW - 18 * DAY))
    assert at_t.cls is LicenseClass.IDLE and at_t.action is Action.RECLAIM
    assert at_t.confidence is Confidence.MEDIUM
    assert at_t.episode_start == NOW - 18 * DAY
    assert at_t.due_at == NOW + 18 * DAY  # 2T: high confidence
    before = judge(account(last_active=NOW - 17 * DAY))
    assert before.cls is LicenseClass.ACTIVE


def test_idle_reason_and_confidence() -> None:
    verdict = judge(account(last_active=NOW - 41 * DAY - 600))
    assert verdict.reason == "users of this app return within 9 days; this one has been idle for 41"
    assert verdict.confidence is Confidence.HIGH and verdict.due_at is None
    fallback = judge(account(last_active=NOW - 75 * DAY), base=FALLBACK)
    assert fallback.cls is LicenseClass.IDLE and fallback.confidence is Confidence.LOW
    assert fallback.reason == (
        "idle for 75 days, past the default 60-day threshold "
        "(too few active users to learn this app's rhythm)"
    )
    tenant = Policy(threshold_days=30)
    fixed = Baseline(threshold_days=30, baseline_days=None, active_users=3, fallback=False)
    verdict = judge(account(last_active=NOW - 31 * DAY), base=fixed, policy=tenant)
    assert verdict.confidence is Confidence.MEDIUM
    assert verdict.reason == "idle for 31 days, past this tenant's 30-day threshold"


# --- baseline


def every(gap: int, *, last: int = TODAY, span: int = 170) -> Activity:
    return active_on(*range(last, last - span - 1, -gap))


def test_baseline_is_the_p90_of_each_users_p90_gap() -> None:
    # Users 1..20 come back every 1..20 days: their own p90 gaps are 1..20, and the p90 over
    # them (nearest rank) is 18, so T = 36. Idle or one-day users don't count.
    population = [every(gap, last=TODAY - gap + 1) for gap in range(1, 21)]
    ignored = [every(2, last=TODAY - 30), active_on(TODAY), Activity()]
    result = baseline(population + ignored, TODAY, POLICY)
    assert result == Baseline(threshold_days=36, baseline_days=18, active_users=20, fallback=False)


def test_a_users_p90_gap_ignores_a_rare_long_absence() -> None:
    # Nine gaps of one day and one of 30: that user's p90 is 1, so T is clamped to 14.
    days = [*range(TODAY - 39, TODAY - 30), *range(TODAY - 1, TODAY + 1)]
    assert len(days) == 11
    result = baseline([active_on(*days)] * 20, TODAY, POLICY)
    assert result.baseline_days == 1 and result.threshold_days == 14


def test_baseline_is_clamped_to_14_and_120_days() -> None:
    assert baseline([every(1)] * 25, TODAY, POLICY).threshold_days == 14
    rare = baseline([every(70, span=140)] * 25, TODAY, POLICY)
    assert rare.baseline_days == 70 and rare.threshold_days == 120


def test_too_few_active_users_fall_back_to_60_days() -> None:
    result = baseline([every(3)] * 19, TODAY, POLICY)
    assert result == Baseline(threshold_days=60, baseline_days=None, active_users=19, fallback=True)


def test_a_tenant_threshold_wins() -> None:
    tenant = Policy(threshold_days=45)
    learned = baseline([every(3)] * 20, TODAY, tenant)
    assert learned == Baseline(threshold_days=45, baseline_days=3, active_users=20, fallback=False)
    few = baseline([every(3)] * 2, TODAY, tenant)
    assert few == Baseline(threshold_days=45, baseline_days=None, active_users=2, fallback=False)


# --- underuse and savings


def test_underused_by_share_of_the_last_30_days() -> None:
    activity = active_on(TODAY - 20, TODAY - 12, TODAY - 5, TODAY - 1)
    verdict = judge(account(activity=activity), cheaper=BASIC)
    assert verdict.cls is LicenseClass.UNDERUSED and verdict.action is Action.DOWNGRADE
    assert verdict.reason == "active on 4 of the last 30 days (under 30 %)"
    assert verdict.confidence is Confidence.MEDIUM
    assert (verdict.monthly_savings, verdict.currency) == (12.0, "EUR")
    assert verdict.due_at == NOW - DAY + 18 * DAY  # then idle
    assert judge(account(activity=activity)).cls is LicenseClass.ACTIVE  # no cheaper tier
    nine = active_on(*range(TODAY - 8, TODAY + 1))
    assert judge(account(activity=nine), cheaper=BASIC).cls is LicenseClass.ACTIVE


def test_a_young_account_is_not_underused() -> None:
    young = account(assigned_at=NOW - 20 * DAY, activity=active_on(TODAY - 1))
    verdict = judge(young, policy=Policy(grace_days=10), cheaper=BASIC)
    assert verdict.cls is LicenseClass.ACTIVE


def test_an_unused_premium_tier_is_a_downgrade() -> None:
    tenant = Policy(threshold_days=200)
    fixed = Baseline(threshold_days=200, baseline_days=None, active_users=0, fallback=False)
    activity = active_on(*range(TODAY - 150, TODAY - 100), TODAY - 95)
    acc = account(last_active=NOW - 95 * DAY, activity=activity)
    verdict = judge(acc, base=fixed, policy=tenant, cheaper=BASIC)
    assert verdict.cls is LicenseClass.UNDERUSED and verdict.reason_code == "premium_unused"
    assert verdict.reason == "the pro tier has gone unused for 95 days; basic costs less"
    assert verdict.confidence is Confidence.MEDIUM
    # Underused by share first, since the day its 30-day share dropped under 9 days; the
    # premium rule then keeps that episode, so the finding is not reported twice.
    before = judge(acc, base=fixed, policy=tenant, cheaper=BASIC, now=NOW - 10 * DAY)
    assert before.reason_code == "underused"
    assert before.episode_start == verdict.episode_start == (TODAY - 78) * DAY
    step = advance(None, before, NOW - 10 * DAY, tenant)
    assert advance(step.finding, verdict, NOW, tenant) == Step(finding=step.finding)


def test_the_share_episode_starts_the_day_it_dropped_and_stays() -> None:
    # Active days TODAY-40..TODAY-20: the 30 days ending today hold 10 of them, ending tomorrow 9,
    # the day after 8: underused from TODAY+2 on, while nothing new happens.
    acc = account(last_active=(TODAY - 20) * DAY, activity=daily(TODAY - 40, TODAY - 20))
    base = replace(LEARNED, threshold_days=60)
    now = judge(acc, base=base, cheaper=BASIC)
    assert now.cls is LicenseClass.ACTIVE and now.due_at == (TODAY + 2) * DAY
    first = judge(acc, base=base, cheaper=BASIC, now=(TODAY + 2) * DAY)
    later = judge(acc, base=base, cheaper=BASIC, now=(TODAY + 9) * DAY + 5)
    assert first.cls is later.cls is LicenseClass.UNDERUSED
    assert first.episode_start == later.episode_start == (TODAY + 2) * DAY


def _underuse_start_day_by_day(
    activity: Activity, today: int, eligible_from: int, share: float
) -> int:
    """The definition, a day at a time: back from today while the 30 days before are underused."""
    earliest = activity.last_day - WINDOW_DAYS + 1 if activity.bits else today
    day = today
    while day > eligible_from:
        if day - 1 < earliest:
            return eligible_from
        if activity.count(day - RECENT_DAYS, day - 1) / RECENT_DAYS >= share:
            return day
        day -= 1
    return day


def test_the_start_of_an_underuse_run_matches_its_definition() -> None:
    """`_underuse_start` walks active days, not days: the same answer on 20,000 histories."""
    rng = random.Random(7)
    shares = [0.3, 0.0, 1.0, 0.5, 1 / 3, 0.1, 2 / 30, 29 / 30, 1.5]
    for _ in range(20_000):
        density = rng.random() ** 2
        bits = sum(1 << i for i in range(WINDOW_DAYS) if rng.random() < density)
        bits >>= rng.randrange(WINDOW_DAYS + 20) if rng.random() < 0.3 else 0
        activity = Activity(bits, TODAY + rng.randrange(-300, 40)) if bits else Activity()
        today = TODAY + rng.randrange(60)
        eligible_from = today - rng.randrange(-5, 400)
        share = rng.choice([*shares, rng.random()])
        case = (activity, today, eligible_from, share)
        assert _underuse_start(*case) == _underuse_start_day_by_day(*case), case


def test_savings() -> None:
    yearly = account(unit_cost=240.0, billing_period="year", last_active=NOW - 40 * DAY)
    assert judge(yearly).monthly_savings == 20.0
    assert judge(replace(yearly, unit_cost=None)).monthly_savings is None
    unknown = judge(replace(yearly, currency=None))
    assert (unknown.monthly_savings, unknown.currency) == (None, None)
    underused = replace(yearly, last_active=NOW - DAY, activity=active_on(TODAY - 1))
    assert judge(underused, cheaper=BASIC).monthly_savings == 12.0
    dollars = replace(BASIC, currency="USD")
    other = judge(underused, cheaper=dollars)
    assert other.cls is LicenseClass.UNDERUSED and other.monthly_savings is None


def test_a_cheaper_tier_that_is_not_cheaper_is_no_downgrade() -> None:
    dear = replace(BASIC, unit_cost=25.0)
    acc = account(activity=active_on(TODAY - 1))
    assert judge(acc, cheaper=dear).cls is LicenseClass.ACTIVE


def test_savings_are_realizable_at_renewal_when_that_is_later() -> None:
    idle = account(last_active=NOW - 40 * DAY, renewal_at=NOW + 100 * DAY)
    assert judge(idle).realizable_at == NOW + 100 * DAY
    assert judge(replace(idle, renewal_at=NOW - DAY)).realizable_at == NOW
    assert judge(replace(idle, renewal_at=None)).realizable_at == NOW


def test_an_active_user_is_due_when_t_is_crossed() -> None:
    last = NOW - 2 * DAY - 1234.5
    verdict = judge(account(last_active=last))
    assert verdict.cls is LicenseClass.ACTIVE and verdict.reason == "last active 2 days ago"
    assert verdict.due_at == last + 18 * DAY
    assert judge(account(last_active=last), now=verdict.due_at).cls is LicenseClass.IDLE
    assert judge(account(last_active=NOW)).reason == "active today"


# --- the finding state machine


def run(
    acc: Account, days: int, finding: Finding | None = None, *, base: Baseline = LEARNED
) -> tuple[Finding | None, list[Step]]:
    """Daily passes over one account, as the service would make them."""
    clock = ManualClock(NOW)
    steps = []
    for _ in range(days):
        verdict = judge(acc, base=base, now=clock.now())
        step = advance(finding, verdict, clock.now(), POLICY)
        steps.append(step)
        finding = step.finding
        clock.advance(DAY)
    return finding, steps


def events(steps: list[Step]) -> list[str]:
    return [step.event for step in steps if step.event is not None]


def test_an_idle_license_is_reported_once_over_30_passes() -> None:
    finding, steps = run(account(last_active=NOW - 20 * DAY), 30)
    assert events(steps) == ["license.idle"]
    assert steps[0].new_episode and not any(step.new_episode for step in steps[1:])
    assert finding is not None and finding.state is FindingState.NOTIFIED


def test_active_again_then_idle_again_is_a_new_episode() -> None:
    finding, steps = run(account(last_active=NOW - 20 * DAY), 3)
    assert events(steps) == ["license.idle"]
    back = account(last_active=NOW + 3 * DAY)
    closed = advance(finding, judge(back, now=NOW + 3 * DAY), NOW + 3 * DAY, POLICY)
    assert closed == Step(finding=None)
    idle_again = NOW + 21 * DAY
    step = advance(None, judge(back, now=idle_again), idle_again, POLICY)
    assert step.event == "license.idle" and step.new_episode
    assert step.finding is not None and step.finding.episode_start == NOW + 3 * DAY


def test_a_verdict_for_a_later_episode_replaces_the_open_finding() -> None:
    finding, _ = run(account(last_active=NOW - 20 * DAY), 1)
    later = judge(account(last_active=NOW + DAY), now=NOW + 30 * DAY)
    step = advance(finding, later, NOW + 30 * DAY, POLICY)
    assert step.event == "license.idle" and step.new_episode


@pytest.mark.parametrize("state", [FindingState.KEPT, FindingState.SNOOZED])
def test_kept_and_snoozed_hold_until_they_end(state: FindingState) -> None:
    finding, _ = run(account(last_active=NOW - 20 * DAY), 1)
    assert finding is not None
    if state is FindingState.KEPT:
        held = keep(finding, NOW, POLICY)
        assert held.until == NOW + 90 * DAY
    else:
        held = replace(finding, state=state, until=NOW + 90 * DAY)
    acc = account(last_active=NOW - 20 * DAY)
    _, steps = run(acc, 90, held)
    assert events(steps) == [] and all(step.finding == held for step in steps)
    after, steps = run(acc, 95, held)
    assert events(steps) == ["license.idle"]
    reopened = steps[90]
    assert reopened.new_episode and reopened.finding is not None
    assert reopened.finding.state is FindingState.NOTIFIED
    assert reopened.finding.episode_start == NOW + 90 * DAY
    assert after is not None and after.episode_start == NOW + 90 * DAY


@pytest.mark.parametrize("state", [FindingState.KEPT, FindingState.SNOOZED])
def test_a_held_seat_that_goes_away_is_reclaimed_at_once(state: FindingState) -> None:
    finding, _ = run(account(last_active=NOW - 20 * DAY), 1)
    assert finding is not None
    held = replace(finding, state=state, until=NOW + 90 * DAY)
    free = judge(account(last_active=NOW - 20 * DAY, unit_cost=0.0))
    for gone in (REMOVED, free):
        step = advance(held, gone, NOW + DAY, POLICY)
        closed = replace(held, state=FindingState.CLOSED, until=None)
        assert step == Step(finding=closed, event="license.reclaimed")
    # Deactivated but still paid for: the seat is still there, and the hold with it.
    paid = judge(account(last_active=NOW - 20 * DAY, status="deactivated"))
    assert advance(held, paid, NOW + DAY, POLICY) == Step(finding=held)


def test_a_hold_that_ends_on_an_active_user_closes() -> None:
    finding, _ = run(account(last_active=NOW - 20 * DAY), 1)
    assert finding is not None
    held = replace(finding, state=FindingState.SNOOZED, until=NOW + DAY)
    step = advance(held, judge(account(), now=NOW + DAY), NOW + DAY, POLICY)
    assert step == Step(finding=None)


def test_low_confidence_is_a_candidate_until_it_rises() -> None:
    finding, steps = run(account(last_active=NOW - 60 * DAY), 90, base=FALLBACK)
    # 60..119 days idle: low (fallback T); from 120 days (2T): high, reported once.
    assert steps[0].finding is not None
    assert steps[0].finding.state is FindingState.CANDIDATE and steps[0].event is None
    assert [i for i, step in enumerate(steps) if step.event] == [60]
    assert steps[60].event == "license.idle" and not steps[60].new_episode
    assert finding is not None and finding.state is FindingState.NOTIFIED


def test_an_active_verdict_closes_silently() -> None:
    finding, _ = run(account(last_active=NOW - 20 * DAY), 1)
    step = advance(finding, judge(account(), now=NOW + DAY), NOW + DAY, POLICY)
    assert step == Step(finding=None)
    excluded = judge(account(service_account=True), now=NOW + DAY)
    assert advance(finding, excluded, NOW + DAY, POLICY) == Step(finding=None)


def test_an_actioned_reclaim_ends_when_the_account_is_deactivated() -> None:
    finding, _ = run(account(last_active=NOW - 20 * DAY), 1)
    assert finding is not None
    actioned = replace(finding, state=FindingState.ACTIONED)
    active = advance(actioned, judge(account(), now=NOW + DAY), NOW + DAY, POLICY)
    assert active == Step(finding=actioned)
    gone = account(last_active=NOW - 20 * DAY, status="deactivated")
    step = advance(actioned, judge(gone, now=NOW + 2 * DAY), NOW + 2 * DAY, POLICY)
    closed = replace(actioned, state=FindingState.CLOSED)
    assert step == Step(finding=closed, event="license.reclaimed")
    # The source still lists the deactivated account with its paid tier: not reported again.
    _, steps = run(gone, 30, closed)
    assert events(steps) == [] and all(step.finding == closed for step in steps)
    # Reactivated and still idle: a license to report again.
    again = advance(closed, judge(account(last_active=NOW - 20 * DAY)), NOW, POLICY)
    assert again.event == "license.idle" and again.new_episode


def test_an_actioned_reclaim_ends_when_the_tier_is_free() -> None:
    finding, _ = run(account(last_active=NOW - 20 * DAY), 1)
    assert finding is not None
    actioned = replace(finding, state=FindingState.ACTIONED)
    free = judge(account(last_active=NOW - 20 * DAY, unit_cost=0.0))
    step = advance(actioned, free, NOW + DAY, POLICY)
    assert step.event == "license.reclaimed"
    assert step.finding is not None and step.finding.state is FindingState.CLOSED


def test_an_unknown_verdict_changes_nothing() -> None:
    finding, _ = run(account(last_active=NOW - 20 * DAY), 1)
    unknown = judge(account(), fresh=False)
    assert advance(finding, unknown, NOW + DAY, POLICY) == Step(finding=finding)
    assert advance(None, unknown, NOW + DAY, POLICY) == Step(finding=None)


def test_underuse_is_reported_as_underused() -> None:
    acc = account(activity=active_on(TODAY - 1))
    step = advance(None, judge(acc, cheaper=BASIC), NOW, POLICY)
    assert step.event == "license.underused" and step.finding is not None
    assert step.finding.action is Action.DOWNGRADE


# --- properties over generated accounts


def generated(rng: random.Random) -> tuple[Account, Baseline, Policy, Tier | None]:
    days = sorted(rng.sample(range(TODAY - 200, TODAY + 1), rng.randint(0, 60)))
    activity = active_on(*days)
    latest = activity.latest()
    assigned = NOW - rng.uniform(0, 500) * DAY
    acc = account(
        role=rng.choice(["member", "admin", None]),
        unit_cost=rng.choice([None, 0.0, 8.0, 20.0, 240.0]),
        currency=rng.choice(["EUR", "USD", None]),
        billing_period=rng.choice(["month", "year"]),
        assigned_at=rng.choice([assigned, None]),
        first_seen_at=assigned,
        status=rng.choice(["active"] * 8 + ["suspended", "deactivated"]),
        idp_status=rng.choice([None, "active", "deactivated"]),
        last_active=None if latest is None else latest * DAY + rng.uniform(0, DAY),
        activity=activity,
        service_account=rng.random() < 0.05,
        renewal_at=rng.choice([None, NOW + rng.uniform(-100, 300) * DAY]),
    )
    base = rng.choice([LEARNED, FALLBACK, replace(LEARNED, threshold_days=rng.randint(14, 120))])
    policy = Policy(
        grace_days=rng.choice([0, 30, 60]),
        exempt_roles=frozenset(rng.choice([(), ("ADMIN",)])),
        threshold_days=rng.choice([None, base.threshold_days]),
    )
    return acc, base, policy, rng.choice([None, BASIC, replace(BASIC, currency="USD")])


def test_classify_is_deterministic_and_repeated_passes_are_quiet() -> None:
    rng = random.Random(16)
    for _ in range(800):
        acc, base, policy, cheaper = generated(rng)
        now = NOW + rng.uniform(0, 30) * DAY
        fresh = rng.random() < 0.9
        verdict = classify(acc, base, policy, fresh=fresh, cheaper=cheaper, now=now)
        assert classify(acc, base, policy, fresh=fresh, cheaper=cheaper, now=now) == verdict
        if verdict.action is Action.DOWNGRADE:
            assert verdict.confidence is not Confidence.HIGH
        if verdict.due_at is not None:
            assert verdict.due_at > now
        start = advance(None, verdict, now, policy)
        if verdict.confidence is Confidence.LOW:
            assert start.event is None
        assert advance(start.finding, verdict, now, policy) == Step(finding=start.finding)
        # From any state, a second identical pass says nothing new.
        current = rng.choice([None, some_finding(rng, now)])
        first = advance(current, verdict, now, policy)
        second = advance(first.finding, verdict, now, policy)
        assert second == Step(finding=first.finding)


def some_finding(rng: random.Random, now: float) -> Finding:
    return Finding(
        state=rng.choice(list(FindingState)),
        verdict_class=rng.choice([LicenseClass.IDLE, LicenseClass.UNDERUSED]),
        action=rng.choice(list(Action)),
        episode_start=now - rng.uniform(0, 400) * DAY,
        until=rng.choice([None, now + rng.uniform(-30, 30) * DAY]),
        opened_at=now - rng.uniform(0, 30) * DAY,
    )
