"""/v1/subscriptions, /v1/deliveries and the `subscriptions` / `deliveries` commands (both
backends): secrets shown once, tenant isolation, bad endpoints and filters refused naming the
field, replays and recovery audited, the same answers with --db and --url."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from greenroom.model import NewRun, Role, RunState
from greenroom.storage.dispatch import Finished
from greenroom.storage.events import EventFilter
from tests.api_helpers import ApiSetup
from tests.helpers import settle_events
from tests.test_api_errors import assert_problem
from tests.test_cli import assert_one_line_error, cli

HOOK = "https://hooks.example.com/greenroom"


@pytest.fixture(autouse=True)
def no_server_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREENROOM_URL", raising=False)
    monkeypatch.delenv("GREENROOM_API_KEY", raising=False)


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def _fields(r: httpx.Response) -> list[str]:
    return [e["field"] for e in assert_problem(r, 422).get("errors", [])]


def _create(c: httpx.Client, **body: Any) -> dict[str, Any]:
    created: dict[str, Any] = _ok(
        c.post("/v1/subscriptions", json={"url": HOOK, "types": ["run.*"], **body}), 201
    )
    return created


def _deliveries_for(api: ApiSetup, tenant: str, n: int, state: RunState) -> list[int]:
    """n ended runs of the tenant, fanned out; the ids of their events."""
    store = api.app.store
    for _ in range(n):
        store.runs.enqueue(NewRun(workflow="plain.echo", tenant=tenant))
        (lease,) = store.runs.claim("w1", ["default"], 1, 30.0)
        error = {"type": "E", "message": "boom"} if state is RunState.FAILED else None
        store.runs.finish(lease, state, reason=state.value, error=error)
    settle_events(store)
    while store.dispatch.fan_out():
        pass
    return [e.id for e, _ in store.events.list_events(EventFilter(tenant=tenant, limit=500))][-n:]


def test_a_tenant_admin_subscribes_and_sees_the_secret_once(api: ApiSetup) -> None:
    with api.as_("acme") as admin:
        created = _create(admin, description="ops", labels={"integration": "crm"})
        assert created["secret"].startswith("whsec_")
        assert created["tenant"] == "acme" and created["enabled"]
        shown = _ok(admin.get(f"/v1/subscriptions/{created['id']}"))
        assert "secret" not in shown
        assert shown["labels"] == {"integration": "crm"} and shown["description"] == "ops"
        assert [s["id"] for s in _ok(admin.get("/v1/subscriptions"))] == [created["id"]]
        slack = _create(admin, channel="slack", url="https://hooks.slack.com/services/T/B/XYZ")
        assert slack["secret"] is None and slack["url"] == "https://hooks.slack.com/…"
        mail = _create(admin, channel="email", url="ops@acme.example", digest_minutes=15)
        assert mail["secret"] is None and mail["digest_minutes"] == 15
    with api.as_("acme", Role.VIEWER) as viewer:
        assert_problem(viewer.post("/v1/subscriptions", json={"url": HOOK, "types": ["*"]}), 403)
        assert len(_ok(viewer.get("/v1/subscriptions"))) == 3
    with api.as_("globex") as other:
        assert_problem(other.get(f"/v1/subscriptions/{created['id']}"), 404)
        assert_problem(other.patch(f"/v1/subscriptions/{created['id']}", json={}), 404)
        assert _ok(other.get("/v1/subscriptions")) == []
    with api.platform() as platform:
        assert len(_ok(platform.get("/v1/subscriptions"))) == 3
        assert _ok(platform.get("/v1/subscriptions", params={"tenant": "globex"})) == []
        assert_problem(platform.post("/v1/subscriptions", json={"url": HOOK, "types": ["*"]}), 422)
    secret = created["secret"]
    stored = api.app.store.subscriptions.get(created["id"])
    assert stored.secret is not None and secret not in stored.secret, "sealed, not stored plain"
    audit = api.app.store.admin.audit_log(tenant="acme")
    assert any(a.action == "subscription.create" for a in audit)
    assert secret not in json.dumps([a.detail for a in audit])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "https://127.0.0.1/hook"}, "body.url"),
        ({"url": "https://169.254.169.254/latest"}, "body.url"),
        ({"url": "https://[::1]/x"}, "body.url"),
        ({"url": "http://hooks.example.com/x"}, "body.url"),
        ({"url": "ftp://hooks.example.com/x"}, "body.url"),
        ({"url": "https://user:pw@hooks.example.com/"}, "body.url"),
        ({"url": "https://hooks.example.com/\x00"}, "body.url"),
        ({"url": "not an address", "channel": "email"}, "body.url"),
        ({"url": "a@b.c\r\nBcc: x@y.z", "channel": "email"}, "body.url"),
        ({"types": ["run.exploded"]}, "body.types.0"),
        ({"types": []}, "body.types"),
        ({"types": ["run.f*"]}, "body.types.0"),
        ({"channel": "pager"}, "body.channel"),
        ({"labels": {"k": 5}}, "body.labels.k"),
        ({"max_in_flight": 0}, "body.max_in_flight"),
        ({"rate_per_second": -1}, "body.rate_per_second"),
        ({"digest_minutes": 100000}, "body.digest_minutes"),
        ({"description": "x\x1b[2J"}, "body.description"),
        ({"surprise": 1}, "body.surprise"),
    ],
)
def test_bad_subscriptions_are_refused_naming_the_field(
    api: ApiSetup, body: dict[str, Any], field: str
) -> None:
    with api.as_("acme") as admin:
        r = admin.post("/v1/subscriptions", json={"url": HOOK, "types": ["run.*"], **body})
        assert field in _fields(r), r.text
        assert _ok(admin.get("/v1/subscriptions")) == [], "nothing was made"


def test_update_rotate_and_delete(api: ApiSetup) -> None:
    with api.as_("acme") as admin:
        created = _create(admin)
        path = f"/v1/subscriptions/{created['id']}"
        assert "body.url" in _fields(admin.patch(path, json={"url": "https://10.0.0.1/"}))
        changed = _ok(admin.patch(path, json={"enabled": False, "types": ["run.failed"]}))
        assert not changed["enabled"] and changed["types"] == ["run.failed"]
        rotated = _ok(admin.post(f"{path}/rotate-secret"))
        assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
        assert rotated["previous_secret_until"] > rotated["updated_at"]
        slack = _create(admin, channel="slack", url="https://hooks.slack.com/services/x")
        assert_problem(admin.post(f"/v1/subscriptions/{slack['id']}/rotate-secret"), 422)
        assert _ok(admin.delete(path), 204) is None
        assert_problem(admin.get(path), 404)
    actions = [a.action for a in api.app.store.admin.audit_log(tenant="acme")]
    for action in ("subscription.update", "subscription.rotate_secret", "subscription.delete"):
        assert action in actions


def test_deliveries_their_attempts_replay_and_recover(api: ApiSetup) -> None:
    with api.as_("acme") as admin:
        sub = _create(admin, types=["run.failed"])
    with api.as_("globex") as other:
        _create(other, types=["*"])
    events = _deliveries_for(api, "acme", 3, RunState.FAILED)
    _deliveries_for(api, "globex", 1, RunState.SUCCEEDED)
    store = api.app.store
    claimed = store.dispatch.claim("w", limit=10, lease_seconds=30)
    store.dispatch.finish(
        "w",
        [
            Finished(
                delivery_id=c.delivery.id,
                attempt=1,
                outcome="failed" if c.event.id == events[0] else "delivered",
                status=500 if c.event.id == events[0] else 204,
                error="HTTP 500" if c.event.id == events[0] else None,
            )
            for c in claimed
        ],
        disable_after=86400,
    )
    with api.as_("acme", Role.VIEWER) as viewer:
        page = _ok(viewer.get("/v1/deliveries", params={"limit": 2}))
        assert len(page["items"]) == 2 and page["next_cursor"]
        rest = _ok(viewer.get("/v1/deliveries", params={"cursor": page["next_cursor"]}))
        everything = page["items"] + rest["items"]
        assert sorted(d["event_id"] for d in everything) == sorted(events)
        assert all(d["tenant"] == "acme" for d in everything)
        (failed,) = _ok(viewer.get("/v1/deliveries", params={"failed": True}))["items"]
        assert failed["event_id"] == events[0] and failed["last_error"] == "HTTP 500"
        (attempt,) = _ok(viewer.get(f"/v1/deliveries/{failed['id']}/attempts"))
        assert (attempt["outcome"], attempt["status"]) == ("failed", 500)
        assert_problem(viewer.post(f"/v1/events/{events[0]}/replay"), 403)
        event = _ok(viewer.get(f"/v1/events/{events[0]}"))
        assert event["type"] == "run.failed"
        for bad in ({"failed": "maybe"}, {"cursor": "x"}, {"event": -1}, {"limit": 0}):
            assert _fields(viewer.get("/v1/deliveries", params=bad))
    with api.as_("globex") as other:
        assert_problem(other.get(f"/v1/deliveries/{failed['id']}/attempts"), 404)
        assert_problem(other.post(f"/v1/events/{events[0]}/replay"), 404)
        assert_problem(other.get(f"/v1/events/{events[0]}"), 404)
    with api.as_("acme") as admin:
        replayed = _ok(admin.post(f"/v1/events/{events[1]}/replay", json={}))
        assert [(d["event_id"], d["state"], d["attempts"]) for d in replayed] == [
            (events[1], "pending", 0)
        ]
        body = {"subscription": sub["id"]}
        assert len(_ok(admin.post(f"/v1/events/{events[0]}/replay", json=body))) == 1
        done = _ok(admin.post("/v1/deliveries/recover", json={"since": 0}))
        assert done == {"deliveries": 2}, "the failed one and the replayed one, not the delivered"
        missing = {"since": 0, "subscription": "nope"}
        assert_problem(admin.post("/v1/deliveries/recover", json=missing), 404)
    actions = [a.action for a in store.admin.audit_log(tenant="acme")]
    assert actions.count("delivery.replay") == 2 and "delivery.recover" in actions


def test_the_commands_work_on_a_database_and_through_the_api(
    api: ApiSetup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = api.app.settings.secret_key
    assert key is not None
    monkeypatch.setenv("GREENROOM_SECRET_KEY", key.get_secret_value())
    remote = ("--url", api.url, "--key", api.keys["acme"][Role.ADMIN])
    local = ("--db", api.app.settings.db)
    code, out, err = cli(capsys, *remote, "subscriptions", "create", HOOK, "--types", "run.*")
    assert code == 0, err
    assert out.strip().startswith("whsec_") and "whsec_" not in err and "shown only" in err
    args = ("subscriptions", "create", HOOK, "--types", "run.failed", "--tenant", "acme")
    code, out, err = cli(capsys, *local, *args, "--label", "integration=crm")
    assert code == 0 and out.strip().startswith("whsec_"), err
    code, out, err = cli(capsys, *remote, "subscriptions", "list", "--json")
    over_api = json.loads(out)
    code, out, err = cli(capsys, *local, "subscriptions", "list", "--tenant", "acme", "--json")
    assert json.loads(out) == over_api and len(over_api) == 2, err
    code, out, err = cli(
        capsys, *remote, "subscriptions", "create", "https://10.1.1.1/", "--types", "*"
    )
    assert_one_line_error(code, err, "url")
    code, out, err = cli(capsys, *local, "subscriptions", "create", HOOK, "--types", "run.nope")
    assert_one_line_error(code, err, "types")
    sub = over_api[0]["id"]
    for where in (remote, local):
        code, out, err = cli(capsys, *where, "subscriptions", "update", sub, "--disable")
        assert code == 0 and "disabled" in out, err
        code, out, err = cli(capsys, *where, "subscriptions", "update", sub, "--enable")
        assert code == 0 and "enabled" in out, err
        code, out, err = cli(capsys, *where, "subscriptions", "rotate-secret", sub)
        assert code == 0 and out.strip().startswith("whsec_"), err
    events = _deliveries_for(api, "acme", 2, RunState.FAILED)
    for where in (remote, local):
        code, out, err = cli(capsys, *where, "deliveries", "list", "--tenant", "acme", "--json")
        assert code == 0, err
        listed = json.loads(out)
        assert sorted({d["event_id"] for d in listed}) == sorted(events)
        assert len(listed) == 2, "run.* gets both, run.failed with a label gets none"
        code, out, err = cli(capsys, *where, "deliveries", "list", "--failed")
        assert code == 0 and "no deliveries" in out, err
        code, out, err = cli(capsys, *where, "deliveries", "replay", str(events[0]))
        assert code == 0 and "1 subscription" in out, err
        code, out, err = cli(
            capsys, *where, "deliveries", "recover", "--since", "1h", "--tenant", "acme"
        )
        assert code == 0 and "deliveries will be sent again" in out, err
        code, out, err = cli(capsys, *where, "deliveries", "attempts", str(listed[0]["id"]))
        assert code == 0 and "no attempts" in out, err
    code, out, err = cli(capsys, *local, "deliveries", "recover", "--since", "1h")
    assert_one_line_error(code, err, "--tenant")
    code, out, err = cli(capsys, *remote, "subscriptions", "delete", sub)
    assert code == 0 and "deleted" in out, err
