"""The console's actions over HTTP do what the API's do: a retry from scratch with new input,
a second retry of the same run refused, bad input a 422 page."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ui_helpers import page_csrf, sign_in

from greenroom.crypto import load_keyring
from greenroom.integrations import open_credentials
from greenroom.model import Role
from tests.api_helpers import ApiSetup, api_setup


@pytest.fixture
def console(sqlite_url: str) -> Iterator[ApiSetup]:
    with api_setup(sqlite_url) as setup:
        yield setup


def cancelled_run(api: ApiSetup) -> str:
    with api.as_("acme", Role.OPERATOR) as c:
        run_id = str(c.post("/v1/runs", json={"workflow": "plain.echo"}).json()["id"])
        assert c.post(f"/v1/runs/{run_id}/cancel", json={"reason": "setup"}).status_code == 200
    return run_id


def test_retry_from_scratch_with_new_input_and_only_once(console: ApiSetup) -> None:
    run_id = cancelled_run(console)
    with sign_in(console.url, console.keys["acme"][Role.OPERATOR]) as c:
        token = page_csrf(c)
        path = f"/ui/runs/{run_id}/retry"
        form = {"csrf": token, "reason": "new value", "from_scratch": "true"}
        for bad, why in (("{oops", "not JSON"), ("[1, 2]", "input")):
            refused = c.post(path, data={**form, "input": bad})
            assert refused.status_code == 422 and why in refused.text, bad
        done = c.post(path, data={**form, "input": '{"value": "<b>new</b>"}'})
        assert done.status_code == 303
        retry_id = done.headers["location"].rsplit("/", 1)[-1]
        page = c.get(done.headers["location"]).text
        assert "&lt;b&gt;new&lt;/b&gt;" in page and "<b>new</b>" not in page
        again = c.post(path, data={**form, "input": ""})
        assert again.status_code == 409 and retry_id in again.text
    with console.as_("acme") as api:
        retried = api.get(f"/v1/runs/{retry_id}").json()
        original = api.get(f"/v1/runs/{run_id}").json()
    assert retried["input"] == {"value": "<b>new</b>"} and retried["retry_of"] == run_id
    assert original["superseded_by"] == retry_id


def test_pause_and_resume_through_the_console_as_the_api_would(console: ApiSetup) -> None:
    with sign_in(console.url, console.keys["acme"][Role.OPERATOR]) as c:
        token = page_csrf(c, "/ui/pauses")
        paused = c.post(
            "/ui/pauses",
            data={
                "csrf": token,
                "scope": "workflow",
                "value": "plain.echo",
                "reason": "vendor down",
            },
        )
        assert paused.status_code == 303
        with console.as_("acme", Role.OPERATOR) as api:
            (pause,) = api.get("/v1/pauses").json()
            held = api.post("/v1/runs", json={"workflow": "plain.echo"}).json()
            assert api.get(f"/v1/runs/{held['id']}").json()["state"] == "paused"
        assert pause["tenant"] == "acme" and pause["paused_by"].startswith("key:")
        listed = c.get("/ui/pauses").text
        assert "vendor down" in listed and f'action="/ui/pauses/{pause["id"]}/resume"' in listed
        # Another tenant's pause is refused as in the API.
        other = c.post(
            "/ui/pauses",
            data={"csrf": token, "scope": "tenant", "value": "globex", "reason": "r"},
        )
        assert other.status_code == 403
        resumed = c.post(
            f"/ui/pauses/{pause['id']}/resume", data={"csrf": token, "reason": "vendor back"}
        )
        assert resumed.status_code == 303
        assert "Nothing is paused" in c.get("/ui/pauses").text
        audit = c.get("/ui/audit").text
        assert "vendor down" in audit and "vendor back" in audit
        assert c.get("/ui/audit?cursor=abc").status_code == 422
        assert c.get("/ui/pauses/1/resume").status_code == 405
        assert c.post("/ui/pauses/x/resume", data={"csrf": token, "reason": "r"}).status_code == 422
    with console.as_("acme") as api:
        assert api.get(f"/v1/runs/{held['id']}").json()["state"] == "queued"


def test_a_viewer_gets_no_pause_forms_and_a_tenant_not_the_platform_s_pause(
    console: ApiSetup,
) -> None:
    with console.platform() as api:
        made = api.post(
            "/v1/pauses", json={"scope": "queue", "value": "default", "reason": "maintenance"}
        )
        assert made.status_code == 201
        pause_id = made.json()["id"]
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        page = c.get("/ui/pauses").text
        assert "maintenance" in page and 'action="/ui/pauses' not in page
        token = page_csrf(c, "/ui/pauses")
        for path in ("/ui/pauses", f"/ui/pauses/{pause_id}/resume"):
            data = {"csrf": token, "scope": "queue", "value": "default", "reason": "r"}
            assert c.post(path, data=data).status_code == 403
    with sign_in(console.url, console.keys["acme"][Role.ADMIN]) as c:
        page = c.get("/ui/pauses").text
        assert f'action="/ui/pauses/{pause_id}/resume"' not in page
        token = page_csrf(c, "/ui/pauses")
        refused = c.post(f"/ui/pauses/{pause_id}/resume", data={"csrf": token, "reason": "r"})
        assert refused.status_code == 403 and "platform" in refused.text
    with console.platform() as api:
        assert [p["id"] for p in api.get("/v1/pauses").json()] == [pause_id]


def test_the_runs_filter_by_integration_or_label_not_both(console: ApiSetup) -> None:
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        both = c.get("/ui/runs?integration=abc&label=a%3Db")
        assert both.status_code == 422 and "not both" in both.text
        assert c.get("/ui/runs?integration=abc").status_code == 200


def test_integrations_show_no_credentials_and_admins_replace_them(console: ApiSetup) -> None:
    secret = "pw-<never>-shown"
    made: dict[str, str] = {}
    for tenant in ("acme", "globex"):
        with console.as_(tenant, Role.ADMIN) as api:
            created = api.post(
                "/v1/integrations",
                json={
                    "connector": "crm",
                    "name": f"{tenant} crm",
                    "credentials": {"username": "u", "password": secret},
                },
            )
            assert created.status_code == 201, created.text
            made[tenant] = created.json()["id"]
    with sign_in(console.url, console.keys["acme"][Role.OPERATOR]) as c:
        page = c.get("/ui/integrations").text
        assert made["acme"] in page and made["globex"] not in page
        assert secret not in page and "pw-&lt;never&gt;" not in page
        assert "Replace credentials" not in page
        token = page_csrf(c, "/ui/integrations")
        path = f"/ui/integrations/{made['acme']}/credentials"
        new = '{"username": "u2", "password": "rotated"}'
        assert c.post(path, data={"csrf": token, "credentials": new}).status_code == 403
    with sign_in(console.url, console.keys["acme"][Role.ADMIN]) as c:
        token = page_csrf(c, "/ui/integrations")
        assert "Replace credentials" in c.get("/ui/integrations").text
        bad = c.post(path, data={"csrf": token, "credentials": '{"password": "half-a-secret'})
        assert bad.status_code == 422 and "half-a-secret" not in bad.text
        wrong = c.post(path, data={"csrf": token, "credentials": '{"user": "no-password"}'})
        assert wrong.status_code == 422 and "no-password" not in wrong.text
        other = f"/ui/integrations/{made['globex']}/credentials"
        assert c.post(other, data={"csrf": token, "credentials": new}).status_code == 404
        done = c.post(path, data={"csrf": token, "credentials": new})
        assert done.status_code == 303 and "rotated" not in c.get("/ui/integrations").text
    stored = console.app.store.accounts.integration(made["acme"])
    opened = open_credentials(
        load_keyring(console.app.settings), stored, console.app.connectors["crm"]
    )
    assert opened.model_dump(mode="json") == {"username": "u2", "password": "**********"}
    assert opened.password.get_secret_value() == "rotated"  # type: ignore[attr-defined]
