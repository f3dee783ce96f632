"""Tenant isolation and roles, endpoint by endpoint: acme's keys never reach globex's data, and
each role reaches exactly what the role table says. Both tables must name every operation of
the OpenAPI schema, so a new endpoint without a case fails here."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from greenroom.browser.artifacts import default_artifact_store
from greenroom.model import Role, RunState
from tests.api_helpers import ApiSetup, api_setup
from tests.helpers import settle_events, wait_for_states, worker_running
from tests.test_api_errors import assert_problem

Op = tuple[str, str]
PASSWORD = "globex-password-Qx7"


@dataclass(frozen=True)
class Probe:
    method: str
    url: str
    json: Any = None
    expect: frozenset[int] = frozenset({404})
    headers: dict[str, str] = field(default_factory=dict)
    #: More to check in a successful answer's body.
    check: Callable[[Any], object] | None = None

    def send(self, client: httpx.Client) -> httpx.Response:
        return client.request(self.method, self.url, json=self.json, headers=self.headers)

    def sent(self) -> str:
        return self.url + json.dumps(self.json) + json.dumps(self.headers)


def probe(method: str, url: str, json: Any = None, *expect: int, **more: Any) -> Probe:
    return Probe(method, url, json, frozenset(expect or (404,)), **more)


@dataclass(frozen=True)
class World:
    """One tenant's resources, made through the API as its users would."""

    tenant: str
    integration: str
    runs: dict[str, str]
    artifact: int
    key: str
    pause: int
    error_group: str
    subscription: str
    schedule: str
    delivery: int
    event: int
    license: str
    finding: str
    report_subscription: str
    report: str
    #: Every string in it that is this tenant's data, for leak checks.
    markers: frozenset[str]


def operations(api: ApiSetup) -> set[Op]:
    schema = httpx.get(f"{api.url}/openapi.json").json()
    return {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[ApiSetup]:
    """The `api` fixture of conftest, with the artifact store in tmp_path on both backends."""
    with api_setup(db_url, artifacts_dir=str(tmp_path / "artifacts")) as setup:
        yield setup


def _ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def _artifact(api: ApiSetup, run_id: str, tenant: str, data: bytes) -> int:
    files = default_artifact_store(api.app.settings)
    return api.app.store.sessions.add_artifact(
        run_id=run_id,
        tenant=tenant,
        attempt=1,
        step_position=None,
        step_name=None,
        step_attempt=None,
        kind="screenshot",
        content_type="image/png",
        location=files.put(run_id, "page.png", data),
        size=len(data),
    ).id


def _fan_out(api: ApiSetup) -> None:
    """The deliveries of every event so far, as a worker's fan-out makes them."""
    settle_events(api.app.store)
    while api.app.store.dispatch.fan_out():
        pass


async def _build(api: ApiSetup, tenant: str) -> World:
    """An integration (with a password), a key, a webhook subscription and a schedule, a
    succeeded run with steps, a failed run (an error group) with an artifact, the deliveries of
    their events, and a queued run held by a queue pause; all audited."""
    with api.as_(tenant, Role.ADMIN) as c:
        # Subscribed before the runs end, so their events are delivered to it.
        subscription = _ok(
            c.post(
                "/v1/subscriptions",
                json={
                    "url": f"https://hooks.example.com/{tenant}-marker",
                    "types": ["run.*"],
                    "description": f"{tenant} hooks description",
                },
            ),
            201,
        )
        schedule = _ok(
            c.post(
                "/v1/schedules",
                json={
                    "name": f"{tenant} nightly schedule",
                    "workflow": "plain.echo",
                    "every": "1h",
                    "input": {"value": f"{tenant}-schedule-input-marker"},
                },
            ),
            201,
        )
        integration = _ok(
            c.post(
                "/v1/integrations",
                json={
                    "connector": "crm",
                    "name": f"{tenant} payroll",
                    "credentials": {"username": f"bot@{tenant}", "password": PASSWORD},
                    "settings": {"region": f"{tenant}-region-marker"},
                },
            ),
            201,
        )["id"]
        key = _ok(c.post("/v1/keys", json={"name": f"{tenant} deploy", "role": "operator"}), 201)
        synced = _ok(
            c.post("/v1/runs", json={"workflow": "crm.sync", "integration": integration}), 201
        )["id"]
        failed = _ok(
            c.post("/v1/runs", json={"workflow": "plain.fail", "labels": {"team": f"{tenant}-t"}}),
            201,
        )["id"]
    with api.as_(tenant, Role.ADMIN) as c:
        report_subscription = _ok(
            c.post(
                "/v1/report-subscriptions",
                json={
                    "report_type": "health",
                    "timezone": "Europe/Berlin",
                    "channels": [
                        {"channel": "webhook", "url": f"https://hooks.example.com/{tenant}-rep"}
                    ],
                },
            ),
            201,
        )
        report_run = _ok(c.post("/v1/reports", json={"report_type": "health"}), 202)["run_id"]
    async with worker_running(api.app, queues=["default", "reports"]):
        done = await wait_for_states(api.app.store, [synced, failed, report_run])
    assert [r.state for r in done] == [RunState.SUCCEEDED, RunState.FAILED, RunState.SUCCEEDED]
    report = done[2].output["report_id"]  # type: ignore[index]
    artifact = _artifact(api, failed, tenant, f"{tenant}-artifact-bytes".encode())
    _fan_out(api)
    with api.as_(tenant, Role.VIEWER) as c:
        deliveries = _ok(c.get("/v1/deliveries", params={"subscription": subscription["id"]}))
    assert deliveries["items"], "the ended runs' events are delivered to the subscription"
    delivery = deliveries["items"][0]
    with api.as_(tenant, Role.OPERATOR) as c:
        held = _ok(
            c.post(
                "/v1/runs",
                json={"workflow": "plain.echo", "input": {"value": f"{tenant}-input-marker"}},
                headers={"Idempotency-Key": "nightly"},
            ),
            201,
        )["id"]
        pause = _ok(
            c.post("/v1/queues/default/pause", json={"reason": f"{tenant} maintenance window"})
        )["id"]
        [group] = _ok(c.get("/v1/errors"))
        detail = _ok(c.get(f"/v1/runs/{synced}"))
    assert detail["steps"] and detail["state"] == "succeeded"
    license, finding = _idle_license(api, tenant, integration)
    markers = {
        integration,
        f"{tenant} payroll",
        f"bot@{tenant}",
        f"{tenant}-region-marker",
        key["id"],
        f"{tenant} deploy",
        synced,
        failed,
        held,
        f"{tenant}-t",
        f"{tenant}-input-marker",
        f"{tenant} maintenance window",
        f"{tenant}-artifact-bytes",
        PASSWORD,
        group["fingerprint"],
        subscription["id"],
        subscription["url"],
        subscription["secret"],
        f"{tenant} hooks description",
        schedule["id"],
        f"{tenant} nightly schedule",
        f"{tenant}-schedule-input-marker",
        license,
        finding,
        f"{tenant}-seat-marker",
        report_subscription["id"],
        *report_subscription["secrets"].values(),
        report,
    }
    return World(
        tenant=tenant,
        integration=integration,
        runs={"synced": synced, "failed": failed, "held": held, "report": done[2].id},
        artifact=artifact,
        key=key["id"],
        pause=pause,
        error_group=group["fingerprint"],
        subscription=subscription["id"],
        schedule=schedule["id"],
        delivery=delivery["id"],
        event=delivery["event_id"],
        license=license,
        finding=finding,
        report_subscription=report_subscription["id"],
        report=report,
        markers=frozenset(markers),
    )


def _idle_license(api: ApiSetup, tenant: str, integration: str) -> tuple[str, str]:
    """A license pushed for the integration, idle long enough for the pass to open a finding."""
    long_ago = time.time() - 300 * 86400
    row = {
        "user_id": f"{tenant}-seat-marker",
        "unit_cost": 12,
        "currency": "EUR",
        "assigned_at": long_ago,
        "last_active": long_ago,
    }
    with api.as_(tenant, Role.OPERATOR) as c:
        _ok(c.post(f"/v1/integrations/{integration}/accounts", json=[row]))
    api.app.store.license_pass.judge_due()
    with api.as_(tenant, Role.VIEWER) as c:
        [license] = _ok(c.get("/v1/licenses"))["items"]
    assert license["finding_id"], license
    return license["id"], license["finding_id"]


@pytest.fixture
async def globex(api: ApiSetup) -> World:
    return await _build(api, "globex")


def _only_acme(body: Any) -> None:
    """Whatever carries a tenant in the answer is acme's (or the platform's: null)."""
    if isinstance(body, dict):
        assert body.get("tenant", "acme") in ("acme", None), body
        for value in body.values():
            _only_acme(value)
    elif isinstance(body, list):
        for item in body:
            _only_acme(item)


def _counts_are_acme(queues: Any) -> None:
    """acme has only queued runs; globex's succeeded, failed and paused ones are not counted."""
    for queue in queues if isinstance(queues, list) else [queues]:
        assert set(queue["counts"]) <= {"queued"}, queue
        assert queue["paused"] is False, queue  # globex's pause holds only globex


def _no_ends(found: Any) -> None:
    """acme's runs have not ended; globex's ends are not counted."""
    for stretch in found["stretches"]:
        assert stretch["succeeded"] == stretch["failed"] == stretch["cancelled"] == 0, stretch


def isolation_probes(
    g: World, acme_run: str, acme_event: int = 0, acme_schedule: str = "unused"
) -> dict[Op, list[Probe]]:
    """What acme's admin key sends at each operation, aimed at globex; in the order sent."""
    run, failed, fp = g.runs["synced"], g.runs["failed"], g.error_group
    reason = {"reason": "probing"}
    sub, sched = f"/v1/subscriptions/{g.subscription}", f"/v1/schedules/{g.schedule}"
    hook = {"url": "https://hooks.example.com/acme", "types": ["run.*"]}
    every = {"name": "acme probe", "workflow": "plain.echo", "every": "1h"}
    window = {"start": 0, "end": 7200, "dry_run": False}
    return {
        ("GET", "/healthz"): [probe("GET", "/healthz", None, 200)],
        ("GET", "/readyz"): [probe("GET", "/readyz", None, 200)],
        ("POST", "/v1/runs"): [
            probe("POST", "/v1/runs", {"workflow": "crm.sync", "integration": g.integration}),
            probe("POST", "/v1/runs", {"workflow": "plain.echo", "tenant": "globex"}, 403),
            # Idempotency keys are per tenant: globex's key makes a new acme run.
            probe(
                "POST",
                "/v1/runs",
                {"workflow": "plain.echo"},
                201,
                headers={"Idempotency-Key": "nightly"},
            ),
        ],
        ("GET", "/v1/runs"): [
            probe("GET", "/v1/runs", None, 200),
            probe("GET", "/v1/runs?tenant=globex", None, 403),
            probe("GET", f"/v1/runs?integration={g.integration}", None, 200, check=_empty),
            probe("GET", f"/v1/runs?error_group={fp}", None, 200, check=_empty),
            probe("GET", "/v1/runs?label=team=globex-t", None, 200, check=_empty),
        ],
        ("GET", "/v1/runs/{run_id}"): [probe("GET", f"/v1/runs/{run}")],
        ("POST", "/v1/runs/{run_id}/cancel"): [
            probe("POST", f"/v1/runs/{g.runs['held']}/cancel", reason)
        ],
        ("POST", "/v1/runs/{run_id}/retry"): [probe("POST", f"/v1/runs/{failed}/retry", reason)],
        ("POST", "/v1/runs/prune"): [
            probe("POST", "/v1/runs/prune", {"older_than": 0, "dry_run": False}, 403)
        ],
        ("POST", "/v1/runs/retry"): [
            probe("POST", "/v1/runs/retry", {**reason, "tenant": "globex"}, 403),
            probe(
                "POST",
                "/v1/runs/retry",
                {**reason, "error_group": fp, "dry_run": False},
                200,
                check=lambda body: body["matched"] == 0 and body["new_runs"] == [],
            ),
        ],
        ("GET", "/v1/runs/{run_id}/artifacts/{artifact_id}"): [
            probe("GET", f"/v1/runs/{failed}/artifacts/{g.artifact}"),
            probe("GET", f"/v1/runs/{acme_run}/artifacts/{g.artifact}"),
        ],
        ("GET", "/v1/queues"): [
            probe("GET", "/v1/queues", None, 200, check=_counts_are_acme),
            probe("GET", "/v1/queues?tenant=globex", None, 403),
        ],
        ("GET", "/v1/throughput"): [
            probe("GET", "/v1/throughput", None, 200, check=_no_ends),
            probe("GET", "/v1/throughput?tenant=globex", None, 403),
        ],
        ("GET", "/v1/queues/{name}"): [
            probe("GET", "/v1/queues/default", None, 200, check=_counts_are_acme),
            probe("GET", "/v1/queues/default?tenant=globex", None, 403),
        ],
        ("PATCH", "/v1/queues/{name}"): [
            probe("PATCH", "/v1/queues/default", {**reason, "concurrency": 1}, 403)
        ],
        # acme has no pause on the queue: globex's is not acme's to lift.
        ("POST", "/v1/queues/{name}/resume"): [probe("POST", "/v1/queues/default/resume", reason)],
        ("POST", "/v1/queues/{name}/pause"): [
            probe("POST", "/v1/queues/default/pause", reason, 200)
        ],
        ("GET", "/v1/pauses"): [probe("GET", "/v1/pauses", None, 200)],
        ("POST", "/v1/pauses"): [
            probe("POST", "/v1/pauses", {**reason, "scope": "tenant", "value": "globex"}, 403),
            probe(
                "POST",
                "/v1/pauses",
                {**reason, "scope": "workflow", "value": "plain.echo", "tenant": "globex"},
                403,
            ),
        ],
        ("POST", "/v1/pauses/{pause_id}/resume"): [
            probe("POST", f"/v1/pauses/{g.pause}/resume", reason)
        ],
        ("GET", "/v1/connectors"): [probe("GET", "/v1/connectors", None, 200)],
        ("GET", "/v1/workflows"): [probe("GET", "/v1/workflows", None, 200)],
        ("GET", "/v1/integrations"): [
            probe("GET", "/v1/integrations", None, 200),
            probe("GET", "/v1/integrations?tenant=globex", None, 403),
        ],
        ("POST", "/v1/integrations"): [
            probe(
                "POST",
                "/v1/integrations",
                {
                    "connector": "crm",
                    "name": "acme crm",
                    "credentials": {"username": "a", "password": "b"},
                    "tenant": "globex",
                },
                403,
            )
        ],
        ("GET", "/v1/integrations/{integration_id}"): [
            probe("GET", f"/v1/integrations/{g.integration}")
        ],
        ("PATCH", "/v1/integrations/{integration_id}"): [
            probe("PATCH", f"/v1/integrations/{g.integration}", {"status": "disabled"})
        ],
        ("PUT", "/v1/integrations/{integration_id}/credentials"): [
            probe(
                "PUT",
                f"/v1/integrations/{g.integration}/credentials",
                {"credentials": {"username": "mallory", "password": "x"}},
            )
        ],
        ("DELETE", "/v1/integrations/{integration_id}"): [
            probe("DELETE", f"/v1/integrations/{g.integration}")
        ],
        ("GET", "/v1/errors"): [
            probe("GET", "/v1/errors", None, 200),
            probe("GET", "/v1/errors?tenant=globex", None, 403),
        ],
        ("GET", "/v1/events"): [
            probe("GET", "/v1/events", None, 200),
            probe("GET", "/v1/events?tenant=globex", None, 403),
            probe("GET", f"/v1/events?subject=run:{run}", None, 200, check=_empty),
            probe("GET", f"/v1/events?subject=run:{failed}&type=run.*", None, 200, check=_empty),
        ],
        ("GET", "/v1/audit"): [
            probe("GET", "/v1/audit", None, 200),
            probe("GET", "/v1/audit?tenant=globex", None, 403),
        ],
        ("GET", "/v1/workers"): [probe("GET", "/v1/workers", None, 403)],
        ("GET", "/v1/tenants"): [probe("GET", "/v1/tenants", None, 403)],
        # 403, not 409: a tenant key does not learn which tenants exist.
        ("POST", "/v1/tenants"): [probe("POST", "/v1/tenants", {"name": "globex"}, 403)],
        ("GET", "/v1/tenants/{name}"): [probe("GET", "/v1/tenants/globex")],
        ("PATCH", "/v1/tenants/{name}"): [
            probe("PATCH", "/v1/tenants/globex", {**reason, "weight": 100}, 403)
        ],
        ("GET", "/v1/keys"): [
            probe("GET", "/v1/keys", None, 200),
            probe("GET", "/v1/keys?tenant=globex", None, 403),
        ],
        ("POST", "/v1/keys"): [
            probe("POST", "/v1/keys", {"name": "k", "role": "admin", "tenant": "globex"}, 403),
            probe("POST", "/v1/keys", {"name": "k", "role": "platform"}, 403),
        ],
        ("DELETE", "/v1/keys/{key_id}"): [probe("DELETE", f"/v1/keys/{g.key}")],
        ("GET", "/v1/subscriptions"): [
            probe("GET", "/v1/subscriptions", None, 200, check=_none),
            probe("GET", "/v1/subscriptions?tenant=globex", None, 403),
        ],
        ("POST", "/v1/subscriptions"): [
            probe("POST", "/v1/subscriptions", {**hook, "tenant": "globex"}, 403)
        ],
        ("GET", "/v1/subscriptions/{subscription_id}"): [probe("GET", sub)],
        ("PATCH", "/v1/subscriptions/{subscription_id}"): [
            probe("PATCH", sub, {"url": "https://hooks.example.com/mallory", "enabled": False})
        ],
        ("POST", "/v1/subscriptions/{subscription_id}/rotate-secret"): [
            probe("POST", f"{sub}/rotate-secret")
        ],
        ("DELETE", "/v1/subscriptions/{subscription_id}"): [probe("DELETE", sub)],
        ("GET", "/v1/deliveries"): [
            probe("GET", "/v1/deliveries", None, 200, check=_empty),
            probe("GET", "/v1/deliveries?tenant=globex", None, 403),
            probe("GET", f"/v1/deliveries?subscription={g.subscription}", None, 200, check=_empty),
            probe("GET", f"/v1/deliveries?event={g.event}", None, 200, check=_empty),
            probe("GET", "/v1/deliveries?failed=true", None, 200, check=_empty),
        ],
        ("GET", "/v1/deliveries/{delivery_id}/attempts"): [
            probe("GET", f"/v1/deliveries/{g.delivery}/attempts")
        ],
        ("POST", "/v1/deliveries/recover"): [
            probe("POST", "/v1/deliveries/recover", {"since": 0, "subscription": g.subscription}),
            probe("POST", "/v1/deliveries/recover", {"since": 0, "tenant": "globex"}, 403),
        ],
        ("GET", "/v1/events/{event_id}"): [probe("GET", f"/v1/events/{g.event}")],
        ("POST", "/v1/events/{event_id}/replay"): [
            probe("POST", f"/v1/events/{g.event}/replay"),
            probe("POST", f"/v1/events/{g.event}/replay", {"subscription": g.subscription}),
            # acme's own event, sent to globex's subscription.
            probe("POST", f"/v1/events/{acme_event}/replay", {"subscription": g.subscription}),
        ],
        ("GET", "/v1/schedules"): [
            probe("GET", "/v1/schedules", None, 200),
            probe("GET", "/v1/schedules?tenant=globex", None, 403),
            probe("GET", f"/v1/schedules?integration={g.integration}", None, 200, check=_none),
        ],
        ("POST", "/v1/schedules"): [
            probe("POST", "/v1/schedules", {**every, "tenant": "globex"}, 403),
            probe(
                "POST",
                "/v1/schedules",
                {**every, "workflow": "crm.sync", "integration": g.integration},
            ),
        ],
        ("GET", "/v1/schedules/{schedule_id}"): [probe("GET", sched)],
        ("PATCH", "/v1/schedules/{schedule_id}"): [
            probe("PATCH", sched, {"name": "taken over", "every": "2h"}),
            # acme's own schedule, pointed at globex's integration.
            probe(
                "PATCH",
                f"/v1/schedules/{acme_schedule}",
                {"workflow": "crm.sync", "integration": g.integration},
            ),
        ],
        ("POST", "/v1/schedules/{schedule_id}/pause"): [
            probe("POST", f"{sched}/pause", {"note": "probing"})
        ],
        ("POST", "/v1/schedules/{schedule_id}/resume"): [probe("POST", f"{sched}/resume")],
        ("POST", "/v1/schedules/{schedule_id}/trigger"): [probe("POST", f"{sched}/trigger")],
        ("POST", "/v1/schedules/{schedule_id}/backfill"): [
            probe("POST", f"{sched}/backfill", window),
            probe("POST", f"{sched}/backfill", {**window, "dry_run": True}),
        ],
        ("GET", "/v1/schedules/{schedule_id}/firings"): [probe("GET", f"{sched}/firings")],
        ("DELETE", "/v1/schedules/{schedule_id}"): [probe("DELETE", sched)],
        **license_probes(g),
        **report_probes(g),
    }


def report_probes(g: World) -> dict[Op, list[Probe]]:
    """acme's admin key at globex's report subscriptions and reports."""
    sub, report = f"/v1/report-subscriptions/{g.report_subscription}", f"/v1/reports/{g.report}"
    channels = [{"channel": "email", "url": "ops@acme.example"}]
    return {
        ("GET", "/v1/report-subscriptions"): [
            probe("GET", "/v1/report-subscriptions", None, 200, check=_none),
            probe("GET", "/v1/report-subscriptions?tenant=globex", None, 403),
        ],
        ("POST", "/v1/report-subscriptions"): [
            probe(
                "POST",
                "/v1/report-subscriptions",
                {"report_type": "savings", "channels": channels, "tenant": "globex"},
                403,
            )
        ],
        ("GET", "/v1/report-subscriptions/{subscription_id}"): [probe("GET", sub)],
        ("PATCH", "/v1/report-subscriptions/{subscription_id}"): [
            probe("PATCH", sub, {"enabled": False})
        ],
        ("DELETE", "/v1/report-subscriptions/{subscription_id}"): [probe("DELETE", sub)],
        ("GET", "/v1/reports"): [
            probe("GET", "/v1/reports", None, 200, check=_empty),
            probe("GET", "/v1/reports?tenant=globex", None, 403),
        ],
        ("POST", "/v1/reports"): [
            probe("POST", "/v1/reports", {"report_type": "health", "tenant": "globex"}, 403)
        ],
        ("GET", "/v1/reports/{report_id}"): [probe("GET", report)],
        ("GET", "/v1/reports/{report_id}/files/{name}"): [
            probe("GET", f"{report}/files/health.html")
        ],
        ("POST", "/v1/reports/{report_id}/resend"): [
            probe("POST", f"{report}/resend", {"reason": "probing"})
        ],
    }


def license_probes(g: World) -> dict[Op, list[Probe]]:
    """acme's admin key at globex's licenses, findings and policy."""
    finding, mine = f"/v1/findings/{g.finding}", {"grace_days": 1}
    return {
        ("POST", "/v1/integrations/{integration_id}/accounts"): [
            probe("POST", f"/v1/integrations/{g.integration}/accounts", [{"user_id": "probe"}])
        ],
        ("GET", "/v1/licenses"): [
            probe("GET", "/v1/licenses", None, 200, check=_empty),
            probe("GET", "/v1/licenses?tenant=globex", None, 403),
            probe("GET", f"/v1/licenses?integration={g.integration}", None, 200, check=_empty),
        ],
        ("GET", "/v1/licenses/{license_id}"): [probe("GET", f"/v1/licenses/{g.license}")],
        ("GET", "/v1/findings"): [
            probe("GET", "/v1/findings?open=false", None, 200, check=_empty),
            probe("GET", "/v1/findings?tenant=globex", None, 403),
            probe("GET", f"/v1/findings?integration={g.integration}", None, 200, check=_empty),
        ],
        ("GET", "/v1/findings/{finding_id}"): [probe("GET", finding)],
        ("POST", "/v1/findings/{finding_id}/actions"): [
            probe("POST", f"{finding}/actions", {"action": "keep", "note": "probing"}),
            probe("POST", f"{finding}/actions", {"action": "reclaim", "note": "probing"}),
        ],
        ("GET", "/v1/savings"): [
            probe(
                "GET", "/v1/savings", None, 200, check=lambda b: b == {"items": [], "totals": []}
            ),
            probe("GET", "/v1/savings?tenant=globex", None, 403),
        ],
        ("GET", "/v1/license-policy"): [
            probe("GET", "/v1/license-policy", None, 200),
            probe("GET", f"/v1/license-policy?integration={g.integration}"),
            probe("GET", "/v1/license-policy?tenant=globex", None, 403),
        ],
        ("PUT", "/v1/license-policy"): [
            probe("PUT", f"/v1/license-policy?integration={g.integration}", mine),
            probe("PUT", "/v1/license-policy", {**mine, "tenant": "globex"}, 403),
        ],
    }


def _empty(page: Any) -> None:
    assert page["items"] == [], page


def _none(found: Any) -> None:
    assert found == [], found


def test_a_tenant_key_never_reaches_another_tenants_data(api: ApiSetup, globex: World) -> None:
    with api.as_("acme", Role.OPERATOR) as c:
        acme_run = _ok(c.post("/v1/runs", json={"workflow": "plain.echo"}), 201)["id"]
    with api.as_("acme", Role.ADMIN) as c:
        acme_schedule = _ok(
            c.post(
                "/v1/schedules",
                json={"name": "acme own", "workflow": "plain.echo", "every": "1h"},
            ),
            201,
        )["id"]
        # An event of acme's (acme's runs stay queued: the queue counts say so).
        _ok(c.post(f"/v1/schedules/{acme_schedule}/pause", json={"note": "an acme event"}))
        _ok(c.post(f"/v1/schedules/{acme_schedule}/resume"))
        settle_events(api.app.store)
        acme_event = _ok(c.get("/v1/events", params={"type": "schedule.paused"}))["items"][0]["id"]
    probes = isolation_probes(globex, acme_run, acme_event, acme_schedule)
    assert set(probes) == operations(api), "every operation needs isolation probes"
    sent_so_far = ""  # what acme sent may come back (e.g. a filter in acme's audit log)
    with api.as_("acme", Role.ADMIN) as c:
        for op, sent in probes.items():
            for p in sent:
                r = p.send(c)
                sent_so_far += p.sent()
                where = f"{op}: {p.method} {p.url} -> {r.status_code} {r.text[:300]}"
                assert r.status_code in p.expect, where
                leaked = [m for m in globex.markers if m not in sent_so_far and m in r.text]
                assert not leaked, f"{where}: leaks {leaked}"
                if r.status_code >= 400:
                    assert_problem(r, r.status_code)
                elif r.content:
                    _only_acme(r.json())
                    if p.check is not None:
                        p.check(r.json())
    _globex_is_untouched(api, globex)


def _globex_is_untouched(api: ApiSetup, g: World) -> None:
    with api.as_("globex", Role.ADMIN) as c:
        integration = _ok(c.get(f"/v1/integrations/{g.integration}"))
        assert integration["status"] == "active" and integration["name"] == "globex payroll"
        runs = {r["id"]: r["state"] for r in _ok(c.get("/v1/runs"))["items"]}
        assert runs == {
            g.runs["synced"]: "succeeded",
            g.runs["failed"]: "failed",
            g.runs["held"]: "paused",
            g.runs["report"]: "succeeded",
        }
        report = _ok(c.get(f"/v1/reports/{g.report}"))
        assert report["published"] == 1, "not resent"
        assert _ok(c.get(f"/v1/report-subscriptions/{g.report_subscription}"))["enabled"]
        assert g.pause in [p["id"] for p in _ok(c.get("/v1/pauses"))]
        assert {k["id"]: k["revoked_at"] for k in _ok(c.get("/v1/keys"))}[g.key] is None
        download = c.get(f"/v1/runs/{g.runs['failed']}/artifacts/{g.artifact}")
        assert download.content == b"globex-artifact-bytes"
        subscription = _ok(c.get(f"/v1/subscriptions/{g.subscription}"))
        assert subscription["enabled"] and subscription["disabled_reason"] is None
        assert subscription["url"] == "https://hooks.example.com/globex-marker"
        assert subscription["previous_secret_until"] is None, "its secret was not rotated"
        deliveries = _ok(c.get("/v1/deliveries", params={"subscription": g.subscription}))
        assert g.delivery in [d["id"] for d in deliveries["items"]]
        assert {d["attempts"] for d in deliveries["items"]} == {0}, "none sent again"
        assert _ok(c.get(f"/v1/events/{g.event}"))["id"] == g.event
        schedule = _ok(c.get(f"/v1/schedules/{g.schedule}"))
        assert not schedule["paused"] and schedule["name"] == "globex nightly schedule"
        assert schedule["every_seconds"] == 3600 and schedule["integration"] is None
        assert schedule["fired"] == 0 and _ok(c.get(f"/v1/schedules/{g.schedule}/firings")) == []
        schedules = _ok(c.get("/v1/schedules"))
        assert [s["id"] for s in schedules if s["workflow"] != "greenroom.report"] == [g.schedule]
        finding = _ok(c.get(f"/v1/findings/{g.finding}"))
        assert finding["state"] == "notified" and finding["action_run_id"] is None
        assert _ok(c.get(f"/v1/licenses/{g.license}"))["user_id"] == "globex-seat-marker"
        assert _ok(c.get("/v1/license-policy"))["grace_days"] == 60
        policy = _ok(c.get("/v1/license-policy", params={"integration": g.integration}))
        assert policy["grace_days"] == 60
        # With globex's pause lifted its run goes: acme's pause of the queue holds acme's only.
        lifted = c.post(f"/v1/pauses/{g.pause}/resume", json={"reason": "done"})
        assert _ok(lifted) == {"resumed": 1}
        assert _ok(c.get(f"/v1/runs/{g.runs['held']}"))["state"] == "queued"
    # Names are per tenant: acme may use globex's (a 409 would tell globex's exists).
    with api.as_("acme", Role.ADMIN) as c:
        same_name = {
            "connector": "crm",
            "name": "globex payroll",
            "credentials": {"username": "a", "password": "b"},
        }
        assert c.post("/v1/integrations", json=same_name).status_code == 201


def test_a_tenant_key_naming_another_tenant_is_refused(api: ApiSetup, globex: World) -> None:
    """Every `tenant` query parameter and body field of the schema, named by an acme key."""
    schema = httpx.get(f"{api.url}/openapi.json").json()
    components = schema["components"]["schemas"]
    in_query, in_body = set(), set()
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            if any(p["name"] == "tenant" and p["in"] == "query" for p in op.get("parameters", [])):
                in_query.add((method.upper(), path))
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            ref = body.get("schema", {}).get("$ref", "")
            if "tenant" in components.get(ref.rsplit("/", 1)[-1], {}).get("properties", {}):
                in_body.add((method.upper(), path))
    assert in_query and in_body
    probes = isolation_probes(globex, "unused")
    with api.as_("acme", Role.ADMIN) as c:
        for method, path in sorted(in_query):
            r = c.request(method, path, params={"tenant": "globex"})
            assert_problem(r, 403)
    for op in in_body:
        named = [
            p for p in probes[op] if isinstance(p.json, dict) and p.json.get("tenant") == "globex"
        ]
        assert named and all(p.expect == {403} for p in named), f"{op}: no probe names globex"


def test_a_platform_key_sees_every_tenant(api: ApiSetup, globex: World) -> None:
    with api.as_("acme", Role.OPERATOR) as c:
        acme_run = _ok(c.post("/v1/runs", json={"workflow": "plain.echo"}), 201)["id"]
    with api.platform() as c:

        def tenants(path: str) -> set[str]:
            return {item["tenant"] for item in _items(_ok(c.get(path)))}

        assert tenants("/v1/runs") == {"acme", "globex"}
        assert {"acme", "globex"} <= tenants("/v1/keys")
        assert tenants("/v1/runs?tenant=globex") == {"globex"}
        assert tenants("/v1/integrations") == {"globex"}
        assert tenants("/v1/errors") == {"globex"}
        assert {"acme", "globex"} <= tenants("/v1/audit")
        assert "globex" in tenants("/v1/events")
        assert tenants("/v1/events?tenant=globex") == {"globex"}
        assert globex.pause in [p["id"] for p in _ok(c.get("/v1/pauses"))]
        assert _ok(c.get(f"/v1/runs/{globex.runs['synced']}"))["tenant"] == "globex"
        assert _ok(c.get(f"/v1/runs/{acme_run}"))["tenant"] == "acme"
        assert _ok(c.get(f"/v1/integrations/{globex.integration}"))["tenant"] == "globex"
        assert _ok(c.get("/v1/tenants/globex"))["name"] == "globex"
        assert tenants("/v1/subscriptions?tenant=globex") == {"globex"}
        assert tenants("/v1/deliveries?tenant=globex") == {"globex"}
        assert tenants("/v1/schedules?tenant=globex") == {"globex"}
        assert _ok(c.get(f"/v1/schedules/{globex.schedule}"))["tenant"] == "globex"
        assert _ok(c.get(f"/v1/events/{globex.event}"))["tenant"] == "globex"
        assert tenants("/v1/licenses") == tenants("/v1/findings") == {"globex"}
        assert _ok(c.get(f"/v1/findings/{globex.finding}"))["tenant"] == "globex"
        assert _ok(c.get(f"/v1/licenses/{globex.license}"))["tenant"] == "globex"
        assert tenants("/v1/reports") == tenants("/v1/report-subscriptions") == {"globex"}
        assert _ok(c.get(f"/v1/reports/{globex.report}"))["tenant"] == "globex"
        counts = _ok(c.get("/v1/queues/default?tenant=globex"))["counts"]
        assert counts == {"succeeded": 1, "failed": 1, "paused": 1}
        art = c.get(f"/v1/runs/{globex.runs['failed']}/artifacts/{globex.artifact}")
        assert art.content == b"globex-artifact-bytes"


def _items(body: Any) -> list[Any]:
    return body["items"] if isinstance(body, dict) else body


# -- roles -----------------------------------------------------------------------------------

#: The spec: the least role each operation needs (None: no key needed). Each role may do what
#: the ones before it may: viewer < operator < admin < platform.
NEEDS: dict[Op, Role | None] = {
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("POST", "/v1/runs"): Role.OPERATOR,
    ("GET", "/v1/runs"): Role.VIEWER,
    ("GET", "/v1/runs/{run_id}"): Role.VIEWER,
    ("POST", "/v1/runs/{run_id}/cancel"): Role.OPERATOR,
    ("POST", "/v1/runs/{run_id}/retry"): Role.OPERATOR,
    ("POST", "/v1/runs/retry"): Role.OPERATOR,
    ("POST", "/v1/runs/prune"): Role.PLATFORM,
    ("GET", "/v1/runs/{run_id}/artifacts/{artifact_id}"): Role.VIEWER,
    ("GET", "/v1/queues"): Role.VIEWER,
    ("GET", "/v1/queues/{name}"): Role.VIEWER,
    ("GET", "/v1/throughput"): Role.VIEWER,
    ("PATCH", "/v1/queues/{name}"): Role.PLATFORM,
    ("POST", "/v1/queues/{name}/pause"): Role.OPERATOR,
    ("POST", "/v1/queues/{name}/resume"): Role.OPERATOR,
    ("GET", "/v1/pauses"): Role.VIEWER,
    ("POST", "/v1/pauses"): Role.OPERATOR,
    ("POST", "/v1/pauses/{pause_id}/resume"): Role.OPERATOR,
    ("GET", "/v1/connectors"): Role.VIEWER,
    ("GET", "/v1/workflows"): Role.VIEWER,
    ("GET", "/v1/integrations"): Role.VIEWER,
    ("POST", "/v1/integrations"): Role.ADMIN,
    ("GET", "/v1/integrations/{integration_id}"): Role.VIEWER,
    ("PATCH", "/v1/integrations/{integration_id}"): Role.ADMIN,
    ("PUT", "/v1/integrations/{integration_id}/credentials"): Role.ADMIN,
    # Before the integration is deleted: these act on its licenses.
    ("POST", "/v1/integrations/{integration_id}/accounts"): Role.OPERATOR,
    ("GET", "/v1/licenses"): Role.VIEWER,
    ("GET", "/v1/licenses/{license_id}"): Role.VIEWER,
    ("GET", "/v1/findings"): Role.VIEWER,
    ("GET", "/v1/findings/{finding_id}"): Role.VIEWER,
    ("POST", "/v1/findings/{finding_id}/actions"): Role.ADMIN,
    ("GET", "/v1/savings"): Role.VIEWER,
    ("GET", "/v1/license-policy"): Role.VIEWER,
    ("PUT", "/v1/license-policy"): Role.ADMIN,
    ("DELETE", "/v1/integrations/{integration_id}"): Role.ADMIN,
    ("GET", "/v1/errors"): Role.VIEWER,
    ("GET", "/v1/audit"): Role.VIEWER,
    ("GET", "/v1/events"): Role.VIEWER,
    ("GET", "/v1/workers"): Role.PLATFORM,
    ("GET", "/v1/tenants"): Role.PLATFORM,
    ("POST", "/v1/tenants"): Role.PLATFORM,
    ("GET", "/v1/tenants/{name}"): Role.VIEWER,
    ("PATCH", "/v1/tenants/{name}"): Role.PLATFORM,
    ("GET", "/v1/keys"): Role.ADMIN,
    ("POST", "/v1/keys"): Role.ADMIN,
    ("DELETE", "/v1/keys/{key_id}"): Role.ADMIN,
    ("GET", "/v1/subscriptions"): Role.VIEWER,
    ("POST", "/v1/subscriptions"): Role.ADMIN,
    ("GET", "/v1/subscriptions/{subscription_id}"): Role.VIEWER,
    ("PATCH", "/v1/subscriptions/{subscription_id}"): Role.ADMIN,
    ("POST", "/v1/subscriptions/{subscription_id}/rotate-secret"): Role.ADMIN,
    ("DELETE", "/v1/subscriptions/{subscription_id}"): Role.ADMIN,
    ("GET", "/v1/deliveries"): Role.VIEWER,
    ("GET", "/v1/deliveries/{delivery_id}/attempts"): Role.VIEWER,
    ("POST", "/v1/deliveries/recover"): Role.ADMIN,
    ("GET", "/v1/events/{event_id}"): Role.VIEWER,
    ("POST", "/v1/events/{event_id}/replay"): Role.ADMIN,
    ("GET", "/v1/schedules"): Role.VIEWER,
    ("POST", "/v1/schedules"): Role.ADMIN,
    ("GET", "/v1/schedules/{schedule_id}"): Role.VIEWER,
    ("PATCH", "/v1/schedules/{schedule_id}"): Role.ADMIN,
    ("POST", "/v1/schedules/{schedule_id}/pause"): Role.ADMIN,
    ("POST", "/v1/schedules/{schedule_id}/resume"): Role.ADMIN,
    ("POST", "/v1/schedules/{schedule_id}/trigger"): Role.OPERATOR,
    ("POST", "/v1/schedules/{schedule_id}/backfill"): Role.OPERATOR,
    ("GET", "/v1/schedules/{schedule_id}/firings"): Role.VIEWER,
    ("DELETE", "/v1/schedules/{schedule_id}"): Role.ADMIN,
    ("GET", "/v1/report-subscriptions"): Role.VIEWER,
    ("POST", "/v1/report-subscriptions"): Role.ADMIN,
    ("GET", "/v1/report-subscriptions/{subscription_id}"): Role.VIEWER,
    ("PATCH", "/v1/report-subscriptions/{subscription_id}"): Role.ADMIN,
    ("DELETE", "/v1/report-subscriptions/{subscription_id}"): Role.ADMIN,
    ("GET", "/v1/reports"): Role.VIEWER,
    ("POST", "/v1/reports"): Role.OPERATOR,
    ("GET", "/v1/reports/{report_id}"): Role.VIEWER,
    ("GET", "/v1/reports/{report_id}/files/{name}"): Role.VIEWER,
    ("POST", "/v1/reports/{report_id}/resend"): Role.ADMIN,
}


@dataclass(frozen=True)
class Throwaway:
    """acme's resources that a role's DELETE may remove, so the other rows keep theirs."""

    key: str
    label_pause: int
    subscription: str
    schedule: str
    report_subscription: str


def role_requests(a: World, gone: Throwaway) -> dict[Op, Probe]:
    """One request per operation on acme's own resources, valid for a role that may send it."""
    run, reason = a.runs["held"], {"reason": "role matrix"}
    credentials = {"credentials": {"username": "bot", "password": "rotated"}}
    sub, sched = f"/v1/subscriptions/{a.subscription}", f"/v1/schedules/{a.schedule}"
    hook = {"url": "https://hooks.example.com/acme-more", "types": ["run.failed"]}
    every = {"name": "role matrix", "workflow": "plain.echo", "every": "2h"}
    now = time.time()
    return {
        ("GET", "/healthz"): probe("GET", "/healthz"),
        ("GET", "/readyz"): probe("GET", "/readyz"),
        ("POST", "/v1/runs"): probe(
            "POST", "/v1/runs", {"workflow": "plain.echo", "tenant": "acme"}
        ),
        ("GET", "/v1/runs"): probe("GET", "/v1/runs"),
        ("GET", "/v1/runs/{run_id}"): probe("GET", f"/v1/runs/{run}"),
        ("POST", "/v1/runs/{run_id}/cancel"): probe("POST", f"/v1/runs/{run}/cancel", reason),
        ("POST", "/v1/runs/{run_id}/retry"): probe("POST", f"/v1/runs/{run}/retry", reason),
        ("POST", "/v1/runs/retry"): probe("POST", "/v1/runs/retry", {**reason, "tenant": "acme"}),
        ("POST", "/v1/runs/prune"): probe("POST", "/v1/runs/prune", {"older_than": 0}),
        ("GET", "/v1/runs/{run_id}/artifacts/{artifact_id}"): probe(
            "GET", f"/v1/runs/{a.runs['failed']}/artifacts/{a.artifact}"
        ),
        ("GET", "/v1/queues"): probe("GET", "/v1/queues"),
        ("GET", "/v1/queues/{name}"): probe("GET", "/v1/queues/default"),
        ("GET", "/v1/throughput"): probe("GET", "/v1/throughput"),
        ("PATCH", "/v1/queues/{name}"): probe(
            "PATCH", "/v1/queues/default", {**reason, "concurrency": 5}
        ),
        ("POST", "/v1/queues/{name}/pause"): probe("POST", "/v1/queues/default/pause", reason),
        ("POST", "/v1/queues/{name}/resume"): probe("POST", "/v1/queues/default/resume", reason),
        ("GET", "/v1/pauses"): probe("GET", "/v1/pauses"),
        ("POST", "/v1/pauses"): probe(
            "POST",
            "/v1/pauses",
            {**reason, "scope": "workflow", "value": "plain.fail", "tenant": "acme"},
        ),
        ("POST", "/v1/pauses/{pause_id}/resume"): probe(
            "POST", f"/v1/pauses/{gone.label_pause}/resume", reason
        ),
        ("GET", "/v1/connectors"): probe("GET", "/v1/connectors"),
        ("GET", "/v1/workflows"): probe("GET", "/v1/workflows"),
        ("GET", "/v1/integrations"): probe("GET", "/v1/integrations"),
        ("POST", "/v1/integrations"): probe(
            "POST",
            "/v1/integrations",
            {"connector": "crm", "name": "second", "tenant": "acme", **credentials},
        ),
        ("GET", "/v1/integrations/{integration_id}"): probe(
            "GET", f"/v1/integrations/{a.integration}"
        ),
        ("PATCH", "/v1/integrations/{integration_id}"): probe(
            "PATCH", f"/v1/integrations/{a.integration}", {"settings": {"region": "eu"}}
        ),
        ("PUT", "/v1/integrations/{integration_id}/credentials"): probe(
            "PUT", f"/v1/integrations/{a.integration}/credentials", credentials
        ),
        ("DELETE", "/v1/integrations/{integration_id}"): probe(
            "DELETE", f"/v1/integrations/{a.integration}"
        ),
        ("GET", "/v1/errors"): probe("GET", "/v1/errors"),
        ("GET", "/v1/audit"): probe("GET", "/v1/audit"),
        ("GET", "/v1/events"): probe("GET", "/v1/events"),
        ("GET", "/v1/workers"): probe("GET", "/v1/workers"),
        ("GET", "/v1/tenants"): probe("GET", "/v1/tenants"),
        ("POST", "/v1/tenants"): probe("POST", "/v1/tenants", {"name": "initech"}),
        ("GET", "/v1/tenants/{name}"): probe("GET", "/v1/tenants/acme"),
        ("PATCH", "/v1/tenants/{name}"): probe(
            "PATCH", "/v1/tenants/acme", {**reason, "weight": 2}
        ),
        ("GET", "/v1/keys"): probe("GET", "/v1/keys"),
        ("POST", "/v1/keys"): probe(
            "POST", "/v1/keys", {"name": "made", "role": "viewer", "tenant": "acme"}
        ),
        ("DELETE", "/v1/keys/{key_id}"): probe("DELETE", f"/v1/keys/{gone.key}"),
        ("GET", "/v1/subscriptions"): probe("GET", "/v1/subscriptions"),
        ("POST", "/v1/subscriptions"): probe(
            "POST", "/v1/subscriptions", {**hook, "tenant": "acme"}
        ),
        ("GET", "/v1/subscriptions/{subscription_id}"): probe("GET", sub),
        ("PATCH", "/v1/subscriptions/{subscription_id}"): probe(
            "PATCH", sub, {"description": "role matrix", "max_in_flight": 2}
        ),
        ("POST", "/v1/subscriptions/{subscription_id}/rotate-secret"): probe(
            "POST", f"{sub}/rotate-secret"
        ),
        ("DELETE", "/v1/subscriptions/{subscription_id}"): probe(
            "DELETE", f"/v1/subscriptions/{gone.subscription}"
        ),
        ("GET", "/v1/deliveries"): probe("GET", f"/v1/deliveries?subscription={a.subscription}"),
        ("GET", "/v1/deliveries/{delivery_id}/attempts"): probe(
            "GET", f"/v1/deliveries/{a.delivery}/attempts"
        ),
        ("POST", "/v1/deliveries/recover"): probe(
            "POST",
            "/v1/deliveries/recover",
            {"since": 0, "subscription": a.subscription, "tenant": "acme"},
        ),
        ("GET", "/v1/events/{event_id}"): probe("GET", f"/v1/events/{a.event}"),
        ("POST", "/v1/events/{event_id}/replay"): probe(
            "POST", f"/v1/events/{a.event}/replay", {"subscription": a.subscription}
        ),
        ("GET", "/v1/schedules"): probe("GET", "/v1/schedules"),
        ("POST", "/v1/schedules"): probe("POST", "/v1/schedules", {**every, "tenant": "acme"}),
        ("GET", "/v1/schedules/{schedule_id}"): probe("GET", sched),
        ("PATCH", "/v1/schedules/{schedule_id}"): probe(
            "PATCH", sched, {"labels": {"team": "acme-t"}, "every": "2h"}
        ),
        ("POST", "/v1/schedules/{schedule_id}/pause"): probe(
            "POST", f"{sched}/pause", {"note": "role matrix"}
        ),
        ("POST", "/v1/schedules/{schedule_id}/resume"): probe("POST", f"{sched}/resume"),
        ("POST", "/v1/schedules/{schedule_id}/trigger"): probe("POST", f"{sched}/trigger"),
        ("POST", "/v1/schedules/{schedule_id}/backfill"): probe(
            "POST", f"{sched}/backfill", {"start": now - 3 * 3600, "end": now, "dry_run": True}
        ),
        ("GET", "/v1/schedules/{schedule_id}/firings"): probe("GET", f"{sched}/firings"),
        ("DELETE", "/v1/schedules/{schedule_id}"): probe(
            "DELETE", f"/v1/schedules/{gone.schedule}"
        ),
        **license_requests(a),
        **report_requests(a, gone),
    }


def report_requests(a: World, gone: Throwaway) -> dict[Op, Probe]:
    """One request per report operation on acme's own report subscriptions and reports."""
    sub, report = f"/v1/report-subscriptions/{a.report_subscription}", f"/v1/reports/{a.report}"
    channels = [{"channel": "email", "url": "ops@acme.example"}]
    return {
        ("GET", "/v1/report-subscriptions"): probe("GET", "/v1/report-subscriptions"),
        ("POST", "/v1/report-subscriptions"): probe(
            "POST",
            "/v1/report-subscriptions",
            {"report_type": "savings", "period": "month", "channels": channels, "tenant": "acme"},
        ),
        ("GET", "/v1/report-subscriptions/{subscription_id}"): probe("GET", sub),
        ("PATCH", "/v1/report-subscriptions/{subscription_id}"): probe(
            "PATCH", sub, {"enabled": False}
        ),
        ("DELETE", "/v1/report-subscriptions/{subscription_id}"): probe(
            "DELETE", f"/v1/report-subscriptions/{gone.report_subscription}"
        ),
        ("GET", "/v1/reports"): probe("GET", "/v1/reports"),
        ("POST", "/v1/reports"): probe(
            "POST", "/v1/reports", {"report_type": "savings", "tenant": "acme"}
        ),
        ("GET", "/v1/reports/{report_id}"): probe("GET", report),
        ("GET", "/v1/reports/{report_id}/files/{name}"): probe(
            "GET", f"{report}/files/health-integrations.csv"
        ),
        ("POST", "/v1/reports/{report_id}/resend"): probe(
            "POST", f"{report}/resend", {"reason": "role matrix"}
        ),
    }


def license_requests(a: World) -> dict[Op, Probe]:
    """One request per license operation on acme's own licenses, findings and policy."""
    policy = f"/v1/license-policy?integration={a.integration}"
    return {
        ("POST", "/v1/integrations/{integration_id}/accounts"): probe(
            "POST", f"/v1/integrations/{a.integration}/accounts", [{"user_id": "role-matrix"}]
        ),
        ("GET", "/v1/licenses"): probe("GET", "/v1/licenses"),
        ("GET", "/v1/licenses/{license_id}"): probe("GET", f"/v1/licenses/{a.license}"),
        ("GET", "/v1/findings"): probe("GET", "/v1/findings"),
        ("GET", "/v1/findings/{finding_id}"): probe("GET", f"/v1/findings/{a.finding}"),
        ("POST", "/v1/findings/{finding_id}/actions"): probe(
            "POST", f"/v1/findings/{a.finding}/actions", {"action": "keep", "note": "role matrix"}
        ),
        ("GET", "/v1/savings"): probe("GET", "/v1/savings"),
        ("GET", "/v1/license-policy"): probe("GET", policy),
        ("PUT", "/v1/license-policy"): probe("PUT", policy, {"grace_days": 30}),
    }


async def test_each_role_reaches_what_the_role_table_says(api: ApiSetup) -> None:
    acme = await _build(api, "acme")
    with api.as_("acme", Role.ADMIN) as c:
        throwaway = _ok(c.post("/v1/keys", json={"name": "old", "role": "viewer"}), 201)["id"]
        pause = {"scope": "label", "label": "team", "value": "x", "reason": "role matrix"}
        label_pause = _ok(c.post("/v1/pauses", json=pause), 201)["id"]
        hook = {"url": "https://hooks.example.com/old", "types": ["*"]}
        old_subscription = _ok(c.post("/v1/subscriptions", json=hook), 201)["id"]
        every = {"name": "old", "workflow": "plain.echo", "every": "1d"}
        old_schedule = _ok(c.post("/v1/schedules", json=every), 201)["id"]
        channels = [{"channel": "email", "url": "old@acme.example"}]
        old_report = {"report_type": "savings", "channels": channels}
        old_report_subscription = _ok(c.post("/v1/report-subscriptions", json=old_report), 201)
    gone = Throwaway(
        throwaway, label_pause, old_subscription, old_schedule, old_report_subscription["id"]
    )
    requests = role_requests(acme, gone)
    assert set(NEEDS) == operations(api), "every operation needs a row in the role table"
    assert set(requests) == set(NEEDS)
    answered: dict[Op, list[int]] = {}
    for op, needed in NEEDS.items():
        for role in Role:
            client = api.platform() if role is Role.PLATFORM else api.as_("acme", role)
            with client as c:
                r = requests[op].send(c)
            answered.setdefault(op, []).append(r.status_code)
            if needed is None:
                assert r.status_code == 200, (op, role, r.text)
            elif not role.allows(needed):
                assert_problem(r, 403)
            else:
                assert r.status_code not in (401, 403), (op, role, r.text)
    # The requests are meaningful: the first role allowed mostly succeeds.
    first_allowed = {
        op: statuses[list(Role).index(needed) if needed else 0]
        for op, statuses in answered.items()
        for needed in [NEEDS[op]]
    }
    failed = {op: status for op, status in first_allowed.items() if status >= 400}
    assert not failed, failed
