"""Subscriptions and deliveries in the store (storage.subscriptions, storage.deliveries), on
SQLite and PostgreSQL: fan-out makes one delivery per event and subscription, claims respect
in-flight limits and rates across claimers, results are fenced, endpoints get disabled."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from greenroom import Conflict, InvalidInput, ManualClock, NotFound, RunState
from greenroom.model import Channel, DeliveryState, NewRun, Subscription
from greenroom.storage import RunStore
from greenroom.storage.deliveries import DeliveryFilter
from greenroom.storage.dispatch import Finished
from greenroom.storage.events import EventFilter
from greenroom.storage.outbox import NewEvent, emit
from greenroom.storage.subscriptions import SubscriptionSpec
from tests.helpers import settle_events

DAY = 86400.0
LEASE = 30.0


def subscribe(
    store: RunStore,
    tenant: str = "t1",
    *,
    channel: Channel = Channel.WEBHOOK,
    url: str = "https://example.com/hook",
    **spec: Any,
) -> Subscription:
    with contextlib.suppress(Conflict):
        store.accounts.create_tenant(tenant, actor="test")
    spec.setdefault("types", ["run.*"])
    return store.subscriptions.create(
        subscription_id=f"s-{len(store.subscriptions.list_subscriptions())}-{tenant}",
        tenant=tenant,
        channel=channel,
        spec=SubscriptionSpec(url=url, **spec),
        sealed=("k", "sealed") if channel is Channel.WEBHOOK else None,
        actor="admin@" + tenant,
    )


def finish_run(
    store: RunStore, tenant: str = "t1", state: RunState = RunState.SUCCEEDED, **labels: str
) -> str:
    run = store.runs.enqueue(NewRun(workflow="wf", tenant=tenant, labels=labels))[0]
    (lease,) = store.runs.claim("w", ["default"], 1, LEASE)
    error = {"type": "E", "message": "boom"} if state is RunState.FAILED else None
    store.runs.finish(lease, state, reason="done", error=error)
    return run.id


def fan_out(store: RunStore) -> int:
    settle_events(store)
    total = 0
    while n := store.dispatch.fan_out(limit=3):
        total += n
    return total


def deliveries(store: RunStore, **kw: Any) -> list[Any]:
    return store.deliveries.list_deliveries(DeliveryFilter(limit=500, **kw))


def ok(claimed: Any, outcome: str = "delivered", **kw: Any) -> Finished:
    return Finished(
        delivery_id=claimed.delivery.id, attempt=claimed.delivery.attempts, outcome=outcome, **kw
    )


def test_fan_out_makes_one_delivery_per_event_and_subscription_that_wants_it(
    store: RunStore, clock: ManualClock
) -> None:
    every = subscribe(store, types=["*"])
    failures = subscribe(store, types=["run.failed"])
    of_crm = subscribe(store, types=["run.*"], labels={"integration": "crm"})
    other = subscribe(store, "t2", types=["*"])
    clock.advance(1)
    finish_run(store, integration="crm")
    failed = finish_run(store, state=RunState.FAILED)
    finish_run(store, "t2")
    assert fan_out(store) == 3
    assert fan_out(store) == 0, "the cursor moved past them"
    made = deliveries(store)
    by_subscription = {s.id: 0 for s in (every, failures, of_crm, other)}
    for d in made:
        by_subscription[d.subscription_id] += 1
    assert by_subscription == {every.id: 2, failures.id: 1, of_crm.id: 1, other.id: 1}
    assert all(d.state is DeliveryState.PENDING and d.attempts == 0 for d in made)
    (failed_delivery,) = deliveries(store, subscription_id=failures.id)
    settle_events(store)
    (event,) = [e for e, _ in store.events.list_events(EventFilter(subject=f"run:{failed}"))]
    assert failed_delivery.event_id == event.id
    assert {d.tenant for d in deliveries(store, tenant="t2")} == {"t2"}


def test_a_subscription_hears_only_of_events_after_it_was_made_while_it_is_enabled(
    store: RunStore, clock: ManualClock
) -> None:
    finish_run(store)
    clock.advance(1)
    s = subscribe(store)
    store.subscriptions.update(s.id, SubscriptionSpec(enabled=False), actor="a")
    finish_run(store)
    fan_out(store)
    assert deliveries(store) == []
    store.subscriptions.update(s.id, SubscriptionSpec(enabled=True), actor="a")
    finish_run(store)
    fan_out(store)
    assert len(deliveries(store)) == 1


def test_a_subscription_at_its_in_flight_limit_does_not_hold_up_other_tenants(
    store: RunStore, clock: ManualClock
) -> None:
    busy = subscribe(store, "t1", max_in_flight=1)  # a slow endpoint with a backlog
    other = subscribe(store, "t2")
    clock.advance(1)
    with store.backend.transaction() as tx:
        backlog = [NewEvent("t1", "run.succeeded", f"run:r{i}", {}) for i in range(100)]
        emit(tx, store.backend, backlog, clock.now())
    with store.backend.transaction() as tx:
        emit(tx, store.backend, [NewEvent("t2", "run.succeeded", "run:x", {})], clock.now())
    settle_events(store)
    while store.dispatch.fan_out(limit=500):
        pass
    first = store.dispatch.claim("a", limit=10, lease_seconds=LEASE)
    second = store.dispatch.claim("b", limit=10, lease_seconds=LEASE)
    taken = [c.subscription.id for c in first + second]
    assert taken.count(busy.id) == 1, "the busy subscription's limit holds"
    assert taken.count(other.id) == 1, "t2's due delivery is claimed all the same"


def test_claims_respect_the_in_flight_limit_across_claimers_and_take_back_expired_leases(
    store: RunStore, clock: ManualClock
) -> None:
    s = subscribe(store, max_in_flight=2)
    clock.advance(1)
    for _ in range(5):
        finish_run(store)
    fan_out(store)
    first = store.dispatch.claim("a", limit=10, lease_seconds=LEASE)
    second = store.dispatch.claim("b", limit=10, lease_seconds=LEASE)
    assert (len(first), len(second)) == (2, 0)
    assert all(c.subscription.id == s.id and c.delivery.attempts == 1 for c in first)
    clock.advance(LEASE + 1)  # worker a died
    again = store.dispatch.claim("b", limit=10, lease_seconds=LEASE)
    assert len(again) == 2
    assert {c.delivery.id for c in again} == {c.delivery.id for c in first}, "oldest first"
    assert all(c.delivery.attempts == 2 for c in again)
    # a's late result is logged but does not move b's delivery
    assert store.dispatch.finish("a", [ok(first[0])], disable_after=5 * DAY) == 0
    assert store.deliveries.get(first[0].delivery.id).state is DeliveryState.SENDING
    assert len(store.deliveries.attempts(first[0].delivery.id)) == 1
    assert store.dispatch.finish("b", [ok(c) for c in again], disable_after=5 * DAY) == 2
    states = sorted(d.state.value for d in deliveries(store))
    assert states.count("delivered") == 2


def test_an_exchange_writes_results_then_claims_the_room_they_free(
    store: RunStore, clock: ManualClock
) -> None:
    s = subscribe(store, max_in_flight=2)
    clock.advance(1)
    for _ in range(5):
        finish_run(store)
    fan_out(store)
    first = store.dispatch.exchange("a", [], limit=10, lease_seconds=LEASE, disable_after=DAY)
    assert len(first) == 2, "the in-flight limit holds"
    results = [ok(c) for c in first]
    blocked = store.dispatch.exchange("b", [], limit=10, lease_seconds=LEASE, disable_after=DAY)
    assert blocked == []
    nxt = store.dispatch.exchange("a", results, limit=10, lease_seconds=LEASE, disable_after=DAY)
    assert len(nxt) == 2 and all(c.subscription.id == s.id for c in nxt)
    assert {c.delivery.id for c in nxt}.isdisjoint(c.delivery.id for c in first)
    assert [store.deliveries.get(c.delivery.id).state for c in first] == [
        DeliveryState.DELIVERED
    ] * 2
    # a stale result is fenced as in `finish`, and no claim goes past the limit
    late = store.dispatch.exchange("b", results, limit=10, lease_seconds=LEASE, disable_after=DAY)
    assert late == []
    assert sorted(d.state.value for d in deliveries(store)).count("sending") == 2


def test_results_deliver_retry_or_fail_and_every_attempt_is_logged(
    store: RunStore, clock: ManualClock
) -> None:
    subscribe(store)
    clock.advance(1)
    for _ in range(3):
        finish_run(store)
    fan_out(store)
    a, b, c = store.dispatch.claim("w", limit=10, lease_seconds=LEASE)
    now = clock.now()
    store.dispatch.finish(
        "w",
        [
            ok(a, status=200, latency_ms=12.5, response="thanks"),
            ok(b, "retry", status=500, error="HTTP 500", next_attempt_at=now + 5),
            ok(c, "failed", error="550 no such mailbox"),
        ],
        disable_after=5 * DAY,
    )
    got = {d.id: d for d in deliveries(store)}
    assert got[a.delivery.id].state is DeliveryState.DELIVERED
    assert got[a.delivery.id].delivered_at == now
    assert got[b.delivery.id].state is DeliveryState.PENDING
    assert got[b.delivery.id].next_attempt_at == now + 5
    assert got[c.delivery.id].state is DeliveryState.FAILED
    assert store.dispatch.claim("w", limit=10, lease_seconds=LEASE) == [], "b is not due yet"
    clock.advance(5)
    (b2,) = store.dispatch.claim("w", limit=10, lease_seconds=LEASE)
    assert b2.delivery.id == b.delivery.id and b2.delivery.attempts == 2
    (attempt,) = store.deliveries.attempts(a.delivery.id)
    assert (attempt.outcome, attempt.status, attempt.latency_ms, attempt.response) == (
        "delivered",
        200,
        12.5,
        "thanks",
    )
    assert [x.error for x in store.deliveries.attempts(b.delivery.id)] == ["HTTP 500"]
    failed = deliveries(store, failed=True)
    assert {d.id for d in failed} == {c.delivery.id}  # b is in flight again
    with pytest.raises(NotFound):
        store.deliveries.attempts(a.delivery.id, tenant="t2")


def test_a_gone_endpoint_is_disabled_and_the_tenants_other_subscriptions_hear_of_it(
    store: RunStore, clock: ManualClock
) -> None:
    gone = subscribe(store, types=["run.*"])
    watcher = subscribe(store, types=["endpoint.disabled"])
    stranger = subscribe(store, "t2", types=["*"])
    clock.advance(1)
    finish_run(store)
    fan_out(store)
    (claimed,) = store.dispatch.claim("w", limit=10, lease_seconds=LEASE)
    store.dispatch.finish("w", [ok(claimed, "disabled", status=410)], disable_after=5 * DAY)
    now = store.subscriptions.get(gone.id)
    assert not now.enabled and now.disabled_reason == "the endpoint answered 410 Gone"
    fan_out(store)
    (notice,) = deliveries(store, subscription_id=watcher.id)
    assert deliveries(store, subscription_id=stranger.id) == []
    settle_events(store)
    event = [e for e, _ in store.events.list_events(EventFilter(types=["endpoint.disabled"]))]
    assert [e.id for e in event] == [notice.event_id]
    assert event[0].payload["subscription_id"] == gone.id
    assert event[0].tenant == "t1"
    audit = store.admin.audit_log(tenant="t1")
    assert any(a.action == "subscription.disable" and a.target == gone.id for a in audit)


def test_an_endpoint_failing_for_days_without_a_success_is_disabled(
    store: RunStore, clock: ManualClock
) -> None:
    s = subscribe(store)
    clock.advance(1)

    def attempt(outcome: str) -> None:
        finish_run(store)
        fan_out(store)
        claimed = store.dispatch.claim("w", limit=10, lease_seconds=LEASE)
        store.dispatch.finish(
            "w",
            [ok(c, outcome, next_attempt_at=clock.now() + DAY) for c in claimed],
            disable_after=5 * DAY,
        )

    attempt("retry")
    started = store.subscriptions.get(s.id).failing_since
    assert started == clock.now()
    clock.advance(3 * DAY)
    attempt("retry")
    assert store.subscriptions.get(s.id).enabled
    attempt("delivered")
    assert store.subscriptions.get(s.id).failing_since is None, "a success ends the streak"
    attempt("retry")
    clock.advance(5 * DAY)
    attempt("retry")
    assert not store.subscriptions.get(s.id).enabled
    assert "5 days" in (store.subscriptions.get(s.id).disabled_reason or "")
    store.subscriptions.update(s.id, SubscriptionSpec(enabled=True), actor="a")
    back = store.subscriptions.get(s.id)
    assert back.enabled and back.failing_since is None and back.disabled_reason is None


def test_a_rate_limit_holds_across_claims(store: RunStore, clock: ManualClock) -> None:
    subscribe(store, rate_per_second=2, max_in_flight=100)
    clock.advance(10)
    for _ in range(6):
        finish_run(store)
    fan_out(store)
    assert len(store.dispatch.claim("a", limit=10, lease_seconds=LEASE)) == 2
    assert len(store.dispatch.claim("b", limit=10, lease_seconds=LEASE)) == 0
    clock.advance(0.5)
    assert len(store.dispatch.claim("b", limit=10, lease_seconds=LEASE)) == 1
    clock.advance(10)
    assert len(store.dispatch.claim("b", limit=10, lease_seconds=LEASE)) == 2, "a second's"


def test_a_digest_waits_for_its_window_and_goes_out_as_one(
    store: RunStore, clock: ManualClock
) -> None:
    s = subscribe(store, channel=Channel.EMAIL, url="ops@example.com", digest_minutes=10)
    clock.advance(1)
    for _ in range(4):
        finish_run(store)
    fan_out(store)
    made = deliveries(store)
    window_end = (int(clock.now() // 600) + 1) * 600.0
    assert {d.next_attempt_at for d in made} == {window_end}
    assert store.dispatch.claim("w", limit=1, lease_seconds=LEASE) == []
    clock.advance(window_end - clock.now())
    claimed = store.dispatch.claim("w", limit=1, lease_seconds=LEASE)
    assert len(claimed) == 4 and {c.subscription.id for c in claimed} == {s.id}
    assert store.dispatch.claim("w", limit=10, lease_seconds=LEASE) == []


def test_replay_and_recover_send_again_with_an_audit_entry(
    store: RunStore, clock: ManualClock
) -> None:
    s = subscribe(store)
    clock.advance(1)
    finish_run(store)
    finish_run(store)
    fan_out(store)
    a, b = store.dispatch.claim("w", limit=10, lease_seconds=LEASE)
    store.dispatch.finish("w", [ok(a), ok(b, "failed")], disable_after=5 * DAY)
    replayed = store.deliveries.replay(a.delivery.event_id, actor="ops", tenant="t1")
    assert [(d.id, d.state, d.attempts) for d in replayed] == [
        (a.delivery.id, DeliveryState.PENDING, 0)
    ]
    with pytest.raises(NotFound):
        store.deliveries.replay(a.delivery.event_id, actor="x", tenant="t2")
    # events while the subscription was off, and the failed one, come back with recover
    store.subscriptions.update(s.id, SubscriptionSpec(enabled=False), actor="a")
    finish_run(store)
    fan_out(store)
    store.subscriptions.update(s.id, SubscriptionSpec(enabled=True), actor="a")
    assert store.deliveries.recover(since=0, actor="ops", tenant="t1") == 3
    assert {d.state for d in deliveries(store)} == {DeliveryState.PENDING}
    assert len(deliveries(store)) == 3
    actions = [e.action for e in store.admin.audit_log(tenant="t1")]
    assert "delivery.replay" in actions and "delivery.recover" in actions


def test_subscription_input_is_checked(store: RunStore) -> None:
    for bad in (
        {"types": []},
        {"types": ["run.nope"]},
        {"types": ["license"]},
        {"max_in_flight": 0},
        {"digest_minutes": -1},
        {"rate_per_second": -1.0},
        {"labels": {"k\x01": "v"}},
        {"description": "x\x1b[31m"},
    ):
        with pytest.raises(InvalidInput):
            subscribe(store, **bad)
    with pytest.raises(NotFound):
        store.subscriptions.create(
            subscription_id="s",
            tenant="never-registered",
            channel=Channel.SLACK,
            spec=SubscriptionSpec(url="https://e.com", types=["*"]),
            sealed=None,
            actor="a",
        )
    s = subscribe(store, types=["run.failed", "run.failed", "pause.*"])
    assert s.types == ["pause.*", "run.failed"]
    with pytest.raises(NotFound):
        store.subscriptions.get(s.id, tenant="t2")


def test_prune_removes_old_attempts_and_finished_deliveries(
    store: RunStore, clock: ManualClock
) -> None:
    subscribe(store)
    clock.advance(1)
    finish_run(store)
    finish_run(store)
    fan_out(store)
    a, b = store.dispatch.claim("w", limit=10, lease_seconds=LEASE)
    store.dispatch.finish(
        "w", [ok(a), ok(b, "retry", next_attempt_at=clock.now() + 1)], disable_after=DAY
    )
    clock.advance(40 * DAY)
    assert store.deliveries.prune(older_than=30 * DAY) == 3  # two attempts, one delivery
    assert [d.id for d in deliveries(store)] == [b.delivery.id]


def test_a_subscription_greenroom_cannot_read_never_stops_another_tenants_deliveries(
    store: RunStore, clock: ManualClock
) -> None:
    broken = subscribe(store, "t1", types=["*"])
    fine = subscribe(store, "t2", types=["*"])
    with store.backend.transaction() as tx:
        tx.execute(
            "UPDATE subscriptions SET labels = '{not json' WHERE id = :id", {"id": broken.id}
        )
    clock.advance(1)
    finish_run(store, "t1")
    finish_run(store, "t2")
    fan_out(store)
    assert [d.subscription_id for d in deliveries(store)] == [fine.id]
    (claimed,) = store.dispatch.claim("w", limit=10, lease_seconds=LEASE)
    assert claimed.subscription.id == fine.id
