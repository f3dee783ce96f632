"""/v1/schedules and `greenroom schedules` (both backends): tenant isolation, roles, audit,
spec errors naming the body field, next firings in the schedule's time zone, trigger,
idempotent backfill, firings, and the same answers with --db and --url."""

from __future__ import annotations

import json
from datetime import datetime
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from greenroom.model import Role
from greenroom.schedules.service import preparer
from greenroom.storage import RunFilter
from tests.api_helpers import ApiSetup
from tests.test_api_errors import assert_problem
from tests.test_cli import assert_one_line_error, cli

API_APP = "tests.apps.api_app:app"
DAILY = {
    "name": "daily",
    "workflow": "plain.echo",
    "cron": "0 8 * * *",
    "timezone": "Europe/Berlin",
}


@pytest.fixture(autouse=True)
def no_server_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREENROOM_URL", raising=False)
    monkeypatch.delenv("GREENROOM_API_KEY", raising=False)


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def _errors(r: httpx.Response) -> dict[str, str]:
    body = assert_problem(r, 422)
    return {e["field"]: e["message"] for e in body.get("errors", [])}


def _create(c: httpx.Client, **body: Any) -> dict[str, Any]:
    created: dict[str, Any] = _ok(c.post("/v1/schedules", json={**DAILY, **body}), 201)
    return created


def test_crud_isolation_roles_and_audit(api: ApiSetup) -> None:
    with api.as_("acme") as admin:
        made = _create(admin, input={"value": "{slot}"}, labels={"team": "ops"})
        path = f"/v1/schedules/{made['id']}"
        assert made["tenant"] == "acme" and made["overlap"] == "skip" and not made["paused"]
        assert len(made["next_firings"]) == 5
        for firing in made["next_firings"]:
            local = datetime.fromisoformat(firing["at"])
            assert (local.hour, local.minute) == (8, 0), "08:00 in Berlin, whatever the offset"
            assert local.utcoffset() == ZoneInfo("Europe/Berlin").utcoffset(
                local.replace(tzinfo=None)
            )
            assert local.timestamp() == firing["unix"]
        assert _ok(admin.get(path))["id"] == made["id"]
        every = _create(admin, name="often", cron=None, every="15m", overlap="buffer_all")
        assert every["every_seconds"] == 900 and every["cron"] is None
        unix = [f["unix"] for f in every["next_firings"]]
        gaps = {b - a for a, b in pairwise(unix)}
        assert gaps == {900}
        assert_problem(admin.post("/v1/schedules", json=DAILY), 409)
        changed = _ok(admin.patch(path, json={"every": 3600, "jitter": 60}))
        assert changed["cron"] is None and changed["every_seconds"] == 3600
        assert changed["jitter_seconds"] == 60 and changed["labels"] == {"team": "ops"}
        paused = _ok(admin.post(f"{path}/pause", json={"note": "vendor maintenance"}))
        assert paused["paused"] and paused["pause_note"] == "vendor maintenance"
        assert paused["next_firings"] == []
        assert "body.note" in _errors(admin.post(f"{path}/pause", json={}))
        resumed = _ok(admin.post(f"{path}/resume"))
        assert not resumed["paused"] and resumed["next_firings"]
    with api.as_("acme", Role.VIEWER) as viewer:
        assert len(_ok(viewer.get("/v1/schedules"))) == 2
        assert _ok(viewer.get(f"{path}/firings")) == []
        assert_problem(viewer.post("/v1/schedules", json={**DAILY, "name": "v"}), 403)
        assert_problem(viewer.patch(path, json={"jitter": 1}), 403)
        assert_problem(viewer.post(f"{path}/pause", json={"note": "x"}), 403)
        assert_problem(viewer.post(f"{path}/trigger"), 403)
        assert_problem(viewer.delete(path), 403)
    with api.as_("acme", Role.OPERATOR) as operator:
        assert_problem(operator.post(f"{path}/pause", json={"note": "x"}), 403)
        assert_problem(operator.patch(path, json={"jitter": 1}), 403)
        run = _ok(operator.post(f"{path}/trigger"), 201)
        assert run["labels"]["schedule"] == made["id"] and run["tenant"] == "acme"
    with api.as_("globex") as other:
        for r in (
            other.get(path),
            other.patch(path, json={"jitter": 1}),
            other.delete(path),
            other.post(f"{path}/pause", json={"note": "x"}),
            other.post(f"{path}/resume"),
            other.post(f"{path}/trigger"),
            other.post(f"{path}/backfill", json={"start": 0, "end": 1}),
            other.get(f"{path}/firings"),
        ):
            assert_problem(r, 404)
        assert _ok(other.get("/v1/schedules")) == []
    with api.platform() as platform:
        assert len(_ok(platform.get("/v1/schedules"))) == 2
        assert _ok(platform.get("/v1/schedules", params={"tenant": "globex"})) == []
        assert_problem(platform.post("/v1/schedules", json={**DAILY, "name": "p"}), 422)
        made_for = _ok(platform.post("/v1/schedules", json={**DAILY, "tenant": "globex"}), 201)
        assert made_for["tenant"] == "globex"
    with api.as_("acme") as admin:
        assert _ok(admin.delete(path), 204) is None
        assert_problem(admin.get(path), 404)
    audit = api.app.store.admin.audit_log(tenant="acme")
    actions = {a.action for a in audit if a.target == made["id"]}
    wanted = {"create", "update", "pause", "resume", "trigger", "delete"}
    assert actions >= {f"schedule.{a}" for a in wanted}, actions


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"cron": "61 * * * *"}, "body.cron", "minute field: 61 is out of range 0-59"),
        ({"cron": "0 24 * * *"}, "body.cron", "hour field: 24 is out of range 0-23"),
        ({"cron": "0 0 32 * *"}, "body.cron", "day-of-month field: 32 is out of range 1-31"),
        ({"cron": "0 0 * 13 *"}, "body.cron", "month field: 13 is out of range 1-12"),
        ({"cron": "0 0 * * 8"}, "body.cron", "day-of-week field: 8 is out of range 0-7"),
        ({"cron": "*/0 * * * *"}, "body.cron", "step '0' must be a positive number"),
        ({"cron": "0 0 * *"}, "body.cron", ""),
        ({"cron": "@sometimes"}, "body.cron", "unknown nickname"),
        ({"timezone": "Mars/Olympus"}, "body.timezone", "is not an IANA time zone"),
        ({"cron": None, "every": "10s"}, "body.every", "at least 60 seconds"),
        ({"cron": None, "every": 10}, "body.every", "at least 60 seconds"),
        ({"cron": None, "every": "soon"}, "body.every", ""),
        ({"cron": None}, "body.cron", "give a cron expression or an interval"),
        ({"cron": None, "every": "1h", "phase": 7200}, "body.phase", "less than the interval"),
        ({"start_at": 2_000_000_000, "end_at": 1_900_000_000}, "body.end_at", "after start_at"),
        ({"start_at": "2030-02-30T00:00:00Z"}, "body.start_at", ""),
        ({"workflow": "no.such"}, "body.workflow", "is not a workflow of this app"),
        ({"overlap": "sometimes"}, "body.overlap", ""),
        ({"catchup_seconds": -1}, "body.catchup_seconds", ""),
        ({"jitter": -5}, "body.jitter", ""),
        ({"name": "bad\x1b[2J"}, "body.name", "control characters"),
        ({"labels": {"k": "v\x00"}}, "body.labels.k", "control characters"),
        ({"input": {"a\x07": 1}}, "body.input", ""),
        ({"surprise": 1}, "body.surprise", ""),
    ],
)
def test_bad_schedules_are_refused_naming_the_field(
    api: ApiSetup, body: dict[str, Any], field: str, message: str
) -> None:
    with api.as_("acme") as admin:
        errors = _errors(admin.post("/v1/schedules", json={**DAILY, **body}))
        named = [f for f in errors if f == field or f.startswith(f"{field}.")]
        assert named, errors
        assert message in errors[named[0]], errors
        assert _ok(admin.get("/v1/schedules")) == [], "nothing was made"


def test_an_update_is_checked_whole(api: ApiSetup) -> None:
    with api.as_("acme") as admin:
        made = _create(admin, start_at="2030-01-01T00:00:00+01:00")
        assert made["start_at"] == datetime.fromisoformat("2030-01-01T00:00:00+01:00").timestamp()
        path = f"/v1/schedules/{made['id']}"
        assert "body.end_at" in _errors(admin.patch(path, json={"end_at": 1_800_000_000}))
        assert "body.cron" in _errors(admin.patch(path, json={"cron": "0 0 * * mon-xyz"}))
        assert "body.workflow" in _errors(admin.patch(path, json={"workflow": "nope"}))
        assert _ok(admin.get(path))["updated_at"] == made["updated_at"], "unchanged"


def test_trigger_backfill_and_firings(api: ApiSetup) -> None:
    store = api.app.store
    with api.as_("acme") as admin:
        made = _create(admin, cron="0 * * * *", timezone="UTC", input={"value": "{slot}"})
        path = f"/v1/schedules/{made['id']}"
        run = _ok(admin.post(f"{path}/trigger"), 201)
        assert run["labels"] == {"schedule": made["id"]} and run["workflow"] == "plain.echo"
        now = store.clock.now()
        window = {"start": now - 5 * 3600, "end": now}
        dry = _ok(admin.post(f"{path}/backfill", json=window))
        assert dry["dry_run"] and len(dry["slots"]) == 5
        assert all(s["new"] and s["run_id"] is None for s in dry["slots"])
        assert all(s["at"].endswith("+00:00") for s in dry["slots"])
        before = len(store.runs.list_runs(RunFilter(tenant="acme", limit=100)))
        assert before == 1, "a dry run makes nothing"
        real = _ok(admin.post(f"{path}/backfill", json={**window, "dry_run": False}))
        assert not real["dry_run"] and all(s["new"] and s["run_id"] for s in real["slots"])
        again = _ok(admin.post(f"{path}/backfill", json={**window, "dry_run": False}))
        assert [s["run_id"] for s in again["slots"]] == [s["run_id"] for s in real["slots"]]
        assert not any(s["new"] for s in again["slots"])
        runs = store.runs.list_runs(RunFilter(tenant="acme", limit=100))
        assert len(runs) == 1 + 5, "the second backfill made no runs"
        first = store.runs.get_run(real["slots"][0]["run_id"])
        slot_time = datetime.fromtimestamp(real["slots"][0]["slot"], ZoneInfo("UTC")).isoformat()
        assert first.input == {"value": slot_time} and first.labels["schedule"] == made["id"]
        iso = {
            "start": datetime.fromtimestamp(now - 2 * 3600, ZoneInfo("UTC")).isoformat(),
            "end": datetime.fromtimestamp(now, ZoneInfo("Asia/Tokyo")).isoformat(),
        }
        assert len(_ok(admin.post(f"{path}/backfill", json=iso))["slots"]) == 2
        backwards = {"start": now, "end": now - 3600}
        assert "body.end" in _errors(admin.post(f"{path}/backfill", json=backwards))
        bad = _errors(admin.post(f"{path}/backfill", json={"start": "x", "end": 1}))
        assert all(f.startswith("body.start") for f in bad) and bad, bad
        bad = _errors(admin.post(f"{path}/backfill", json={"start": "2026-02-30", "end": 1}))
        assert list(bad) == ["body.start"], bad
        firings = _ok(admin.get(f"{path}/firings"))
        assert [f["outcome"] for f in firings] == ["backfilled"] * 5 + ["triggered"]
        assert firings[-1]["run_id"] == run["id"] and firings[-1]["slot"] is None
        assert len(_ok(admin.get(f"{path}/firings", params={"limit": 2}))) == 2
    with api.as_("acme", Role.OPERATOR) as operator:
        assert _ok(operator.post(f"{path}/backfill", json=window))["dry_run"]
    actions = [a.action for a in store.admin.audit_log(tenant="acme") if a.target == made["id"]]
    assert actions.count("schedule.backfill") == 2 and "schedule.trigger" in actions


def test_schedules_of_an_integration(api: ApiSetup) -> None:
    store = api.app.store
    with api.as_("acme") as admin:
        integration = _ok(
            admin.post(
                "/v1/integrations",
                json={
                    "connector": "crm",
                    "name": "CRM",
                    "credentials": {"username": "u", "password": "p"},
                },
            ),
            201,
        )
        _create(admin, name="plain")
        tied = _create(
            admin,
            name="crm",
            workflow="crm.sync",
            integration=integration["id"],
            overlap="allow_all",
        )
        params = {"integration": integration["id"]}
        assert [s["id"] for s in _ok(admin.get("/v1/schedules", params=params))] == [tied["id"]]
        run = _ok(admin.post(f"/v1/schedules/{tied['id']}/trigger"), 201)
        assert run["labels"]["integration"] == integration["id"]
        missing = {**DAILY, "name": "x", "integration": "int_nope"}
        assert_problem(admin.post("/v1/schedules", json=missing), 404)
        window = {"start": store.clock.now() - 2 * 86400, "end": store.clock.now()}
        backfilled = _ok(
            admin.post(f"/v1/schedules/{tied['id']}/backfill", json=window | {"dry_run": False})
        )
        assert len(backfilled["slots"]) == 2 and all(s["run_id"] for s in backfilled["slots"])
    with api.as_("globex") as other:
        assert _ok(other.get("/v1/schedules", params=params)) == []
    # The scheduler prepares a due slot's run (reading its integration) outside the
    # transaction that fires it: inside, it waited for itself on SQLite's one connection.
    now = store.clock.now()
    with store.backend.transaction() as tx:
        tx.execute(
            "UPDATE schedules SET next_slot = :slot, next_due = :slot WHERE id = :id",
            {"slot": now - 60, "id": tied["id"]},
        )
    fired = store.schedules.fire_due(preparer(api.app))
    (made,) = fired.runs
    assert made.labels["integration"] == integration["id"] and not fired.paused
    assert store.schedules.firings(tied["id"])[0].outcome == "fired"


def test_the_commands_work_on_a_database_and_through_the_api(
    api: ApiSetup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREENROOM_DB", api.app.settings.db)
    remote = ("--url", api.url, "--key", api.keys["acme"][Role.ADMIN])
    local = ("--db", api.app.settings.db)
    create = ("schedules", "create", "mornings", "--workflow", "plain.echo")
    code, out, err = cli(
        capsys, *remote, *create, "--cron", "0 8 * * 1-5", "--timezone", "Europe/Berlin"
    )
    assert code == 0 and "created schedule" in out and "Europe/Berlin" in out, err
    code, out, err = cli(capsys, *local, *create, "--every", "15m", "--tenant", "acme")
    assert_one_line_error(code, err, "--app module:attribute is needed to create a schedule")
    args = ("schedules", "create", "often", "--workflow", "plain.echo", "--every", "15m")
    more = ("--tenant", "acme", "--label", "team=ops", "--catchup", "2h", "--jitter", "30s")
    code, out, err = cli(capsys, *local, *args, *more, "--app", API_APP, "--overlap", "buffer_one")
    assert code == 0 and "created schedule" in out, err
    code, out, err = cli(capsys, *remote, "schedules", "list", "--json")
    assert code == 0, err
    over_api = json.loads(out)
    code, out, err = cli(capsys, *local, "schedules", "list", "--tenant", "acme", "--json")
    assert code == 0 and json.loads(out) == over_api and len(over_api) == 2, err
    often = next(s for s in over_api if s["name"] == "often")
    assert often["catchup_seconds"] == 7200 and often["jitter_seconds"] == 30
    assert often["labels"] == {"team": "ops"} and often["overlap"] == "buffer_one"
    code, out, err = cli(capsys, *local, "schedules", "list")
    assert code == 0 and "Europe/Berlin" in out and "NEXT" in out, err
    code, out, err = cli(
        capsys,
        *remote,
        "schedules",
        "create",
        "bad",
        "--workflow",
        "plain.echo",
        "--cron",
        "61 * * * *",
    )
    assert_one_line_error(code, err, "minute field: 61 is out of range 0-59")
    sid = often["id"]
    for where, app in ((remote, ()), (local, ("--app", API_APP))):
        code, out, err = cli(capsys, *where, "schedules", "show", sid)
        assert code == 0 and "next firings:" in out, err
        code, out, err = cli(capsys, *where, "schedules", "update", sid, "--every", "1h", *app)
        assert code == 0 and "every 3600s" in out, err
        code, out, err = cli(capsys, *where, "schedules", "pause", sid, "--note", "vendor down")
        assert code == 0 and "vendor down" in out, err
        code, out, err = cli(capsys, *where, "schedules", "resume", sid)
        assert code == 0 and "resumed" in out, err
        code, out, err = cli(capsys, *where, "schedules", "trigger", sid, *app)
        assert code == 0 and "created" in out, err
        code, out, err = cli(
            capsys, *where, "schedules", "backfill", sid, "--start", "3h", "--end", "0s", *app
        )
        assert code == 0 and "dry run" in out, err
        code, out, err = cli(capsys, *where, "schedules", "firings", sid, "--json")
        assert code == 0 and json.loads(out)[0]["outcome"] == "triggered", err
    code, out, err = cli(capsys, *local, "schedules", "trigger", sid)
    assert_one_line_error(code, err, "--app")
    code, out, err = cli(
        capsys,
        *remote,
        "schedules",
        "backfill",
        sid,
        "--start",
        "3h",
        "--end",
        "0s",
        "--run",
        "--json",
    )
    assert code == 0 and len(json.loads(out)["slots"]) == 3, err
    code, out, err = cli(
        capsys,
        *local,
        "schedules",
        "backfill",
        sid,
        "--start",
        "3h",
        "--end",
        "0s",
        "--run",
        "--app",
        API_APP,
    )
    assert code == 0 and "made 0 new runs" in out, err
    code, out, err = cli(capsys, *remote, "schedules", "delete", sid)
    assert code == 0 and "deleted" in out, err
    code, out, err = cli(capsys, *local, "schedules", "show", sid)
    assert_one_line_error(code, err, "not found")
