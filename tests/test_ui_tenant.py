"""A platform key's choice of tenant is remembered across the console's pages for its session
(and only its session: another session, a forged choice or a tenant key's never use it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ui_helpers import sign_in

from greenroom.model import NewRun, Role
from greenroom.ui.tenant import COOKIE
from tests.api_helpers import ApiSetup, api_setup


@pytest.fixture
def console(sqlite_url: str) -> Iterator[ApiSetup]:
    """On SQLite alone: the choice is the console's, the store calls are the pages' own."""
    with api_setup(sqlite_url) as setup:
        yield setup


def test_the_chosen_tenant_follows_the_platform_key_across_pages(console: ApiSetup) -> None:
    store = console.app.store
    acme = store.runs.enqueue(NewRun(workflow="plain.echo", tenant="acme"))[0]
    globex = store.runs.enqueue(NewRun(workflow="plain.echo", tenant="globex"))[0]
    with sign_in(console.url, console.platform_key) as c:
        both = c.get("/ui/runs").text
        assert acme.id in both and globex.id in both
        c.get("/ui/", params={"tenant": "acme"})
        chosen = c.cookies[COOKIE]
        assert chosen.startswith("acme.")
        runs = c.get("/ui/runs").text
        assert acme.id in runs and globex.id not in runs
        assert 'name="tenant" value="acme"' in c.get("/ui/errors").text
        assert 'value="acme"' in c.get("/ui/schedules").text
        c.cookies.set(COOKIE, "globex." + chosen.split(".", 1)[1], domain="127.0.0.1", path="/ui")
        assert globex.id in c.get("/ui/runs").text, "a forged choice is ignored"
        c.cookies.set(COOKIE, chosen, domain="127.0.0.1", path="/ui")
        c.get("/ui/runs", params={"tenant": ""})  # the filter's blank: every tenant again
        assert COOKIE not in c.cookies
        assert globex.id in c.get("/ui/runs").text
        c.get("/ui/", params={"tenant": "acme"})
        chosen = c.cookies[COOKIE]
    with sign_in(console.url, console.platform_key) as c:
        c.cookies.set(COOKIE, chosen, domain="127.0.0.1", path="/ui")
        assert globex.id in c.get("/ui/runs").text, "another session does not inherit it"
    with sign_in(console.url, console.keys["globex"][Role.VIEWER]) as c:
        c.cookies.set(COOKIE, chosen, domain="127.0.0.1", path="/ui")
        page = c.get("/ui/runs")
        assert page.status_code == 200 and globex.id in page.text, "a tenant key ignores it"
