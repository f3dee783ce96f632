"""`greenroom reports` through the API and on a SQLite database: subscribe, list, make a
period's report, show, download, resend; refusals are one line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenroom.model import Role
from tests.api_helpers import ApiSetup, api_setup
from tests.helpers import wait_for_states, worker_running
from tests.test_cli import assert_one_line_error, cli


@pytest.fixture(autouse=True)
def no_server_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREENROOM_URL", raising=False)
    monkeypatch.delenv("GREENROOM_API_KEY", raising=False)


@pytest.fixture
def api(sqlite_url: str) -> Iterator[ApiSetup]:
    with api_setup(sqlite_url) as setup:
        yield setup


async def _made(api: ApiSetup, run_id: str) -> None:
    async with worker_running(api.app, queues=["reports"]):
        (done,) = await wait_for_states(api.app.store, [run_id])
    assert done.state.value == "succeeded", done.error


def test_reports_commands(
    api: ApiSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = ("--db", api.app.settings.db)
    admin = ("--url", api.url, "--key", api.keys["acme"][Role.ADMIN])
    operator = ("--url", api.url, "--key", api.keys["acme"][Role.OPERATOR])
    code, out, err = cli(
        capsys,
        *admin,
        "reports",
        "subscribe",
        "--type",
        "health",
        "--email",
        "ops@acme.example",
        "--timezone",
        "Europe/Berlin",
    )
    assert code == 0 and "the health report every week (Europe/Berlin)" in out, err
    code, out, err = cli(capsys, *local, "reports", "subscriptions", "--json")
    (subscription,) = json.loads(out)
    assert subscription["tenant"] == "acme" and subscription["timezone"] == "Europe/Berlin"

    code, out, err = cli(capsys, *operator, "reports", "run", "--type", "health")
    assert code == 0, err
    run_id = out.split()[1]
    asyncio.run(_made(api, run_id))
    capsys.readouterr()  # the worker's log
    code, again, err = cli(capsys, *operator, "reports", "run", "--type", "health")
    assert again.split()[1] == run_id, "the same period is the same run"

    code, out, err = cli(capsys, *local, "reports", "list", "--json")
    (report,) = json.loads(out)
    assert report["report_type"] == "health" and report["published"] == 1
    code, out, err = cli(capsys, *admin, "reports", "show", report["id"])
    assert code == 0 and "report.ready sent: 1" in out and "health.html" in out, err
    code, out, err = cli(
        capsys, *admin, "reports", "download", report["id"], "--to", str(tmp_path / "r")
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "health-failures.csv",
        "health-integrations.csv",
        "health.html",
        "health.pdf",
    ]
    assert (tmp_path / "r" / "health.html").read_text().startswith("<!doctype html>")

    code, out, err = cli(capsys, *operator, "reports", "resend", report["id"], "--reason", "x")
    assert_one_line_error(code, err, "admin")
    code, out, err = cli(capsys, *local, "reports", "resend", report["id"], "--reason", "fixed")
    assert code == 0 and "sent 2 times" in out, err
    code, out, err = cli(capsys, *operator, "reports", "run", "--type", "health", "--force-resend")
    assert_one_line_error(code, err, "--force-resend needs --reason")
    code, out, err = cli(capsys, *local, "reports", "run", "--type", "health", "--tenant", "acme")
    assert_one_line_error(code, err, "--app is needed")
    code, out, err = cli(capsys, *admin, "reports", "subscribe", "--type", "health")
    assert_one_line_error(code, err, "--email")
