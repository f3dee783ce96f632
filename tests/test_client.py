"""greenroom.client against a real API server: every method, and every error as ApiProblem."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenroom.api.schemas import (
    BulkRetryRequest,
    IntegrationCreate,
    IntegrationUpdate,
    KeyCreate,
    PauseCreate,
    QueueUpdate,
    RunCreate,
    TenantUpdate,
)
from greenroom.browser.artifacts import default_artifact_store
from greenroom.client import (
    ApiConflict,
    ApiInvalid,
    ApiNotFound,
    ApiProblem,
    ApiUnreachable,
    Client,
)
from greenroom.errors import ConfigError, Conflict, InvalidInput, NotFound
from greenroom.model import Role, RunState
from tests.api_helpers import ApiSetup, api_setup
from tests.helpers import wait_for_states, worker_running


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[ApiSetup]:
    """The shared test server, with artifacts under tmp_path and a burst of 1 for keys with
    their own rate limit (other keys keep the test app's huge rate, so their burst too)."""
    with api_setup(db_url, api_rate_burst=1, artifacts_dir=str(tmp_path / "artifacts")) as setup:
        yield setup


def client(api: ApiSetup, tenant: str | None, role: Role = Role.ADMIN) -> Client:
    return Client(api.url, api.platform_key if tenant is None else api.keys[tenant][role])


def echo(value: object) -> RunCreate:
    return RunCreate(workflow="plain.echo", input={"value": value})


async def test_runs_create_list_get_cancel_retry_and_errors(api: ApiSetup) -> None:
    with client(api, "acme", Role.OPERATOR) as acme:
        first, created = acme.create_run(echo(1), idempotency_key="k1")
        again, created_again = acme.create_run(echo(1), idempotency_key="k1")
        with pytest.raises(ApiConflict) as conflict:
            acme.create_run(echo(2), idempotency_key="k1")
        labelled, _ = acme.create_run(
            RunCreate(workflow="plain.echo", labels={"org": "o2"}, priority=5)
        )
        failing, _ = acme.create_run(RunCreate(workflow="plain.fail"))
        async with worker_running(api.app):
            await wait_for_states(api.app.store, [first.id, labelled.id, failing.id])
        waiting, _ = acme.create_run(RunCreate(workflow="plain.echo", delay=3600))

        assert (created, created_again, again.id) == (True, False, first.id)
        assert isinstance(conflict.value, Conflict) and conflict.value.status == 409
        newest_first = [waiting.id, failing.id, labelled.id, first.id]
        assert [r.id for r in acme.iter_runs(page_size=1)] == newest_first
        page = acme.list_runs(limit=3)
        assert [r.id for r in page.items] == newest_first[:3] and page.next_cursor
        assert [r.id for r in acme.list_runs(cursor=page.next_cursor).items] == [first.id]
        assert [r.id for r in acme.list_runs(label="org=o2").items] == [labelled.id]
        assert [r.id for r in acme.list_runs(state=[RunState.FAILED, "delayed"]).items] == [
            waiting.id,
            failing.id,
        ]
        assert acme.list_runs(workflow="plain.fail", queue="default").items[0].id == failing.id
        assert acme.list_runs(created_after=time.time() + 60).items == []
        assert len(acme.list_runs(created_before=time.time() + 60, tenant="acme").items) == 4

        detail = acme.get_run(first.id)
        assert detail.state is RunState.SUCCEEDED and detail.output == 1
        assert [e.state for e in detail.timeline][-1] is RunState.SUCCEEDED
        [group] = acme.error_groups()
        assert (group.workflow, group.last_run_id) == ("plain.fail", failing.id)
        assert acme.list_runs(error_group=group.fingerprint).items[0].id == failing.id

        assert acme.cancel_run(waiting.id, reason="not needed").state is RunState.CANCELLED
        retried = acme.retry_run(waiting.id, reason="needed after all", input={"value": "new"})
        assert (retried.retry_of, retried.input) == (waiting.id, {"value": "new"})
        dry = acme.retry_runs(BulkRetryRequest(reason="outage over"))
        assert (dry.matched, dry.dry_run, dry.new_runs) == (1, True, [])
        done = acme.retry_runs(
            BulkRetryRequest(reason="outage over", workflow="plain.fail", dry_run=False)
        )
        assert done.matched == 1 and acme.get_run(done.new_runs[0]).retry_of == failing.id

        with pytest.raises(ApiNotFound) as missing:
            acme.get_run("nope")
    assert isinstance(missing.value, NotFound) and missing.value.status == 404
    assert "run nope not found" in str(missing.value)
    with client(api, "globex", Role.VIEWER) as other, pytest.raises(NotFound):
        other.get_run(first.id)


def test_artifact_download(api: ApiSetup) -> None:
    with client(api, "acme") as acme:
        run, _ = acme.create_run(echo(None))
        data = b"\x89PNG not really"
        location = default_artifact_store(api.app.settings).put(run.id, "shot.png", data)
        api.app.store.sessions.add_artifact(
            run_id=run.id,
            tenant="acme",
            attempt=1,
            step_position=None,
            step_name=None,
            step_attempt=None,
            kind="screenshot",
            content_type="image/png",
            location=location,
            size=len(data),
        )
        [artifact] = acme.get_run(run.id).artifacts
        assert (artifact.kind, artifact.size) == ("screenshot", len(data))
        assert acme.download_artifact(run.id, artifact.id) == data
        with pytest.raises(ApiNotFound):
            acme.download_artifact(run.id, artifact.id + 1)
    with client(api, "globex") as other, pytest.raises(ApiNotFound):
        other.download_artifact(run.id, artifact.id)


def test_workflows_connectors_and_integrations(api: ApiSetup) -> None:
    with client(api, "acme") as acme:
        assert {"crm.sync", "plain.echo"} <= {w.name for w in acme.workflows()}
        [crm] = acme.connectors()
        assert crm.name == "crm" and "crm.sync" in crm.workflows
        assert {"username", "password"} <= set(crm.credential_schema["properties"])
        made = acme.create_integration(
            IntegrationCreate(
                connector="crm", name="acme crm", credentials={"username": "u", "password": "p"}
            )
        )
        assert [i.id for i in acme.integrations(connector="crm")] == [made.id]
        run, _ = acme.create_run(RunCreate(workflow="crm.sync", integration=made.id))
        assert [r.id for r in acme.list_runs(integration=made.id).items] == [run.id]
        assert acme.integrations(connector="other") == []
        assert acme.get_integration(made.id).name == "acme crm"
        updated = acme.update_integration(
            made.id, IntegrationUpdate(name="renamed", status="disabled")
        )
        defaults = {"region": "eu", "console": None}  # every setting is stored, and shown
        assert (updated.name, updated.status, updated.settings) == ("renamed", "disabled", defaults)
        rotated = acme.replace_credentials(made.id, {"username": "u", "password": "new"})
        assert rotated.credentials_updated_at > made.credentials_updated_at
        with pytest.raises(ApiInvalid) as bad:
            acme.replace_credentials(made.id, {"username": "u"})
        assert isinstance(bad.value, InvalidInput) and bad.value.status == 422
        with client(api, "globex") as other, pytest.raises(ApiNotFound):
            other.get_integration(made.id)
        acme.delete_integration(made.id)
        with pytest.raises(ApiNotFound):
            acme.get_integration(made.id)
    with client(api, None) as platform:
        assert platform.integrations(tenant="acme") == []


def test_queues_and_pauses(api: ApiSetup) -> None:
    with client(api, "acme", Role.OPERATOR) as acme, client(api, None) as platform:
        run, _ = acme.create_run(echo(1))
        [queue] = acme.queues()
        assert (queue.name, queue.counts["queued"], queue.paused) == ("default", 1, False)
        assert platform.queues(tenant="globex")[0].counts.get("queued", 0) == 0
        assert acme.get_queue("default").counts["queued"] == 1
        limited = platform.update_queue("default", QueueUpdate(concurrency=3, reason="test"))
        assert limited.concurrency == 3
        cleared = platform.update_queue("default", QueueUpdate(concurrency=None, reason="test"))
        assert cleared.concurrency is None

        paused = acme.pause_queue("default", reason="maintenance", drain=False)
        assert (paused.scope, paused.tenant, paused.drain) == ("queue", "acme", False)
        assert acme.get_run(run.id).state is RunState.PAUSED
        assert [p.id for p in acme.pauses()] == [paused.id]
        assert acme.resume_queue("default", reason="done").resumed == 1
        assert acme.get_run(run.id).state is RunState.QUEUED

        by_label = platform.create_pause(
            PauseCreate(scope="workflow", value="plain.echo", reason="vendor down")
        )
        assert by_label.tenant is None
        assert acme.get_run(run.id).state is RunState.PAUSED
        with pytest.raises(ApiProblem) as forbidden:
            acme.resume_pause(by_label.id, reason="not yours")
        assert forbidden.value.status == 403
        assert platform.resume_pause(by_label.id, reason="vendor back").resumed == 1
        assert acme.pauses() == []
        with pytest.raises(ApiNotFound):
            acme.resume_pause(by_label.id, reason="gone")


def test_tenants_keys_audit_workers_and_health(api: ApiSetup) -> None:
    with client(api, None) as platform, client(api, "acme") as admin:
        assert {"acme", "globex"} <= {t.name for t in platform.tenants()}
        made = platform.create_tenant("initech")
        assert (made.name, made.weight) == ("initech", 1)
        assert platform.get_tenant("initech").registered_at is not None
        changed = platform.update_tenant(
            "initech", TenantUpdate(weight=2, concurrency=4, reason="vip")
        )
        assert (changed.weight, changed.concurrency) == (2, 4)
        cleared = platform.update_tenant("initech", TenantUpdate(concurrency=None, reason="x"))
        assert (cleared.weight, cleared.concurrency) == (2, None)
        assert admin.get_tenant("acme").name == "acme"

        created = admin.create_api_key(KeyCreate(name="ci", role=Role.VIEWER))
        assert created.tenant == "acme" and created.key.startswith(created.id + ".")
        assert created.id in {k.id for k in admin.api_keys()}
        with Client(api.url, created.key) as ci:
            assert ci.list_runs().items == []
            assert admin.revoke_api_key(created.id).revoked_at is not None
            with pytest.raises(ApiProblem) as revoked:
                ci.list_runs()
        assert revoked.value.status == 401 and "revoked" in str(revoked.value)

        entries = list(admin.iter_audit_log(page_size=1))
        assert [e.action for e in entries][:2] == ["key.revoke", "key.create"]
        assert [e.id for e in entries] == [e.id for e in admin.audit_log(limit=500).items]
        assert all(e.tenant == "acme" for e in entries)
        assert {"tenant.create", "tenant.set"} <= {e.action for e in platform.iter_audit_log()}

        assert platform.healthz() == {"status": "ok"}
        assert admin.readyz()["status"] == "ready"


async def test_workers_are_listed_for_platform_keys_only(api: ApiSetup) -> None:
    with client(api, None) as platform, client(api, "acme") as admin:
        async with worker_running(api.app) as worker:
            [alive] = platform.workers()
        assert (alive.id, alive.state) == (worker.id, "alive")
        assert platform.workers() == []
        assert [w.id for w in platform.workers(include_gone=True)] == [worker.id]
        with pytest.raises(ApiProblem) as forbidden:
            admin.workers()
    assert forbidden.value.status == 403 and "needs platform" in str(forbidden.value)


def test_error_mapping(api: ApiSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    with Client(api.url, "grk_000000000000.wrong") as bad, pytest.raises(ApiProblem) as unauth:
        bad.list_runs()
    assert (unauth.value.status, unauth.value.title) == (401, "Unauthorized")
    assert str(unauth.value) == "invalid API key"

    with client(api, "acme", Role.VIEWER) as viewer, pytest.raises(ApiProblem) as forbidden:
        viewer.create_run(echo(1))
    assert forbidden.value.status == 403 and "needs operator" in str(forbidden.value)

    with client(api, "acme", Role.OPERATOR) as acme:
        with pytest.raises(ApiInvalid) as invalid:
            acme.create_run(RunCreate.model_construct(workflow="plain.echo", priority=10**9))
        with pytest.raises(ApiInvalid) as limit:
            acme.list_runs(limit=501)
    assert [e["field"] for e in invalid.value.errors] == ["body.priority"]
    assert "body.priority" in str(invalid.value) and "less than or equal" in str(invalid.value)
    assert [e["field"] for e in limit.value.errors] == ["query.limit"]

    with client(api, "acme") as admin:
        slow = admin.create_api_key(KeyCreate(name="slow", role=Role.VIEWER, rate_limit=1))
    with Client(api.url, slow.key) as limited, pytest.raises(ApiProblem) as too_many:
        for _ in range(5):
            limited.list_runs()
    assert too_many.value.status == 429 and too_many.value.retry_after == 1

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nowhere = Client(f"http://127.0.0.1:{port}", "k", timeout=2)
    with nowhere, pytest.raises(ApiUnreachable, match=f"cannot reach http://127.0.0.1:{port}"):
        nowhere.healthz()

    monkeypatch.setenv("GREENROOM_URL", api.url + "/")
    monkeypatch.setenv("GREENROOM_API_KEY", api.platform_key)
    with Client.from_env() as from_env:
        assert from_env.url == api.url
        assert from_env.get_tenant("acme").name == "acme"
    monkeypatch.delenv("GREENROOM_API_KEY")
    with pytest.raises(ConfigError, match="API key"):
        Client.from_env()
    with pytest.raises(ConfigError, match="http://"):
        Client("127.0.0.1:8700", "k")
