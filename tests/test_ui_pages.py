"""The console's lists over HTTP: the runs list pages with the API's cursor and filters by time
and state, as GET /v1/runs does."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import pytest
from ui_helpers import sign_in

from greenroom.model import Role
from tests.api_helpers import ApiSetup, api_setup

ROW = re.compile(r'<tr class="run" data-run="([^"]+)"')
OLDER = re.compile(r'<a id="older" href="([^"]+)"')


@pytest.fixture
def console(db_url: str) -> Iterator[ApiSetup]:
    """The real app on loopback, on SQLite and on PostgreSQL."""
    with api_setup(db_url) as setup:
        yield setup


def test_the_runs_list_pages_with_the_api_s_cursor_and_filters(console: ApiSetup) -> None:
    with console.as_("acme", Role.OPERATOR) as api:
        made = [
            api.post("/v1/runs", json={"workflow": "plain.echo", "input": {"value": n}}).json()
            for n in range(57)
        ]
        newest_first = [r["id"] for r in reversed(made)]
        assert api.post(f"/v1/runs/{made[0]['id']}/cancel", json={"reason": "r"}).is_success
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        first = c.get("/ui/runs").text
        assert ROW.findall(first) == newest_first[:50]
        assert 'id="rows" hx-get="/ui/runs/rows?"' in first, "the first page refreshes itself"
        older = OLDER.search(first)
        assert older is not None
        second = c.get(html.unescape(older.group(1))).text
        assert ROW.findall(second) == newest_first[50:]
        assert OLDER.search(second) is None and 'hx-trigger="every' not in second
        rows = c.get("/ui/runs/rows").text
        assert ROW.findall(rows) == newest_first[:50] and "<html" not in rows
        cancelled = c.get("/ui/runs?state=cancelled").text
        assert ROW.findall(cancelled) == [made[0]["id"]]
        assert ROW.findall(c.get("/ui/runs?created_after=2999-01-01T00:00").text) == []
        assert len(ROW.findall(c.get("/ui/runs?created_before=2999-01-01T00:00").text)) == 50
        assert ROW.findall(c.get("/ui/runs?workflow=plain.fail").text) == []
