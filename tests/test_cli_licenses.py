"""`greenroom licenses` on a SQLite database and through the API: push files (JSON or NDJSON),
run the pass, list licenses and findings, act on them, savings and policy; errors are one line."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenroom.model import Role
from tests.api_helpers import ApiSetup, api_setup
from tests.test_cli import assert_one_line_error, cli

DAY = 86400.0


@pytest.fixture(autouse=True)
def no_server_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREENROOM_URL", raising=False)
    monkeypatch.delenv("GREENROOM_API_KEY", raising=False)


@pytest.fixture
def api(sqlite_url: str) -> Iterator[ApiSetup]:
    with api_setup(sqlite_url) as setup:
        yield setup


def _row(user: str, idle_days: float, **more: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "user_id": user,
        "email": f"{user}@example.com",
        "tier": "pro",
        "unit_cost": 15,
        "currency": "USD",
        "assigned_at": now - 365 * DAY,
        "last_active": now - idle_days * DAY,
    } | more


def test_licenses_commands_on_a_database_and_through_the_api(
    api: ApiSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = ("--db", api.app.settings.db)
    admin = ("--url", api.url, "--key", api.keys["acme"][Role.ADMIN])
    body = {"connector": "crm", "name": "crm", "credentials": {"username": "u", "password": "p"}}
    with api.as_("acme") as c:
        crm = c.post("/v1/integrations", json=body).json()["id"]
    array = tmp_path / "accounts.json"
    array.write_text(json.dumps([_row("ada", 1), _row("bob", 200), _row("cy", 300)]))
    code, out, err = cli(capsys, *local, "licenses", "push", crm, str(array))
    assert code == 0 and "received 3: 3 new" in out, err
    lines = tmp_path / "accounts.ndjson"
    lines.write_text("\n".join(json.dumps(r) for r in [_row("dee", 250), _row("ada", 1)]) + "\n\n")
    code, out, err = cli(capsys, *admin, "licenses", "push", crm, str(lines))
    assert code == 0 and "received 2: 1 new" in out, err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([_row("eve", 1), _row("fay", 1, currency="XYZ")]))
    for where in (local, admin):
        code, out, err = cli(capsys, *where, "licenses", "push", crm, str(bad))
        assert_one_line_error(code, err, "accounts[1].currency")

    code, out, err = cli(capsys, *admin, "licenses", "pass")
    assert_one_line_error(code, err, "no remote mode")
    code, out, err = cli(capsys, *local, "licenses", "pass")
    assert code == 0 and "judged 4 licenses: 3 findings opened" in out, err
    code, out, err = cli(capsys, *local, "licenses", "pass")
    assert code == 0 and "judged 0 licenses" in out, err

    code, out, err = cli(capsys, *local, "licenses", "list")
    assert code == 0 and "USER" in out and "MONTHLY" in out and "bob" in out, err
    code, out, err = cli(capsys, *local, "licenses", "list", "--json")
    assert code == 0, err
    on_db = json.loads(out)
    code, out, err = cli(capsys, *admin, "licenses", "list", "--json")
    assert code == 0 and json.loads(out) == on_db and len(on_db) == 4, err
    code, out, err = cli(capsys, *local, "licenses", "list", "--verdict", "idle", "--json")
    assert {lic["user_id"] for lic in json.loads(out)} == {"bob", "cy", "dee"}, err
    code, out, err = cli(capsys, *admin, "licenses", "show", on_db[0]["id"])
    assert code == 0 and on_db[0]["user_id"] in out, err

    code, out, err = cli(capsys, *local, "licenses", "findings")
    assert code == 0 and "ACTION" in out and "reclaim" in out, err
    code, out, err = cli(capsys, *admin, "licenses", "findings", "--json")
    findings = {f["user_id"]: f["id"] for f in json.loads(out)}
    assert set(findings) == {"bob", "cy", "dee"}, err
    code, out, err = cli(capsys, *local, "licenses", "keep", findings["bob"], "--note", "ceo")
    assert code == 0 and "kept until" in out, err
    until = ("--until", "2030-01-01T00:00:00+00:00")
    code, out, err = cli(
        capsys, *admin, "licenses", "snooze", findings["cy"], *until, "--note", "x"
    )
    assert code == 0 and "snoozed until" in out, err
    code, out, err = cli(capsys, *local, "licenses", "snooze", findings["dee"], "--note", "x")
    assert code == 2 and "--until" in err, err
    code, out, err = cli(capsys, *admin, "licenses", "reclaim", findings["dee"], "--note", "gone")
    assert_one_line_error(code, err, "declares no deactivate workflow")
    code, out, err = cli(capsys, *local, "licenses", "reclaim", findings["dee"], "--note", "gone")
    assert_one_line_error(code, err, "--app")
    code, out, err = cli(capsys, *local, "licenses", "keep", "fnd_missing", "--note", "x")
    assert_one_line_error(code, err, "fnd_missing not found")

    code, out, err = cli(capsys, *local, "licenses", "savings")
    assert code == 0 and "USD" in out and "15.00" in out, err
    code, out, err = cli(capsys, *admin, "licenses", "savings", "--json")
    assert json.loads(out)["totals"][0]["available"] == 15.0, err

    code, out, err = cli(capsys, *local, "licenses", "policy", "--integration", crm)
    assert code == 0 and "grace_days: 60" in out, err
    set_ = ("licenses", "policy", "set", "--grace-days", "30", "--exempt-role", "owner")
    code, out, err = cli(capsys, *admin, *set_)
    assert code == 0 and "grace_days: 30" in out and "['owner']" in out, err
    code, out, err = cli(capsys, *local, "licenses", "policy", "--tenant", "acme", "--json")
    assert json.loads(out)["grace_days"] == 30, err
    clear = ("licenses", "policy", "set", "--tenant", "acme", "--clear", "grace_days")
    code, out, err = cli(capsys, *local, *clear)
    assert code == 0 and "grace_days: 60" in out, err
    code, out, err = cli(capsys, *local, "licenses", "policy", "set", "--clear", "bogus")
    assert_one_line_error(code, err, "not a policy setting")
