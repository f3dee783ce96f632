"""A run's input is checked against its workflow where it is enqueued (Python, HTTP API, CLI),
not when the run starts; a workflow may take one pydantic model as its input instead of
keyword arguments."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from greenroom import App, ConfigError, InvalidInput, RunContext, RunState
from greenroom.model import NewRun, Role
from tests.api_helpers import api_setup
from tests.helpers import fast_app, wait_for_states, worker_running
from tests.test_cli import assert_one_line_error, cli


class SyncInput(BaseModel):
    org: str
    pages: int = Field(3, ge=1, le=10)


def build(db_url: str) -> App:
    app = fast_app(db_url)

    @app.workflow(name="kw", session="{tenant}:{org}")
    async def kw(ctx: RunContext, org: str, pages: int = 3) -> dict[str, Any]:
        return {"org": org, "pages": pages}

    @app.workflow(name="modelled", session="{org}:{pages}", input=SyncInput)
    async def modelled(ctx: RunContext, params: SyncInput) -> dict[str, Any]:
        assert isinstance(params, SyncInput)
        return {"org": params.org, "pages": params.pages, "type": type(params).__name__}

    return app


@pytest.fixture
def app(sqlite_url: str) -> Iterator[App]:
    a = build(sqlite_url)
    yield a
    a.close()


def fields_of(exc: pytest.ExceptionInfo[InvalidInput]) -> list[str]:
    return sorted(e["field"] for e in exc.value.errors)


def test_unknown_and_missing_arguments_are_refused_at_enqueue(app: App) -> None:
    with pytest.raises(InvalidInput) as refused:
        app.enqueue_sync("kw", {"orgg": "o1", "page": 2})
    assert fields_of(refused) == ["input.org", "input.orgg", "input.page"]
    assert "input.orgg: not an input of workflow 'kw'" in str(refused.value)
    assert "input.org: missing: workflow 'kw' needs it" in str(refused.value)
    assert app.store.runs.count_by_state() == {}, "nothing was enqueued"
    run = app.enqueue_sync("kw", {"org": "o1"})
    assert run.input == {"org": "o1"}


def test_a_model_input_is_validated_and_stored_with_its_defaults(app: App) -> None:
    with pytest.raises(InvalidInput) as refused:
        app.enqueue_sync("modelled", {"pages": 99, "extra": 1})
    assert fields_of(refused) == ["input.extra", "input.org", "input.pages"]
    assert app.store.runs.count_by_state() == {}
    run = app.enqueue_sync("modelled", {"org": "o1", "pages": "2"})
    assert run.input == {"org": "o1", "pages": 2}, "coerced, as the workflow will get it"
    assert run.session_key == "o1:2"
    defaulted = app.enqueue_sync("modelled", SyncInput(org="o2"))
    assert defaulted.input == {"org": "o2", "pages": 3}
    assert defaulted.session_key == "o2:3", "a default can key the session"


async def test_the_workflow_gets_a_validated_model(app: App) -> None:
    run = await app.enqueue("modelled", {"org": "o1", "pages": 2})
    plain = await app.enqueue("kw", {"org": "o2"})
    async with worker_running(app):
        done, done_plain = await wait_for_states(app.store, [run.id, plain.id])
    assert done.state is RunState.SUCCEEDED, done.error
    assert done.output == {"org": "o1", "pages": 2, "type": "SyncInput"}
    assert done_plain.output == {"org": "o2", "pages": 3}


async def test_a_stored_input_that_no_longer_fits_fails_the_run_without_retries(
    app: App,
) -> None:
    """As enqueued by another version of the code: the store takes any JSON object."""
    [(run, _)] = app.store.runs.enqueue_many(
        [NewRun(workflow="modelled", input={"org": "o1", "pages": 0}, max_attempts=5)]
    )
    async with worker_running(app):
        [done] = await wait_for_states(app.store, [run.id])
    assert done.state is RunState.FAILED
    assert done.attempt == 1, "no retry fixes an input"
    assert done.error is not None
    assert done.error["type"] == "PermanentError"
    assert "input.pages" in done.error["message"]


def test_declarations_that_no_input_could_fit_are_refused(app: App) -> None:
    with pytest.raises(ConfigError, match="one parameter for the SyncInput"):

        @app.workflow(name="two", input=SyncInput)
        async def two(ctx: RunContext, a: SyncInput, b: int) -> None: ...

    with pytest.raises(ConfigError, match="positional-only"):

        @app.workflow(name="posonly")
        async def posonly(ctx: RunContext, a: int, /) -> None: ...

    with pytest.raises(ConfigError, match="pydantic model"):

        @app.workflow(name="notamodel", input=dict)  # type: ignore[arg-type]
        async def notamodel(ctx: RunContext, a: dict[str, Any]) -> None: ...


def test_the_api_answers_422_naming_the_fields_at_create_and_retry(sqlite_url: str) -> None:
    with api_setup(sqlite_url) as api, api.as_("acme", Role.OPERATOR) as c:
        refused = c.post("/v1/runs", json={"workflow": "plain.echo", "input": {"valu": 1}})
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in refused.json()["errors"]] == ["input.valu"]
        assert "not an input of workflow 'plain.echo'" in refused.json()["detail"]
        assert c.get("/v1/runs").json()["items"] == []

        run = c.post("/v1/runs", json={"workflow": "plain.echo", "delay": 3600}).json()
        c.post(f"/v1/runs/{run['id']}/cancel", json={"reason": "to retry it"})
        again = c.post(f"/v1/runs/{run['id']}/retry", json={"input": {"x": 1}, "reason": "r"})
        assert again.status_code == 422, again.text
        assert [e["field"] for e in again.json()["errors"]] == ["input.x"]


APP_SOURCE = """
from pydantic import BaseModel
from greenroom import App, RunContext

app = App()


class Org(BaseModel):
    org: str


@app.workflow(name="kw")
async def kw(ctx: RunContext, org: str, pages: int = 3) -> None: ...


@app.workflow(name="modelled", input=Org)
async def modelled(ctx: RunContext, params: Org) -> None: ...
"""


def test_the_cli_says_which_fields_in_one_line_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "inputs_app.py").write_text(APP_SOURCE)
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path / 'g.db'}"
    assert cli(capsys, "--db", db, "db", "upgrade")[0] == 0
    base = ("--db", db, "enqueue", "--app", "inputs_app:app")
    code, _, err = cli(capsys, *base, "kw", "--input", '{"orgs": "o1"}')
    assert_one_line_error(code, err, "input.orgs: not an input", "input.org: missing")
    code, _, err = cli(capsys, *base, "modelled", "--input", '{"org": 5}')
    assert_one_line_error(code, err, "input.org: Input should be a valid string")
    code, out, _ = cli(capsys, *base, "modelled", "--input", '{"org": "o1"}')
    assert code == 0 and "created" in out
