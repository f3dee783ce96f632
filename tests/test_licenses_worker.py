"""ctx.save_accounts in real runs on real workers (SQLite and PostgreSQL): pages saved as they
come, a retried step saving its page again without counting it twice, a complete sync removing
who it did not list, and bad rows or a run without an integration failing clearly."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import fast_app, wait_for_states, worker_running

from greenroom import App, RetryPolicy, RunContext, RunState, step
from greenroom.crypto import load_keyring
from greenroom.demo.setup import register_tenant
from greenroom.integrations import create
from greenroom.metrics import REGISTRY
from greenroom.storage import RunStore
from greenroom.storage.findings import FindingFilter

TENANT = "acme"
FAILED_ONCE: set[int] = set()


def rows(first: int, last: int) -> list[dict[str, Any]]:
    return [
        {"user_id": f"u{i}", "unit_cost": 10, "currency": "EUR", "last_active": "2026-11-30"}
        for i in range(first, last)
    ]


@step(retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
async def save_page(ctx: RunContext, number: int, last: bool) -> int:
    await ctx.save_accounts(rows(number * 50, number * 50 + 50), complete=last)
    if last and number not in FAILED_ONCE:
        FAILED_ONCE.add(number)  # the page is saved, then the step fails: it runs again
        raise ConnectionError("the app dropped the connection")
    return number


@pytest.fixture
def app(db_url: str) -> Iterator[App]:
    FAILED_ONCE.clear()
    a = fast_app(db_url, secret_key=base64.b64encode(os.urandom(32)).decode())
    crm = a.connector("crm")

    @a.workflow(name="crm.sync", connector=crm)
    async def sync(ctx: RunContext, pages: int) -> int:
        return sum([await save_page(ctx, n, n == pages - 1) for n in range(pages)])

    @a.workflow(name="crm.bad", connector=crm)
    async def bad(ctx: RunContext) -> None:
        await ctx.save_accounts([*rows(0, 3), {"user_id": "x", "currency": "XXX"}])

    @a.workflow(name="loose")
    async def loose(ctx: RunContext) -> None:
        await ctx.save_accounts(rows(0, 1))

    register_tenant(a.store, TENANT)
    yield a
    a.close()


def integration(app: App) -> str:
    ring = load_keyring(app.settings)
    made = create(
        app.store.accounts,
        ring,
        app.connectors["crm"],
        tenant=TENANT,
        name="crm",
        credentials={},
        settings={},
        actor="op",
    )
    return made.id


def accounts(store: RunStore) -> dict[str, Any]:
    with store.backend.transaction(write=False) as tx:
        return {
            r["user_id"]: r
            for r in tx.execute("SELECT * FROM licenses WHERE tenant = :t", {"t": TENANT})
        }


async def test_a_sync_saves_its_pages_once_and_removes_who_it_no_longer_lists(app: App) -> None:
    crm = integration(app)
    async with worker_running(app):
        first = await app.enqueue("crm.sync", {"pages": 3}, tenant=TENANT, integration=crm)
        (done,) = await wait_for_states(app.store, [first.id])
        assert done.state is RunState.SUCCEEDED, done.error
        saved = accounts(app.store)
        assert len(saved) == 150 and all(r["removed_at"] is None for r in saved.values())
        assert {r["activity_day"] for r in saved.values()} == {20787}, "one active day each"
        FAILED_ONCE.clear()
        second = await app.enqueue("crm.sync", {"pages": 2}, tenant=TENANT, integration=crm)
        (done,) = await wait_for_states(app.store, [second.id])
    assert done.state is RunState.SUCCEEDED
    after = accounts(app.store)
    assert sorted(u for u, r in after.items() if r["removed_at"] is not None) == sorted(
        f"u{i}" for i in range(100, 150)
    ), "the complete sync removed only who it did not list"
    assert all(after[f"u{i}"]["sync_id"] == second.id for i in range(100))


async def test_bad_rows_fail_the_run_for_good_and_save_nothing(app: App) -> None:
    crm = integration(app)
    async with worker_running(app):
        run = await app.enqueue("crm.bad", tenant=TENANT, integration=crm)
        (done,) = await wait_for_states(app.store, [run.id])
    assert done.state is RunState.FAILED and done.attempt == 1
    message = str((done.error or {}).get("message"))
    assert "accounts[3].currency" in message and "accounts[3]" in message
    assert accounts(app.store) == {}


async def test_a_run_without_an_integration_cannot_save_accounts(app: App) -> None:
    async with worker_running(app):
        run = await app.enqueue("loose", tenant=TENANT)
        (done,) = await wait_for_states(app.store, [run.id])
    assert done.state is RunState.FAILED
    assert "not started for an integration" in str((done.error or {}).get("message"))


async def test_the_workers_license_loop_judges_what_a_sync_saved(db_url: str) -> None:
    """A finding follows its sync within the loop's interval, made by a worker's side loop."""
    a = fast_app(
        db_url,
        secret_key=base64.b64encode(os.urandom(32)).decode(),
        licenses_enabled=True,
        license_pass_seconds=0.1,
    )
    crm = a.connector("crm")

    @a.workflow(name="crm.sync", connector=crm)
    async def sync(ctx: RunContext) -> None:
        stale = [{**row, "last_active": "2025-01-01"} for row in rows(0, 5)]
        await ctx.save_accounts(stale, complete=True)

    judged = "greenroom_licenses_judged_total"
    judged_before = REGISTRY.get_sample_value(judged) or 0
    try:
        register_tenant(a.store, TENANT)
        async with worker_running(a):
            run = await a.enqueue("crm.sync", tenant=TENANT, integration=integration(a))
            await wait_for_states(a.store, [run.id])
            deadline = time.monotonic() + 10
            while {r["verdict"] for r in accounts(a.store).values()} != {"idle"}:
                assert time.monotonic() < deadline, "the loop judged nothing"
                await asyncio.sleep(0.05)
        found, _ = a.store.findings.list_findings(FindingFilter(tenant=TENANT))
        assert len(found) == 5 and {f.verdict for f in found} == {"idle"}
        assert (REGISTRY.get_sample_value(judged) or 0) - judged_before >= 5
        assert REGISTRY.get_sample_value("greenroom_license_pass_duration_seconds_count")
    finally:
        a.close()
