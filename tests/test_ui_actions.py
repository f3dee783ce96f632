"""The console's actions over HTTP do what the API's do: a retry from scratch with new input,
a second retry of the same run refused, bad input a 422 page."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ui_helpers import page_csrf, sign_in

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
