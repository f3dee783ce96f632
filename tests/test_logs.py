"""Logs: GREENROOM_LOG_LEVEL and GREENROOM_LOG_FORMAT configure greenroom's structlog loggers
and the standard `logging` module alike; every line of a run names the run (and the step inside
one) and has the run's secrets redacted."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import BaseModel, SecretStr

from greenroom import App, RunContext, RunState, integrations, step, tracing
from greenroom.cli import run as cli_run
from greenroom.context import current_run
from greenroom.crypto import load_keyring
from greenroom.logs import _Handler, configure_logging
from greenroom.settings import load_settings
from tests.apps import isolated_app
from tests.helpers import fast_app, wait_for_states, worker_running

SECRET = "hunter2-in-the-log"
RUN_FIELDS = {"run_id", "tenant", "workflow", "attempt", "worker"}
QUIETED = ("httpx", "httpcore", "alembic")

Configure = Callable[..., None]


@pytest.fixture
def configure() -> Iterator[Configure]:
    """configure_logging with the given settings; the process's logging is put back after."""
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in ("", *QUIETED)}

    def configure(**settings: Any) -> None:
        configure_logging(load_settings(**settings))

    yield configure
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    structlog.reset_defaults()


@step(name="first")
async def first() -> int:
    logging.getLogger("thirdparty").info("first from %s", "stdlib")
    current_run.get().log.debug("a debug line")
    return 1


@step(name="second")
async def second(n: int) -> int:
    current_run.get().log.info("second through ctx.log", password=SECRET)
    return n + 1


def two_step_app(db_url: str, **settings: Any) -> App:
    app = fast_app(db_url, **settings)

    @app.workflow(name="logs.two_steps")
    async def two_steps(ctx: RunContext) -> int:
        assert ctx.browser is not None
        ctx.browser.add_secret(SECRET)  # what a workflow does with a password it types
        ctx.log.info("workflow begins")
        try:
            raise ValueError(f"rejected {SECRET}")
        except ValueError:
            logging.getLogger("thirdparty").exception("a library's error")
        n = await second(await first())
        ctx.log.info("workflow ends")
        return n

    return app


async def run_two_steps(app: App) -> str:
    run = app.enqueue_sync("logs.two_steps", tenant="acme")
    async with worker_running(app):
        [done] = await wait_for_states(app.store, [run.id])
    assert done.state is RunState.SUCCEEDED, done.error
    return run.id


def json_lines(text: str) -> dict[str, dict[str, Any]]:
    """Every line is one JSON object; they are returned by event."""
    lines = [json.loads(line) for line in text.splitlines()]
    return {line["event"]: line for line in lines}


async def test_json_lines_name_the_run_and_the_step_from_any_logger(
    sqlite_url: str, configure: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    app = two_step_app(sqlite_url, log_format="json")
    try:
        configure(**app.settings.model_dump())
        run_id = await run_two_steps(app)
    finally:
        app.close()
    lines = json_lines(capsys.readouterr().err)
    started = lines["worker started"]
    assert started["logger"] == "greenroom.worker" and started["level"] == "info"
    assert started["timestamp"].endswith("Z"), "ISO 8601, UTC"
    expected = {
        "run_id": run_id,
        "tenant": "acme",
        "workflow": "logs.two_steps",
        "attempt": 1,
        "worker": started["worker"],
    }
    in_run = ["workflow begins", "a library's error", "first from stdlib"]
    in_run += ["second through ctx.log", "workflow ends", "run succeeded"]
    for event in in_run:
        assert {k: lines[event].get(k) for k in RUN_FIELDS} == expected, event
    assert lines["first from stdlib"]["logger"] == "thirdparty"
    assert lines["first from stdlib"]["step"] == "first"
    assert lines["second through ctx.log"]["step"] == "second"
    assert "step" not in lines["workflow begins"] and "step" not in lines["workflow ends"]
    assert "a debug line" not in lines, "debug lines are not written at the info level"
    assert not RUN_FIELDS & set(lines["worker stopped"]) - {"worker"}, "outside the run"


@pytest.mark.parametrize("log_format", ["json", "console"])
async def test_the_runs_secrets_are_redacted_from_every_line(
    sqlite_url: str, configure: Configure, capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    app = two_step_app(sqlite_url, log_format=log_format)
    try:
        configure(**app.settings.model_dump())
        await run_two_steps(app)
    finally:
        app.close()
    written = capsys.readouterr().err
    assert SECRET not in written
    assert "second through ctx.log" in written and "ValueError: rejected [redacted]" in written
    if log_format == "json":
        lines = json_lines(written)
        assert lines["second through ctx.log"]["password"] == "[redacted]"
        assert lines["a library's error"]["exception"].endswith("ValueError: rejected [redacted]")


class Credentials(BaseModel):
    user: str
    password: SecretStr


async def test_the_integrations_credentials_are_redacted_from_every_line(
    sqlite_url: str, configure: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    app = fast_app(sqlite_url, log_format="json")
    site = app.connector("logs.site", credentials=Credentials)

    @app.workflow(name="logs.careless", connector=site)
    async def careless(ctx: RunContext) -> None:
        creds = await ctx.credentials(Credentials)
        password = creds.password.get_secret_value()
        logging.getLogger("thirdparty").warning("login as %s with %s", creds.user, password)
        ctx.log.info("typed", password=password)

    try:
        configure(**app.settings.model_dump())
        app.store.accounts.create_tenant("acme", actor="test")
        made = integrations.create(
            app.store.accounts,
            load_keyring(app.settings),
            site,
            tenant="acme",
            name="site",
            credentials={"user": "bot", "password": SECRET},
            settings={},
            actor="test",
        )
        run = await app.enqueue("logs.careless", tenant="acme", integration=made.id)
        async with worker_running(app):
            [done] = await wait_for_states(app.store, [run.id])
        assert done.state is RunState.SUCCEEDED, done.error
    finally:
        app.close()
    lines = json_lines(capsys.readouterr().err)
    assert lines["typed"]["password"] == "[redacted]"
    assert "login as bot with [redacted]" in lines
    assert SECRET not in json.dumps(lines)


async def test_an_isolated_runs_own_process_logs_the_same_way(
    sqlite_url: str, configure: Configure, capfd: pytest.CaptureFixture[str]
) -> None:
    app = fast_app(sqlite_url, log_format="json")
    app.workflows.update(isolated_app.app.workflows)
    try:
        configure(**app.settings.model_dump())
        run = await app.enqueue("iso.logs", {"secret": SECRET}, tenant="acme")
        async with worker_running(app):
            [done] = await wait_for_states(app.store, [run.id], timeout=30)
        assert done.state is RunState.SUCCEEDED, done.error
    finally:
        app.close()
    lines = json_lines(capfd.readouterr().err)
    line = lines["logged in its own process: [redacted]"]
    assert {k: line[k] for k in ("run_id", "tenant", "workflow", "step")} == {
        "run_id": run.id,
        "tenant": "acme",
        "workflow": "iso.logs",
        "step": "log_here",
    }
    assert line["worker"] == lines["worker started"]["worker"]


async def test_the_console_format_is_one_readable_line_without_colors(
    sqlite_url: str, configure: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    app = two_step_app(sqlite_url)
    try:
        configure(**app.settings.model_dump())
        run_id = await run_two_steps(app)
    finally:
        app.close()
    written = capsys.readouterr().err
    assert "\x1b[" not in written, "no colors: stderr is not a terminal"
    [line] = [line for line in written.splitlines() if "first from stdlib" in line]
    assert "[info" in line and "[thirdparty]" in line
    assert f"run_id={run_id}" in line and "tenant=acme" in line and "step=first" in line


def test_the_level_filters_structlog_and_stdlib_lines_alike(
    configure: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(log_level="WARNING", log_format="json")
    structlog.get_logger("greenroom.test").info("not written")
    logging.getLogger("thirdparty").info("not written either")
    structlog.get_logger("greenroom.test").warning("written")
    logging.getLogger("thirdparty").error("also written")
    assert set(json_lines(capsys.readouterr().err)) == {"written", "also written"}
    configure(log_level="debug", log_format="json")
    logging.getLogger("thirdparty").debug("a debug line")
    structlog.get_logger("greenroom.test").debug("another")
    assert set(json_lines(capsys.readouterr().err)) == {"a debug line", "another"}


def test_configuring_twice_writes_each_line_once(
    configure: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(log_format="json")
    configure(log_format="json")
    structlog.get_logger("greenroom.test").info("once")
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert sum(isinstance(h, _Handler) for h in logging.getLogger().handlers) == 1


def test_the_current_trace_and_span_are_on_the_lines(
    configure: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(log_format="json")
    with tracing.under("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"):
        logging.getLogger("thirdparty").info("traced")
    logging.getLogger("thirdparty").info("untraced")
    lines = json_lines(capsys.readouterr().err)
    assert lines["traced"]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert lines["traced"]["span_id"] == "00f067aa0ba902b7"
    assert "trace_id" not in lines["untraced"] and "span_id" not in lines["untraced"]


async def test_greenroom_as_a_library_leaves_logging_alone(sqlite_url: str) -> None:
    app = two_step_app(sqlite_url)
    try:
        await run_two_steps(app)
    finally:
        app.close()
    assert not any(isinstance(h, _Handler) for h in logging.getLogger().handlers)
    assert not structlog.is_configured()


# -- the command ---------------------------------------------------------------------------

APP_SOURCE = """
from greenroom import App

app = App()


@app.workflow(name="noop")
async def noop(ctx) -> None:
    ctx.log.info("noop ran")
"""


@pytest.fixture
def app_ref(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An app module in the current directory, as users write them."""
    (tmp_path / "logs_app.py").write_text(APP_SOURCE)
    monkeypatch.chdir(tmp_path)
    return "logs_app:app"


def greenroom_worker(app_ref: str, db: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "greenroom.cli", "worker", "--app", app_ref, "--db", db],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_worker_process_writes_json_lines(sqlite_url: str, app_ref: str) -> None:
    assert cli_run(["--db", sqlite_url, "db", "upgrade"]) == 0
    assert cli_run(["--db", sqlite_url, "enqueue", "noop", "--app", app_ref]) == 0
    proc = greenroom_worker(app_ref, sqlite_url, GREENROOM_LOG_FORMAT="json")
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:  # each line must be JSON, until the run's end
            lines.append(json.loads(line))
            if lines[-1]["event"] == "run succeeded":
                break
        proc.send_signal(signal.SIGTERM)
        out, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    lines += [json.loads(line) for line in rest.splitlines()]
    events = {line["event"]: line for line in lines}
    assert list(events)[:3] == ["worker started", "noop ran", "run succeeded"]
    assert list(events)[-1] == "worker stopped"
    assert events["noop ran"]["workflow"] == "noop"
    assert events["noop ran"]["worker"] == events["worker started"]["worker"]
    assert out == "", "logs go to stderr"


def test_a_bad_log_level_is_a_one_line_error(sqlite_url: str, app_ref: str) -> None:
    proc = greenroom_worker(app_ref, sqlite_url, GREENROOM_LOG_LEVEL="loud")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    [line] = err.splitlines()
    assert line.startswith("error: invalid settings: log_level:"), line
    assert "'debug', 'info', 'warning' or 'error'" in line and "Traceback" not in err
