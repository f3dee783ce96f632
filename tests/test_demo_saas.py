"""The demo SaaS console, served for real by uvicorn and driven with httpx and Chromium."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from greenroom.demo.saas import (
    TIER_COST,
    DemoSaaS,
    admin_credentials,
    org_slugs,
    organization,
    running_demo_saas,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


class Listing(HTMLParser):
    """The users a page shows, as {field: text} per row, in either layout; and test ids seen."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.testids: set[str] = set()
        self.attrs_by_testid: dict[str, dict[str, str]] = {}
        self._field: str | None = None
        self._depth = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        testid = found.get("data-testid")
        if testid:
            self.testids.add(testid)
            self.attrs_by_testid.setdefault(testid, found)
        if testid in ("user-row", "member"):
            self.rows.append({"id": found.get("data-user-id") or found.get("data-member", "")})
        elif self.rows and (found.get("data-field") or (testid or "").startswith("user-")):
            self._field = found.get("data-field") or testid
            self.rows[-1].setdefault(self._field or "", "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "span"):
            self._field = None

    def handle_data(self, data: str) -> None:
        if self._field is not None:
            self.rows[-1][self._field] += data


@contextmanager
def signed_in(saas: DemoSaaS, org: str = "acme") -> Iterator[httpx.Client]:
    """A client signed in to the org through its login form."""
    with httpx.Client(base_url=saas.url, timeout=10) as client:
        creds = saas.credentials(org)
        response = client.post(
            f"/orgs/{org}/login", data={"email": creds.email, "password": creds.password}
        )
        assert response.status_code == 303, response.text
        yield client


def with_token(saas: DemoSaaS, path: str, token: str) -> httpx.Response:
    return httpx.get(saas.url + path, headers={"cookie": f"demo_session={token}"})


def page_info(text: str) -> tuple[int, int]:
    match = re.search(r'data-testid="page-info"[^>]*>Page (\d+) of (\d+)', text)
    assert match, text[:2000]
    return int(match[1]), int(match[2])


@pytest.fixture(scope="module")
def shared() -> Iterator[DemoSaaS]:
    with running_demo_saas(orgs=4) as saas:
        yield saas


@pytest.fixture
def saas(shared: DemoSaaS) -> DemoSaaS:
    """The module's server, back to its startup state."""
    shared.reset()
    return shared


# -- login and sessions --------------------------------------------------------------------


def test_login_success_sets_a_session_and_counts(saas: DemoSaaS) -> None:
    with httpx.Client(base_url=saas.url) as client:
        creds = saas.credentials("globex")
        assert creds == admin_credentials("globex")
        assert creds.email == "admin@globex.example" and creds.password not in repr(creds)
        response = client.post(
            "/orgs/globex/login",
            data={"email": creds.email, "password": creds.password, "next": ""},
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/orgs/globex/users"
        cookie = response.headers["set-cookie"]
        assert "demo_session=" in cookie and "HttpOnly" in cookie and "Path=/orgs/globex" in cookie
        page = client.get("/orgs/globex/users")
        assert page.status_code == 200
        assert 'data-testid="account" data-org="globex">admin@globex.example<' in page.text
    assert saas.stats()["globex"]["logins"] == 1
    assert saas.stats()["globex"]["active_sessions"] == 1


def test_wrong_credentials_show_the_form_with_an_error(saas: DemoSaaS) -> None:
    creds = saas.credentials("acme")
    wrong = [
        (creds.email, creds.password + "x"),
        ("someone@acme.example", creds.password),
        (creds.email, admin_credentials("globex").password),
        (creds.email, admin_credentials("acme", secret="another").password),
    ]
    with httpx.Client(base_url=saas.url) as client:
        for email, password in wrong:
            response = client.post("/orgs/acme/login", data={"email": email, "password": password})
            assert response.status_code == 401
            assert "set-cookie" not in response.headers
            assert 'data-testid="login-error"' in response.text
            assert 'id="login-form"' in response.text and password not in response.text
        assert client.get("/orgs/acme/users").status_code == 303
    stats = saas.stats()["acme"]
    assert stats["failed_logins"] == 4 and stats["logins"] == 0


def test_protected_pages_redirect_to_login_without_a_valid_session(saas: DemoSaaS) -> None:
    with httpx.Client(base_url=saas.url) as client:
        response = client.get("/orgs/acme/users?page=3")
        assert response.status_code == 303
        assert (
            response.headers["location"]
            == "/orgs/acme/login?next=%2Forgs%2Facme%2Fusers%3Fpage%3D3"
        )
        form = client.get(response.headers["location"])
        assert (
            form.status_code == 200 and 'name="next" value="/orgs/acme/users?page=3"' in form.text
        )
        creds = saas.credentials("acme")
        login = client.post(
            "/orgs/acme/login",
            data={
                "email": creds.email,
                "password": creds.password,
                "next": "/orgs/acme/users?page=3",
            },
        )
        assert login.headers["location"] == "/orgs/acme/users?page=3"
        assert page_info(client.get(login.headers["location"]).text) == (3, 13)
        # An open redirect is refused; a signed-in visit to the form goes to the console.
        assert client.get("/orgs/acme/login?next=//evil.example/").headers["location"] == (
            "/orgs/acme/users"
        )
        token = client.cookies["demo_session"]
        # Another org's page with this org's session, and a made-up token, both redirect.
        assert with_token(saas, "/orgs/acme/users", token).status_code == 200
        other = with_token(saas, "/orgs/globex/users", token)
        assert other.status_code == 303 and other.headers["location"].startswith(
            "/orgs/globex/login"
        )
        client.cookies.clear()
        assert with_token(saas, "/orgs/acme/users", "made-up").status_code == 303
        bad = client.post("/orgs/acme/users/u-0002/deactivate", data={"page": "1"})
        assert bad.status_code == 303 and "/login" in bad.headers["location"]
    assert saas.stats()["acme"]["actions"] == 0


def test_logout_ends_the_session(saas: DemoSaaS) -> None:
    with signed_in(saas) as client:
        token = client.cookies["demo_session"]
        assert client.post("/orgs/acme/logout").headers["location"] == "/orgs/acme/login"
        assert with_token(saas, "/orgs/acme/users", token).status_code == 303


# -- the users table -----------------------------------------------------------------------


def test_pagination_covers_every_user_exactly_once(saas: DemoSaaS) -> None:
    expected = organization("acme").users
    assert len(expected) == 312
    seen: list[dict[str, str]] = []
    with signed_in(saas) as client:
        url: str | None = "/orgs/acme/users"
        number = 0
        while url is not None:
            text = client.get(url).text
            number += 1
            assert page_info(text) == (number, 13)
            listing = Listing(text)
            assert len(listing.rows) == (25 if number < 13 else 312 - 12 * 25)
            seen.extend(listing.rows)
            assert ("prev-page" in listing.testids) == (number > 1)
            url = listing.attrs_by_testid.get("next-page", {}).get("href")
        beyond = client.get("/orgs/acme/users?page=99")
        assert page_info(beyond.text) == (13, 13)
        assert page_info(client.get("/orgs/acme/users?page=junk").text) == (1, 13)
    assert number == 13
    assert [row["id"] for row in seen] == [user.id for user in expected]
    assert len({row["user-email"] for row in seen}) == 312
    first = seen[0]
    assert first["user-email"] == "admin@acme.example" and first["user-role"] == "admin"
    for row, user in zip(seen, expected, strict=True):
        assert row["user-email"] == user.email and row["user-name"] == user.name
        assert row["user-tier"] == user.tier and row["user-cost"] == f"${TIER_COST[user.tier]}"
        assert row["user-last-login"] == (
            user.last_login.isoformat() if user.last_login else "never"
        )
        assert row["user-role"] in ("admin", "member", "viewer") and row["user-status"] == "active"


def test_search_filters_and_paginates(saas: DemoSaaS) -> None:
    users = organization("acme").users
    target = users[40]
    with signed_in(saas) as client:
        text = client.get("/orgs/acme/users", params={"q": target.email.upper()}).text
        rows = Listing(text).rows
        assert [row["id"] for row in rows] == [target.id]
        assert page_info(text) == (1, 1)


SERVE_ELSEWHERE = """
import sys, time
from greenroom.demo.saas import running_demo_saas
with running_demo_saas() as saas:
    print(saas.url, flush=True)
    sys.stdin.read()
"""


def test_same_org_same_users_on_two_servers(saas: DemoSaaS) -> None:
    """Another process (another hash seed, nothing cached) serves the same users."""
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_ELSEWHERE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        other = DemoSaaS(url=proc.stdout.readline().strip(), config=saas.config)
        with signed_in(saas, "zeta-7") as a, signed_in(other, "zeta-7") as b:
            for page in (1, 2, 3):
                url = f"/orgs/zeta-7/users?page={page}"
                rows_a, rows_b = Listing(a.get(url).text).rows, Listing(b.get(url).text).rows
                assert rows_a == rows_b and rows_a
                assert page_info(a.get(url).text) == page_info(b.get(url).text)
    finally:
        proc.communicate(input="", timeout=15)
    assert proc.returncode == 0
    assert organization("acme").users != organization("globex").users
    assert organization("acme", 30).users == organization("acme").users[:30]
    assert org_slugs(3) == ["acme", "globex", "initech"]
    assert org_slugs(12)[-2:] == ["org-11", "org-12"]
    assert admin_credentials("acme") != admin_credentials("globex")


def test_users_per_org_and_page_size_are_configurable() -> None:
    with running_demo_saas(users_per_org=7, page_size=3, orgs=5) as saas:
        index = httpx.get(saas.url + "/").text
        assert index.count('data-testid="org"') == 5 and "(7 users)" in index
        with signed_in(saas, "initech") as client:
            text = client.get("/orgs/initech/users?page=3").text
            assert page_info(text) == (3, 3)
            assert [row["id"] for row in Listing(text).rows] == ["u-0007"]


def test_unknown_or_invalid_org_is_not_found(saas: DemoSaaS) -> None:
    assert httpx.get(saas.url + "/orgs/Not_A_Slug/login").status_code == 404
    assert httpx.get(saas.url + "/orgs/-x/users").status_code == 404


# -- admin actions -------------------------------------------------------------------------


def test_deactivate_and_change_tier_are_reflected_in_the_table(saas: DemoSaaS) -> None:
    users = organization("acme").users
    target, other = users[30], users[31]  # both on page 2
    new_tier = next(t for t in TIER_COST if t != other.tier)
    with signed_in(saas) as client:
        done = client.post(f"/orgs/acme/users/{target.id}/deactivate", data={"page": "2", "q": ""})
        assert done.status_code == 303 and done.headers["location"] == "/orgs/acme/users?page=2"
        text = client.get(done.headers["location"]).text
        assert f"Deactivated {target.email}" in text
        changed = client.post(f"/orgs/acme/users/{other.id}/tier", data={"tier": new_tier})
        assert changed.status_code == 303
        rows = {row["id"]: row for row in Listing(client.get("/orgs/acme/users?page=2").text).rows}
        assert rows[target.id]["user-status"] == "deactivated"
        assert rows[other.id]["user-tier"] == new_tier
        assert rows[other.id]["user-cost"] == f"${TIER_COST[new_tier]}"
        assert rows[users[32].id]["user-status"] == "active"
        # The notice shows once; a deactivated user has no deactivate button.
        again = client.get("/orgs/acme/users?page=2").text
        assert "Deactivated" not in again
        assert f'action="/orgs/acme/users/{target.id}/deactivate"' not in again
        bad_tier = client.post(f"/orgs/acme/users/{other.id}/tier", data={"tier": "platinum"})
        assert bad_tier.status_code == 400
        assert client.post("/orgs/acme/users/u-9999/deactivate").status_code == 404
        self_off = client.post("/orgs/acme/users/u-0001/deactivate")
        assert self_off.status_code == 400
    assert saas.stats()["acme"]["actions"] == 2
    with running_demo_saas() as fresh, signed_in(fresh) as client:
        rows = {row["id"]: row for row in Listing(client.get("/orgs/acme/users?page=2").text).rows}
        assert rows[target.id]["user-status"] == "active"  # state is per server
    saas.reset()
    with signed_in(saas) as client:
        rows = {row["id"]: row for row in Listing(client.get("/orgs/acme/users?page=2").text).rows}
        assert (
            rows[target.id]["user-status"] == "active" and rows[other.id]["user-tier"] == other.tier
        )


# -- counters ------------------------------------------------------------------------------


def test_login_counter_per_org_and_reset(saas: DemoSaaS) -> None:
    for org in ("acme", "acme", "acme", "initech"):
        with signed_in(saas, org):
            pass
    response = httpx.get(saas.url + "/_admin/stats")
    assert response.headers["content-type"] == "application/json"
    stats = response.json()
    assert stats["acme"]["logins"] == 3 and stats["initech"]["logins"] == 1
    assert "globex" not in stats
    assert saas.logins("acme") == 3
    assert httpx.post(saas.url + "/_admin/stats/reset").json() == {
        "acme": {"logins": 0, "failed_logins": 0, "page_views": 0, "errors": 0, "actions": 0,
                 "active_sessions": 3},
        "initech": {"logins": 0, "failed_logins": 0, "page_views": 0, "errors": 0, "actions": 0,
                    "active_sessions": 1},
    }  # fmt: skip
    assert saas.logins("acme") == 0


# -- faults --------------------------------------------------------------------------------


def test_latency_is_added_to_every_page_but_not_to_the_hooks(saas: DemoSaaS) -> None:
    with signed_in(saas) as client:
        client.get("/orgs/acme/users")  # warm up
        start = time.monotonic()
        client.get("/orgs/acme/users")
        fast = time.monotonic() - start
        assert saas.set_faults(latency_ms=400).latency_ms == 400
        for path in ("/orgs/acme/users", "/orgs/acme/login", "/"):
            start = time.monotonic()
            client.get(path)
            assert time.monotonic() - start >= 0.4
        start = time.monotonic()
        saas.stats()
        assert time.monotonic() - start < 0.4
    assert fast < 0.4


def test_error_rate_is_roughly_right_and_deterministic(saas: DemoSaaS) -> None:
    def pattern(server: DemoSaaS) -> list[int]:
        server.set_faults(error_rate=0.3, seed=7)
        with httpx.Client(base_url=server.url) as client:
            return [client.get("/orgs/acme/login").status_code for _ in range(300)]

    codes = pattern(saas)
    assert set(codes) == {200, 500}
    assert 60 <= codes.count(500) <= 120
    with running_demo_saas() as other:
        assert pattern(other) == codes
    assert saas.stats()["acme"]["errors"] == codes.count(500)
    saas.set_faults(error_rate=0.0)
    assert httpx.get(saas.url + "/orgs/acme/login").status_code == 200


def test_error_rate_from_startup_settings_and_hooks_never_fail() -> None:
    with running_demo_saas(error_rate=1.0, seed=3) as saas:
        assert httpx.get(saas.url + "/orgs/acme/login").status_code == 500
        assert saas.stats()["acme"]["errors"] == 1  # the hooks themselves never fail
        assert saas.set_faults(error_rate=0.5).error_rate == 0.5


def test_sessions_expire_and_redirect_to_login(saas: DemoSaaS) -> None:
    with signed_in(saas) as client:
        assert client.get("/orgs/acme/users").status_code == 200
        # Expiry applies to existing sessions too: this one, signed in over 10 ms ago, is over.
        saas.set_faults(session_seconds=0.01)
        time.sleep(0.02)
        expired = client.get("/orgs/acme/users")
        assert expired.status_code == 303 and expired.headers["location"].startswith(
            "/orgs/acme/login"
        )
    saas.set_faults(session_seconds=60)
    with signed_in(saas) as client, signed_in(saas, "globex") as other:
        assert saas.expire_sessions("acme") == 1
        assert client.get("/orgs/acme/users").status_code == 303
        assert other.get("/orgs/globex/users").status_code == 200


def test_changed_layout_breaks_the_table_selectors(saas: DemoSaaS) -> None:
    with signed_in(saas) as client:
        normal = Listing(client.get("/orgs/acme/users").text)
        saas.set_faults(changed_layout=True)
        changed_text = client.get("/orgs/acme/users").text
        changed = Listing(changed_text)
    assert {"users-table", "user-row", "user-email"} <= normal.testids
    assert not {"users-table", "user-row", "user-email"} & changed.testids
    assert "<table" not in changed_text and 'id="users-table"' not in changed_text
    assert "member-directory" in changed.testids
    assert [r["id"] for r in changed.rows] == [r["id"] for r in normal.rows]
    assert [r["mail"] for r in changed.rows] == [r["user-email"] for r in normal.rows]
    assert "page-info" in changed.testids  # only the users' markup changed


def test_faults_are_validated_and_readable(saas: DemoSaaS) -> None:
    for bad in ({"error_rate": 2}, {"latency_ms": "slow"}, {"nope": 1}, {"changed_layout": 1}):
        response = httpx.post(saas.url + "/_admin/faults", json=bad)
        assert response.status_code == 422, bad
    assert httpx.get(saas.url + "/_admin/faults").json() == {
        "latency_ms": 0,
        "error_rate": 0.0,
        "session_seconds": 1800.0,
        "changed_layout": False,
        "seed": 0,
    }


# -- the command ---------------------------------------------------------------------------


def test_demo_saas_command_serves_until_interrupted(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    command = [sys.executable, "-m", "greenroom.cli", "demo-saas", "--port", "0", "--orgs", "4"]
    command += ["--no-access-log", "--latency-ms", "5", "--session-minutes", "0.5"]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any("Ctrl-C" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        output = "".join(lines)
        url = re.search(r"http://127\.0\.0\.1:\d+", output)
        assert url, output
        assert "admin@initech.example" in output and "umbrella" in output
        assert "hooli" not in output
        assert admin_credentials("acme").password not in output
        faults = httpx.get(url[0] + "/_admin/faults").json()
        assert faults["latency_ms"] == 5 and faults["session_seconds"] == 30
        index = httpx.get(url[0] + "/").text
        assert index.count('data-testid="org"') == 4
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, rest
        assert "stopped" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# -- a real browser ------------------------------------------------------------------------


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")
async def test_chromium_logs_in_through_the_form_and_reads_the_table(saas: DemoSaaS) -> None:
    from playwright.async_api import async_playwright

    creds = saas.credentials("globex")
    expected = organization("globex").users[:25]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(saas.users_url("globex"))
            assert "/orgs/globex/login" in page.url
            await page.fill("input[name=email]", creds.email)
            await page.fill("input[name=password]", creds.password)
            await page.click("[data-testid=login-submit]")
            await page.wait_for_selector("[data-testid=user-row]")
            assert page.url == saas.users_url("globex")
            rows = page.locator("[data-testid=user-row]")
            assert await rows.count() == 25
            emails = await page.locator(
                "[data-testid=user-row] [data-testid=user-email]"
            ).all_inner_texts()
            assert emails == [user.email for user in expected]
            costs = await page.locator("[data-testid=user-cost]").evaluate_all(
                "cells => cells.map(c => Number(c.dataset.amount))"
            )
            assert costs == [user.monthly_cost for user in expected]
            info = await page.locator("[data-testid=page-info]").inner_text()
            assert info.startswith("Page 1 of 6")
            assert await page.evaluate("localStorage.getItem('greenroom-demo:org')") == "globex"
            state = await context.storage_state()
            assert [c["name"] for c in state["cookies"]] == ["demo_session"]
        finally:
            await browser.close()
    assert saas.logins("globex") == 1
