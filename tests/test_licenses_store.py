"""License intelligence on a real database (SQLite and PostgreSQL): syncs saved, the pass judging
what is due, findings moving, events sent once, on a manual clock driven day by day."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from greenroom import ManualClock, NotFound
from greenroom.licenses.ingest import parse_accounts
from greenroom.licenses.policy import PolicyIn
from greenroom.licenses.records import License
from greenroom.storage import RunStore, open_store
from greenroom.storage.licenses import LicenseFilter, Saved, activity_of

DAY = 86400.0
REGULARS = 25  # enough recently active users to learn the app's rhythm (20)


@pytest.fixture
def acme(store: RunStore) -> RunStore:
    add_integration(store, "acme", "i1")
    return store


def add_integration(store: RunStore, tenant: str, integration_id: str) -> None:
    store.accounts.create_tenant(tenant, actor="op")
    store.accounts.add_integration(
        integration_id=integration_id,
        tenant=tenant,
        connector="demo",
        name=f"crm-{integration_id}",
        settings={},
        sealed=("k", "s"),
        actor="op",
    )


def account(user: str, last_active: float | None, **more: Any) -> dict[str, Any]:
    return {
        "user_id": user,
        "email": f"{user}@example.com",
        "tier": "pro",
        "unit_cost": 30,
        "currency": "USD",
        "last_active": last_active,
        "assigned_at": 1_600_000_000,
        **more,
    }


def save(
    store: RunStore,
    rows: list[dict[str, Any]],
    *,
    sync: str,
    complete: bool = True,
    tenant: str = "acme",
    integration: str = "i1",
) -> Saved:
    return store.licenses.save(
        tenant, integration, parse_accounts(rows), sync_id=sync, complete=complete
    )


def regulars(now: float) -> list[dict[str, Any]]:
    """Users who come back every other day."""
    return [account(f"r{i}", now - ((i % 2) * DAY)) for i in range(REGULARS)]


def judge(store: RunStore) -> dict[str, int]:
    """One round of the license loop: upkeep, then the pass to the end; the pass's events."""
    store.license_upkeep.mark_stale()
    store.license_upkeep.relearn_baselines()
    sent: dict[str, int] = {}
    while True:
        batch = store.license_pass.judge_due()
        for kind, n in batch.events.items():
            sent[kind] = sent.get(kind, 0) + n
        if batch.licenses < 2000:
            return sent


def event_count(store: RunStore, kind: str) -> int:
    with store.backend.transaction(write=False) as tx:
        (row,) = tx.execute("SELECT COUNT(*) AS n FROM events WHERE type = :t", {"t": kind})
    return int(row["n"])


def one(store: RunStore, user: str, tenant: str = "acme") -> License:
    with store.backend.transaction(write=False) as tx:
        (row,) = tx.execute(
            "SELECT id FROM licenses WHERE tenant = :t AND user_id = :u", {"t": tenant, "u": user}
        )
    return store.licenses.get_license(row["id"], tenant=tenant)


def daily(
    store: RunStore, clock: ManualClock, days: int, extra: Any = lambda now: []
) -> dict[str, int]:
    """Sync the regulars (and `extra(now)`) and pass, once a day for `days` days."""
    sent: dict[str, int] = {}
    for _ in range(days):
        now = clock.now()
        save(store, regulars(now) + extra(now), sync=f"day{now:.0f}")
        for kind, n in judge(store).items():
            sent[kind] = sent.get(kind, 0) + n
        clock.advance(DAY)
    return sent


# -- saving syncs -------------------------------------------------------------------------


def test_a_page_saved_again_changes_nothing(acme: RunStore) -> None:
    rows = [account(f"u{i}", acme.clock.now() - DAY) for i in range(700)]
    first = save(acme, rows, sync="run1", complete=False)
    assert (first.received, first.created, first.changed) == (700, 700, 700)
    before = one(acme, "u5")
    again = save(acme, rows, sync="run1", complete=False)
    assert (again.created, again.changed, again.removed) == (0, 0, 0)
    assert one(acme, "u5") == before, "a replayed page leaves the license as it was"


def test_partial_syncs_never_remove_and_complete_ones_do(acme: RunStore) -> None:
    now = acme.clock.now()
    save(acme, [account(u, now) for u in "abc"], sync="s1")
    assert save(acme, [account("a", now)], sync="s2", complete=False).removed == 0
    assert one(acme, "c").removed_at is None
    assert save(acme, [account(u, now) for u in "ab"], sync="s3").removed == 1
    assert one(acme, "c").removed_at is not None
    save(acme, [account(u, now) for u in "abc"], sync="s4")
    assert one(acme, "c").removed_at is None, "an account listed again is back"


def test_accounts_of_another_tenants_integration_are_refused(acme: RunStore) -> None:
    add_integration(acme, "globex", "i2")
    with pytest.raises(NotFound):
        save(acme, [account("a", None)], sync="s", integration="i2")
    page, _ = acme.licenses.list_licenses(LicenseFilter())
    assert page == []


def test_activity_days_are_kept_from_each_sync(acme: RunStore, clock: ManualClock) -> None:
    for _ in range(5):
        save(acme, [account("a", clock.now())], sync=f"s{clock.now()}")
        clock.advance(2 * DAY)
    days = one(acme, "a").active_days
    assert len(days) == 5 and days[-1] - days[0] == 8


# -- the pass -----------------------------------------------------------------------------


def test_an_idle_license_is_reported_once_over_30_daily_passes(
    acme: RunStore, clock: ManualClock
) -> None:
    start = clock.now()
    sent = daily(acme, clock, 30, lambda now: [account("idle", start - 40 * DAY)])
    assert sent == {"license.idle": 1}
    assert event_count(acme, "license.idle") == 1
    lic = one(acme, "idle")
    assert lic.verdict == "idle" and lic.finding_state == "notified"
    assert "users of this app return within" in (lic.reason or "")
    assert lic.monthly_savings == 30.0 and lic.savings_currency == "USD"


def test_active_again_then_idle_again_is_a_new_finding(acme: RunStore, clock: ManualClock) -> None:
    start = clock.now()
    daily(acme, clock, 2, lambda now: [account("u", start - 40 * DAY)])
    back = clock.now()
    sent = daily(acme, clock, 1, lambda now: [account("u", back)])
    assert sent == {}, "becoming active again is silent"
    assert one(acme, "u").verdict == "active" and one(acme, "u").finding_state is None
    sent = daily(acme, clock, 40, lambda now: [account("u", back)])
    assert sent == {"license.idle": 1}
    with acme.backend.transaction(write=False) as tx:
        rows = tx.execute("SELECT state, outcome FROM license_findings ORDER BY seq")
    assert [(r["state"], r["outcome"]) for r in rows] == [
        ("closed", "resolved"),
        ("notified", None),
    ]


def test_a_new_hire_in_grace_is_not_flagged(acme: RunStore, clock: ManualClock) -> None:
    hired = clock.now() - 10 * DAY
    sent = daily(acme, clock, 20, lambda now: [account("new", None, assigned_at=hired)])
    assert sent == {}
    assert one(acme, "new").reason_code == "grace"
    sent = daily(acme, clock, 40, lambda now: [account("new", None, assigned_at=hired)])
    assert sent == {"license.idle": 1}
    assert one(acme, "new").verdict == "never_used"


def test_stale_data_gives_unknown_and_one_event(acme: RunStore, clock: ManualClock) -> None:
    start = clock.now()
    daily(acme, clock, 3, lambda now: [account("idle", start - 40 * DAY)])
    clock.advance(3 * DAY)  # the syncs stopped: more than twice a day's interval
    for _ in range(5):
        assert acme.license_upkeep.mark_stale() in (0, 1)
        judge(acme)
        clock.advance(DAY)
    assert event_count(acme, "integration.data_stale") == 1
    page, _ = acme.licenses.list_licenses(LicenseFilter(tenant="acme", limit=100))
    assert {lic.verdict for lic in page} == {"unknown"}, "stale data is not idleness"
    assert one(acme, "idle").finding_state == "notified", "a finding stays as it was"
    save(acme, regulars(clock.now()), sync="back", complete=False)
    judge(acme)
    assert one(acme, "r1").verdict == "active", "fresh data: judged again"
    assert event_count(acme, "license.idle") == 1


def test_kept_holds_for_the_cooldown(acme: RunStore, clock: ManualClock) -> None:
    start = clock.now()
    idle = [account("idle", start - 40 * DAY)]
    daily(acme, clock, 2, lambda now: idle)  # a day of history to learn the app's rhythm
    finding = one(acme, "idle").finding_id
    assert finding is not None
    kept = acme.findings.keep(finding, tenant="acme", actor="admin", note="the CFO's seat")
    assert kept.state == "kept" and kept.until == pytest.approx(clock.now() + 90 * DAY)
    assert daily(acme, clock, 89, lambda now: idle) == {}
    assert daily(acme, clock, 2, lambda now: idle) == {"license.idle": 1}
    with acme.backend.transaction(write=False) as tx:
        (audit,) = tx.execute("SELECT * FROM audit_log WHERE action = 'finding.keep'")
    assert audit["actor"] == "admin" and audit["reason"] == "the CFO's seat"


def test_a_removed_account_closes_its_finding_as_reclaimed(
    acme: RunStore, clock: ManualClock
) -> None:
    start = clock.now()
    daily(acme, clock, 2, lambda now: [account("idle", start - 40 * DAY)])
    daily(acme, clock, 1)  # a complete sync without it
    with acme.backend.transaction(write=False) as tx:
        (row,) = tx.execute("SELECT state, outcome FROM license_findings")
    assert (row["state"], row["outcome"]) == ("closed", "reclaimed")
    (total,) = acme.findings.savings(tenant="acme")
    assert (total.realized, total.reclaimed, total.available) == (30.0, 1, 0.0)


def test_a_pass_run_again_changes_and_sends_nothing(acme: RunStore, clock: ManualClock) -> None:
    rng = random.Random(16)
    now = clock.now()
    rows = regulars(now) + [
        account(f"u{i}", None if rng.random() < 0.1 else now - rng.randint(0, 150) * DAY)
        for i in range(300)
    ]
    save(acme, rows, sync="s1")
    judge(acme)
    with acme.backend.transaction() as tx:
        before = tx.execute("SELECT * FROM licenses ORDER BY seq")
        found = tx.execute("SELECT * FROM license_findings ORDER BY seq")
        tx.execute("UPDATE licenses SET due_at = :now", {"now": now})
    assert judge(acme) == {}
    with acme.backend.transaction(write=False) as tx:
        after = tx.execute("SELECT * FROM licenses ORDER BY seq")
        found_after = tx.execute("SELECT * FROM license_findings ORDER BY seq")
    drop = ("checked_at", "due_at")
    assert [{k: v for k, v in r.items() if k not in drop} for r in after] == [
        {k: v for k, v in r.items() if k not in drop} for r in before
    ]
    assert found_after == found


def test_a_digest_once_per_tenant_and_day(acme: RunStore, clock: ManualClock) -> None:
    start = clock.now()
    daily(acme, clock, 2, lambda now: [account("idle", start - 40 * DAY)])
    assert acme.license_upkeep.digest() == 1
    assert acme.license_upkeep.digest() == 0
    clock.advance(DAY)
    assert acme.license_upkeep.digest() == 1
    assert event_count(acme, "license.digest") == 2


def test_a_tenant_threshold_wins_and_makes_the_licenses_due(
    acme: RunStore, clock: ManualClock
) -> None:
    start = clock.now()
    daily(acme, clock, 2, lambda now: [account("u", start - 20 * DAY)])
    assert one(acme, "u").verdict == "idle", "the learned threshold (14 days) is passed"
    acme.findings.set_policy("acme", PolicyIn(threshold_days=30), integration_id=None, actor="a")
    judge(acme)
    assert one(acme, "u").verdict == "active"
    assert acme.findings.policy("acme")["threshold_days"] == 30


def at_once(*calls: Callable[[], object]) -> None:
    """Each call in a thread of its own, all started before any is awaited."""
    threads = [threading.Thread(target=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_saves_of_one_account_at_once_keep_both_days(acme: RunStore, db_url: str) -> None:
    """Two syncs report the same users, each a different day: both days are kept, as each save
    merges into what the other wrote (they take turns on the integration)."""
    now = acme.clock.now()
    users = [f"u{i}" for i in range(200)]
    stores = [open_store(db_url, clock=acme.clock) for _ in range(2)]
    try:
        for round_ in range(5):
            days = (now - (2 * round_ + 1) * DAY, now - (2 * round_ + 2) * DAY)
            batches = [parse_accounts([account(u, day) for u in users]) for day in days]
            at_once(
                *(
                    partial(s.licenses.save, "acme", "i1", rows, sync_id=f"s{round_}-{k}")
                    for k, (s, rows) in enumerate(zip(stores, batches, strict=True))
                )
            )
    finally:
        for s in stores:
            s.backend.close()
    with acme.backend.transaction(write=False) as tx:
        rows = tx.execute("SELECT user_id, activity, activity_day FROM licenses")
    assert len(rows) == len(users)
    for row in rows:
        assert len(activity_of(row).days()) == 10, row["user_id"]


def passes(store: RunStore) -> None:
    for _ in range(12):
        store.license_pass.judge_due(limit=50)


def test_passes_at_once_judge_each_license_once(acme: RunStore, db_url: str) -> None:
    now = acme.clock.now()
    save(acme, regulars(now) + [account(f"idle{i}", now - 150 * DAY) for i in range(400)], sync="s")
    stores = [open_store(db_url, clock=acme.clock) for _ in range(3)]
    try:
        at_once(*(partial(passes, s) for s in stores))
    finally:
        for s in stores:
            s.backend.close()
    judge(acme)
    assert event_count(acme, "license.idle") == 400


def test_an_unreadable_license_never_stops_another_tenants(
    acme: RunStore, clock: ManualClock
) -> None:
    add_integration(acme, "globex", "i2")
    now = clock.now()
    save(acme, [account("broken", now), *regulars(now)], sync="a")
    globex = [account("idle", now - 150 * DAY)]
    save(acme, globex, sync="g", tenant="globex", integration="i2")
    with acme.backend.transaction() as tx:
        tx.execute("UPDATE licenses SET activity = 'zz' WHERE user_id = 'broken'")
    judge(acme)
    assert one(acme, "broken").reason_code == "unreadable"
    assert one(acme, "r1").verdict == "active"
    assert event_count(acme, "license.idle") == 1, "the other tenant's finding is made"


def test_accounts_of_the_first_sync_are_judged_at_once_and_later_ones_get_grace(
    acme: RunStore, clock: ManualClock
) -> None:
    """Without assignment dates, an app connected today is judged today (its accounts are no
    new hires); an account that appears in a later sync is one."""
    start = clock.now()
    unknown = {"assigned_at": None}
    daily(acme, clock, 2, lambda now: [account("old", start - 90 * DAY, **unknown)])
    assert one(acme, "old").verdict == "idle"
    daily(acme, clock, 1, lambda now: [account("new", None, **unknown)])
    assert one(acme, "new").reason_code == "grace"


def test_unassigned_seats_are_told_when_their_number_grows(acme: RunStore) -> None:
    now = acme.clock.now()
    save(acme, [account(f"u{i}", now) for i in range(42)], sync="s1")
    acme.licenses.save_seats("acme", "i1", {"pro": 50, "standard": 0})
    assert acme.license_upkeep.unassigned_seats() == 1
    assert acme.license_upkeep.unassigned_seats() == 0, "told once while it stays"
    with acme.backend.transaction(write=False) as tx:
        (event,) = tx.execute("SELECT payload FROM events WHERE type = 'seats.unassigned'")
    payload = json.loads(event["payload"])
    assert (payload["unassigned"], payload["monthly_savings"]) == (8, 240.0)
    save(acme, [account(f"u{i}", now) for i in range(40)], sync="s2")  # two left
    assert acme.license_upkeep.unassigned_seats() == 1
    save(acme, [account(f"u{i}", now) for i in range(50)], sync="s3")  # all assigned
    assert acme.license_upkeep.unassigned_seats() == 0
    assert event_count(acme, "seats.unassigned") == 2


def test_a_deleted_integration_takes_its_licenses_and_findings(
    acme: RunStore, clock: ManualClock
) -> None:
    start = clock.now()
    daily(acme, clock, 2, lambda now: [account("idle", start - 40 * DAY)])
    acme.findings.set_policy("acme", PolicyIn(grace_days=10), integration_id="i1", actor="a")
    acme.accounts.delete_integration("i1", actor="op")
    with acme.backend.transaction(write=False) as tx:
        left = {
            table: tx.execute(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]
            for table in ("licenses", "license_findings", "license_sources", "license_policies")
        }
    assert left == dict.fromkeys(left, 0)
    assert acme.findings.savings(tenant="acme") == []
