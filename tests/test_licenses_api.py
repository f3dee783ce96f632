"""/v1/integrations/{id}/accounts, /v1/licenses, /v1/findings, /v1/savings, /v1/license-policy
(both backends): pushes applied entirely or not at all with errors naming the row and field,
lists with filters and cursor pages, findings of the pass acted on (keep, snooze, reclaim once
through the connector's deactivate workflow), savings, policies, and tenant isolation."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from greenroom import App, RunContext
from greenroom.licenses.ingest import MAX_BATCH
from greenroom.model import Role
from tests.api_helpers import ApiSetup, api_setup
from tests.test_api_errors import assert_problem

DAY = 86400.0


def with_hr(app: App) -> None:
    """An `hr` connector that can deactivate an account (a license reclaim)."""
    hr = app.connector("hr", deactivate="hr.deactivate")

    @app.workflow(name="hr.deactivate", connector=hr)
    async def deactivate(ctx: RunContext, email: str) -> dict[str, str]:
        return {"deactivated": email}


@pytest.fixture
def api(db_url: str) -> Iterator[ApiSetup]:
    with api_setup(db_url, extend=with_hr) as setup:
        yield setup


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def _errors(r: httpx.Response) -> dict[str, str]:
    body = assert_problem(r, 422)
    return {e["field"]: e["message"] for e in body.get("errors", [])}


def integration(api: ApiSetup, tenant: str, connector: str = "crm") -> str:
    credentials = {"username": "bot", "password": "pw"} if connector == "crm" else {}
    body = {"connector": connector, "name": f"{tenant} {connector}", "credentials": credentials}
    with api.as_(tenant) as c:
        made: str = _ok(c.post("/v1/integrations", json=body), 201)["id"]
    return made


def account(user: str, idle_days: float | None, cost: float = 10.0, **more: Any) -> dict[str, Any]:
    """A paid account assigned a year ago, last active `idle_days` ago (None: never)."""
    now = time.time()
    row: dict[str, Any] = {
        "user_id": user,
        "email": f"{user}@example.com",
        "tier": "pro",
        "unit_cost": cost,
        "currency": "usd",
        "assigned_at": now - 365 * DAY,
    }
    if idle_days is not None:
        row["last_active"] = now - idle_days * DAY
    return row | more


def push(c: httpx.Client, integration_id: str, rows: Any, **params: Any) -> httpx.Response:
    return c.post(f"/v1/integrations/{integration_id}/accounts", json=rows, params=params)


def test_pushes_are_all_or_nothing_and_name_the_bad_row(api: ApiSetup) -> None:
    crm = integration(api, "acme")
    rows = [account("ada", 1), account("bob", 200), account("cy", None)]
    with api.as_("acme", Role.OPERATOR) as c:
        done = _ok(push(c, crm, rows))
        assert (done["received"], done["created"], done["changed"]) == (3, 3, 3)
        assert done["sync_id"].startswith("push:") and done["removed"] == 0
        ndjson = "\n".join(json.dumps(r) for r in rows) + "\n\n"
        again = _ok(
            c.post(
                f"/v1/integrations/{crm}/accounts",
                content=ndjson,
                headers={"Content-Type": "application/x-ndjson"},
            )
        )
        assert (again["received"], again["created"], again["changed"]) == (3, 0, 0)
        assert again["sync_id"] != done["sync_id"], "each push is its own sync by default"
        bad = [
            account("new", 1),
            account("eve", 1, currency="XYZ"),
            account("fay", 1, cost=-1),
            account("gus", 1, assigned_at="2024-13-45"),
            {"email": "nobody@example.com"},
        ]
        errors = _errors(push(c, crm, bad))
        assert set(errors) == {
            "accounts[1].currency",
            "accounts[2].unit_cost",
            "accounts[3].assigned_at",
            "accounts[4].user_id",
        }, errors
        assert "ISO 4217" in errors["accounts[1].currency"]
        over = [{"user_id": f"u{i}"} for i in range(MAX_BATCH + 1)]
        assert str(MAX_BATCH) in _errors(push(c, crm, over))["accounts"]
        broken = '{"user_id": "hal"}\n\nnot json\n'
        r = c.post(
            f"/v1/integrations/{crm}/accounts",
            content=broken,
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert "line 3" in _errors(r)["accounts[1]"]
        r = c.post(f"/v1/integrations/{crm}/accounts", content="user_id=x")
        assert "accounts" in _errors(r)
        r = push(c, crm, [account("dup", 1), account("dup", 2)])
        assert "accounts[1].user_id" in _errors(r)
        plain = c.post(
            f"/v1/integrations/{crm}/accounts", content="[]", headers={"Content-Type": "text/csv"}
        )
        assert_problem(plain, 415)
        users = {lic["user_id"] for lic in _ok(c.get("/v1/licenses"))["items"]}
        assert users == {"ada", "bob", "cy"}, "no refused batch applied any row"
        # A complete sync of two pages removes the accounts neither listed.
        first = _ok(push(c, crm, [account("ada", 1)], sync="nightly"))
        last = _ok(push(c, crm, [account("bob", 200)], sync="nightly", complete="true"))
        assert first["sync_id"] == last["sync_id"] == "nightly" and last["removed"] == 1
        removed = _ok(c.get("/v1/licenses", params={"removed": "true"}))["items"]
        assert [lic["user_id"] for lic in removed] == ["cy"]
    with api.as_("acme", Role.VIEWER) as c:
        assert_problem(push(c, crm, rows), 403)


def test_a_push_to_another_tenants_integration_is_not_found(api: ApiSetup) -> None:
    theirs = integration(api, "globex")
    with api.as_("acme", Role.OPERATOR) as c:
        assert_problem(push(c, theirs, [account("ada", 1)]), 404)
        assert_problem(push(c, "int_missing", [account("ada", 1)]), 404)
    with api.platform() as c:
        assert _ok(push(c, theirs, [account("ada", 1)]))["created"] == 1
    with api.as_("globex", Role.VIEWER) as c:
        [found] = _ok(c.get("/v1/licenses"))["items"]
    assert found["tenant"] == "globex" and found["integration_id"] == theirs


def _pages(c: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = _ok(c.get(path, params={**params, **({"cursor": cursor} if cursor else {})}))
        found += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def test_lists_filter_sort_and_page(api: ApiSetup) -> None:
    crm = integration(api, "acme")
    rows = [account(f"idle{i}", 200, cost=10.0 + i) for i in range(5)]
    rows += [account(f"busy{i}", 0.5) for i in range(4)]
    rows += [account("gone", 1, status="deactivated", cost=7)]
    with api.as_("acme", Role.OPERATOR) as c:
        _ok(push(c, crm, rows))
    judged = api.app.store.license_pass.judge_due()
    assert judged.licenses == 10 and judged.opened == 6
    with api.as_("acme", Role.VIEWER) as c:
        by_savings = _pages(c, "/v1/licenses", limit=3)
        assert len(by_savings) == 10 and len({lic["id"] for lic in by_savings}) == 10
        savings = [lic["monthly_savings"] or -1 for lic in by_savings]
        assert savings == sorted(savings, reverse=True) and savings[0] == 14.0
        recent = _pages(c, "/v1/licenses", limit=4, sort="recent")
        assert {lic["id"] for lic in recent} == {lic["id"] for lic in by_savings}
        idle = _pages(c, "/v1/licenses", verdict="idle", limit=2)
        assert {lic["user_id"] for lic in idle} == {f"idle{i}" for i in range(5)}
        assert all(lic["finding_id"] and lic["finding_state"] for lic in idle)
        quiet = _pages(c, "/v1/licenses", finding_state="none")
        assert {lic["user_id"] for lic in quiet} == {f"busy{i}" for i in range(4)}
        high = _pages(c, "/v1/licenses", confidence="high", integration=crm)
        assert "gone" in {lic["user_id"] for lic in high}
        findings = _pages(c, "/v1/findings", limit=4)
        assert len(findings) == 6 and findings[0]["monthly_savings"] == 14.0
        assert _pages(c, "/v1/findings", verdict="inactive_at_source")[0]["user_id"] == "gone"
        assert _pages(c, "/v1/findings", integration="int_other") == []
        one = _ok(c.get(f"/v1/licenses/{idle[0]['id']}"))
        assert one == idle[0]
        assert _ok(c.get(f"/v1/findings/{findings[0]['id']}")) == findings[0]
        assert "query.cursor" in _errors(c.get("/v1/licenses", params={"cursor": "bm9wZQ"}))
        assert "query.limit" in _errors(c.get("/v1/findings", params={"limit": 501}))
        assert "query.verdict" in _errors(c.get("/v1/licenses", params={"verdict": "lazy"}))
        assert_problem(c.get("/v1/licenses/lic_missing"), 404)
        assert_problem(c.get("/v1/findings/fnd_missing"), 404)


def _finding(c: httpx.Client, user: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        f for f in _pages(c, "/v1/findings", open="false") if f["user_id"] == user
    )
    return found


def test_findings_are_kept_snoozed_and_reclaimed_once(api: ApiSetup) -> None:
    hr, crm = integration(api, "acme", "hr"), integration(api, "acme")
    with api.as_("acme", Role.OPERATOR) as c:
        _ok(push(c, hr, [account(u, 200, cost=20) for u in ("ann", "ben", "col", "dan")]))
        _ok(push(c, crm, [account("dee", 200)]))
    api.app.store.license_pass.judge_due()
    with api.as_("acme", Role.OPERATOR) as c:
        ann = _finding(c, "ann")
        refused = c.post(f"/v1/findings/{ann['id']}/actions", json={"action": "keep", "note": "x"})
        assert_problem(refused, 403)
    with api.as_("acme", Role.ADMIN) as c:

        def act(who: dict[str, Any], **body: Any) -> httpx.Response:
            return c.post(f"/v1/findings/{who['id']}/actions", json=body)

        kept = _ok(act(ann, action="keep", note="the CEO's assistant"))
        assert kept["state"] == "kept" and kept["until"] > time.time() + 80 * DAY
        assert kept["note"] == "the CEO's assistant"
        assert "body.note" in _errors(act(ann, action="keep", note="  "))
        assert "body.until" in _errors(act(ann, action="snooze", note="later"))
        assert "body.until" in _errors(act(ann, action="keep", note="x", until=time.time()))
        ben = _finding(c, "ben")
        snoozed = _ok(act(ben, action="snooze", note="on leave", until="2030-01-01T00:00:00Z"))
        assert snoozed["state"] == "snoozed" and snoozed["until"] == 1893456000.0
        col = _finding(c, "col")
        reclaimed = _ok(act(col, action="reclaim", note="left the company"))
        run_id = reclaimed["action_run_id"]
        assert reclaimed["state"] == "actioned" and run_id
        assert _ok(act(col, action="reclaim", note="again"))["action_run_id"] == run_id
        dan = _ok(act(_finding(c, "dan"), action="reclaim", note="left too"))
        assert dan["action_run_id"] not in (None, run_id)
        run = _ok(c.get(f"/v1/runs/{run_id}"))
        assert run["workflow"] == "hr.deactivate" and run["input"] == {"email": "col@example.com"}
        assert run["labels"]["integration"] == hr and run["labels"]["finding"] == col["id"]
        assert run["idempotency_key"] == f"finding:{col['id']}:reclaim"
        no_way = act(_finding(c, "dee"), action="reclaim", note="crm cannot")
        assert "deactivate" in assert_problem(no_way, 409)["detail"]
    # One account is deactivated at the source, the other no longer listed: both findings
    # close as reclaimed.
    listed = [account(u, 200, cost=20) for u in ("ann", "ben")]
    listed.append(account("col", 200, cost=20, status="deactivated"))
    with api.as_("acme", Role.OPERATOR) as c:
        assert _ok(push(c, hr, listed, complete="true"))["removed"] == 1
    api.app.store.license_pass.judge_due()
    with api.as_("acme", Role.ADMIN) as c:
        closed = _finding(c, "col")
        assert closed["state"] == "closed" and closed["outcome"] == "reclaimed", closed
        assert_problem(act(closed, action="keep", note="too late"), 409)
        removed = _finding(c, "dan")
        assert removed["state"] == "closed" and removed["outcome"] == "reclaimed", removed
        totals = _ok(c.get("/v1/savings"))
    by_integration = {t["integration_id"]: t for t in totals["items"]}
    assert by_integration[hr]["realized"] == 40.0 and by_integration[hr]["reclaimed"] == 2
    assert by_integration[hr]["available"] == 0.0, "kept and snoozed findings are not counted"
    assert by_integration[crm]["available"] == 10.0
    assert totals["totals"] == [
        {"currency": "USD", "available": 10.0, "realized": 40.0, "open_findings": 3, "reclaimed": 2}
    ]


def test_policies_are_read_and_set(api: ApiSetup) -> None:
    crm, theirs = integration(api, "acme"), integration(api, "globex")
    with api.as_("acme", Role.VIEWER) as c:
        default = _ok(c.get("/v1/license-policy"))
        assert default["grace_days"] == 60 and default["threshold_days"] is None
        assert_problem(c.put("/v1/license-policy", json={"grace_days": 5}), 403)
    with api.as_("acme", Role.ADMIN) as c:
        changed = _ok(c.put("/v1/license-policy", json={"grace_days": 30, "exempt_roles": ["a"]}))
        assert changed["grace_days"] == 30 and changed["exempt_roles"] == ["a"]
        over = _ok(
            c.put("/v1/license-policy", params={"integration": crm}, json={"threshold_days": 45})
        )
        assert over["threshold_days"] == 45 and over["grace_days"] == 30
        assert _ok(c.get("/v1/license-policy"))["threshold_days"] is None
        assert _ok(c.get("/v1/license-policy", params={"integration": crm}))["threshold_days"] == 45
        cleared = c.put(
            "/v1/license-policy", params={"integration": crm}, json={"threshold_days": None}
        )
        assert _ok(cleared)["threshold_days"] is None
        assert "body.grace_days" in _errors(c.put("/v1/license-policy", json={"grace_days": -1}))
        assert "body.bogus" in _errors(c.put("/v1/license-policy", json={"bogus": 1}))
        for other_type in ({"min_users": True}, {"grace_days": "5"}, {"underuse_share": "0.3"}):
            assert _errors(c.put("/v1/license-policy", json=other_type)), other_type
        assert _ok(c.put("/v1/license-policy", json={"min_users": 25.0}))["min_users"] == 25
        assert_problem(c.get("/v1/license-policy", params={"integration": theirs}), 404)
        assert_problem(
            c.put("/v1/license-policy", params={"integration": theirs}, json={"grace_days": 1}), 404
        )
        assert_problem(c.put("/v1/license-policy", json={"tenant": "globex", "grace_days": 1}), 403)
    with api.platform() as c:
        assert_problem(c.put("/v1/license-policy", json={"grace_days": 1}), 422)
        done = _ok(c.put("/v1/license-policy", json={"tenant": "globex", "grace_days": 7}))
        assert done["grace_days"] == 7
        assert _ok(c.get("/v1/license-policy", params={"integration": theirs}))["grace_days"] == 7
    with api.as_("globex", Role.VIEWER) as c:
        assert _ok(c.get("/v1/license-policy"))["grace_days"] == 7
    with api.as_("acme", Role.VIEWER) as c:
        assert _ok(c.get("/v1/license-policy"))["grace_days"] == 30


def test_a_tenant_sees_none_of_another_tenants_licenses(api: ApiSetup) -> None:
    theirs = integration(api, "globex")
    with api.as_("globex", Role.OPERATOR) as c:
        _ok(push(c, theirs, [account("secret-user", 200, email="secret@globex.example")]))
    api.app.store.license_pass.judge_due()
    with api.as_("globex", Role.VIEWER) as c:
        [lic] = _ok(c.get("/v1/licenses"))["items"]
        [finding] = _ok(c.get("/v1/findings"))["items"]
    with api.as_("acme", Role.ADMIN) as c:
        for path in ("/v1/licenses", "/v1/findings"):
            assert _ok(c.get(path))["items"] == []
            assert _ok(c.get(path, params={"integration": theirs}))["items"] == []
            assert_problem(c.get(path, params={"tenant": "globex"}), 403)
        assert _ok(c.get("/v1/savings")) == {"items": [], "totals": []}
        assert_problem(c.get(f"/v1/licenses/{lic['id']}"), 404)
        assert_problem(c.get(f"/v1/findings/{finding['id']}"), 404)
        refused = c.post(
            f"/v1/findings/{finding['id']}/actions", json={"action": "keep", "note": "mine now"}
        )
        assert_problem(refused, 404)
    with api.platform() as c:
        assert {lic["tenant"] for lic in _ok(c.get("/v1/licenses"))["items"]} == {"globex"}
        assert _ok(c.get("/v1/licenses", params={"tenant": "acme"}))["items"] == []
        assert _ok(c.get("/v1/savings", params={"tenant": "globex"}))["totals"][0]["available"]
    with api.as_("globex", Role.VIEWER) as c:
        assert _ok(c.get(f"/v1/findings/{finding['id']}"))["state"] == finding["state"]
