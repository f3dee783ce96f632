"""The console's security with a plain HTTP client against the real app on loopback: session
cookie flags and contents, CSRF on every post, roles, logout, revocation, tenant isolation."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from helpers import wait_for_states, worker_running
from ui_helpers import csrf_of, page_csrf, sign_in

from greenroom.model import Role, RunState
from tests.api_helpers import ApiSetup, api_setup

ACTIONS = re.compile(r'action="/ui/runs/[^"]+/(retry|cancel)"')


@pytest.fixture
def console(db_url: str) -> Iterator[ApiSetup]:
    """The real app on loopback, on SQLite and on PostgreSQL."""
    with api_setup(db_url) as setup:
        yield setup


def start(api: ApiSetup, tenant: str, workflow: str = "plain.echo", **body: Any) -> str:
    with api.as_(tenant, Role.OPERATOR) as c:
        made = c.post("/v1/runs", json={"workflow": workflow, **body})
        assert made.status_code == 201, made.text
        return str(made.json()["id"])


def session_cookie(response: httpx.Response) -> str:
    (header,) = [h for h in response.headers.get_list("set-cookie") if "greenroom_session=" in h]
    return header


def test_the_session_cookie_is_httponly_strict_scoped_and_holds_no_key(
    console: ApiSetup,
) -> None:
    key = console.keys["acme"][Role.VIEWER]
    with httpx.Client(base_url=console.url, timeout=30) as c:
        form = c.get("/ui/login")
        done = c.post("/ui/login", data={"api_key": key, "csrf": csrf_of(form.text)})
    header = session_cookie(done)
    flags = {part.strip().lower() for part in header.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/ui"} <= flags
    assert "secure" not in flags  # plain http on loopback
    value = header.split(";")[0].split("=", 1)[1]
    secret = key.split(".", 1)[1]
    assert secret not in value and key not in value
    # Behind a TLS proxy (a trusted X-Forwarded-Proto), the cookies are Secure (so this plain
    # http client would not send them back: the login cookie goes by hand).
    https = {"X-Forwarded-Proto": "https"}
    with httpx.Client(base_url=console.url, headers=https, timeout=30) as c:
        form = c.get("/ui/login")
        (login_cookie,) = form.headers.get_list("set-cookie")
        assert "; secure" in login_cookie.lower()
        done = c.post(
            "/ui/login",
            data={"api_key": key, "csrf": csrf_of(form.text)},
            headers={"Cookie": login_cookie.split(";")[0]},
        )
    assert "secure" in {p.strip().lower() for p in session_cookie(done).split(";")}


def test_pages_need_a_session_and_a_forged_cookie_is_refused(console: ApiSetup) -> None:
    with httpx.Client(base_url=console.url, timeout=30) as c:
        wanted = {
            "/ui/": "/ui/login",
            "/ui/runs?state=failed": "/ui/login?next=%2Fui%2Fruns%3Fstate%3Dfailed",
            "/ui/errors": "/ui/login?next=%2Fui%2Ferrors",
        }
        for path, login in wanted.items():
            page = c.get(path)
            assert page.status_code == 303 and page.headers["location"] == login
        assert c.post("/ui/runs/x/cancel", data={"reason": "r"}).status_code == 403
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        token = c.cookies["greenroom_session"]
        body, signature = token.split(".")
        forged = body.replace(body[-2], "A" if body[-2] != "A" else "B") + "." + signature
        c.cookies.set("greenroom_session", forged, path="/ui")
        assert c.get("/ui/").status_code == 303


def test_sign_in_refuses_a_wrong_key_and_a_form_without_its_token(console: ApiSetup) -> None:
    with httpx.Client(base_url=console.url, timeout=30) as c:
        form = c.get("/ui/login")
        wrong = c.post("/ui/login", data={"api_key": "grk_000.nope", "csrf": csrf_of(form.text)})
        assert wrong.status_code == 401 and "invalid API key" in wrong.text
        assert "greenroom_session" not in c.cookies
        no_token = c.post("/ui/login", data={"api_key": console.platform_key})
        assert no_token.status_code == 403 and "greenroom_session" not in c.cookies


def test_every_post_needs_the_session_s_csrf_token(console: ApiSetup) -> None:
    run_id = start(console, "acme")
    with (
        sign_in(console.url, console.keys["acme"][Role.OPERATOR]) as c,
        sign_in(console.url, console.keys["acme"][Role.ADMIN]) as other,
    ):
        path = f"/ui/runs/{run_id}/cancel"
        assert c.post(path, data={"reason": "no token"}).status_code == 403
        assert c.post(path, data={"reason": "wrong", "csrf": "x" * 43}).status_code == 403
        someone_else_s = page_csrf(other)
        assert c.post(path, data={"reason": "r", "csrf": someone_else_s}).status_code == 403
        assert c.post("/ui/logout").status_code == 403
        still = c.get(f"/ui/runs/{run_id}")
        assert 'id="state">queued' in still.text
        token = page_csrf(c)
        done = c.post(path, data={"reason": "by form", "csrf": token})
        assert done.status_code == 303 and done.headers["location"] == f"/ui/runs/{run_id}"
        # htmx sends the token as a header instead of a field.
        other_run = start(console, "acme")
        by_header = c.post(
            f"/ui/runs/{other_run}/cancel",
            data={"reason": "by htmx"},
            headers={"X-CSRF-Token": token},
        )
        assert by_header.status_code == 303
    with console.as_("acme") as api:
        states = {api.get(f"/v1/runs/{r}").json()["state"] for r in (run_id, other_run)}
        audit = api.get("/v1/audit").json()["items"]
    assert states == {"cancelled"}
    assert [a["reason"] for a in audit if a["action"] == "cancel"] == ["by htmx", "by form"]
    operator = _key_id(console.keys["acme"][Role.OPERATOR])
    assert {a["actor"] for a in audit if a["action"] == "cancel"} == {f"key:{operator}"}


def _key_id(key: str) -> str:
    return key.split(".", 1)[0]


async def test_a_viewer_sees_no_actions_and_may_not_post_them(console: ApiSetup) -> None:
    failed = start(console, "acme", "plain.fail")
    async with worker_running(console.app):
        await wait_for_states(console.app.store, [failed], {RunState.FAILED})
    waiting = start(console, "acme")
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        for run_id in (failed, waiting):
            page = c.get(f"/ui/runs/{run_id}")
            assert page.status_code == 200 and not ACTIONS.search(page.text)
        assert "Preview retry" not in c.get("/ui/errors").text
        token = page_csrf(c)
        posts = {
            f"/ui/runs/{failed}/retry": {"reason": "r"},
            f"/ui/runs/{waiting}/cancel": {"reason": "r"},
            "/ui/errors/retry": {"reason": "r", "dry_run": "true"},
        }
        for path, data in posts.items():
            refused = c.post(path, data={**data, "csrf": token})
            assert refused.status_code == 403 and "viewer" in refused.text, path
    with sign_in(console.url, console.keys["acme"][Role.OPERATOR]) as c:
        assert ACTIONS.search(c.get(f"/ui/runs/{failed}").text)
    with console.as_("acme") as api:
        assert api.get(f"/v1/runs/{waiting}").json()["state"] == "queued"
        assert api.get(f"/v1/runs/{failed}").json()["superseded_by"] is None


def test_logout_clears_the_cookie(console: ApiSetup) -> None:
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        kept = c.cookies["greenroom_session"]
        out = c.post("/ui/logout", data={"csrf": page_csrf(c)})
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
        cleared = session_cookie(out)
        assert "Max-Age=0" in cleared and "Path=/ui" in cleared
        assert "greenroom_session" not in c.cookies
        assert c.get("/ui/").status_code == 303
    assert kept  # the cookie named a session; the browser no longer has it


def test_a_revoked_key_s_session_ends(console: ApiSetup) -> None:
    key = console.keys["acme"][Role.OPERATOR]
    with sign_in(console.url, key) as c:
        assert c.get("/ui/").status_code == 200
        with console.as_("acme", Role.ADMIN) as admin:
            assert admin.delete(f"/v1/keys/{_key_id(key)}").status_code == 200
        gone = c.get("/ui/")
        assert gone.status_code == 303 and gone.headers["location"] == "/ui/login"
        rows = c.get("/ui/runs/rows", headers={"HX-Request": "true"})
        assert rows.headers.get("HX-Redirect") == "/ui/login"


def test_a_tenant_never_sees_another_tenant_s_run(console: ApiSetup) -> None:
    acme_run = start(console, "acme", labels={"who": "acme"})
    globex_run = start(console, "globex", labels={"who": "globex"})
    with sign_in(console.url, console.keys["acme"][Role.ADMIN]) as c:
        assert c.get(f"/ui/runs/{acme_run}").status_code == 200
        other = c.get(f"/ui/runs/{globex_run}")
        assert other.status_code == 404 and "globex" not in other.text
        assert c.get(f"/ui/runs/{globex_run}/artifacts/1").status_code == 404
        token = page_csrf(c)
        cancel = c.post(f"/ui/runs/{globex_run}/cancel", data={"reason": "r", "csrf": token})
        assert cancel.status_code == 404
        listed = c.get("/ui/runs").text
        assert acme_run in listed and globex_run not in listed
        assert c.get("/ui/runs?tenant=globex").status_code == 403
    with sign_in(console.url, console.platform_key) as c:
        assert c.get(f"/ui/runs/{globex_run}").status_code == 200
        listed = c.get("/ui/runs").text
        assert acme_run in listed and globex_run in listed
        only_globex = c.get("/ui/runs?tenant=globex").text
        assert globex_run in only_globex and acme_run not in only_globex
    with console.as_("globex") as api:
        assert api.get(f"/v1/runs/{globex_run}").json()["state"] == "queued"


def test_bad_input_answers_4xx_pages(console: ApiSetup) -> None:
    with sign_in(console.url, console.keys["acme"][Role.OPERATOR]) as c:
        token = page_csrf(c)
        cases = {
            "/ui/runs?created_after=yesterday": 422,
            "/ui/runs?cursor=!!": 422,
            "/ui/runs?cursor=abc": 422,
            "/ui/runs?label=nolabel": 422,
            "/ui/runs?state=sleeping": 422,
            f"/ui/runs/{'x' * 41}": 422,
            "/ui/runs/nope/artifacts/x": 422,
            "/ui/runs/nope": 404,
            "/ui/nowhere": 404,
        }
        for path, status in cases.items():
            got = c.get(path)
            assert got.status_code == status and "text/html" in got.headers["content-type"], path
        run_id = start(console, "acme")
        empty = c.post(f"/ui/runs/{run_id}/cancel", data={"reason": "", "csrf": token})
        assert empty.status_code == 422 and "reason" in empty.text


def test_console_requests_are_counted_under_their_ui_routes(console: ApiSetup) -> None:
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        c.get("/ui/runs/no-such-run")
        metrics = c.get("/metrics").text
    assert 'route="/ui/runs/{run_id}",status="404"' in metrics
    assert 'route="/ui/login",status="303"' in metrics
    assert 'route="/runs/{run_id}"' not in metrics


def test_artifacts_are_served_to_their_tenant_only_and_never_render_as_a_page(
    console: ApiSetup,
) -> None:
    from greenroom.browser.artifacts import default_artifact_store

    globex_run = start(console, "globex")
    acme_run = start(console, "acme")
    html = b"<!doctype html><script>alert(1)</script><p>saved page</p>"
    location = default_artifact_store(console.app.settings).put(globex_run, "page.html", html)
    artifact = console.app.store.sessions.add_artifact(
        run_id=globex_run,
        tenant="globex",
        attempt=1,
        step_position=0,
        step_name="look",
        step_attempt=1,
        kind="html",
        content_type="text/html; charset=utf-8",
        location=location,
        size=len(html),
    )
    with sign_in(console.url, console.keys["globex"][Role.VIEWER]) as c:
        page = c.get(f"/ui/runs/{globex_run}").text
        assert f'href="/ui/runs/{globex_run}/artifacts/{artifact.id}" download' in page
        got = c.get(f"/ui/runs/{globex_run}/artifacts/{artifact.id}")
        assert got.status_code == 200 and got.content == html
        assert got.headers["content-disposition"].startswith("attachment")
        assert got.headers["x-content-type-options"] == "nosniff"
        assert "script-src 'self'" in got.headers["content-security-policy"]
        shown = c.get(f"/ui/runs/{globex_run}/artifacts/{artifact.id}/text")
        assert shown.status_code == 200
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;p&gt;saved page" in shown.text
        assert "<script>alert(1)" not in shown.text
    with sign_in(console.url, console.keys["acme"][Role.ADMIN]) as c:
        for run_id in (globex_run, acme_run):
            stolen = c.get(f"/ui/runs/{run_id}/artifacts/{artifact.id}")
            assert stolen.status_code == 404 and b"saved page" not in stolen.content
            as_text = c.get(f"/ui/runs/{run_id}/artifacts/{artifact.id}/text")
            assert as_text.status_code == 404 and "saved page" not in as_text.text


@pytest.mark.parametrize(
    ("after", "lands"),
    [
        ("/ui/runs?state=failed", "/ui/runs?state=failed"),
        ("https://evil.example/ui/", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
        ("/ui//evil.example", "/ui/"),
        ("/ui/\\evil.example", "/ui/"),
        ("/v1/runs", "/ui/"),
        ("/ui/login", "/ui/"),
    ],
)
def test_sign_in_returns_to_the_page_asked_for_and_nowhere_else(
    console: ApiSetup, after: str, lands: str
) -> None:
    with httpx.Client(base_url=console.url, timeout=30) as c:
        form = c.get("/ui/login", params={"next": after})
        assert f'name="next" value="{lands}"' in form.text
        done = c.post(
            "/ui/login",
            data={
                "api_key": console.keys["acme"][Role.VIEWER],
                "csrf": csrf_of(form.text),
                "next": after,
            },
        )
        assert done.status_code == 303 and done.headers["location"] == lands
