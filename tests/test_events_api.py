"""GET /v1/events, the client's events and `greenroom events`: tenant-scoped, paged in commit
order, bad filters refused as problems naming the field (both backends)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from greenroom.client import Client
from greenroom.model import NewRun, Role, RunState
from tests.api_helpers import ApiSetup
from tests.helpers import settle_events
from tests.test_api_errors import assert_problem
from tests.test_cli import assert_one_line_error, cli


@pytest.fixture(autouse=True)
def no_server_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREENROOM_URL", raising=False)
    monkeypatch.delenv("GREENROOM_API_KEY", raising=False)


def _end_runs(api: ApiSetup, tenant: str, *states: RunState) -> list[str]:
    """Runs of this tenant ended in these states, through the store (no worker needed)."""
    store = api.app.store
    ids = [store.runs.enqueue(NewRun(workflow="plain.echo", tenant=tenant))[0].id for _ in states]
    for state in states:
        (lease,) = store.runs.claim("w1", ["default"], 1, 30.0)
        error = {"type": "E", "message": "boom"} if state is RunState.FAILED else None
        store.runs.finish(lease, state, reason=state.value, error=error)
    settle_events(store)
    return ids


def _ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


def test_a_tenant_reads_its_own_events_a_page_at_a_time(api: ApiSetup) -> None:
    ok, bad = _end_runs(api, "acme", RunState.SUCCEEDED, RunState.FAILED)
    (theirs,) = _end_runs(api, "globex", RunState.SUCCEEDED)
    with api.as_("acme", Role.VIEWER) as c:
        page = _ok(c.get("/v1/events"))
        assert [(e["type"], e["subject"]) for e in page["items"]] == [
            ("run.succeeded", f"run:{ok}"),
            ("run.failed", f"run:{bad}"),
        ]
        assert all(e["tenant"] == "acme" for e in page["items"])
        assert page["items"][1]["payload"]["version"] == 1
        assert theirs not in json.dumps(page)
        seen, cursor = [], None
        while True:
            params = {"limit": 1} | ({"cursor": cursor} if cursor else {})
            got = _ok(c.get("/v1/events", params=params))
            if not got["items"]:
                break
            seen += [e["id"] for e in got["items"]]
            cursor = got["next_cursor"]
        assert seen == [e["id"] for e in page["items"]]
        # The last cursor is where newer events appear.
        (later,) = _end_runs(api, "acme", RunState.CANCELLED)
        (new,) = _ok(c.get("/v1/events", params={"cursor": cursor}))["items"]
        assert new["subject"] == f"run:{later}" and new["type"] == "run.cancelled"
        after = _ok(c.get("/v1/events", params={"after": seen[0]}))["items"]
        assert [e["id"] for e in after] == [seen[1], new["id"]]
        assert [e["type"] for e in _ok(c.get("/v1/events?type=run.failed"))["items"]] == [
            "run.failed"
        ]
        both = _ok(c.get("/v1/events?type=run.failed&type=run.cancelled"))["items"]
        assert len(both) == 2
        assert _ok(c.get(f"/v1/events?subject=run:{ok}"))["items"][0]["type"] == "run.succeeded"
        assert _ok(c.get("/v1/events?type=pause.*"))["items"] == []
        assert _ok(c.get("/v1/events?since=2999-01-01T00:00:00"))["items"] == []


def test_tenant_isolation_and_platform_reads(api: ApiSetup) -> None:
    _end_runs(api, "acme", RunState.SUCCEEDED)
    _end_runs(api, "globex", RunState.SUCCEEDED)
    with api.platform() as c:
        everything = _ok(c.get("/v1/events"))["items"]
        assert {e["tenant"] for e in everything} == {"acme", "globex"}
        globex = [e for e in everything if e["tenant"] == "globex"]
        assert _ok(c.get("/v1/events?tenant=globex"))["items"] == globex
    with api.as_("acme", Role.VIEWER) as c:
        assert_problem(c.get("/v1/events?tenant=globex"), 403)
        # Another tenant's event is no place to start from: not found, as if it were not there.
        assert_problem(c.get("/v1/events", params={"after": globex[0]["id"]}), 404)
        assert_problem(c.get("/v1/events", params={"after": 10**12}), 404)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("type=RUN.FAILED", "query.type.0"),
        ("type=run.", "query.type.0"),
        ("type=%00", "query.type.0"),
        ("type=run.failed%0a", "query.type.0"),
        ("subject=run%3Aabc%0d%0aX-Injected:%201", "query.subject"),
        ("subject=abc", "query.subject"),
        ("since=yesterday", "query.since"),
        ("after=0", "query.after"),
        ("after=-1", "query.after"),
        ("after=abc", "query.after"),
        ("after=1&cursor=1-1", "query.after"),
        ("cursor=abc", "query.cursor"),
        ("cursor=1-2-3", "query.cursor"),
        ("cursor=99999999999999999999-1", "query.cursor"),
        ("cursor=9999999999999999999-1", "query.cursor"),
        ("limit=0", "query.limit"),
        ("limit=501", "query.limit"),
        ("&".join(["type=run.failed"] * 21), "query.type"),
    ],
)
def test_bad_filters_are_problems_naming_the_field(api: ApiSetup, query: str, field: str) -> None:
    with api.as_("acme", Role.VIEWER) as c:
        body = assert_problem(c.get(f"/v1/events?{query}"), 422)
    named = [e["field"] for e in body.get("errors", [])]
    assert any(f == field or f.startswith(f"{field}.") for f in named), body


def test_the_client_reads_events(api: ApiSetup) -> None:
    ids = _end_runs(api, "acme", RunState.SUCCEEDED, RunState.FAILED, RunState.SUCCEEDED)
    with Client(api.url, api.keys["acme"][Role.VIEWER]) as gr:
        got = list(gr.iter_events(page_size=2))
        assert [e.subject for e in got] == [f"run:{i}" for i in ids]
        assert [e.id for e in gr.iter_events(after=got[0].id, type=["run.succeeded"])] == [
            got[2].id
        ]
        page = gr.events(limit=5, subject=f"run:{ids[1]}")
        assert [e.type for e in page.items] == ["run.failed"] and page.next_cursor


def test_the_command_lists_events_locally_and_remotely(
    api: ApiSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _end_runs(api, "acme", RunState.SUCCEEDED, RunState.FAILED)
    _end_runs(api, "globex", RunState.SUCCEEDED)
    remote = ("--url", api.url, "--key", api.keys["acme"][Role.VIEWER])
    local = ("--db", api.app.settings.db)
    code, out, err = cli(capsys, *remote, "events", "list", "--json")
    assert code == 0, err
    over_api = json.loads(out)
    assert [e["subject"] for e in over_api] == [f"run:{i}" for i in ids]
    code, out, err = cli(capsys, *local, "events", "list", "--tenant", "acme", "--json")
    assert code == 0, err
    assert json.loads(out) == over_api
    code, out, err = cli(capsys, *remote, "events", "list", "--type", "run.f*")
    assert_one_line_error(code, err, "type")
    for where in (remote, local):
        code, out, err = cli(capsys, *where, "events", "list", "--type", "run.failed")
        assert code == 0, err
        assert "run.failed" in out and "run.succeeded" not in out
        args = ("events", "list", "--after", str(over_api[0]["id"]), "--tenant", "acme")
        code, out, err = cli(capsys, *where, *args, "--json")
        assert [e["id"] for e in json.loads(out)] == [over_api[1]["id"]], err
    code, out, err = cli(capsys, *local, "events", "list", "--since", "1h", "--limit", "1")
    assert code == 0 and out.count("run.succeeded") == 1, err


def test_events_prune_acts_on_the_database_only(
    api: ApiSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    _end_runs(api, "acme", RunState.SUCCEEDED)
    remote = ("--url", api.url, "--key", api.keys["acme"][Role.ADMIN])
    code, _, err = cli(capsys, *remote, "events", "prune", "--older-than", "1s")
    assert_one_line_error(code, err, "no remote mode")
    local = ("--db", api.app.settings.db)
    code, out, err = cli(capsys, *local, "events", "prune", "--older-than", "30d")
    assert code == 0 and "deleted 0 events" in out, err
    code, out, err = cli(capsys, *local, "events", "prune", "--older-than", "0s")
    assert code == 0 and "deleted 1 events" in out, err
    code, out, _ = cli(capsys, *local, "events", "list")
    assert "no events" in out
