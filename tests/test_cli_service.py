"""The service commands: bootstrap on the database (tenants create, keys, integrations list,
secrets reseal) in-process; `greenroom api` and `greenroom up` as real server processes."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from greenroom.api.keys import create_key, hash_key, matches
from greenroom.connectors import Connector
from greenroom.crypto import KeyRing, key_id
from greenroom.integrations import create as create_integration
from greenroom.integrations import open_credentials
from greenroom.model import Role
from greenroom.storage import RunStore, open_store
from tests.api_helpers import build_app
from tests.test_cli import assert_one_line_error, cli

ROOT = Path(__file__).resolve().parent.parent
TEST_APP = "tests.apps.api_app:app"


@contextlib.contextmanager
def store_at(url: str) -> Iterator[RunStore]:
    store = open_store(url, migrate=False)
    try:
        yield store
    finally:
        store.backend.close()


def migrated(url: str, capsys: pytest.CaptureFixture[str]) -> str:
    code, _, err = cli(capsys, "--db", url, "db", "upgrade")
    assert code == 0, err
    return url


# -- bootstrap commands, in-process ----------------------------------------------------------


def test_tenants_create_registers_once(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = migrated(db_url, capsys)
    code, out, err = cli(capsys, "tenants", "create", "acme", "--db", url, "--actor", "ops@test")
    assert code == 0, err
    assert "tenant acme registered" in out
    with store_at(url) as store:
        assert store.accounts.tenant("acme").registered_at is not None
        audit = store.admin.audit_log(tenant="acme")
    assert [(a.action, a.actor, a.target) for a in audit] == [("tenant.create", "ops@test", "acme")]
    code, _, err = cli(capsys, "--db", url, "tenants", "create", "acme")
    assert_one_line_error(code, err, "tenant 'acme' already exists")
    code, _, err = cli(capsys, "--db", url, "tenants", "create", "*")
    assert_one_line_error(code, err, "every tenant")


def test_keys_create_prints_the_secret_once_and_stores_its_hash(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = migrated(db_url, capsys)
    assert cli(capsys, "--db", url, "tenants", "create", "acme")[0] == 0
    code, out, err = cli(
        capsys, "--db", url, "keys", "create", "--tenant", "acme", "--role", "admin"
    )
    assert code == 0, err
    secret = out.strip()
    assert re.fullmatch(r"grk_[0-9a-f]{12}\.[A-Za-z0-9_-]{40,}", secret), out
    assert "admin key" in err and "tenant acme" in err and "shown only this once" in err
    key_id_ = secret.split(".")[0]
    with store_at(url) as store:
        stored = store.accounts.api_key(key_id_)
        assert stored is not None
        assert (stored.tenant, stored.role, stored.name) == ("acme", Role.ADMIN, "admin")
        assert stored.hash == hash_key(secret) and matches(stored, secret)
        assert (stored.expires_at, stored.rate_limit) == (None, None)
        before = store.clock.now()

    code, out, err = cli(
        capsys,
        *("--db", url, "keys", "create", "--role", "platform", "--name", "ops"),
        *("--expires-in", "12h", "--rate-limit", "7"),
    )
    assert code == 0, err
    platform_secret = out.strip()
    assert "every tenant" in err
    with store_at(url) as store:
        platform = store.accounts.api_key(platform_secret.split(".")[0])
    assert platform is not None
    assert (platform.tenant, platform.role, platform.name) == (None, Role.PLATFORM, "ops")
    assert platform.rate_limit == 7
    assert platform.expires_at is not None
    assert before + 12 * 3600 <= platform.expires_at <= before + 12 * 3600 + 60

    # Listing shows ids and roles, never a secret or a hash.
    code, out, _ = cli(capsys, "--db", url, "keys", "list")
    assert code == 0
    assert key_id_ in out and platform.id in out and "(platform)" in out and "7/s" in out
    assert secret.split(".")[1] not in out and stored.hash not in out
    code, out, _ = cli(capsys, "--db", url, "keys", "list", "--tenant", "acme")
    assert key_id_ in out and platform.id not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--role", "admin"), "--tenant is required for role admin"),
        (("--role", "platform", "--tenant", "acme"), "drop --tenant"),
        (("--role", "boss", "--tenant", "acme"), "'boss' is not one of"),
        (("--tenant", "acme"), "Missing option '--role'"),
        (("--role", "viewer", "--tenant", "nobody"), "tenant nobody not found"),
        (("--role", "viewer", "--tenant", "acme", "--expires-in", "soon"), "--expires-in must"),
        (("--role", "viewer", "--tenant", "acme", "--expires-in", "0s"), "longer than 0"),
        (("--role", "viewer", "--tenant", "acme", "--rate-limit", "0"), "--rate-limit"),
    ],
)
def test_keys_create_refuses_bad_input(
    sqlite_url: str, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    url = migrated(sqlite_url, capsys)
    assert cli(capsys, "--db", url, "tenants", "create", "acme")[0] == 0
    code, out, err = cli(capsys, "--db", url, "keys", "create", *args)
    assert_one_line_error(code, err, message)
    assert out == ""
    with store_at(url) as store:
        assert store.accounts.api_keys() == []


def test_keys_revoke(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = migrated(db_url, capsys)
    assert cli(capsys, "--db", url, "tenants", "create", "acme")[0] == 0
    secret = cli(capsys, "--db", url, "keys", "create", "--tenant", "acme", "--role", "viewer")[1]
    kid = secret.strip().split(".")[0]
    code, out, err = cli(capsys, "--db", url, "keys", "revoke", kid)
    assert code == 0, err
    assert out.startswith(f"revoked viewer key {kid}")
    with store_at(url) as store:
        key = store.accounts.api_key(kid)
        assert key is not None and key.revoked_at is not None
        assert not key.usable(store.clock.now())
    code, out, _ = cli(capsys, "--db", url, "keys", "revoke", kid)
    assert code == 0 and "was already revoked" in out
    assert "revoked" in cli(capsys, "--db", url, "keys", "list")[1]
    code, _, err = cli(capsys, "--db", url, "keys", "revoke", "grk_000000000000")
    assert_one_line_error(code, err, "key grk_000000000000 not found")


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_integrations_list_and_secrets_reseal_after_a_key_rotation(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = new_key(), new_key()
    app = build_app(db_url)
    crm: Connector = app.connectors["crm"]
    try:
        app.store.accounts.create_tenant("acme", actor="test")
        integration = create_integration(
            app.store.accounts,
            KeyRing(base64.b64decode(old)),
            crm,
            tenant="acme",
            name="main crm",
            credentials={"username": "ada", "password": "hunter2-secret"},
            settings={},
            actor="test",
        )
    finally:
        app.close()

    monkeypatch.setenv("GREENROOM_SECRET_KEY", new)
    code, out, err = cli(capsys, "--db", db_url, "integrations", "list")
    assert code == 0, err
    assert integration.id in out and "main crm" in out and key_id(base64.b64decode(old)) in out
    assert "hunter2" not in out and integration.credentials not in out
    assert (
        "no integrations" in cli(capsys, "--db", db_url, "integrations", "list", "--tenant", "x")[1]
    )

    # The old key is gone from the ring: nothing can be resealed, and nothing is lost.
    code, _, err = cli(capsys, "--db", db_url, "secrets", "reseal")
    assert_one_line_error(code, err, f"key {integration.key_id} is not in the key ring")

    monkeypatch.setenv("GREENROOM_PREVIOUS_SECRET_KEYS", old)
    code, out, err = cli(capsys, "--db", db_url, "secrets", "reseal")
    assert code == 0, err
    new_id = key_id(base64.b64decode(new))
    assert f"resealed 1 of 1 integrations under key {new_id}" in out
    with store_at(db_url) as store:
        resealed = store.accounts.integration(integration.id)
    assert resealed.key_id == new_id
    only_new = KeyRing(base64.b64decode(new))
    creds = open_credentials(only_new, resealed, crm)
    assert creds.model_dump(mode="json")["username"] == "ada"
    assert "resealed 0 of 1" in cli(capsys, "--db", db_url, "secrets", "reseal")[1]


def test_commands_need_a_migrated_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    code, _, err = cli(capsys, "--db", missing, "keys", "list")
    assert_one_line_error(code, err, "no database at", "greenroom db upgrade")
    assert not (tmp_path / "none.db").exists()
    code, _, err = cli(capsys, "--db", missing, "api", "--port", "0")
    assert_one_line_error(code, err, "no database at", "greenroom db upgrade")
    code, _, err = cli(capsys, "--db", missing, "api", "--app", "nomodule:app")
    assert_one_line_error(code, err, "cannot import 'nomodule'")


# -- server processes --------------------------------------------------------------------------


@dataclass
class Server:
    """A `greenroom` server process; its output lines are collected as they come."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def wait_line(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "".join(self.lines))

    def stop(self, timeout: float = 10) -> tuple[int, float]:
        """SIGTERM; the exit code and how long the process took to exit."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.reader.join(5)
        return code, time.monotonic() - start

    def __post_init__(self) -> None:
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        self.reader = threading.Thread(target=lambda: self.lines.extend(stdout), daemon=True)
        self.reader.start()


@contextlib.contextmanager
def greenroom(*argv: str) -> Iterator[Server]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "greenroom.cli", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Server(proc)
    try:
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


def base_url(server: Server) -> str:
    return server.wait_line(r"API\s+(http://127\.0\.0\.1:\d+)")[1]


def children(pid: int) -> list[str]:
    """Command lines of a process's children."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(FileNotFoundError):
            found.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return found


def test_api_serves_the_demo_app_and_accepts_keys_made_by_the_cli(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = migrated(sqlite_url, capsys)
    assert cli(capsys, "--db", url, "tenants", "create", "acme")[0] == 0
    secret = cli(capsys, "--db", url, "keys", "create", "--tenant", "acme", "--role", "viewer")[1]
    with greenroom("api", "--db", url, "--port", "0") as server:
        base = base_url(server)
        assert "greenroom.demo.connector:app (the built-in demo" in "".join(server.lines)
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            assert http.get("/readyz").json()["status"] == "ready"
            assert http.get("/v1/runs").status_code == 401
            auth = {"Authorization": f"Bearer {secret.strip()}"}
            tenant = http.get("/v1/tenants/acme", headers=auth)
            assert tenant.status_code == 200 and tenant.json()["name"] == "acme"
            workflows = http.get("/v1/workflows", headers=auth).json()
            assert "demo.sync_users" in {w["name"] for w in workflows}
            bad = {"Authorization": f"Bearer {secret.strip()[:-2]}xx"}
            assert http.get("/v1/runs", headers=bad).status_code == 401
        code, took = server.stop()
    assert code == 0, "".join(server.lines)
    assert took < 5


@pytest.mark.postgres
def test_api_workers_share_one_postgres_database(pg_url: str) -> None:
    with store_at(pg_url) as store:
        store.accounts.create_tenant("acme", actor="test")
        _, secret = create_key(
            store.accounts, tenant="acme", role=Role.OPERATOR, name="t", actor="t"
        )
    argv = ("api", "--app", TEST_APP, "--db", pg_url, "--port", "0", "--workers", "2")
    with greenroom(*argv) as server:
        base = base_url(server)
        assert "2 processes" in "".join(server.lines)
        with httpx.Client(base_url=base, timeout=30) as http:
            http.headers["Authorization"] = f"Bearer {secret}"
            deadline = time.monotonic() + 30
            while True:  # each process answers once it has started
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/readyz").status_code == 200:
                        break
                assert time.monotonic() < deadline, "".join(server.lines)
                time.sleep(0.1)
            created = http.post("/v1/runs", json={"workflow": "plain.echo", "input": {"value": 1}})
            assert created.status_code == 201, created.text
            ids = {http.get(f"/v1/runs/{created.json()['id']}").json()["id"] for _ in range(10)}
            assert ids == {created.json()["id"]}
        servers = [c for c in children(server.proc.pid) if "multiprocessing" in c]
        assert len(servers) >= 2, children(server.proc.pid)
        code, took = server.stop()
    assert code == 0, "".join(server.lines)
    assert took < 8


def test_api_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE unrelated (a)")
    with greenroom("api", "--db", f"sqlite:///{path}", "--port", "0") as server:
        code = server.proc.wait(30)
        server.reader.join(5)
    assert code == 2
    lines = [line for line in server.lines if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: database schema is not current")
    assert "greenroom db upgrade" in lines[0] and str(path) in lines[0]


def test_up_runs_the_api_and_a_worker_in_one_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'up' / 'g.db'}"
    argv = ("up", "--app", TEST_APP, "--db", url, "--port", "0", "--bootstrap", "acme")
    with greenroom(*argv) as server:
        secret = server.wait_line(r"^\s+(grk_\S+)$")[1]
        base = base_url(server)
        assert any("shown only this once" in line for line in server.lines)
        with httpx.Client(base_url=base, timeout=10) as http:
            http.headers["Authorization"] = f"Bearer {secret}"
            integration = http.post(
                "/v1/integrations",
                json={
                    "connector": "crm",
                    "name": "main",
                    "credentials": {"username": "ada", "password": "pw-123"},
                },
            )
            assert integration.status_code == 201, integration.text
            created = http.post(
                "/v1/runs",
                json={
                    "workflow": "crm.sync",
                    "input": {"n": 3},
                    "integration": integration.json()["id"],
                },
            )
            assert created.status_code == 201, created.text
            run_id = created.json()["id"]
            deadline = time.monotonic() + 20
            while (got := http.get(f"/v1/runs/{run_id}").json())["state"] not in (
                "succeeded",
                "failed",
            ):
                assert time.monotonic() < deadline, got
                time.sleep(0.05)
        assert got["state"] == "succeeded", got
        assert got["output"] == {"n": 3, "user": "ada", "password_length": "6"}
        code, took = server.stop()
    output = "".join(server.lines)
    assert code == 0, output
    assert took < 5, output
    assert "pw-123" not in output
    with store_at(url) as store:
        assert [w.state for w in store.runs.workers(include_gone=True)] == ["stopped"]
