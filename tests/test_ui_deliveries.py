"""The console's subscriptions and deliveries over HTTP: endpoints as the API shows them (no
secret), deliveries paged with the API's cursor and filtered, a delivery's attempts, sending
again, enabling a subscription and sending it what it missed as the API does (admins,
audited), tenants kept apart, CSRF, descriptions escaped."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import pytest
from ui_helpers import page_csrf, sign_in

from greenroom.model import NewRun, Role, RunState
from greenroom.storage.dispatch import Finished
from tests.api_helpers import ApiSetup, api_setup
from tests.helpers import settle_events

HOOK = "https://hooks.example.com/greenroom"
SLACK = "https://hooks.slack.com/services/T0/B0/slack-secret-path"
ROW = re.compile(r'<tr class="delivery" data-delivery="([0-9]+)"')
OLDER = re.compile(r'<a id="older" href="([^"]+)"')


@pytest.fixture
def console(db_url: str) -> Iterator[ApiSetup]:
    """The real app on loopback, on SQLite and on PostgreSQL."""
    with api_setup(db_url) as setup:
        yield setup


def subscribe(api: ApiSetup, tenant: str, **body: Any) -> dict[str, Any]:
    with api.as_(tenant) as c:
        made = c.post("/v1/subscriptions", json={"url": HOOK, "types": ["run.*"], **body})
        assert made.status_code == 201, made.text
        created: dict[str, Any] = made.json()
        return created


def deliveries_for(api: ApiSetup, tenant: str, n: int) -> None:
    """n failed runs of the tenant, their events fanned out to its subscriptions."""
    store = api.app.store
    for _ in range(n):
        store.runs.enqueue(NewRun(workflow="plain.echo", tenant=tenant))
        (lease,) = store.runs.claim("w1", ["default"], 1, 30.0)
        store.runs.finish(
            lease, RunState.FAILED, reason="failed", error={"type": "E", "message": "boom"}
        )
    settle_events(store)
    while store.dispatch.fan_out():
        pass


def fail_one(api: ApiSetup) -> int:
    """Every claimable delivery delivered, but the first failed with a 500; its id."""
    store = api.app.store
    claimed = store.dispatch.claim("w", limit=500, lease_seconds=30)
    first = claimed[0].delivery.id
    store.dispatch.finish(
        "w",
        [
            Finished(
                delivery_id=c.delivery.id,
                attempt=1,
                outcome="failed" if c.delivery.id == first else "delivered",
                status=500 if c.delivery.id == first else 204,
                error="HTTP 500 <b>bad gateway</b>" if c.delivery.id == first else None,
            )
            for c in claimed
        ],
        disable_after=86400,
    )
    return first


def test_subscriptions_and_deliveries_page_filter_and_show_no_secret(console: ApiSetup) -> None:
    hook = subscribe(console, "acme", description="<script>alert(1)</script> ops")
    slack = subscribe(console, "acme", channel="slack", url=SLACK, types=["run.succeeded"])
    deliveries_for(console, "acme", 52)
    failed = fail_one(console)
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        first = c.get("/ui/deliveries").text
        assert hook["secret"] not in first and "slack-secret-path" not in first
        assert "https://hooks.slack.com/…" in first and HOOK in first
        assert "&lt;script&gt;alert(1)&lt;/script&gt; ops" in first
        assert "<script>alert(1)" not in first
        assert f'data-subscription="{slack["id"]}"' in first
        assert 'method="post"' not in first.split("<main>")[1], "a viewer gets no actions"
        rows = ROW.findall(first)
        assert len(rows) == 50
        older = OLDER.search(first)
        assert older is not None
        second = c.get(html.unescape(older.group(1))).text
        assert len(ROW.findall(second)) == 2 and OLDER.search(second) is None
        assert not set(ROW.findall(second)) & set(rows)
        only_failed = c.get("/ui/deliveries?failed=true").text
        assert ROW.findall(only_failed) == [str(failed)]
        assert "HTTP 500 &lt;b&gt;bad gateway&lt;/b&gt;" in only_failed
        by_slack = c.get("/ui/deliveries", params={"subscription": slack["id"]}).text
        assert ROW.findall(by_slack) == []
        attempts = c.get(f"/ui/deliveries/{failed}").text
        assert '<tr class="attempt">' in attempts and "failed" in attempts
        for bad in ("failed=maybe", "cursor=x", "event=-1", f"subscription={'x' * 41}"):
            assert c.get(f"/ui/deliveries?{bad}").status_code == 422, bad
        assert c.get("/ui/deliveries/x").status_code == 422


def test_admins_send_again_and_enable_as_the_api_with_audit(console: ApiSetup) -> None:
    sub = subscribe(console, "acme")
    deliveries_for(console, "acme", 1)
    failed = fail_one(console)
    path = f"/ui/deliveries/{failed}/redeliver"
    toggle = f"/ui/subscriptions/{sub['id']}"
    with sign_in(console.url, console.keys["acme"][Role.OPERATOR]) as c:
        assert 'action="' + path not in c.get("/ui/deliveries").text
        token = page_csrf(c, "/ui/deliveries")
        refused = c.post(path, data={"csrf": token})
        assert refused.status_code == 403 and "operator" in refused.text
    with sign_in(console.url, console.keys["acme"][Role.ADMIN]) as c:
        listed = c.get("/ui/deliveries").text
        assert f'action="{path}"' in listed and f'action="{toggle}/disable"' in listed
        token = page_csrf(c, "/ui/deliveries")
        done = c.post(path, data={"csrf": token})
        assert done.status_code == 303
        again = c.get(done.headers["location"]).text
        assert 'class="badge state-pending">pending' in again
        assert c.post(f"{toggle}/disable", data={"csrf": token}).status_code == 303
        shown = c.get("/ui/deliveries").text
        assert "disabled" in shown and f'action="{toggle}/enable"' in shown
        deliveries_for(console, "acme", 1)  # missed while disabled
        assert c.post(f"{toggle}/enable", data={"csrf": token}).status_code == 303
        assert f'action="{toggle}/disable"' in c.get("/ui/deliveries").text
        with console.as_("acme") as api:
            assert [d["id"] for d in api.get("/v1/deliveries").json()["items"]] == [failed]
        for bad in ("", "yesterday"):
            wrong = c.post(f"{toggle}/recover", data={"csrf": token, "since": bad})
            assert wrong.status_code == 422 and "since" in wrong.text, bad
        recovered = c.post(f"{toggle}/recover", data={"csrf": token, "since": "2000-01-01T00:00"})
        assert recovered.status_code == 303
    with console.as_("acme") as api:
        found = api.get("/v1/deliveries").json()["items"]
        audit = api.get("/v1/audit").json()["items"]
        assert api.get(f"/v1/subscriptions/{sub['id']}").json()["enabled"]
    assert len(found) == 2 and {d["state"] for d in found} == {"pending"}
    assert failed in {d["id"] for d in found}
    actions = [a["action"] for a in audit]
    assert "delivery.replay" in actions and "delivery.recover" in actions
    admin = console.keys["acme"][Role.ADMIN].split(".", 1)[0]
    assert {a["actor"] for a in audit if a["action"] == "delivery.replay"} == {f"key:{admin}"}
    assert sum(a["action"].startswith("subscription.") for a in audit) >= 3


def test_a_viewer_may_not_post_and_a_tenant_not_touch_another_s(console: ApiSetup) -> None:
    ours = subscribe(console, "acme", description="acme hooks")
    theirs = subscribe(console, "globex", description="globex hooks")
    deliveries_for(console, "globex", 1)
    with console.as_("globex", Role.VIEWER) as api:
        (delivery,) = api.get("/v1/deliveries").json()["items"]
    posts = {
        f"/ui/deliveries/{delivery['id']}/redeliver": 404,
        f"/ui/subscriptions/{theirs['id']}/disable": 404,
        f"/ui/subscriptions/{theirs['id']}/enable": 404,
        f"/ui/subscriptions/{theirs['id']}/recover": 404,
    }
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        token = page_csrf(c, "/ui/deliveries")
        for post in (*posts, f"/ui/subscriptions/{ours['id']}/disable"):
            refused = c.post(post, data={"csrf": token})
            assert refused.status_code == 403 and "viewer" in refused.text, post
    with sign_in(console.url, console.keys["acme"][Role.ADMIN]) as c:
        listed = c.get("/ui/deliveries").text
        assert "acme hooks" in listed and "globex hooks" not in listed
        assert ROW.findall(listed) == []
        assert c.get(f"/ui/deliveries/{delivery['id']}").status_code == 404
        token = page_csrf(c, "/ui/deliveries")
        for post, status in posts.items():
            data = {"csrf": token, "since": "2000-01-01T00:00"}
            assert c.post(post, data=data).status_code == status, post
        assert c.post(f"/ui/subscriptions/{ours['id']}/disable").status_code == 403, "no CSRF"
        assert c.get("/ui/deliveries?tenant=globex").status_code == 403
    with sign_in(console.url, console.platform_key) as c:
        listed = c.get("/ui/deliveries?tenant=globex").text
        assert "globex hooks" in listed and "acme hooks" not in listed
        assert ROW.findall(listed) == [str(delivery["id"])]
    with console.as_("globex") as api:
        assert api.get(f"/v1/subscriptions/{theirs['id']}").json()["enabled"]
        assert api.get("/v1/deliveries").json()["items"] == [delivery]
    with console.as_("acme") as api:
        assert api.get(f"/v1/subscriptions/{ours['id']}").json()["enabled"]
