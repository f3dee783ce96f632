"""The console's live stream over HTTP, both backends: `change` when the tenant's runs (or the
run a page shows) change, `end` once the run ended, a marker that moves for the tenant's runs
alone, and the tenant isolation and sign-in every page has."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from ui_helpers import sign_in

from greenroom import RunState
from greenroom.model import NewRun, Role
from tests.api_helpers import ApiSetup, api_setup
from tests.test_retry_safety import end


@pytest.fixture
def console(db_url: str) -> Iterator[ApiSetup]:
    with api_setup(db_url) as setup:
        yield setup


def events(stream: httpx.Response, wanted: int) -> list[str]:
    """The names of the stream's next `wanted` events."""
    names: list[str] = []
    for line in stream.iter_lines():
        if line.startswith("event: "):
            names.append(line.removeprefix("event: "))
            if len(names) == wanted:
                break
    return names


def test_a_stream_tells_of_changes_to_the_tenants_runs_and_a_runs_end(console: ApiSetup) -> None:
    store = console.app.store
    run = store.runs.enqueue(NewRun(workflow="plain.echo", tenant="acme"))[0]
    other = store.runs.enqueue(NewRun(workflow="plain.echo", tenant="globex"))[0]
    seen = store.watch.runs_marker(tenant="acme")
    store.runs.enqueue(NewRun(workflow="plain.echo", tenant="globex"))
    assert store.watch.runs_marker(tenant="acme") == seen, "another tenant's run is not acme's"
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        page = c.get(f"/ui/runs/{run.id}").text
        live = page.split('sse-connect="')[1].split('"')[0].replace("&amp;", "&")
        assert live.startswith(f"/ui/live?run={run.id}&seen=")
        with c.stream("GET", live) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            started = time.monotonic()
            end(store, run, RunState.SUCCEEDED)
            assert events(stream, 2) == ["change", "end"]
            assert time.monotonic() - started < 5
        runs_page = c.get("/ui/runs").text
        live = runs_page.split('sse-connect="')[1].split('"')[0].replace("&amp;", "&")
        with c.stream("GET", live) as stream:
            store.runs.enqueue(NewRun(workflow="plain.echo", tenant="acme"))
            assert events(stream, 1) == ["change"]
        stale = c.stream("GET", "/ui/live?seen=0")
        with stale as stream:
            assert events(stream, 1) == ["change"], "a page older than the stream fetches at once"
        assert c.get(f"/ui/live?run={other.id}").status_code == 404
        assert c.get("/ui/live?tenant=globex").status_code == 403
    assert httpx.get(f"{console.url}/ui/live", follow_redirects=False).status_code == 303
