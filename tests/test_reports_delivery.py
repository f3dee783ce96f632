"""Reports delivered once per period, counted by the receivers: a real SMTP server (aiosmtpd)
and a webhook receiver on 127.0.0.1. The same period made three times (twice by hand, once by
its schedule) reaches each subscriber once; an admin's resend reaches each once more; a worker
SIGKILLed in the middle of a report leaves exactly one delivery too."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from greenroom import App
from greenroom.crypto import load_keyring
from greenroom.delivery.address import AddressPolicy
from greenroom.demo.setup import register_tenant
from greenroom.model import Channel
from greenroom.reports import service
from greenroom.reports.period import PeriodKind, last_complete
from greenroom.reports.service import Destination, Subscribed
from greenroom.reports.workflows import REPORT_WORKFLOW, add_reports
from greenroom.schedules.service import preparer
from tests.helpers import fast_app, wait_for_states, worker_running
from tests.test_delivery import delivered, until
from tests.test_delivery_email import Recorder, Server, _serve
from tests.webhook_receiver import Receiver, running_receiver

KEY = base64.b64encode(b"r" * 32).decode()
ROOT = Path(__file__).resolve().parent.parent
GREENROOM = Path(sys.executable).parent / "greenroom"


def settings(smtp: Server) -> dict[str, object]:
    return {
        "secret_key": KEY,
        "delivery_allow_http": True,
        "delivery_allow_private": True,
        "delivery_timeout_seconds": 2.0,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_security": "none",
        "smtp_from": "reports@example.com",
        "public_url": "https://greenroom.example.com",
    }


@pytest.fixture
def smtp() -> Iterator[Server]:
    yield from _serve(Recorder())


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def subscribe(app: App, smtp_to: str, hook: str) -> Subscribed:
    register_tenant(app.store, "t1")
    return service.subscribe(
        app,
        load_keyring(app.settings),
        AddressPolicy.of(app.settings),
        tenant="t1",
        report_type="health",
        period="week",
        timezone="Europe/Berlin",
        destinations=[
            Destination(channel=Channel.EMAIL, url=smtp_to),
            Destination(channel=Channel.WEBHOOK, url=hook),
        ],
        actor="admin@t1",
    )


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


async def test_a_period_made_three_times_reaches_each_subscriber_once(
    db_url: str, smtp: Server, receiver: Receiver
) -> None:
    app = fast_app(db_url, delivery_enabled=True, **settings(smtp))
    add_reports(app)
    try:
        made = subscribe(app, "ops@t1.example", f"{receiver.url}/reports")
        (secret,) = made.secrets.values()
        assert app.store.controls.queue_settings()["reports"].concurrency == 4
        at = now_iso()
        async with worker_running(app, queues=["reports"]):
            runs = [
                await app.enqueue(
                    REPORT_WORKFLOW,
                    {
                        "report_type": "health",
                        "period": "week",
                        "timezone": "Europe/Berlin",
                        "at": at,
                    },
                    tenant="t1",
                    idempotency_key=f"by-hand-{n}",
                )
                for n in range(2)
            ]
            runs.append(
                app.store.schedules.trigger(
                    made.subscription.schedule_id, preparer(app), actor="admin@t1", tenant="t1"
                )
            )
            done = await wait_for_states(app.store, [r.id for r in runs])
            assert {r.state.value for r in done} == {"succeeded"}
            assert len({r.output["report_id"] for r in done}) == 1  # type: ignore[index]
            await until(lambda: len(delivered(app)) == 2)
            await asyncio.sleep(0.5)  # time for a second delivery, were there one
            assert len(smtp.handler.mails) == 1 and len(receiver.received("/reports")) == 1

            report_id = done[0].output["report_id"]  # type: ignore[index]
            app.store.reports.resend(report_id, actor="ops", reason="data fixed", tenant="t1")
            await until(lambda: len(delivered(app)) == 4)
        assert len(smtp.handler.mails) == 2 and len(receiver.received("/reports")) == 2
    finally:
        app.close()
    mail = smtp.handler.parsed(0)
    assert mail["Subject"] == (
        f"greenroom: The health report of the week of {_monday(at)} is ready"
    )
    html = mail.get_body(("html",))
    assert html is not None and "Automation health" in html.get_content()
    attached = sorted(p.get_filename() or "" for p in mail.iter_attachments())
    assert attached == ["health-failures.csv", "health-integrations.csv", "health.pdf"]
    request = receiver.received("/reports")[0]
    body = Webhook(secret).verify(request.body, request.headers)
    assert body["type"] == "report.ready" and body["data"]["report_id"] == report_id
    assert body["data"]["url"] == f"https://greenroom.example.com/v1/reports/{report_id}"
    assert receiver.received("/reports")[1].json()["data"]["resend"] is True


def _monday(iso: str) -> str:
    moment = datetime.fromisoformat(iso).timestamp()
    return last_complete(PeriodKind.WEEK, moment, "Europe/Berlin").first.isoformat()


def _start_worker(db_url: str, smtp: Server, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "GREENROOM_SECRET_KEY": KEY,
        "GREENROOM_SMTP_HOST": "127.0.0.1",
        "GREENROOM_SMTP_PORT": str(smtp.port),
        "GREENROOM_SMTP_SECURITY": "none",
        "GREENROOM_SMTP_FROM": "reports@example.com",
        "GREENROOM_DELIVERY_ALLOW_HTTP": "1",
        "GREENROOM_DELIVERY_ALLOW_PRIVATE": "1",
        "GREENROOM_LEASE_SECONDS": "2",
        "GREENROOM_HEARTBEAT_SECONDS": "0.5",
        "GREENROOM_POLL_SECONDS": "0.05",
        "GREENROOM_SCHEDULES_ENABLED": "0",
        "GREENROOM_LICENSES_ENABLED": "0",
    }
    argv = [str(GREENROOM), "worker", "--app", "tests.apps.reports_app:app", "--db", db_url]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*argv, "--queues", "reports"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log.parent,
        )


@pytest.mark.postgres
async def test_a_worker_killed_in_the_middle_of_a_report_leaves_one_delivery(
    pg_url: str, smtp: Server, receiver: Receiver, tmp_path: Path
) -> None:
    app = fast_app(pg_url, **settings(smtp))
    add_reports(app)
    workers: list[subprocess.Popen[bytes]] = []

    def logs() -> str:
        return "\n".join(p.read_text()[-2000:] for p in sorted(tmp_path.glob("*.log")))

    try:
        subscribe(app, "ops@t1.example", f"{receiver.url}/reports")
        backend = app.store.backend
        # The reports table held by the test: the worker's report gathers, then waits to be
        # saved, in the middle of its run, where it is killed.
        with backend.transaction() as held:
            held.execute("LOCK TABLE reports IN EXCLUSIVE MODE")
            workers.append(_start_worker(pg_url, smtp, tmp_path / "a.log"))
            run = await app.enqueue(
                REPORT_WORKFLOW, {"report_type": "health", "at": now_iso()}, tenant="t1"
            )

            def waiting() -> bool:
                with backend.transaction(write=False) as tx:
                    rows = tx.execute(
                        "SELECT count(*) AS n FROM pg_locks"
                        " WHERE relation = 'reports'::regclass AND NOT granted"
                    )
                return bool(rows[0]["n"])

            await until(waiting, timeout=60)
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait()
        workers.append(_start_worker(pg_url, smtp, tmp_path / "b.log"))
        (done,) = await wait_for_states(app.store, [run.id], timeout=60)
        assert done.state.value == "succeeded", logs()
        assert done.stalls == 1, "its worker was lost mid-run and another resumed it"
        try:
            await until(lambda: len(delivered(app)) == 2, timeout=60)
        except AssertionError:
            raise AssertionError(f"not delivered: {delivered(app)}\n{logs()}") from None
        await asyncio.sleep(0.5)
        assert len(smtp.handler.mails) == 1 and len(receiver.received("/reports")) == 1
        (report,) = app.store.reports.list_reports(tenant="t1")[0]
        assert report.published == 1
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=15)
        app.close()
