"""Every subscriber gets every event it wants, once as far as it can tell: on both backends, with
real `greenroom worker` processes SIGKILLed while they deliver, and a receiver that fails at
random (500s, answers later than the sender waits, connections closed or reset without an
answer) for a first phase, and most first attempts in it.

At the end, for every subscription: the distinct webhook-ids the receiver accepted (answered
200 at once) are exactly the events it should get, computed here from the `events` table and
the subscription's tenant, types and labels; every delivery row is `delivered`; the only
duplicates are webhook-ids accepted more than once (at least once, never a second id for an
event); and no request ever reached another tenant's subscription. The workers run with
default settings but for short run leases and polls, a 1 s delivery timeout and a retry
schedule of seconds (`delivery_retry_delays`) instead of Standard Webhooks' 5 s, 5 min, ….
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from standardwebhooks import Webhook

from greenroom import App, RunRequest, load_settings
from greenroom.crypto import load_keyring
from greenroom.delivery import subscriptions
from greenroom.delivery.address import AddressPolicy
from greenroom.delivery.schedule import RETRY_DELAYS, next_delay
from greenroom.demo.setup import register_tenant
from greenroom.model import Channel, Subscription
from greenroom.storage.subscriptions import SubscriptionSpec
from tests.apps.delivery_app import FAIL, OK, register
from tests.webhook_receiver import CLOSE, RESET, Answer, Hang, Receiver, Request, running_receiver

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
GREENROOM = Path(sys.executable).with_name("greenroom")
KEY = base64.b64encode(b"p" * 32).decode()
TIMEOUT = 1.0
#: Seconds before each attempt: enough attempts that none gives up within the failing phase.
DELAYS = "0,0.3,0.6,1,1.5,2,2,2,2,2,2,2,2,2"
WORKER_ENV = {
    "GREENROOM_LEASE_SECONDS": "2",
    "GREENROOM_HEARTBEAT_SECONDS": "0.5",
    "GREENROOM_POLL_SECONDS": "0.1",
    "GREENROOM_DELIVERY_TIMEOUT_SECONDS": str(TIMEOUT),
    "GREENROOM_DELIVERY_RETRY_DELAYS": DELAYS,
    "GREENROOM_DELIVERY_ALLOW_HTTP": "1",
    "GREENROOM_DELIVERY_ALLOW_PRIVATE": "1",
}


def test_the_retry_schedule_is_a_setting() -> None:
    assert load_settings().delivery_retry_delays == RETRY_DELAYS, "Standard Webhooks' schedule"
    assert load_settings(delivery_retry_delays="0, 0.5,2").delivery_retry_delays == (0, 0.5, 2)
    rng = random.Random(1)
    assert 0.45 <= (next_delay(1, None, rng, (0, 0.5)) or 0) <= 0.55
    assert next_delay(2, None, rng, (0, 0.5)) is None, "the schedule ended"
    with pytest.raises(Exception, match="negative"):
        load_settings(delivery_retry_delays="0,-1")


# -- the chaos --------------------------------------------------------------------------------


class Chaos:
    """The receiver's answers: until `until`, a first attempt fails with probability `first`
    and any other with `later`, in one of several ways; afterwards only a first attempt fails
    (at once, with a 5xx, as often), so that retries are exercised however late a loaded
    machine makes first attempts, and every retry succeeds."""

    def __init__(self, seed: int, first: float = 0.75, later: float = 0.3) -> None:
        self.rng = random.Random(seed)
        self.first, self.later = first, later
        self.until = float("inf")
        self.seen: set[tuple[str, str]] = set()
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def __call__(self, request: Request) -> Answer:
        key = (request.path, request.headers["webhook-id"])
        with self.lock:
            first = key not in self.seen
            self.seen.add(key)
            if time.monotonic() >= self.until:
                if not first or self.rng.random() >= self.first:
                    return 200
                answer: Answer = self.rng.choice([500, 503])
            elif self.rng.random() >= (self.first if first else self.later):
                return 200
            else:
                answer = self.rng.choice([500, 503, Hang(TIMEOUT * 1.5), CLOSE, RESET])
            self.counts[str(answer if not isinstance(answer, Hang) else "hang")] += 1
            return answer


# -- worker processes -------------------------------------------------------------------------


@dataclass
class Workers:
    """`greenroom worker` processes on one database; `close` ends whatever is still running."""

    db_url: str
    log_dir: Path
    env: dict[str, str]
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    #: Exit codes of workers that ended on their own (and were started again).
    exited: list[int] = field(default_factory=list)

    def start(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
        env.update(self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        log = (self.log_dir / f"worker-{len(self.started)}.log").open("wb")
        with log:
            proc = subprocess.Popen(
                [
                    str(GREENROOM),
                    "worker",
                    "--app",
                    "tests.apps.delivery_app:app",
                    "--db",
                    self.db_url,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.log_dir,
            )
        self.started.append(proc)
        return proc

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.started if p.poll() is None]

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.killed.append(proc.pid)

    def close(self) -> None:
        for proc in self.alive():
            proc.send_signal(signal.SIGTERM)
        for proc in self.started:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.log_dir.glob("worker-*.log"))
        )


def retrying(fn: Callable[[], T], attempts: int = 20) -> T:
    """The test's own database calls, through an outage of the database's connections."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


# -- the proof --------------------------------------------------------------------------------


@dataclass
class Proof:
    app: App
    receiver: Receiver
    workers: Workers
    chaos: Chaos
    subs: dict[str, tuple[Subscription, str]] = field(default_factory=dict)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            with self.app.store.backend.transaction(write=False) as tx:
                return [dict(r) for r in tx.execute(sql, params)]

        return retrying(run)

    def subscribe(self, name: str, tenant: str, types: list[str], **spec: Any) -> None:
        sub, secret = subscriptions.create(
            self.app.store,
            load_keyring(self.app.settings),
            AddressPolicy.of(self.app.settings),
            tenant=tenant,
            channel=Channel.WEBHOOK,
            spec=SubscriptionSpec(url=f"{self.receiver.url}/{name}", types=types, **spec),
            actor=f"admin@{tenant}",
        )
        assert secret is not None
        self.subs[f"/{name}"] = (sub, secret)

    def enqueue(self, batch: int, size: int) -> None:
        requests = [
            RunRequest(
                workflow=FAIL if i % 3 == 0 else OK,
                input={"i": batch * size + i},
                tenant="t1" if i % 2 == 0 else "t2",
                labels={"lane": "a" if i % 4 < 2 else "b"},
                idempotency_key=f"proof-{batch}-{i}",  # safe to enqueue again after an outage
            )
            for i in range(size)
        ]
        retrying(lambda: self.app.enqueue_many_sync(requests))

    def holding(self, pid: int) -> int:
        """Deliveries the worker process `pid` is sending now."""
        rows = self.query(
            "SELECT count(*) AS n FROM deliveries WHERE state = 'sending' AND leased_by LIKE :w",
            {"w": f"%-{pid}-%"},
        )
        return int(rows[0]["n"])

    def kill_while_sending(
        self, candidates: list[subprocess.Popen[bytes]], timeout: float = 10.0
    ) -> int:
        """SIGKILL the first of these workers seen holding deliveries in flight (the first
        one still alive if none does within `timeout`); how many it held."""
        deadline = time.monotonic() + timeout
        alive = [p for p in candidates if p.poll() is None]
        while True:
            for proc in alive:
                if held := self.holding(proc.pid):
                    self.workers.kill(proc)
                    return held
            if time.monotonic() > deadline:
                self.workers.kill(alive[0])
                return 0
            time.sleep(0.02)

    def expected(self) -> dict[str, set[str]]:
        """Path -> the webhook-ids its subscription should get, from the events table."""
        events = self.query("SELECT id, tenant, type, payload, occurred_at FROM events")
        wanted: dict[str, set[str]] = {}
        for path, (sub, _) in self.subs.items():
            wanted[path] = {
                f"evt_{e['id']}"
                for e in events
                if e["tenant"] == sub.tenant
                and e["occurred_at"] >= sub.created_at
                and _type_wanted(sub.types, e["type"])
                and _labels_wanted(sub.labels, _payload(e["payload"]))
            }
        return wanted

    def done(self) -> bool:
        open_ = self.query(
            "SELECT count(*) AS n FROM deliveries WHERE state IN ('pending', 'sending')"
        )
        if open_[0]["n"]:
            return False
        unsettled = self.query(
            "SELECT count(*) AS n FROM runs WHERE state NOT IN ('succeeded', 'failed')"
        )
        if unsettled[0]["n"]:
            return False
        expected = self.expected()
        return all(set(self.receiver.accepted_ids(p)) >= ids for p, ids in expected.items())


def _payload(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else dict(json.loads(value))


def _type_wanted(types: list[str], event_type: str) -> bool:
    return any(
        t in ("*", event_type) or (t.endswith(".*") and event_type.startswith(t[:-1]))
        for t in types
    )


def _labels_wanted(labels: dict[str, str], payload: dict[str, Any]) -> bool:
    have = payload.get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


@contextlib.contextmanager
def proof_setup(db_url: str, tmp_path: Path, seed: int) -> Iterator[Proof]:
    env = dict(WORKER_ENV)
    settings: dict[str, Any] = {
        "delivery_enabled": False,
        "delivery_allow_http": True,
        "delivery_allow_private": True,
    }
    if db_url.startswith("postgresql"):
        env["GREENROOM_SECRET_KEY"] = KEY  # SQLite: the key file beside the database
        settings["secret_key"] = KEY
    app = register(App(db=db_url, settings=load_settings(db=db_url, **settings)))
    app.store.runs.count_by_state()  # migrate now, before workers race to do it
    for tenant in ("t1", "t2"):
        register_tenant(app.store, tenant)
    workers = Workers(db_url, tmp_path, env)
    chaos = Chaos(seed)
    try:
        with running_receiver() as receiver:
            receiver.answer = chaos
            yield Proof(app, receiver, workers, chaos)
    finally:
        workers.close()
        app.close()


def wait_registered(proof: Proof, procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pids = {p.pid for p in procs}
    while True:
        for p in procs:
            assert p.poll() is None, f"worker {p.pid} exited:\n{proof.workers.logs()}"
        seen = {w.pid for w in retrying(proof.app.store.runs.workers)}
        if pids <= seen:
            return
        assert time.monotonic() < deadline, f"workers not registered:\n{proof.workers.logs()}"
        time.sleep(0.05)


def run_proof(
    proof: Proof,
    *,
    batches: int = 10,
    size: int = 30,
    chaos_after: float = 2.0,
    between: Callable[[int], None] = lambda batch: None,
) -> None:
    """Subscribe, start 3 workers, enqueue runs in batches while the receiver fails (until
    `chaos_after` seconds after the last batch) and two workers are killed mid-delivery (and
    replaced); then check what every subscriber got."""
    proof.subscribe("t1-all", "t1", ["run.*"])
    proof.subscribe("t1-failed", "t1", ["run.failed"])
    proof.subscribe("t1-lane-a", "t1", ["run.succeeded", "run.failed"], labels={"lane": "a"})
    proof.subscribe("t2-all", "t2", ["*"])
    proof.subscribe("t2-succeeded", "t2", ["run.succeeded"])
    first = [proof.workers.start() for _ in range(3)]
    wait_registered(proof, first, timeout=30)

    started = time.monotonic()
    held = []
    for batch in range(batches):
        proof.enqueue(batch, size)
        between(batch)
        if batch in (3, 7):  # kill one of the first workers while it sends, start another
            held.append(proof.kill_while_sending(first))
            proof.workers.start()
        time.sleep(0.3)
    enqueued = time.monotonic() - started
    proof.chaos.until = time.monotonic() + chaos_after

    deadline = time.monotonic() + 90
    while not proof.done():
        for proc in proof.workers.started:  # a supervisor would restart a worker that exited
            if proc.poll() is not None and proc.pid not in proof.workers.killed:
                proof.workers.killed.append(proc.pid)
                proof.workers.exited.append(proc.returncode)
                proof.workers.start()
        if time.monotonic() > deadline:
            states = proof.query("SELECT state, count(*) AS n FROM deliveries GROUP BY state")
            raise AssertionError(f"not delivered within 90 s: {states}\n{proof.workers.logs()}")
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    check(proof, held=held, enqueued=enqueued, elapsed=elapsed)


def check(proof: Proof, *, held: list[int], enqueued: float, elapsed: float) -> None:
    expected = proof.expected()
    rows = proof.query("SELECT subscription_id, event_id, state, attempts FROM deliveries")
    events = {r["id"]: r for r in proof.query("SELECT id, tenant FROM events")}
    by_id = {sub.id: path for path, (sub, _) in proof.subs.items()}
    assert not [r for r in rows if r["state"] != "delivered"], "every delivery is delivered"
    lines = []
    truncated = 0
    for path, (sub, secret) in proof.subs.items():
        ids = expected[path]
        made = {f"evt_{r['event_id']}" for r in rows if by_id[r["subscription_id"]] == path}
        assert made == ids, f"{path}: one delivery per event it wants"
        accepted = proof.receiver.accepted_ids(path)
        assert set(accepted) == ids, f"{path}: every event it wants, and only those"
        received = proof.receiver.received(path)
        for request in received:  # any request at all, accepted or not
            event_id = int(request.headers["webhook-id"].removeprefix("evt_"))
            assert events[event_id]["tenant"] == sub.tenant, f"{path} got another tenant's event"
            if not request.complete:  # the sender was killed or gave up while sending it
                truncated += 1
                continue
            data = request.json()["data"]
            assert data["event_id"] == event_id, "one webhook-id per event, the event's"
            assert data["tenant"] == sub.tenant, f"{path} of {sub.tenant} got {data['tenant']}'s"
        for request in proof.receiver.accepted:
            if request.path == path:
                Webhook(secret).verify(request.body, request.headers)
        lines.append(
            f"{path}: {len(ids)} events, {len(received)} requests, accepted"
            f" {len(accepted)} total / {len(set(accepted))} distinct"
        )
    assert all(ids for ids in expected.values()), "every subscription had events to get"
    attempts = Counter(r["attempts"] for r in rows)
    retried = sum(n for a, n in attempts.items() if a > 1)
    total = len(proof.receiver.accepted_ids())
    distinct = len({(r.path, r.headers["webhook-id"]) for r in proof.receiver.accepted})
    print(
        f"\n{len(rows)} deliveries of {len(events)} events in {elapsed:.1f} s (enqueued in"
        f" {enqueued:.1f} s); accepted {total} total / {distinct} distinct;"
        f" {len(proof.receiver.received())} requests ({truncated} cut short); failures injected"
        f" {dict(proof.chaos.counts)}; attempts per delivery {dict(sorted(attempts.items()))};"
        f" killed workers held {held} deliveries in flight; workers that exited on their own:"
        f" {proof.workers.exited}\n" + "\n".join(lines)
    )
    assert retried >= len(rows) // 5, "retries were exercised"
    assert all(held), "each killed worker was sending"
    disabled = proof.query("SELECT id FROM subscriptions WHERE NOT enabled")
    assert not disabled, "no endpoint was disabled"


@pytest.mark.timeout(240)
def test_every_subscriber_gets_every_event_it_wants_through_failures_and_kills(
    db_url: str, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    with proof_setup(db_url, tmp_path, seed) as proof:
        run_proof(proof)


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_nothing_is_lost_when_the_database_drops_every_connection(
    pg_url: str, tmp_path: Path
) -> None:
    """The same, while every connection to the database but the test's is terminated three
    times (as a failover or a restart of PostgreSQL would)."""
    import psycopg

    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    terminated: list[int] = []

    def outage(batch: int) -> None:
        if batch not in (2, 5, 8):
            return
        with psycopg.connect(pg_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname ="
                " current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        terminated.append(len(rows))

    with proof_setup(pg_url, tmp_path, seed) as proof:
        run_proof(proof, between=outage)
    print(f"connections terminated: {terminated}")
    assert all(terminated)
