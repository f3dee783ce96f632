"""Every way a request can fail, and what the API answers: the status, an RFC 9457 problem
naming what is wrong, and never a secret it was given."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from greenroom import ManualClock
from greenroom.api.keys import create_key
from greenroom.model import Role, RunState
from tests.api_helpers import ApiSetup, api_setup
from tests.helpers import wait_for_states, worker_running


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    """`r` is a problem+json answer with this status; its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers
    body: dict[str, Any] = r.json()
    assert {"type", "title", "status", "detail"} <= set(body), body
    assert body["status"] == status and body["title"] and body["detail"], body
    return body


def _fields(r: httpx.Response) -> list[str]:
    """The invalid fields a 422 names."""
    body = assert_problem(r, 422)
    return [e["field"] for e in body.get("errors", [])]


@pytest.fixture
def strict(db_url: str) -> Iterator[ApiSetup]:
    """A server with a 1 KiB body cap and a burst of one request for keys with their own rate."""
    with api_setup(db_url, api_max_body_bytes=1024, api_rate_burst=1) as setup:
        yield setup


# -- 401 -------------------------------------------------------------------------------------


def test_401_without_a_usable_key(db_url: str) -> None:
    # The API judges expiry by the store's clock: the test moves it past the expiry, so that a
    # slow machine never finds the key expired before its first use.
    clock = ManualClock(time.time())
    with api_setup(db_url, clock=clock) as api:
        _refuses_keys_it_cannot_use(api, clock)


def _refuses_keys_it_cannot_use(api: ApiSetup, clock: ManualClock) -> None:
    store = api.app.store
    real = api.keys["acme"][Role.VIEWER]
    key_id = real.split(".")[0]
    _, expiring = create_key(
        store.accounts,
        tenant="acme",
        role=Role.VIEWER,
        name="short",
        actor="test",
        expires_at=clock.now() + 1,
    )
    with api.as_("acme", Role.ADMIN) as c:
        made = c.post("/v1/keys", json={"name": "soon revoked", "role": "viewer"}).json()
    with api.client(made["key"]) as c:
        assert c.get("/v1/runs").status_code == 200  # verified, so now cached by the server
    with api.client(expiring) as c:
        assert c.get("/v1/runs").status_code == 200
    with api.as_("acme", Role.ADMIN) as c:
        assert c.delete(f"/v1/keys/{made['id']}").status_code == 200
    clock.advance(1.05)
    presented = {
        "no header": None,
        "empty bearer": "Bearer",
        "another scheme": f"Basic {real}",
        "not a key": "Bearer hunter2",
        "no secret": f"Bearer {key_id}",
        "wrong secret": f"Bearer {key_id}.{'x' * 43}",
        "unknown id": "Bearer grk_000000000000.secret",
        "expired": f"Bearer {expiring}",
        "revoked": f"Bearer {made['key']}",
    }
    for case, header in presented.items():
        headers = {} if header is None else {"Authorization": header}
        r = httpx.get(f"{api.url}/v1/runs", headers=headers)
        body = assert_problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer"), case
        assert real.split(".")[1] not in r.text and made["key"] not in r.text, case
        if case in ("expired", "revoked"):
            assert "revoked or expired" in body["detail"], case


# -- 403, 404, 405 ---------------------------------------------------------------------------


def test_403_for_a_role_that_may_not(api: ApiSetup) -> None:
    with api.as_("acme", Role.VIEWER) as c:
        assert "needs operator" in assert_problem(c.post("/v1/runs", json={}), 403)["detail"]
    with api.as_("acme", Role.OPERATOR) as c:
        assert_problem(c.post("/v1/integrations", json={}), 403)
    with api.as_("acme", Role.ADMIN) as c:
        assert_problem(c.patch("/v1/queues/default", json={"reason": "r"}), 403)
        assert_problem(c.post("/v1/keys", json={"name": "k", "role": "platform"}), 403)


def test_404_for_unknown_ids_and_paths(api: ApiSetup) -> None:
    with api.platform() as c:
        for method, path, body in [
            ("GET", "/v1/runs/no-such-run", None),
            ("POST", "/v1/runs/no-such-run/cancel", {"reason": "r"}),
            ("GET", "/v1/runs/no-such-run/artifacts/1", None),
            ("GET", "/v1/integrations/no-such-integration", None),
            ("GET", "/v1/tenants/no-such-tenant", None),
            ("DELETE", "/v1/keys/grk_000000000000", None),
            ("POST", "/v1/pauses/424242/resume", {"reason": "r"}),
            ("GET", "/v1/queues/no-such-queue", None),
            ("GET", "/v1/no-such-thing", None),
        ]:
            r = c.request(method, path, json=body)
            assert assert_problem(r, 404)["instance"] == path, (method, path)
        assert_problem(c.put("/v1/runs", json={}), 405)


# -- 409 -------------------------------------------------------------------------------------


def test_409_for_conflicts(api: ApiSetup) -> None:
    with api.platform() as c:
        assert (
            "already exists"
            in assert_problem(c.post("/v1/tenants", json={"name": "acme"}), 409)["detail"]
        )
    integration = {"connector": "crm", "credentials": {"username": "u", "password": "p"}}
    with api.as_("acme", Role.ADMIN) as c:
        first = c.post("/v1/integrations", json={**integration, "name": "crm"}).json()
        assert_problem(c.post("/v1/integrations", json={**integration, "name": "crm"}), 409)
        other = c.post("/v1/integrations", json={**integration, "name": "other"}).json()
        renamed = c.patch(f"/v1/integrations/{other['id']}", json={"name": "crm"})
        assert "taken" in assert_problem(renamed, 409)["detail"]
        assert first["id"] in renamed.json()["detail"]
        key = {"Idempotency-Key": "once"}
        assert c.post("/v1/runs", json={"workflow": "plain.echo"}, headers=key).status_code == 201
        changed = c.post("/v1/runs", json={"workflow": "plain.echo", "priority": 3}, headers=key)
        assert "Idempotency-Key" in assert_problem(changed, 409)["detail"]


# -- 413 -------------------------------------------------------------------------------------


def test_413_for_a_body_over_the_cap_declared_or_chunked(strict: ApiSetup) -> None:
    padding = {"workflow": "plain.echo", "input": {"value": "x" * 2000}}

    def chunks() -> Iterator[bytes]:
        yield b'{"workflow": "plain.echo", "input": {"value": "'
        for _ in range(40):
            yield b"x" * 100
        yield b'"}}'

    with strict.as_("acme", Role.OPERATOR) as c:
        declared = c.post("/v1/runs", json=padding)
        chunked = c.post("/v1/runs", content=chunks(), headers={"content-type": "application/json"})
        small = c.post("/v1/runs", json={"workflow": "plain.echo", "input": {"value": "x" * 900}})
    assert "transfer-encoding" in chunked.request.headers
    assert "content-length" not in chunked.request.headers
    for r in (declared, chunked):
        assert "1024 bytes" in assert_problem(r, 413)["detail"]
    assert small.status_code == 201, small.text
    with strict.as_("acme", Role.VIEWER) as c:
        assert [r["id"] for r in c.get("/v1/runs").json()["items"]] == [small.json()["id"]]


# -- 422 -------------------------------------------------------------------------------------


def test_422_names_the_invalid_field(api: ApiSetup) -> None:
    with api.as_("acme", Role.ADMIN) as c:
        assert _fields(c.post("/v1/runs", json={"workflow": ""})) == ["body.workflow"]
        assert _fields(c.post("/v1/runs", json={"workflow": "w", "wrkflow": 1})) == ["body.wrkflow"]
        assert _fields(c.post("/v1/runs/retry", json={})) == ["body.reason"]
        assert _fields(c.get("/v1/runs", params={"limit": 0})) == ["query.limit"]
        assert _fields(c.get("/v1/runs", params={"state": "asleep"})) == ["query.state.0"]
        assert _fields(c.post("/v1/runs", content=b'{"workflow": ', headers=_JSON))[0].startswith(
            "body"
        )
        as_text = c.post("/v1/runs", content=b'{"workflow": "plain.echo"}', headers=_TEXT)
        assert _fields(as_text) == ["body"]
        assert _fields(c.get("/v1/runs/a%00b")) == ["path.run_id"]
        assert _fields(c.get("/v1/runs", params={"workflow": "a\x00"})) == ["query.workflow"]
        assert _fields(c.post("/v1/runs", json={"workflow": "a\x00"})) == ["body.workflow"]
        unknown = assert_problem(c.post("/v1/runs", json={"workflow": "nope"}), 422)
        assert "unknown workflow 'nope'" in unknown["detail"]
        inf = c.post(
            "/v1/runs", content=b'{"workflow": "plain.echo", "delay": Infinity}', headers=_JSON
        )
        assert _fields(inf) == ["body.delay"]
        # JSON has numbers: 2.0 is the integer 2, as the schema's "integer" says; 2.5 and "2"
        # are not integers.
        for priority in (2.5, "2", True):
            body = {"workflow": "plain.echo", "priority": priority}
            assert _fields(c.post("/v1/runs", json=body)) == ["body.priority"], priority
        whole = c.post("/v1/runs", json={"workflow": "plain.echo", "priority": 2.0})
        assert whole.status_code == 201 and whole.json()["priority"] == 2
    with api.platform() as c:
        huge = c.patch("/v1/tenants/acme", json={"reason": "r", "concurrency": 10**20})
        assert _fields(huge) == ["body.concurrency"]
        beat = c.patch("/v1/queues/default", json={"reason": "r", "heartbeat_seconds": 1e9})
        assert _fields(beat) == ["body.heartbeat_seconds"]
        alone = c.patch("/v1/queues/default", json={"reason": "r", "heartbeat_seconds": 5})
        assert "lease_seconds" in assert_problem(alone, 422)["detail"]
        c.patch("/v1/queues/default", json={"reason": "r", "lease_seconds": 8})
        half = c.patch("/v1/queues/default", json={"reason": "r", "heartbeat_seconds": 5})
        assert "less than half" in assert_problem(half, 422)["detail"]
        assert c.get("/v1/queues/default").json()["heartbeat_seconds"] is None


_JSON = {"content-type": "application/json"}
_TEXT = {"content-type": "text/plain"}


def test_422_for_credentials_names_the_field_never_the_value(api: ApiSetup) -> None:
    secret = "s3cret-value-that-must-not-echo"
    with api.as_("acme", Role.ADMIN) as c:
        wrong_type = c.post(
            "/v1/integrations",
            json={
                "connector": "crm",
                "name": "crm",
                "credentials": {"username": "u", "password": {"p": secret}},
            },
        )
        missing = c.post(
            "/v1/integrations",
            json={"connector": "crm", "name": "crm", "credentials": {"username": [secret]}},
        )
        created = c.post(
            "/v1/integrations",
            json={
                "connector": "crm",
                "name": "crm",
                "credentials": {"username": "u", "password": "p"},
            },
        ).json()
        rotated = c.put(
            f"/v1/integrations/{created['id']}/credentials",
            json={"credentials": {"username": 7, "password": secret}},
        )
        too_long = c.post("/v1/runs", json={"workflow": "crm.sync", "integration": secret * 2})
    assert "credentials.password" in assert_problem(wrong_type, 422)["detail"]
    detail = assert_problem(missing, 422)["detail"]
    assert "credentials.username" in detail and "credentials.password" in detail
    assert "credentials.username" in assert_problem(rotated, 422)["detail"]
    assert _fields(too_long) == ["body.integration"]
    for r in (wrong_type, missing, rotated, too_long):
        assert secret not in r.text


# -- 429 -------------------------------------------------------------------------------------


def test_429_with_retry_after_for_a_key_over_its_rate(api: ApiSetup) -> None:
    """A key's own rate comes with a burst of one second of it, whatever the global burst."""
    with api.as_("acme", Role.ADMIN) as c:
        made = c.post("/v1/keys", json={"name": "slow", "role": "viewer", "rate_limit": 1}).json()
    with api.client(made["key"]) as c:
        first = c.get("/v1/runs")
        second = c.get("/v1/runs")
        assert first.status_code == 200
        assert_problem(second, 429)
        wait = int(second.headers["retry-after"])
        assert 1 <= wait <= 2
        time.sleep(wait)
        assert c.get("/v1/runs").status_code == 200
    with api.as_("acme", Role.VIEWER) as c:  # other keys keep their own budget
        assert all(c.get("/v1/runs").status_code == 200 for _ in range(5))


def test_429_for_failed_authentication_per_key_id_and_address(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wrong secrets for a real key id (once, 1,000 ran at 350 a second, each a lookup): a few
    are looked up, then they are refused before any lookup, for that key id and from that
    address; a wrong key tried again is not looked up again; a key this node verified keeps
    working."""
    throttled = {"api_auth_failure_burst": 5, "api_auth_failure_rate": 0.05}  # then one in 20 s
    with api_setup(db_url, api_key_cache_seconds=60, **throttled) as api:
        store = api.app.store
        lookups: list[str] = []
        real_lookup = store.accounts.api_key
        monkeypatch.setattr(
            store.accounts, "api_key", lambda key_id: lookups.append(key_id) or real_lookup(key_id)
        )
        real = api.keys["acme"][Role.VIEWER]
        key_id = real.split(".")[0]
        with api.client(real) as c:
            assert c.get("/v1/runs").status_code == 200  # verified: cached by this node
        lookups.clear()
        with api.client(None) as attacker:

            def guess(secret: str, key: str = key_id) -> httpx.Response:
                return attacker.get("/v1/runs", headers={"Authorization": f"Bearer {key}.{secret}"})

            for _ in range(2):  # the same wrong key twice: looked up once
                assert assert_problem(guess("same"), 401)["detail"] == "invalid API key"
            assert lookups == [key_id]
            codes = [guess(f"guess{i}").status_code for i in range(100)]
            assert codes[:3] == [401] * 3 and codes.count(429) >= 95, codes
            assert len(lookups) <= 5
            refused = guess("more")
            assert "failed authentications" in assert_problem(refused, 429)["detail"]
            assert 1 <= int(refused.headers["retry-after"]) <= 21
            # From this address, other key ids are refused too, before any lookup.
            others = [guess("x", key=f"grk_{i:012d}").status_code for i in range(3)]
            assert others == [429] * 3 and len(lookups) <= 5
        with api.client(real) as c:  # verified lately: not held up
            assert c.get("/v1/runs").status_code == 200


def test_a_tenant_admin_grants_at_most_its_own_rate(api: ApiSetup) -> None:
    """The platform sets each tenant's ceiling with the rate of the admin keys it gives it (the
    node's default when it gives none); a tenant admin once minted keys of 2**31 - 1."""
    most = 2**31 - 1
    with api.platform() as c:
        capped = c.post(
            "/v1/keys", json={"name": "a", "role": "admin", "tenant": "acme", "rate_limit": 50}
        ).json()
        assert (
            c.post("/v1/keys", json={**_KEY, "tenant": "acme", "rate_limit": most}).status_code
            == 201
        )
    with api.client(capped["key"]) as c:
        too_many = c.post("/v1/keys", json={**_KEY, "rate_limit": 51})
        assert "at most 50" in assert_problem(too_many, 422)["detail"]
        assert c.post("/v1/keys", json={**_KEY, "rate_limit": 50}).json()["rate_limit"] == 50
        assert c.post("/v1/keys", json=_KEY).json()["rate_limit"] == 50  # not the default
    with api.as_("acme", Role.ADMIN) as c:  # no rate of its own: the node's default (10,000)
        assert_problem(c.post("/v1/keys", json={**_KEY, "rate_limit": most}), 422)
        assert c.post("/v1/keys", json={**_KEY, "rate_limit": 10_000}).status_code == 201
        assert c.post("/v1/keys", json=_KEY).json()["rate_limit"] is None


_KEY = {"name": "minted", "role": "viewer"}


# -- secrets ---------------------------------------------------------------------------------


async def test_secrets_never_leave_in_answers_audit_or_logs(
    api: ApiSetup, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = "first-password-9Zk", "rotated-password-4Wd"
    with api.as_("acme", Role.ADMIN) as c:
        created = c.post(
            "/v1/integrations",
            json={
                "connector": "crm",
                "name": "crm",
                "credentials": {"username": "bot", "password": first},
            },
        ).json()
        integration = created["id"]
        rotated = c.put(
            f"/v1/integrations/{integration}/credentials",
            json={"credentials": {"username": "bot", "password": second}},
        )
        key = c.post("/v1/keys", json={"name": "ci", "role": "viewer"}).json()["key"]
        run = c.post("/v1/runs", json={"workflow": "crm.sync", "integration": integration}).json()
    assert rotated.status_code == 200
    async with worker_running(api.app):
        [done] = await wait_for_states(api.app.store, [run["id"]])
    assert done.state is RunState.SUCCEEDED
    answers: list[httpx.Response] = []
    for client in (api.as_("acme", Role.VIEWER), api.as_("acme", Role.ADMIN), api.platform()):
        with client as c:
            for path in (
                "/v1/integrations",
                f"/v1/integrations/{integration}",
                "/v1/integrations?connector=crm",
                "/v1/connectors",
                "/v1/audit",
                "/v1/keys",
                "/v1/runs",
                f"/v1/runs/{run['id']}",
            ):
                answers.append(c.get(path))
    assert [r for r in answers if r.status_code not in (200, 403)] == []
    assert sum(r.status_code == 200 for r in answers) >= 20
    audit = api.app.store.admin.audit_log(limit=1000)
    assert {"integration.create", "integration.credentials", "key.create"} <= {
        a.action for a in audit
    }
    for secret in (first, second, key.split(".")[1]):
        for r in [*answers, rotated]:
            assert secret not in r.text, r.request.url
        assert secret not in repr(audit)
        assert secret not in caplog.text


def test_concurrent_creates_of_one_integration_name_make_one(api: ApiSetup) -> None:
    """Eight at once: one 201, the others 409 (never a 500 from the unique index)."""

    async def create_all() -> list[int]:
        import httpx

        headers = {"Authorization": f"Bearer {api.keys['acme'][Role.ADMIN]}"}
        body = {
            "connector": "crm",
            "name": "raced",
            "credentials": {"username": "u", "password": "p4ssword"},
        }
        async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=60) as c:
            answers = await asyncio.gather(
                *(c.post("/v1/integrations", json=body) for _ in range(8))
            )
        return sorted(r.status_code for r in answers)

    for _ in range(3):
        codes = asyncio.run(create_all())
        assert codes.count(201) <= 1 and set(codes) <= {201, 409}, codes
