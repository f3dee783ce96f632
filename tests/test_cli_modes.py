"""Each command acts the same on a database (--db) and through a server (--url): the commands
are written once against greenroom.cli.operations.Operations. Every test here runs in both
modes, on SQLite and PostgreSQL, and asserts the same output for both."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from greenroom.model import Role, RunState
from tests.api_helpers import ApiSetup
from tests.helpers import wait_for_states, worker_running
from tests.test_cli import UUID, assert_one_line_error, cli


@pytest.fixture(autouse=True)
def no_server_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREENROOM_URL", raising=False)
    monkeypatch.delenv("GREENROOM_API_KEY", raising=False)


@pytest.fixture(params=["db", "url"])
def where(request: pytest.FixtureRequest, api: ApiSetup, db_url: str) -> tuple[str, ...]:
    """Where a command acts: on the database, or through the server over it (as a platform
    key, which like a database sees every tenant)."""
    if request.param == "db":
        return ("--db", db_url)
    return ("--url", api.url, "--key", api.platform_key)


def ok(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = cli(capsys, *argv)
    assert code == 0, err
    return out


def as_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    return json.loads(ok(capsys, *argv, "--json"))


def test_queues_set_creates_a_queue(where: tuple[str, ...], capsys: Any) -> None:
    """A queue set before its runs come is created, on a database and through the API."""
    limits = ("--concurrency", "2", "--rate-limit", "10/60s", "--max-attempts", "3")
    out = ok(capsys, *where, "queues", "set", "nightly", *limits, "--reason", "before its runs")
    assert out.strip() == (
        "queue nightly: concurrency 2, rate limit 10/60s, max attempts 3 "
        "(unset settings: the workers' defaults)"
    )
    [nightly] = [q for q in as_json(capsys, *where, "queues") if q["name"] == "nightly"]
    assert (nightly["concurrency"], nightly["rate_limit"], nightly["rate_period"]) == (2, 10, 60)
    assert nightly["max_attempts"] == 3 and not nightly["paused"]
    [entry, *_] = as_json(capsys, *where, "audit")
    assert (entry["action"], entry["target"], entry["reason"]) == (
        "queue.set",
        "queue nightly",
        "before its runs",
    )
    out = ok(capsys, *where, "queues", "set", "nightly", "--concurrency", "none", "--reason", "r")
    assert out.startswith("queue nightly: rate limit 10/60s, max attempts 3 ")


def test_tenants_pauses_and_keys(where: tuple[str, ...], capsys: Any) -> None:
    out = ok(capsys, *where, "tenants", "create", "initech")
    assert out.startswith("tenant initech registered; an admin key for it: ")
    tune = ("tenants", "set", "initech", "--weight", "2", "--concurrency", "4", "--reason", "r")
    assert ok(capsys, *where, *tune).strip() == "tenant initech: weight 2, concurrency 4"
    [initech] = [t for t in as_json(capsys, *where, "tenants") if t["name"] == "initech"]
    assert (initech["weight"], initech["concurrency"]) == (2, 4)

    hold = ("pause", "--queue", "reports", "--for-tenant", "initech", "--reason", "upgrade")
    code, out, err = cli(capsys, *where, *hold)
    assert (code, out.strip()) == (
        0,
        "paused queue reports (tenant initech): 0 waiting runs held, running runs finish",
    )
    assert err.strip() == (
        "warning: there is no queue 'reports' (yet): the pause holds its runs when they come"
    )
    assert "was already paused by" in ok(capsys, *where, *hold)
    [pause] = as_json(capsys, *where, "pauses", "--tenant", "initech")
    assert (pause["scope"], pause["value"], pause["tenant"]) == ("queue", "reports", "initech")
    assert as_json(capsys, *where, "pauses", "--tenant", "acme") == []
    lift = ("resume", "--queue", "reports", "--reason", "done")
    assert ok(capsys, *where, *lift).strip() == "resumed queue reports: 0 runs queued again"
    assert_one_line_error(*cli(capsys, *where, *lift)[::2], "no pause on queue reports")

    code, secret, err = cli(
        capsys, *where, "keys", "create", "--tenant", "initech", "--role", "viewer"
    )
    assert code == 0 and "created viewer key grk_" in err and "for tenant initech" in err, err
    [key_id] = [k["id"] for k in as_json(capsys, *where, "keys", "list", "--tenant", "initech")]
    assert secret.startswith(key_id + ".")
    revoked = f"revoked viewer key {key_id} for tenant initech, never expires"
    assert ok(capsys, *where, "keys", "revoke", key_id).strip() == revoked
    assert "was already revoked" in ok(capsys, *where, "keys", "revoke", key_id)


async def test_runs_cancel_and_retry(
    where: tuple[str, ...], api: ApiSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    failed = api.app.enqueue_sync("plain.fail", tenant="acme").id
    async with worker_running(api.app):
        await wait_for_states(api.app.store, [failed])
    capsys.readouterr()  # the worker's log
    later = api.app.enqueue_sync("plain.echo", {"value": 1}, tenant="acme", delay=3600).id

    out = ok(capsys, *where, "runs", "cancel", later, "--reason", "not needed")
    assert out.strip() == f"run {later} cancelled"
    code, _, err = cli(capsys, *where, "runs", "cancel", failed, "--reason", "again")
    assert_one_line_error(code, err, f"run {failed} already failed: nothing to cancel")

    bulk = ("runs", "retry", "--where", "--state", "failed,cancelled", "--reason", "again")
    out = ok(capsys, *where, *bulk, "--dry-run")
    assert out.startswith("dry run: 2 runs would be retried (nothing changed)")
    out = ok(capsys, *where, "runs", "retry", failed[:8], "--reason", "try again")
    [retry] = UUID.findall(out.replace(failed, ""))
    assert out.strip() == (
        f"{retry} created: retry of {failed} after its last completed step, keeping 0 "
        "completed steps"
    )
    assert api.app.store.runs.get_run(retry).retry_of == failed
    out = ok(capsys, *where, *bulk)
    assert out.startswith(
        "retried 1 runs: 1 new runs queued; 1 matching runs were retried already and are left alone"
    )
    assert api.app.store.runs.get_run(later).superseded_by is not None
    states = {r["state"] for r in as_json(capsys, *where, "runs", "list", "--tenant", "acme")}
    assert states == {RunState.QUEUED.value}


async def test_runs_prune(
    where: tuple[str, ...], api: ApiSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retention through the API too: a platform key prunes as the database's owner does."""
    failed = api.app.enqueue_sync("plain.fail", tenant="acme").id
    echo = api.app.enqueue_sync("plain.echo", {"value": 1}, tenant="globex").id
    async with worker_running(api.app):
        await wait_for_states(api.app.store, [failed, echo])
    capsys.readouterr()  # the worker's log
    waiting = api.app.enqueue_sync("plain.echo", {"value": 2}, tenant="acme").id

    prune = ("runs", "prune", "--older-than", "0s")
    out = ok(capsys, *where, *prune, "--dry-run")
    assert (
        out.strip()
        == "dry run: 2 runs finished more than 0s ago would be deleted (nothing deleted)"
    )
    assert ok(capsys, *where, *prune, "--older-than", "1d").strip() == (
        "deleted 0 runs finished more than 1d ago"
    )
    out = ok(capsys, *where, *prune, "--status", "failed")
    assert out.strip() == "deleted 1 runs finished more than 0s ago"
    assert [r["id"] for r in as_json(capsys, *where, "runs", "list")] == [waiting, echo]
    assert ok(capsys, *where, *prune).strip() == "deleted 1 runs finished more than 0s ago"
    assert [r["id"] for r in as_json(capsys, *where, "runs", "list")] == [waiting]


def test_runs_prune_through_the_api_needs_a_platform_key(
    api: ApiSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = ("--url", api.url, "--key", api.keys["acme"][Role.ADMIN])
    code, _, err = cli(capsys, *admin, "runs", "prune", "--older-than", "1d", "--dry-run")
    assert_one_line_error(code, err, "may not do this")


def test_runs_show(
    where: tuple[str, ...], api: ApiSetup, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same fields either way; on a database, also the worker that holds a running run
    (the API does not say)."""
    run = api.app.enqueue_sync("plain.echo", {"value": 1}, tenant="acme", labels={"org": "o1"})
    [lease] = api.app.store.runs.claim("w1", [run.queue], 1, 30.0)
    assert lease.run.id == run.id
    out = ok(capsys, *where, "runs", "show", run.id[:8])
    fields = {line.split("  ")[0] for line in out.splitlines()}
    assert {"run", "workflow", "state", "tenant", "labels", "input", "attempt"} <= fields
    assert re.search(rf"^run +{run.id}", out, re.M) and '{"org":"o1"}' in out
    assert re.search(r"^state +running", out, re.M)
    leased = re.search(r"^leased by +w1 until ", out, re.M)
    assert (leased is not None) == ("--db" in where)
