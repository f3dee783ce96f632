"""The console's schedules over HTTP: the list and a schedule's firings with their runs,
trigger, pause and resume doing what the API's do (roles, audit), tenants kept apart, CSRF,
names escaped, bad ids a 4xx page."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ui_helpers import page_csrf, sign_in

from greenroom.model import Role
from greenroom.storage import RunFilter
from tests.api_helpers import ApiSetup, api_setup

NAME = "<script>alert(1)</script> nightly"


@pytest.fixture
def console(db_url: str) -> Iterator[ApiSetup]:
    """The real app on loopback, on SQLite and on PostgreSQL."""
    with api_setup(db_url) as setup:
        yield setup


def schedule(api: ApiSetup, tenant: str, name: str = NAME, **body: Any) -> str:
    spec = {"name": name, "workflow": "plain.echo", "cron": "0 8 * * *", **body}
    with api.as_(tenant) as c:
        made = c.post("/v1/schedules", json={"timezone": "Europe/Berlin", **spec})
        assert made.status_code == 201, made.text
        return str(made.json()["id"])


def test_schedules_are_listed_and_shown_with_their_firings_escaped(console: ApiSetup) -> None:
    acme = schedule(console, "acme")
    every = schedule(console, "acme", name="often", cron=None, every="15m")
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        listed = c.get("/ui/schedules").text
        assert f'href="/ui/schedules/{acme}"' in listed and f'data-schedule="{every}"' in listed
        assert "&lt;script&gt;alert(1)&lt;/script&gt; nightly" in listed
        assert "<script>alert(1)" not in listed
        assert "<code>0 8 * * *</code>" in listed and "Europe/Berlin" in listed
        assert "every 15m" in listed
        shown = c.get(f"/ui/schedules/{acme}").text
        assert "Not fired yet" in shown and "<script>alert(1)" not in shown
        assert "action=" not in shown.split("<main>")[1], "a viewer gets no actions"
    with console.as_("acme", Role.OPERATOR) as api:
        made = api.post(f"/v1/schedules/{acme}/trigger")
        assert made.status_code == 201
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        shown = c.get(f"/ui/schedules/{acme}").text
        assert f'href="/ui/runs/{made.json()["id"]}"' in shown and "triggered" in shown


def test_trigger_pause_and_resume_as_the_api_with_its_roles_and_audit(
    console: ApiSetup,
) -> None:
    acme = schedule(console, "acme")
    path = f"/ui/schedules/{acme}"
    with sign_in(console.url, console.keys["acme"][Role.OPERATOR]) as c:
        shown = c.get(path).text
        assert f'action="{path}/trigger"' in shown and f'action="{path}/pause"' not in shown
        token = page_csrf(c, path)
        done = c.post(f"{path}/trigger", data={"csrf": token})
        assert done.status_code == 303 and done.headers["location"].startswith("/ui/runs/")
        run_id = done.headers["location"].rsplit("/", 1)[-1]
        assert c.get(done.headers["location"]).status_code == 200
        refused = c.post(f"{path}/pause", data={"csrf": token, "note": "r"})
        assert refused.status_code == 403 and "operator" in refused.text
    with sign_in(console.url, console.keys["acme"][Role.ADMIN]) as c:
        token = page_csrf(c, path)
        assert f'action="{path}/pause"' in c.get(path).text
        empty = c.post(f"{path}/pause", data={"csrf": token, "note": ""})
        assert empty.status_code == 422 and "note" in empty.text
        paused = c.post(f"{path}/pause", data={"csrf": token, "note": "vendor <b>down</b>"})
        assert paused.status_code == 303 and paused.headers["location"] == path
        shown = c.get(path).text
        assert 'id="paused"' in shown and "vendor &lt;b&gt;down&lt;/b&gt;" in shown
        assert f'action="{path}/resume"' in shown
        assert c.post(f"{path}/resume", data={"csrf": token}).status_code == 303
        assert 'id="paused"' not in c.get(path).text
    with console.as_("acme") as api:
        runs = api.get("/v1/runs").json()["items"]
        audit = api.get("/v1/audit").json()["items"]
        assert not api.get(f"/v1/schedules/{acme}").json()["paused"]
    assert [r["id"] for r in runs] == [run_id]
    actions = {a["action"]: a for a in audit}
    assert {"schedule.trigger", "schedule.pause", "schedule.resume"} <= set(actions)
    admin = console.keys["acme"][Role.ADMIN].split(".", 1)[0]
    assert actions["schedule.pause"]["actor"] == f"key:{admin}"


def test_a_viewer_may_not_post_and_a_tenant_not_touch_another_s(console: ApiSetup) -> None:
    acme = schedule(console, "acme", name="acme daily")
    globex = schedule(console, "globex", name="globex daily")
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        token = page_csrf(c, "/ui/schedules")
        for action in ("trigger", "pause", "resume"):
            refused = c.post(f"/ui/schedules/{acme}/{action}", data={"csrf": token, "note": "r"})
            assert refused.status_code == 403 and "viewer" in refused.text, action
    with sign_in(console.url, console.keys["acme"][Role.ADMIN]) as c:
        listed = c.get("/ui/schedules").text
        assert acme in listed and globex not in listed and "globex daily" not in listed
        other = c.get(f"/ui/schedules/{globex}")
        assert other.status_code == 404 and "globex daily" not in other.text
        token = page_csrf(c, "/ui/schedules")
        for action in ("trigger", "pause", "resume"):
            refused = c.post(f"/ui/schedules/{globex}/{action}", data={"csrf": token, "note": "r"})
            assert refused.status_code == 404, action
        assert c.post(f"/ui/schedules/{acme}/trigger").status_code == 403, "no CSRF token"
        assert c.get("/ui/schedules?tenant=globex").status_code == 403
        assert c.get(f"/ui/schedules/{'x' * 41}").status_code == 422
    with sign_in(console.url, console.platform_key) as c:
        listed = c.get("/ui/schedules?tenant=globex").text
        assert globex in listed and acme not in listed
    with console.as_("globex") as api:
        assert api.get("/v1/runs").json()["items"] == []
        assert not api.get(f"/v1/schedules/{globex}").json()["paused"]
    with console.as_("acme") as api:
        assert api.get("/v1/runs").json()["items"] == []


@pytest.fixture
def on_sqlite(sqlite_url: str) -> Iterator[ApiSetup]:
    """The backfill's store call has its own tests on both backends (test_schedules*)."""
    with api_setup(sqlite_url) as setup:
        yield setup


def test_backfill_previews_its_slots_then_makes_their_runs_once(on_sqlite: ApiSetup) -> None:
    console = on_sqlite
    every = schedule(console, "acme", name="often", cron=None, every="15m")
    path = f"/ui/schedules/{every}"
    now = datetime.now(UTC)
    span = {
        "start": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
        "end": now.strftime("%Y-%m-%dT%H:%M"),
    }
    with sign_in(console.url, console.keys["acme"][Role.VIEWER]) as c:
        assert 'id="backfill"' not in c.get(path).text
        refused = c.post(f"{path}/backfill", data={"csrf": page_csrf(c, path), **span})
        assert refused.status_code == 403
    with sign_in(console.url, console.keys["acme"][Role.OPERATOR]) as c:
        token = page_csrf(c, path)
        assert 'id="backfill"' in c.get(path).text
        preview = c.post(f"{path}/backfill", data={"csrf": token, **span})
        assert preview.status_code == 200 and "Backfill preview" in preview.text
        slots = preview.text.count('class="slot"')
        assert 4 <= slots <= 5 and 'id="confirm"' in preview.text
        assert console.app.store.runs.list_runs(RunFilter(tenant="acme")) == []
        done = c.post(f"{path}/backfill", data={"csrf": token, "dry_run": "false", **span})
        assert done.status_code == 200 and "Backfilled" in done.text
        made = console.app.store.runs.list_runs(RunFilter(tenant="acme"))
        assert len(made) == slots and all(f'href="/ui/runs/{r.id}"' in done.text for r in made)
        again = c.post(f"{path}/backfill", data={"csrf": token, **span})
        assert "<strong>0</strong> without a run" in again.text and 'id="confirm"' not in again.text
        late = {"start": span["end"], "end": span["start"]}
        assert c.post(f"{path}/backfill", data={"csrf": token, **late}).status_code == 422
    with sign_in(console.url, console.keys["globex"][Role.OPERATOR]) as c:
        other = c.post(f"{path}/backfill", data={"csrf": page_csrf(c), **span})
        assert other.status_code == 404
    audit = console.app.store.admin.audit_log(tenant="acme")
    assert [e.action for e in audit].count("schedule.backfill") == 1
