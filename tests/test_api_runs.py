"""Runs through the HTTP API: create idempotently, list, follow, cancel, retry; credentials
reach the workflow and never leave it."""

from __future__ import annotations

import asyncio
from typing import Any

from greenroom.model import Role, RunState
from tests.api_helpers import ApiSetup
from tests.helpers import wait_for_states, worker_running


def _integration(api: ApiSetup, tenant: str = "acme", password: str = "hunter2-secret") -> str:
    with api.as_(tenant) as c:
        r = c.post(
            "/v1/integrations",
            json={
                "connector": "crm",
                "name": f"{tenant} crm",
                "credentials": {"username": f"bot@{tenant}", "password": password},
            },
        )
    assert r.status_code == 201, r.text
    body = r.json()
    assert "credentials" not in body and password not in r.text
    return str(body["id"])


def test_idempotent_create_returns_the_same_run_and_refuses_another_body(api: ApiSetup) -> None:
    with api.as_("acme", Role.OPERATOR) as c:
        body = {"workflow": "plain.echo", "input": {"value": 1}}
        first = c.post("/v1/runs", json=body, headers={"Idempotency-Key": "k1"})
        again = c.post("/v1/runs", json=body, headers={"Idempotency-Key": "k1"})
        other = c.post(
            "/v1/runs",
            json={"workflow": "plain.echo", "input": {"value": 2}},
            headers={"Idempotency-Key": "k1"},
        )
        listed = c.get("/v1/runs").json()["items"]
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 409
    assert other.headers["content-type"] == "application/problem+json"
    assert [r["id"] for r in listed] == [first.json()["id"]]


async def test_a_run_for_an_integration_gets_its_credentials(api: ApiSetup) -> None:
    integration = _integration(api)
    with api.as_("acme", Role.OPERATOR) as c:
        r = c.post(
            "/v1/runs", json={"workflow": "crm.sync", "input": {"n": 3}, "integration": integration}
        )
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["labels"] == {"integration": integration}
    async with worker_running(api.app):
        await wait_for_states(api.app.store, [run["id"]], {RunState.SUCCEEDED})
    with api.as_("acme", Role.VIEWER) as c:
        detail = c.get(f"/v1/runs/{run['id']}").json()
        by_integration = c.get("/v1/runs", params={"integration": integration}).json()
    assert detail["output"] == {"n": 3, "user": "bot@acme", "password_length": "14"}
    assert [s["name"] for s in detail["steps"]] == ["crm.sign_in"]
    assert [e["state"] for e in detail["timeline"]][-1] == "succeeded"
    assert [r["id"] for r in by_integration["items"]] == [run["id"]]


def test_runs_list_pages_with_a_cursor_and_filters(api: ApiSetup) -> None:
    with api.as_("acme", Role.OPERATOR) as c:
        ids = [
            c.post("/v1/runs", json={"workflow": "plain.echo", "input": {"value": i}}).json()["id"]
            for i in range(5)
        ]
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = c.get("/v1/runs", params=params).json()
            seen += [r["id"] for r in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == list(reversed(ids))
        assert c.get("/v1/runs", params={"state": "succeeded"}).json()["items"] == []
        assert len(c.get("/v1/runs", params={"state": "queued"}).json()["items"]) == 5
        bad = c.get("/v1/runs", params={"cursor": "not-a-cursor"})
        assert bad.status_code == 422 and "cursor" in bad.json()["detail"]


async def test_cancel_and_retry_from_scratch(api: ApiSetup) -> None:
    with api.as_("acme", Role.OPERATOR) as c:
        run = c.post("/v1/runs", json={"workflow": "plain.fail"}).json()
    async with worker_running(api.app):
        await wait_for_states(api.app.store, [run["id"]], {RunState.FAILED})
    with api.as_("acme", Role.OPERATOR) as c:
        no_reason = c.post(f"/v1/runs/{run['id']}/retry", json={})
        retried = c.post(
            f"/v1/runs/{run['id']}/retry", json={"from_scratch": True, "reason": "try again"}
        )
        assert no_reason.status_code == 422 and "reason" in no_reason.json()["detail"]
        assert retried.status_code == 201
        assert retried.json()["retry_of"] == run["id"]
        cancelled = c.post(f"/v1/runs/{retried.json()['id']}/cancel", json={"reason": "no"})
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        audit = c.get("/v1/audit").json()["items"]
    assert {"retry", "cancel"} <= {a["action"] for a in audit}


def test_concurrent_identical_creates_make_one_run(api: ApiSetup) -> None:
    body = {"workflow": "plain.echo", "input": {"value": "once"}}

    async def create_all() -> list[Any]:
        import httpx

        headers = {
            "Authorization": f"Bearer {api.keys['acme'][Role.OPERATOR]}",
            "Idempotency-Key": "fifty",
        }
        async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/runs", json=body) for _ in range(50)))

    responses = asyncio.run(create_all())
    assert sorted({r.status_code for r in responses}) in ([200, 201], [201])
    assert [r.status_code for r in responses].count(201) == 1
    assert len({r.json()["id"] for r in responses}) == 1
    with api.as_("acme", Role.VIEWER) as c:
        assert len(c.get("/v1/runs").json()["items"]) == 1
