"""The console's licenses over HTTP: savings per currency and integration, findings paged with
the API's cursor and filtered, keep, snooze and reclaim as the API does them (admins, audited),
tenants kept apart, CSRF, users' emails escaped, bad filters a 4xx page."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import pytest
from ui_helpers import page_csrf, sign_in

from greenroom.model import Role
from tests.api_helpers import ApiSetup, api_setup
from tests.test_licenses_api import account, integration, push, with_hr

ROW = re.compile(r'<tr class="finding" data-finding="([^"]+)"')
OLDER = re.compile(r'<a id="older" href="([^"]+)"')
EVIL = "<script>alert(1)</script>"


@pytest.fixture
def console(db_url: str) -> Iterator[ApiSetup]:
    """The real app on loopback (with an `hr` connector that can reclaim), on SQLite and on
    PostgreSQL."""
    with api_setup(db_url, extend=with_hr) as setup:
        yield setup


def findings(api: ApiSetup, tenant: str, rows: list[dict[str, Any]], connector: str = "hr") -> str:
    """The tenant's accounts pushed to a new integration and judged; the integration's id."""
    made = integration(api, tenant, connector)
    with api.as_(tenant, Role.OPERATOR) as c:
        assert push(c, made, rows).status_code == 200
    api.app.store.license_pass.judge_due()
    return made


def listed(api: ApiSetup, tenant: str, **params: Any) -> list[dict[str, Any]]:
    with api.as_(tenant, Role.VIEWER) as c:
        found: list[dict[str, Any]] = c.get("/v1/findings", params=params).json()["items"]
        return found


def test_savings_and_findings_page_filter_and_escape(console: ApiSetup) -> None:
    rows = [account(f"idle{i}", 200, cost=10.0 + i) for i in range(52)]
    rows.append(account("evil", 200, cost=99, email=f"{EVIL}@example.com", name=EVIL))
    hr = findings(console, "acme", rows)
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        first = c.get("/ui/licenses").text
        assert "<script>alert(1)" not in first
        assert "&lt;script&gt;alert(1)&lt;/script&gt;@example.com" in first
        assert 'method="post"' not in first.split("<main>")[1], "a viewer gets no actions"
        assert "acme hr" in first and "USD" in first
        total = sum(10.0 + i for i in range(52)) + 99
        assert f"{total:.2f}" in first, "the currency's available savings"
        page_one = ROW.findall(first)
        by_api = [f["id"] for f in listed(console, "acme", limit=50)]
        assert page_one == by_api, "largest savings first, as the API"
        older = OLDER.search(first)
        assert older is not None
        second = c.get(html.unescape(older.group(1))).text
        assert len(ROW.findall(second)) == 3 and OLDER.search(second) is None
        recent = c.get("/ui/licenses?sort=recent").text
        assert len(ROW.findall(recent)) == 50
        assert ROW.findall(c.get("/ui/licenses?verdict=active").text) == []
        state = listed(console, "acme")[0]["state"]
        one_state = ROW.findall(c.get(f"/ui/licenses?integration={hr}&state={state}").text)
        assert one_state == [f["id"] for f in listed(console, "acme", state=state)][:50]
        other = "kept" if state != "kept" else "snoozed"
        assert ROW.findall(c.get(f"/ui/licenses?state={other}").text) == []
        assert ROW.findall(c.get("/ui/licenses?integration=int_other").text) == []
        for bad in ("verdict=lazy", "state=asleep", "cursor=bm9wZQ", "sort=up", "open=maybe"):
            got = c.get(f"/ui/licenses?{bad}")
            assert got.status_code == 422 and "text/html" in got.headers["content-type"], bad


def test_admins_keep_snooze_and_reclaim_as_the_api_with_audit(console: ApiSetup) -> None:
    findings(console, "acme", [account(u, 200, cost=20) for u in ("ann", "ben", "col")])
    by_user = {f["user_id"]: f["id"] for f in listed(console, "acme")}
    path = "/ui/findings/{}/actions"
    with sign_in(console.url, console.keys["acme"][Role.OPERATOR]) as c:
        assert 'method="post"' not in c.get("/ui/licenses").text.split("<main>")[1]
        token = page_csrf(c, "/ui/licenses")
        refused = c.post(
            path.format(by_user["ann"]), data={"csrf": token, "action": "keep", "note": "x"}
        )
        assert refused.status_code == 403 and "operator" in refused.text
    with sign_in(console.url, console.keys["acme"][Role.ADMIN]) as c:
        page = c.get("/ui/licenses").text
        assert f'action="{path.format(by_user["ann"])}"' in page
        token = page_csrf(c, "/ui/licenses")

        def act(user: str, **form: str) -> Any:
            return c.post(path.format(by_user[user]), data={"csrf": token, **form})

        assert act("ann", action="keep", note=" ").status_code == 422
        no_until = act("ben", action="snooze", note="later")
        assert no_until.status_code == 422 and "until" in no_until.text
        assert act("ann", action="explode", note="x").status_code == 422
        kept = act("ann", action="keep", note="the CEO's <i>assistant</i>")
        assert kept.status_code == 303 and kept.headers["location"] == "/ui/licenses"
        snoozed = act("ben", action="snooze", note="on leave", until="2030-01-01T00:00")
        assert snoozed.status_code == 303
        reclaimed = act("col", action="reclaim", note="left the company")
        assert reclaimed.status_code == 303
        run_page = reclaimed.headers["location"]
        assert run_page.startswith("/ui/runs/") and "hr.deactivate" in c.get(run_page).text
        page = c.get("/ui/licenses").text
        assert "the CEO&#39;s &lt;i&gt;assistant&lt;/i&gt;" in page
        assert f'href="{run_page}"' in page
    states = {f["user_id"]: f for f in listed(console, "acme")}
    assert states["ann"]["state"] == "kept" and states["ben"]["state"] == "snoozed"
    assert states["ben"]["until"] == 1893456000.0
    assert states["col"]["state"] == "actioned"
    assert states["col"]["action_run_id"] == run_page.rsplit("/", 1)[-1]
    with console.as_("acme") as api:
        audit = api.get("/v1/audit").json()["items"]
    admin = console.keys["acme"][Role.ADMIN].split(".", 1)[0]
    mine = [a for a in audit if a["actor"] == f"key:{admin}"]
    assert {a["reason"] for a in mine} >= {"the CEO's <i>assistant</i>", "on leave"}


def test_a_viewer_may_not_post_and_a_tenant_not_touch_another_s(console: ApiSetup) -> None:
    findings(console, "acme", [account("ada", 200)])
    findings(console, "globex", [account("gil", 200, email="gil@globex.example")])
    (ours,) = listed(console, "acme")
    (theirs,) = listed(console, "globex")
    form = {"action": "keep", "note": "mine now"}
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        token = page_csrf(c, "/ui/licenses")
        refused = c.post(f"/ui/findings/{ours['id']}/actions", data={"csrf": token, **form})
        assert refused.status_code == 403 and "viewer" in refused.text
    with sign_in(console.url, console.keys["acme"][Role.ADMIN]) as c:
        page = c.get("/ui/licenses").text
        assert ROW.findall(page) == [ours["id"]] and "gil@globex.example" not in page
        token = page_csrf(c, "/ui/licenses")
        other = c.post(f"/ui/findings/{theirs['id']}/actions", data={"csrf": token, **form})
        assert other.status_code == 404 and "gil@" not in other.text
        assert c.post(f"/ui/findings/{ours['id']}/actions", data=form).status_code == 403
        assert c.get("/ui/licenses?tenant=globex").status_code == 403
    with sign_in(console.url, console.platform_key) as c:
        page = c.get("/ui/licenses?tenant=globex").text
        assert ROW.findall(page) == [theirs["id"]]
    assert listed(console, "globex")[0]["state"] == theirs["state"]
    assert listed(console, "acme")[0]["state"] == ours["state"]
