"""Integration settings: declared by the connector, validated on every change (API, CLI, Python),
shown to viewers, changed by admins only and audited, read by runs as ctx.integration.settings,
never taken from a run's input. And the issue's exploit, end to end over HTTP with real
Chromium: an operator cannot send an integration's password to a page of their choosing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from browser_site import Site, serve_site
from pydantic import BaseModel, SecretStr

from greenroom import (
    App,
    InvalidInput,
    RetryPolicy,
    RunContext,
    RunState,
    SecretOrigin,
    integrations,
    step,
)
from greenroom.api.app import create_api
from greenroom.api.keys import create_key
from greenroom.app import RunRequest
from greenroom.crypto import load_keyring
from greenroom.demo import connector as demo
from greenroom.demo.saas import DemoSaaS, admin_credentials, running_demo_saas
from greenroom.model import INTEGRATION_LABEL, Role
from greenroom.storage import RunFilter
from tests.api_helpers import ApiSetup, build_app, serving
from tests.helpers import wait_for_states, worker_running
from tests.test_cli import assert_one_line_error, cli

PASSWORD = "crm-password-Zq4"
API_APP = "tests.apps.api_app:app"


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def create_crm(api: ApiSetup, **settings: Any) -> dict[str, Any]:
    with api.as_("acme", Role.ADMIN) as c:
        body = {
            "connector": "crm",
            "name": "acme crm",
            "credentials": {"username": "bot", "password": PASSWORD},
            "settings": settings,
        }
        return ok(c.post("/v1/integrations", json=body), 201)  # type: ignore[no-any-return]


def fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 422, response.text
    return [e["field"] for e in response.json()["errors"]]


# -- declared, validated, shown, admin-only, audited ------------------------------------------


def test_settings_are_validated_shown_to_viewers_and_changed_by_admins_only_with_an_audit(
    api: ApiSetup,
) -> None:
    with api.as_("acme", Role.ADMIN) as c:
        base = {"connector": "crm", "name": "n", "credentials": {"username": "u", "password": "p"}}
        bad = c.post("/v1/integrations", json={**base, "settings": {"console": "javascript:x"}})
        assert fields(bad) == ["settings.console"]
        assert "settings.console: must be an absolute http:// or https:// URL" in bad.text
        typo = c.post("/v1/integrations", json={**base, "settings": {"regoin": "us"}})
        assert fields(typo) == ["settings.regoin"] and "not a setting of crm" in typo.text
        assert ok(c.get("/v1/integrations")) == [], "nothing was created"
        [crm] = [x for x in ok(c.get("/v1/connectors")) if x["name"] == "crm"]
        console = crm["settings_schema"]["properties"]["console"]["anyOf"][0]
        assert console["x-secret-origin"] is True and console["format"] == "uri"
    made = create_crm(api, region="us", console="https://crm.acme.example/app")
    assert made["settings"] == {"region": "us", "console": "https://crm.acme.example/app"}
    path = f"/v1/integrations/{made['id']}"
    with api.as_("acme", Role.VIEWER) as c:
        assert ok(c.get(path))["settings"] == made["settings"]

    change = {"settings": {"region": "us", "console": "http://127.0.0.1:9/"}}
    for role in (Role.OPERATOR, Role.VIEWER):
        with api.as_("acme", role) as c:
            assert c.patch(path, json=change).status_code == 403
    with api.as_("acme", Role.ADMIN) as c:
        assert fields(c.patch(path, json={"settings": {"console": "ftp://x"}})) == [
            "settings.console"
        ]
        assert ok(c.get(path))["settings"] == made["settings"], "refused changes lose nothing"
        changed = ok(c.patch(path, json=change))
        assert changed["settings"] == change["settings"]
        audit = ok(c.get("/v1/audit"))["items"]
    update = next(a for a in audit if a["action"] == "integration.update")
    assert update["target"] == made["id"] and update["actor"].startswith("key:")
    assert update["detail"] == {
        "settings": change["settings"],
        "previous_settings": made["settings"],
    }
    created = next(a for a in audit if a["action"] == "integration.create")
    assert created["detail"]["settings"] == made["settings"]
    assert PASSWORD not in json.dumps(audit)


# -- read by runs, never from their input ------------------------------------------------------


async def test_a_run_reads_its_integrations_settings_and_later_runs_see_a_change(
    api: ApiSetup,
) -> None:
    made = create_crm(api, region="us")

    async def settings_seen() -> Any:
        with api.as_("acme", Role.OPERATOR) as c:
            body = {"workflow": "crm.settings", "integration": made["id"]}
            run = ok(c.post("/v1/runs", json=body), 201)
        async with worker_running(api.app):
            (done,) = await wait_for_states(api.app.store, [run["id"]])
        assert done.state is RunState.SUCCEEDED, done.error
        return done.output

    assert await settings_seen() == {
        "id": made["id"],
        "name": "acme crm",
        "settings": {"region": "us", "console": None},
    }
    with api.as_("acme", Role.ADMIN) as c:
        ok(c.patch(f"/v1/integrations/{made['id']}", json={"settings": {"region": "ap"}}))
    assert (await settings_seen())["settings"]["region"] == "ap"


async def test_input_naming_a_setting_is_refused_at_enqueue_and_retry_in_every_way(
    api: ApiSetup,
) -> None:
    made = create_crm(api, console="https://crm.acme.example")
    evil = {"console": "http://127.0.0.1:9/", "region": "xx"}
    with api.as_("acme", Role.OPERATOR) as c:
        refused = c.post(
            "/v1/runs", json={"workflow": "crm.sync", "integration": made["id"], "input": evil}
        )
        assert sorted(fields(refused)) == ["input.console", "input.region"]
        assert "is a setting of connector 'crm'" in refused.json()["detail"]
        no_integration = c.post("/v1/runs", json={"workflow": "crm.sync", "input": evil})
        assert sorted(fields(no_integration)) == ["input.console", "input.region"]
        assert ok(c.get("/v1/runs"))["items"] == [], "nothing was enqueued"

        held = {"workflow": "crm.sync", "integration": made["id"], "delay": 3600}
        run = ok(c.post("/v1/runs", json=held), 201)
        ok(c.post(f"/v1/runs/{run['id']}/cancel", json={"reason": "to retry it"}))
        retry = f"/v1/runs/{run['id']}/retry"
        again = c.post(retry, json={"input": {"console": "http://x.example"}, "reason": "r"})
        assert fields(again) == ["input.console"]
        assert f"is a setting of integration {made['id']}" in again.json()["detail"]
        ok(c.post(retry, json={"input": {"n": 2}, "reason": "r"}), 201)

    app = api.app
    with pytest.raises(InvalidInput) as python:
        app.enqueue_sync("crm.sync", {"console": "http://x"}, tenant="acme", integration=made["id"])
    assert python.value.errors == [
        {
            "field": "input.console",
            "message": "is a setting of connector 'crm': its integration's admins set it, "
            "a run's input cannot",
        }
    ]

    # A run that got into the queue some other way (straight into the store) never starts.
    request = app.prepare(
        RunRequest(workflow="crm.sync", tenant="acme", integration=made["id"], input={"n": 1})
    )
    slipped = dataclasses.replace(request, input={"n": 1, "console": "http://127.0.0.1:9/"})
    [(run_, _)] = app.store.runs.enqueue_many([slipped])
    async with worker_running(app):
        (failed,) = await wait_for_states(app.store, [run_.id])
    assert failed.state is RunState.FAILED and failed.attempt == 1
    assert failed.error is not None and failed.error["type"] == "PermanentError"
    assert "input.console: is a setting of connector 'crm'" in failed.error["message"]
    assert app.store.runs.steps(failed.id) == [], "its credentials were never opened"


# -- the CLI -------------------------------------------------------------------------------


def test_cli_updates_settings_validated_and_audited_and_refuses_settings_as_input(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = build_app(db_url)
    try:
        app.store.accounts.create_tenant("acme", actor="test")
        made = integrations.create(
            app.store.accounts,
            load_keyring(app.settings),
            app.connectors["crm"],
            tenant="acme",
            name="acme crm",
            credentials={"username": "bot", "password": PASSWORD},
            settings={"console": "https://crm.acme.example"},
            actor="test",
        )
    finally:
        app.close()
    update = ("--db", db_url, "integrations", "update", made.id)
    code, _, err = cli(capsys, *update, "--settings", '{"console": "file:///etc/passwd"}')
    assert_one_line_error(code, err, "--settings on a database needs --app")
    code, _, err = cli(
        capsys, *update, "--app", API_APP, "--settings", '{"console": "file:///etc/passwd"}'
    )
    assert_one_line_error(code, err, "settings.console: must be an absolute http:// or https://")
    code, _, err = cli(capsys, *update, "--app", API_APP, "--settings", "[]")
    assert_one_line_error(code, err, "--settings must be a JSON object")
    code, out, err = cli(
        capsys,
        *update,
        "--app",
        API_APP,
        "--settings",
        '{"console": "https://eu.crm.acme.example", "region": "eu"}',
        "--actor",
        "ada",
    )
    assert code == 0, err
    assert f"integration {made.id} updated" in out and "https://eu.crm.acme.example" in out
    code, out, _ = cli(capsys, "--db", db_url, "integrations", "list")
    assert code == 0 and "eu.crm.acme.example" in out

    enqueue = ("--db", db_url, "enqueue", "crm.sync", "--app", API_APP, "--tenant", "acme")
    code, _, err = cli(
        capsys,
        *enqueue,
        "--integration",
        made.id,
        "--input",
        '{"console": "http://127.0.0.1:9"}',
    )
    assert_one_line_error(code, err, "input.console: is a setting of connector 'crm'")
    code, out, err = cli(capsys, *enqueue, "--integration", made.id, "--delay", "3600")
    assert code == 0, err
    run_id = out.split()[0]
    code, _, err = cli(capsys, "--db", db_url, "runs", "cancel", run_id, "--reason", "test")
    assert code == 0, err
    retry = ("--db", db_url, "runs", "retry", run_id, "--reason", "test")
    code, _, err = cli(capsys, *retry, "--input", '{"region": "us"}')
    assert_one_line_error(code, err, f"input.region: is a setting of integration {made.id}")

    app = build_app(db_url)
    try:
        entries = app.store.admin.audit_log(tenant="acme")
        [change] = [e for e in entries if e.action == "integration.update"]
        assert change.actor == "ada"
        assert change.detail["settings"]["console"] == "https://eu.crm.acme.example"
        assert change.detail["previous_settings"]["console"] == "https://crm.acme.example"
        assert len(app.store.runs.list_runs(RunFilter(tenant="acme"))) == 1, "no retry was made"
    finally:
        app.close()


def test_cli_settings_through_the_api_are_for_admin_keys(
    api: ApiSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    made = create_crm(api, region="us")
    for role, expected in ((Role.OPERATOR, 2), (Role.ADMIN, 0)):
        key = api.keys["acme"][role]
        code, out, err = cli(
            capsys,
            *("--url", api.url, "--key", key, "integrations", "update", made["id"]),
            *("--settings", '{"region": "ap"}'),
        )
        assert code == expected, err
        if role is Role.OPERATOR:
            assert_one_line_error(code, err, "role (operator) may not do this (needs admin)")
        else:
            assert '"region":"ap"' in out
    assert api.app.store.accounts.integration(made["id"]).settings["region"] == "ap"


# -- the exploit of the issue, end to end ------------------------------------------------------


class SiteCredentials(BaseModel):
    user: str
    password: SecretStr


class SiteSettings(BaseModel):
    site: SecretOrigin


@step(name="careless.login", retry=RetryPolicy(max_attempts=1))
async def careless_login(ctx: RunContext, login_url: str) -> str:
    creds = await ctx.credentials(SiteCredentials)
    page = await ctx.page()
    await page.goto(f"{login_url}/form")
    await page.fill("#user", creds.user)
    await page.fill("#password", creds.password.get_secret_value())
    await page.click("#go")
    await page.wait_for_url("**/home")
    return await page.inner_text("#user")


def exploit_app(db_url: str) -> App:
    """The demo connector, and a careless one that takes where to log in from its input (the
    mistake the browser runtime's guard is the second line of defence against)."""
    app = build_app(db_url, browser_action_timeout=5.0)
    app.connectors.update(demo.app.connectors)
    app.workflows.update(demo.app.workflows)
    careless = app.connector("careless", credentials=SiteCredentials, settings=SiteSettings)

    @app.workflow(name="careless.login", connector=careless, retry=RetryPolicy(max_attempts=1))
    async def login(ctx: RunContext, login_url: str) -> str:
        return await careless_login(ctx, login_url)

    return app


@dataclasses.dataclass
class Served:
    app: App
    url: str
    admin: str
    operator: str

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"})


@contextlib.contextmanager
def served(db_url: str) -> Iterator[Served]:
    app = exploit_app(db_url)
    try:
        app.store.accounts.create_tenant("acme", actor="test")
        keys = {
            role: create_key(
                app.store.accounts, tenant="acme", role=role, name=str(role), actor="t"
            )[1]
            for role in (Role.ADMIN, Role.OPERATOR)
        }
        with serving(create_api(app)) as url:
            yield Served(app, url, keys[Role.ADMIN], keys[Role.OPERATOR])
    finally:
        app.close()


@pytest.fixture(scope="module")
def saas() -> Iterator[DemoSaaS]:
    with running_demo_saas(orgs=3, users_per_org=25) as s:
        yield s


@pytest.fixture
def evil() -> Iterator[Site]:
    """A page of the operator's choosing: it records every request it gets."""
    with serve_site() as s:
        yield s


async def test_an_operator_cannot_send_the_integrations_password_to_a_page_of_their_choosing(
    sqlite_url: str, saas: DemoSaaS, evil: Site
) -> None:
    creds = admin_credentials("initech")
    with served(sqlite_url) as s:
        with s.client(s.admin) as admin:
            body = {
                "connector": "demo",
                "name": "initech console",
                "credentials": {"email": creds.email, "password": creds.password},
                "settings": {"base_url": saas.url},
            }
            integration = ok(admin.post("/v1/integrations", json=body), 201)["id"]
        with s.client(s.operator) as operator:
            exploit = {
                "workflow": "demo.sync_users",
                "integration": integration,
                "input": {"org": "initech", "base_url": evil.url},
            }
            refused = operator.post("/v1/runs", json=exploit)
            assert fields(refused) == ["input.base_url"]
            honest = {**exploit, "input": {"org": "initech"}}
            run = ok(operator.post("/v1/runs", json=honest), 201)
            async with worker_running(s.app):
                (done,) = await wait_for_states(s.app.store, [run["id"]], timeout=60)
            assert done.state is RunState.SUCCEEDED, done.error
            assert done.output is not None and len(done.output["users"]) == 25
            held = ok(operator.post("/v1/runs", json={**honest, "delay": 3600}), 201)
            ok(operator.post(f"/v1/runs/{held['id']}/cancel", json={"reason": "r"}))
            retried = operator.post(
                f"/v1/runs/{held['id']}/retry",
                json={"input": exploit["input"], "reason": "let me choose the page"},
            )
            assert fields(retried) == ["input.base_url"]
    assert evil.received == [], "the operator's page was never even visited"


async def test_a_connector_that_takes_its_login_page_from_input_still_cannot_leak_the_password(
    sqlite_url: str, evil: Site
) -> None:
    """The second line of defence: the run fails on the step that would have typed the
    password into the operator's page, with its diagnostics, and the page got no password."""
    with serve_site() as good, served(sqlite_url) as s:
        with s.client(s.admin) as admin:
            body = {
                "connector": "careless",
                "name": "site",
                "credentials": {"user": "bot", "password": Site.password("bot")},
                "settings": {"site": good.url},
            }
            integration = ok(admin.post("/v1/integrations", json=body), 201)["id"]
        runs = {}
        with s.client(s.operator) as operator:
            for name, page in (("evil", evil), ("good", good)):
                body = {
                    "workflow": "careless.login",
                    "integration": integration,
                    "input": {"login_url": page.url},
                }
                runs[name] = ok(operator.post("/v1/runs", json=body), 201)["id"]
        async with worker_running(s.app):
            leaked, logged_in = await wait_for_states(
                s.app.store, [runs["evil"], runs["good"]], timeout=60
            )
        assert logged_in.state is RunState.SUCCEEDED and logged_in.output == "bot"
        assert good.logins["bot"] == 1 and Site.password("bot") in "".join(good.received)

        assert leaked.state is RunState.FAILED and leaked.error is not None
        assert leaked.error["type"] == "SecretRefused" and leaked.error["step"] == "careless.login"
        assert (
            f"refused to send a secret of integration {integration} to {evil.url}"
            in leaked.error["message"]
        )
        assert f"allow only {good.url}" in leaked.error["message"]
        artifacts = await asyncio.to_thread(s.app.store.sessions.artifacts, leaked.id)
        assert {a.kind for a in artifacts} >= {"screenshot", "html", "log"}
        with s.client(s.operator) as operator:
            log = next(a for a in artifacts if a.kind == "log")
            got = operator.get(f"/v1/runs/{leaked.id}/artifacts/{log.id}")
            assert got.status_code == 200
            assert "refused to send a secret" in got.json()["error"]["message"]
            assert got.json()["url"] == f"{evil.url}/form", "the page it refused is shown"
        assert leaked.labels[INTEGRATION_LABEL] == integration
    sent = "\n".join(evil.received)
    assert "GET /form" in sent, "the careless step did open the operator's page"
    assert Site.password("bot") not in sent and "POST" not in sent, "but no password arrived"
