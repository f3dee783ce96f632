"""The greenroom command acting on a real API server (--url, --key or the environment)."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from greenroom.client import Client
from greenroom.model import Role, RunState
from tests.api_helpers import ApiSetup
from tests.helpers import wait_for_states, worker_running
from tests.test_cli import UUID, assert_one_line_error, cli, listed, short


@pytest.fixture(autouse=True)
def no_server_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREENROOM_URL", raising=False)
    monkeypatch.delenv("GREENROOM_API_KEY", raising=False)


def remote(api: ApiSetup, tenant: str | None, role: Role = Role.OPERATOR) -> tuple[str, ...]:
    key = api.platform_key if tenant is None else api.keys[tenant][role]
    return ("--url", api.url, "--key", key)


def row(out: str, *cells: str) -> bool:
    """Whether a table line holds these cells side by side (the last may be cut short)."""
    return re.search("│ " + r"\s*│ ".join(re.escape(c) for c in cells), out) is not None


async def test_enqueue_and_runs_commands(api: ApiSetup, capsys: pytest.CaptureFixture[str]) -> None:
    acme = remote(api, "acme")
    enqueue = (*acme, "enqueue", "plain.echo", "--input", '{"value": 1}', "--label", "org=o1")
    code, out, err = cli(capsys, *enqueue, "--idempotency-key", "k1")
    assert code == 0, err
    [echo] = UUID.findall(out)
    assert f"{echo} created (queued)" in out
    code, out, _ = cli(capsys, *enqueue, "--idempotency-key", "k1")
    assert f"{echo} already existed (idempotency key 'k1', queued)" in out
    [fail] = UUID.findall(cli(capsys, *acme, "enqueue", "plain.fail")[1])
    code, out, _ = cli(capsys, *acme, "enqueue", "plain.echo", "--delay", "3600")
    [later] = UUID.findall(out)
    assert "created (delayed)" in out
    async with worker_running(api.app):
        await wait_for_states(api.app.store, [echo, fail])
    capsys.readouterr()  # the worker's log

    code, out, _ = cli(capsys, *acme, "runs", "list")
    assert code == 0 and listed(out) == short(later, fail, echo)
    assert row(out, echo[:8], "plain.echo", "acme", "succeeded", "1/1")
    assert listed(cli(capsys, *acme, "runs", "list", "--state", "failed,delayed")[1]) == short(
        later, fail
    )
    assert listed(cli(capsys, *acme, "runs", "list", "--label", "org=o1")[1]) == short(echo)
    assert listed(cli(capsys, *acme, "runs", "list", "--limit", "1")[1]) == short(later)
    code, out, _ = cli(capsys, *remote(api, "globex"), "runs", "list")
    assert (code, out.strip()) == (0, "no runs")

    code, out, err = cli(capsys, *acme, "runs", "show", fail)
    assert code == 0, err
    assert "plain.fail" in out and "enqueued" in out and "no steps recorded" in out
    assert "RuntimeError: this workflow always fails" in out
    assert_one_line_error(*cli(capsys, *acme, "runs", "show", "nope")[::2], "run nope not found")

    code, out, _ = cli(capsys, *acme, "runs", "cancel", later, "--reason", "not needed")
    assert (code, out.strip()) == (0, f"run {later} cancelled")
    code, _, err = cli(capsys, *acme, "runs", "cancel", echo, "--reason", "too late")
    assert_one_line_error(code, err, "already succeeded")

    code, out, err = cli(capsys, *acme, "runs", "retry", fail, "--reason", "try again")
    assert code == 0, err
    [retried] = UUID.findall(out.replace(fail, ""))
    assert f"created: retry of {fail} after its last completed step, keeping 0" in out
    assert api.app.store.runs.get_run(retried).retry_of == fail
    where = (*acme, "runs", "retry", "--where", "--state", "cancelled", "--reason", "again")
    code, out, err = cli(capsys, *where, "--dry-run")
    assert code == 0, err
    assert "dry run: 1 runs would be retried" in out
    code, out, _ = cli(capsys, *where)
    assert "retried 1 runs: 1 new runs queued" in out
    assert api.app.store.runs.get_run(later).state is RunState.CANCELLED

    code, out, _ = cli(capsys, *acme, "errors")
    assert code == 0 and row(out, "acme", "plain.fail", "-", "RuntimeError")
    code, out, _ = cli(capsys, *acme, "audit")
    assert code == 0
    assert row(out, "key:grk_") and "retry" in out and row(out, "cancel", f"run {later}", "acme")
    assert cli(capsys, *acme, "audit", "--limit", "1")[1].count("key:grk_") == 1

    at = ("--start-at", "2099-01-02T03:04:05+00:00")
    [start_at] = UUID.findall(cli(capsys, *acme, "enqueue", "plain.echo", *at)[1])
    assert api.app.store.runs.get_run(start_at).available_at == 4071006245.0
    code, out, err = cli(capsys, *acme, "enqueue", "plain.echo", "--queue", "backfill")
    assert code == 0, err
    assert api.app.store.runs.get_run(UUID.findall(out)[0]).queue == "backfill"


async def test_pauses_queues_and_workers(api: ApiSetup, capsys: pytest.CaptureFixture[str]) -> None:
    acme, platform = remote(api, "acme"), remote(api, None)
    cli(capsys, *acme, "enqueue", "plain.echo")
    code, out, err = cli(capsys, *acme, "pause", "--queue", "default", "--reason", "upgrade")
    assert code == 0, err
    assert "paused queue default (tenant acme): 1 waiting runs held, running runs finish" in out
    code, out, _ = cli(capsys, *acme, "pause", "--queue", "default", "--reason", "again")
    assert "already paused by key:grk_" in out and "upgrade (1 runs held)" in out
    code, out, _ = cli(capsys, *acme, "pauses")
    assert row(out, "queue", "default", "acme", "1", "yes", "key:grk_")
    code, out, _ = cli(capsys, *acme, "queues")
    assert row(out, "default", "0", "1", "0", "0", "0", "0", "0", "yes")
    code, out, _ = cli(capsys, *platform, "queues", "--tenant", "globex")
    assert row(out, "default", "0", "0", "0", "0", "0", "0", "0")
    assert cli(capsys, *platform, "pauses", "--tenant", "globex")[1].strip() == "no pauses"

    code, out, _ = cli(capsys, *acme, "resume", "--queue", "default", "--reason", "done")
    assert (code, out.strip()) == (0, "resumed queue default: 1 runs queued again")
    code, _, err = cli(capsys, *acme, "resume", "--queue", "default", "--reason", "done")
    assert_one_line_error(code, err, "no pause on queue default")

    label = ("--label", "org=o1", "--reason", "vendor down")
    code, out, _ = cli(capsys, *platform, "pause", *label, "--no-drain")
    assert "paused label org=o1: 0 waiting runs held, running runs stop" in out
    code, _, err = cli(capsys, *acme, "resume", *label)
    assert_one_line_error(code, err, "a platform pause is lifted by a platform key")
    assert cli(capsys, *platform, "resume", *label)[1].strip().startswith("resumed label org=o1")

    async with worker_running(api.app) as worker:
        code, out, err = cli(capsys, *platform, "workers")
    assert code == 0, err
    assert row(out, worker.id) and row(out, str(os.getpid()), "alive")
    code, _, err = cli(capsys, *remote(api, "acme", Role.ADMIN), "workers")
    assert_one_line_error(code, err, "may not do this (needs platform)")

    code, out, err = cli(capsys, *platform, "pause", "--tenant", "initech", "--reason", "early")
    assert (code, err.strip()) == (
        0,
        "warning: there is no tenant 'initech' (yet): the pause holds its runs when they come",
    )
    assert "paused tenant initech: 0 waiting runs held" in out
    code, out, err = cli(capsys, *acme, "pause", "--queue", "nope", "--reason", "typo")
    assert "there is no queue 'nope'" in err and ": 0 waiting runs held" in out


def test_remote_mode_errors_are_one_line(
    api: ApiSetup,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = ("--url", api.url, "--key", "grk_000000000000.nope")
    assert_one_line_error(*cli(capsys, *bad, "runs", "list")[::2], "error: invalid API key")
    acme = remote(api, "acme")
    code, _, err = cli(capsys, *acme, "runs", "cancel", "x", "--reason", "")
    assert_one_line_error(code, err, "body.reason", "at least 1 character")
    cases = [
        (("enqueue", "plain.echo", "--priority", "2000000"), "priority: Input should be less"),
        (("enqueue", "nope"), "unknown workflow 'nope'"),
        (("runs", "prune", "--older-than", "1d"), "may not do this"),
        (("secrets", "reseal"), "`greenroom secrets reseal` has no remote mode"),
        (("queues", "set", "default", "--concurrency", "2", "--reason", "x"), "may not do this"),
        (("runs", "cancel", "x", "--reason", "x", "--actor", "me"), "--actor is not available"),
        (("runs", "list", "--db", f"sqlite:///{tmp_path}/g.db"), "give --url or --db, not both"),
    ]
    for argv, fragment in cases:
        assert_one_line_error(*cli(capsys, *acme, *argv)[::2], fragment)
    code, _, err = cli(capsys, "--url", api.url, "runs", "list")
    assert_one_line_error(code, err, "--url needs an API key")

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    code, _, err = cli(capsys, "--url", closed, "--key", "k", "workers")
    assert_one_line_error(code, err, f"cannot reach {closed}")

    monkeypatch.setenv("GREENROOM_URL", api.url)
    monkeypatch.setenv("GREENROOM_API_KEY", api.keys["acme"][Role.OPERATOR])
    code, out, err = cli(capsys, "enqueue", "plain.echo")
    assert code == 0 and "created" in out, err
    assert listed(cli(capsys, "runs", "list")[1]) == short(*UUID.findall(out))
    monkeypatch.delenv("GREENROOM_DB", raising=False)
    code, _, err = cli(capsys, "secrets", "reseal")
    assert_one_line_error(
        code, err, "`greenroom secrets reseal` has no remote mode ($GREENROOM_URL"
    )
    # An explicit --db wins over $GREENROOM_URL, and database-only commands ignore it.
    db = f"sqlite:///{tmp_path}/g.db"
    assert cli(capsys, "--db", db, "db", "upgrade")[0] == 0
    assert cli(capsys, "runs", "list", "--db", db)[1].strip() == "no runs"


async def test_json_output_is_the_apis_locally_and_remotely(
    api: ApiSetup, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--json` prints the API's shapes, the same on a database and through the API."""
    acme, platform = remote(api, "acme"), remote(api, None)
    [failed] = UUID.findall(cli(capsys, *acme, "enqueue", "plain.fail")[1])
    long = "x" * 400
    value = json.dumps({"value": long})
    [echo] = UUID.findall(cli(capsys, *acme, "enqueue", "plain.echo", "--input", value)[1])
    async with worker_running(api.app):
        await wait_for_states(api.app.store, [failed, echo])
    capsys.readouterr()  # the worker's log
    assert cli(capsys, *acme, "pause", "--queue", "slow", "--reason", "upgrade")[0] == 0

    def both(*argv: str, moment: str = "") -> Any:
        code, local, err = cli(capsys, "--db", db_url, *argv, "--json")
        assert code == 0, err
        code, through_api, err = cli(capsys, *platform, *argv, "--json")
        assert code == 0, err
        mine, theirs = json.loads(local), json.loads(through_api)
        if moment:  # a time taken as each was answered: close, not equal
            for item, other in zip(mine, theirs, strict=True):
                assert abs(item.pop(moment) - other.pop(moment)) < 60
        assert mine == theirs
        return mine

    runs = both("runs", "list")
    assert [r["id"] for r in runs] == [echo, failed]
    assert runs[0]["output"] == long and runs[1]["state"] == "failed"
    for where in (("--db", db_url), platform):  # `runs show` shows the output whole
        assert f'"{long}"' in "".join(cli(capsys, *where, "runs", "show", echo)[1].split())
    detail = both("runs", "show", failed[:8])
    assert detail["id"] == failed and detail["error"]["type"] == "RuntimeError"
    assert [e["state"] for e in detail["timeline"]][-1] == "failed"
    assert both("runs", "list", "--state", "failed")[0]["id"] == failed
    [group] = both("errors")
    assert group["last_run_id"] == failed and group["open"] == 1
    [pause] = both("pauses")
    assert (pause["scope"], pause["value"], pause["tenant"]) == ("queue", "slow", "acme")
    # Each answer counts the ends since a day before it was made (`ended_since`).
    assert [q["name"] for q in both("queues", moment="ended_since")] == ["default"]
    assert any(e["action"] == "pause" for e in both("audit"))
    assert len(both("workers", "--all")) == 1
    assert both("runs", "list", "--state", "queued") == []

    # --since/--until: runs created (list) or finished (retry) then, on a database or a server.
    assert both("runs", "list", "--since", "1h") == runs
    assert both("runs", "list", "--until", "1h") == []
    retry = ("runs", "retry", "--where", "--dry-run", "--reason", "again")
    for where in (("--db", db_url), platform):
        code, out, err = cli(capsys, *where, *retry, "--since", "1h")
        assert code == 0 and "dry run: 1 runs would be retried" in out, err
        assert "no runs match" in cli(capsys, *where, *retry, "--until", "1h")[1]
    with Client(api.url, api.platform_key) as platform_client:
        finished = platform_client.list_runs(finished_after=time.time() - 3600).items
        assert [r.id for r in finished] == [echo, failed]
        assert platform_client.list_runs(finished_before=time.time() - 3600).items == []


def test_tenants_keys_and_integrations_through_the_api(
    api: ApiSetup,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    platform, admin = remote(api, None), remote(api, "acme", Role.ADMIN)
    code, out, err = cli(capsys, *platform, "tenants", "create", "initech")
    assert code == 0, err
    assert "tenant initech registered" in out
    tune = (*platform, "tenants", "set", "initech", "--reason", "big customer")
    code, out, err = cli(capsys, *tune, "--weight", "3", "--concurrency", "2")
    assert (code, out.strip()) == (0, "tenant initech: weight 3, concurrency 2"), err
    code, out, _ = cli(capsys, *tune, "--concurrency", "none")
    assert out.strip() == "tenant initech: weight 3, concurrency -"
    code, out, _ = cli(capsys, *platform, "tenants")
    assert code == 0 and row(out, "initech", "3", "-", "0", "0")
    assert_one_line_error(*cli(capsys, *admin, "tenants")[::2], "may not do this")
    assert cli(capsys, *remote(api, "acme"), "enqueue", "plain.echo")[0] == 0
    code, out, err = cli(
        capsys, *platform, "queues", "set", "default", "--concurrency", "4", "--reason", "x"
    )
    assert code == 0 and out.startswith("queue default: concurrency 4"), err

    code, out, err = cli(capsys, *admin, "keys", "create", "--role", "viewer", "--name", "dash")
    assert code == 0 and "created viewer key grk_" in err and "(dash) for tenant acme" in err
    secret = out.strip()
    viewer = ("--url", api.url, "--key", secret)
    assert cli(capsys, *viewer, "runs", "list")[0] == 0
    [key_id] = re.findall(r"grk_[0-9a-f]+", err)
    code, out, _ = cli(capsys, *admin, "keys", "list")
    assert code == 0 and row(out, key_id, "acme", "viewer", "dash", "active")
    local = cli(capsys, "--db", db_url, "keys", "list", "--tenant", "acme", "--json")[1]
    assert json.loads(cli(capsys, *admin, "keys", "list", "--json")[1]) == json.loads(local)
    code, out, _ = cli(capsys, *admin, "keys", "revoke", key_id)
    assert (code, out.strip()) == (
        0,
        f"revoked viewer key {key_id} (dash) for tenant acme, never expires",
    )
    assert "was already revoked" in cli(capsys, *admin, "keys", "revoke", key_id)[1]
    assert_one_line_error(*cli(capsys, *viewer, "runs", "list")[::2], "API key")

    from greenroom.api.schemas import IntegrationCreate

    with Client(api.url, api.keys["acme"][Role.ADMIN]) as acme_admin:
        credentials = {"username": "u", "password": "p"}
        made = acme_admin.create_integration(
            IntegrationCreate(connector="crm", name="acme crm", credentials=credentials)
        )
    code, out, err = cli(capsys, *admin, "integrations", "list")
    assert code == 0 and row(out, made.id, "acme", "crm", "acme crm", "active"), err
    code, out, err = cli(capsys, *admin, "integrations", "show", made.id)
    assert code == 0 and "acme crm" in out and '"region": "eu"' in out, err
    local = cli(capsys, "--db", db_url, "integrations", "show", made.id, "--json")[1]
    shown = json.loads(cli(capsys, *admin, "integrations", "show", made.id, "--json")[1])
    assert shown == json.loads(local) and shown["settings"] == {"region": "eu", "console": None}
    local = cli(capsys, "--db", db_url, "integrations", "list", "--json")[1]
    assert json.loads(cli(capsys, *platform, "integrations", "list", "--json")[1]) == json.loads(
        local
    )
    missing = cli(capsys, *remote(api, "globex", Role.ADMIN), "integrations", "show", made.id)
    assert_one_line_error(*missing[::2], "not found")

    # $GREENROOM_URL is enough: no misleading "no database".
    monkeypatch.setenv("GREENROOM_URL", api.url)
    monkeypatch.setenv("GREENROOM_API_KEY", api.platform_key)
    code, out, err = cli(capsys, "tenants", "--json")
    assert code == 0, err
    assert {"acme", "globex", "initech"} <= {t["name"] for t in json.loads(out)}
