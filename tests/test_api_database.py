"""The API when the database has trouble: its connections terminated mid-traffic (a failover, a
restarted pooler), or runs stored before the text rules held that the database cannot read.
No request answers a bare 500: reads and idempotent writes are tried again on a fresh
connection, others answer 503 with Retry-After."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from greenroom.model import Role
from tests.api_helpers import ApiSetup, api_setup
from tests.test_api_errors import assert_problem
from tests.test_bad_rows import UNREADABLE, store_unreadable_labels

#: The API's own connections to the test's database (filtered by name: never another's).
_TERMINATE = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND application_name = 'api-under-test'"
)


def _requests(api: ApiSetup, round_: int) -> list[tuple[str, str, dict[str, object]]]:
    """Forty requests of every kind: reads, idempotent creates, creates without a key."""
    made: list[tuple[str, str, dict[str, object]]] = []
    for i in range(10):
        key = {"Idempotency-Key": f"blip-{round_}-{i}"}
        made += [
            ("GET", "/v1/runs", {}),
            ("GET", "/v1/queues", {}),
            ("POST", "/v1/runs", {"json": {"workflow": "plain.echo"}, "headers": key}),
            ("POST", "/v1/runs", {"json": {"workflow": "plain.echo", "input": {"value": i}}}),
        ]
    return made


@pytest.mark.postgres
def test_no_request_meets_a_dropped_connection_with_a_500(pg_url: str) -> None:
    with api_setup(pg_url + "?application_name=api-under-test") as api:
        statuses: Counter[tuple[str, int]] = Counter()
        lock = threading.Lock()

        def send(request: tuple[str, str, dict[str, object]]) -> None:
            method, path, options = request
            with api.as_("acme", Role.OPERATOR) as c:
                r = c.request(method, path, **options)  # type: ignore[arg-type]
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"
                assert_problem(r, 503)
            with lock:
                statuses[method, r.status_code] += 1

        with ThreadPoolExecutor(8) as pool, psycopg.connect(pg_url, autocommit=True) as admin:
            list(pool.map(send, _requests(api, -1)))  # the pool holds connections now
            for round_ in range(3):
                killed = admin.execute(_TERMINATE).fetchall()
                assert killed, "the API had connections to drop"
                list(pool.map(send, _requests(api, round_)))
        assert {status for _, status in statuses} <= {200, 201, 503}, statuses
        # Reads and idempotent creates were tried again: none failed.
        assert statuses["GET", 503] == 0, statuses
        with api.as_("acme", Role.VIEWER) as c:
            keyed = [
                r
                for r in c.get("/v1/runs", params={"limit": 500}).json()["items"]
                if r["idempotency_key"]
            ]
        assert len(keyed) == 40


def test_requests_over_unreadable_runs_quarantine_them_and_succeed(api: ApiSetup) -> None:
    with api.as_("acme", Role.OPERATOR) as c:
        run = c.post("/v1/runs", json={"workflow": "plain.echo", "labels": {"team": "red"}})
        run_id = run.json()["id"]
        store_unreadable_labels(api.app.store, run_id)
        for params in ({"label": "team=blue"}, {"label": "a=b=c"}, {"integration": "null"}):
            r = c.get("/v1/runs", params=params)
            assert r.status_code == 200, (params, r.text)
        pause = {"scope": "label", "label": "team", "value": "blue", "reason": "hold blue"}
        created = c.post("/v1/pauses", json=pause)
        assert created.status_code == 201, created.text
        shown = c.get(f"/v1/runs/{run_id}").json()
    if api.app.settings.db.startswith("postgresql"):  # quarantined by the first label query
        assert shown["state"] == "failed" and shown["labels"] == {"team": "blue"}
        assert shown["error"]["type"] == "UnreadableLabels"
        assert shown["timeline"][-1]["detail"] == {"labels": UNREADABLE}
    else:  # SQLite reads it as it is
        assert shown["state"] in ("queued", "paused")


@pytest.mark.postgres
def test_a_write_that_meets_a_dropped_connection_is_not_repeated(pg_url: str) -> None:
    """A create without an Idempotency-Key may have been applied: it answers 503, never a
    second run."""
    with api_setup(pg_url + "?application_name=api-under-test") as api:
        with api.as_("acme", Role.OPERATOR) as c, psycopg.connect(pg_url, autocommit=True) as admin:
            c.get("/v1/runs")
            answers = []
            for _ in range(5):
                admin.execute(_TERMINATE)
                answers.append(c.post("/v1/runs", json={"workflow": "plain.echo"}))
            assert {r.status_code for r in answers} <= {201, 503}
            created = sum(r.status_code == 201 for r in answers)
            listed = c.get("/v1/runs").json()["items"]
        assert len(listed) == created
        assert any(r.status_code == 503 for r in answers)
