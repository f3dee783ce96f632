"""Event delivery as users run it: `greenroom worker` processes (default settings but
GREENROOM_DELIVERY_ALLOW_HTTP/ALLOW_PRIVATE, to reach 127.0.0.1) delivering webhooks to a fast
receiver in its own process (bench/delivery_receiver.py: asyncio on uvloop, answers 200 at once,
stamps every request with `time.time()` when it is whole). Fresh database per round; medians of
the rounds.

- throughput: N events committed first (written through the store's outbox, batches of 1,000),
  4 webhook subscriptions (2 per tenant, default max_in_flight of 10; --per-tenant and
  --max-in-flight change them), so 2 x N deliveries; then
  2 workers are spawned. Rate at the receiver, first to last request (`receiver_per_s`), and from
  spawn to the last request (`from_spawn_per_s`, start-up and fan-out included); duplicates are
  requests beyond one per delivery.
- lag: 2 workers up and idle (registered, then 1.5 s); events committed one at a time every
  50 ms for 1 subscription; lag = the request's arrival at the receiver - the moment the event's
  commit returned, split at the delivery row's `created_at` (when fan-out made it).
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import benchlib

from greenroom import App, load_settings
from greenroom.crypto import load_keyring
from greenroom.delivery import subscriptions
from greenroom.delivery.address import AddressPolicy
from greenroom.demo.setup import register_tenant
from greenroom.model import Channel
from greenroom.storage.outbox import NewEvent, emit
from greenroom.storage.subscriptions import SubscriptionSpec

HERE = Path(__file__).resolve().parent
GREENROOM = Path(sys.executable).with_name("greenroom")
KEY = base64.b64encode(b"b" * 32).decode()


class Bench:
    """One database, a receiver process and the worker processes started on it."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url = url
        self.tmp = tmp
        self.pg = benchlib.backend_name(url) == "postgresql"
        settings: dict[str, Any] = {"delivery_allow_http": True, "delivery_allow_private": True}
        if self.pg:
            settings["secret_key"] = KEY  # SQLite: the key file beside the database
        self.app = App(db=url, settings=load_settings(db=url, **settings))
        self.app.store.runs.count_by_state()  # migrate before any worker starts
        for tenant in ("t1", "t2"):
            register_tenant(self.app.store, tenant)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.received = tmp / "received.txt"
        self.receiver = subprocess.Popen(
            [sys.executable, str(HERE / "delivery_receiver.py"), str(self.received)],
            stdout=subprocess.PIPE,
        )
        assert self.receiver.stdout is not None
        self.port = int(self.receiver.stdout.readline())

    def subscribe(self, tenant: str, name: str, max_in_flight: int | None = None) -> None:
        subscriptions.create(
            self.app.store,
            load_keyring(self.app.settings),
            AddressPolicy.of(self.app.settings),
            tenant=tenant,
            channel=Channel.WEBHOOK,
            spec=SubscriptionSpec(
                url=f"http://127.0.0.1:{self.port}/{name}",
                types=["run.*"],
                max_in_flight=max_in_flight,
            ),
            actor=f"admin@{tenant}",
        )

    def worker(self) -> subprocess.Popen[bytes]:
        """`greenroom worker`, default settings but the two ALLOW_* (and the key on
        PostgreSQL); its output goes to a log file."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
        env.update(GREENROOM_DELIVERY_ALLOW_HTTP="1", GREENROOM_DELIVERY_ALLOW_PRIVATE="1")
        if self.pg:
            env["GREENROOM_SECRET_KEY"] = KEY
        path = [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
        env["PYTHONPATH"] = os.pathsep.join(path)
        with (self.tmp / f"worker-{len(self.procs)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [str(GREENROOM), "worker", "--app", "worker_app:app", "--db", self.url],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.tmp,
            )
        self.procs.append(proc)
        return proc

    def ready(self) -> None:
        """Wait until every worker started has registered."""
        pids = {p.pid for p in self.procs}
        deadline = time.monotonic() + 60
        while not pids <= {w.pid for w in self.app.store.runs.workers()}:
            if time.monotonic() > deadline:
                raise SystemExit(f"workers not registered within 60 s (see {self.tmp})")
            time.sleep(0.05)

    def commit(self, events: list[NewEvent]) -> float:
        """Write these events in one transaction; the time its commit returned."""
        with self.app.store.backend.transaction() as tx:
            emit(tx, self.app.store.backend, events, time.time())
        return time.time()

    def requests(self) -> list[tuple[float, str, str]]:
        """(arrival, path, webhook-id) of every request the receiver recorded so far."""
        if not self.received.exists():
            return []
        out = []
        for line in self.received.read_text().splitlines():
            t, path, webhook_id = line.split(" ")
            out.append((float(t), path, webhook_id))
        return out

    def query(self, sql: str) -> list[dict[str, Any]]:
        with self.app.store.backend.transaction(write=False) as tx:
            return [dict(r) for r in tx.execute(sql)]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.receiver.send_signal(signal.SIGTERM)
        self.receiver.wait(timeout=10)
        self.app.close()


@contextlib.contextmanager
def bench(db: str, label: str) -> Iterator[Bench]:
    with benchlib.fresh_database(db, label) as url, tempfile.TemporaryDirectory() as tmp:
        b = Bench(url, Path(tmp))
        try:
            yield b
        finally:
            b.close()


def event(tenant: str, i: int) -> NewEvent:
    payload = {"run_id": f"bench-{i}", "workflow": "bench.one_step", "i": i, "labels": {}}
    return NewEvent(tenant, "run.succeeded", f"run:bench-{i}", payload)


def throughput(
    db: str, events: int, timeout: float, per_tenant: int, max_in_flight: int | None
) -> dict[str, Any]:
    with bench(db, "deliveries") as b:
        for tenant in ("t1", "t2"):
            for n in range(per_tenant):
                b.subscribe(tenant, f"{tenant}-{n}", max_in_flight)
        for start in range(0, events, 1000):
            b.commit([event("t1" if i % 2 else "t2", i) for i in range(start, start + 1000)])
        wanted = events * per_tenant
        spawned = time.time()
        b.worker()
        b.worker()
        deadline = time.monotonic() + timeout
        while True:
            got = b.requests()
            if len({(p, w) for _, p, w in got}) >= wanted or time.monotonic() > deadline:
                break
            if not got and time.time() - spawned > 30:
                raise SystemExit(f"nothing received 30 s after spawn (see {b.tmp})")
            time.sleep(0.1)
        cpu = sum(_cpu_seconds(p.pid) for p in b.procs)
        times = sorted(t for t, _, _ in got)
        distinct = len({(p, w) for _, p, w in got})
        states = b.query("SELECT state, count(*) AS n FROM deliveries GROUP BY state")
        window = times[-1] - times[0] if len(times) > 1 else float("nan")
        # busiest second at the receiver
        per_second = Counter(int(t) for t in times)
        return {
            "deliveries": wanted,
            "received": len(got),
            "distinct": distinct,
            "timed_out": distinct < wanted,
            "receiver_per_s": round(len(times) / window) if window == window else None,
            "from_spawn_per_s": round(len(times) / (times[-1] - spawned)) if times else None,
            "best_second": max(per_second.values()) if per_second else 0,
            "first_request_after_spawn_s": round(times[0] - spawned, 3) if times else None,
            # CPU the workers used (start-up included) per request: steadier than the rate when
            # the machine is shared
            "worker_cpu_ms_per_request": round(cpu * 1000 / len(times), 3) if times else None,
            "delivery_states": {r["state"]: r["n"] for r in states},
            "server": benchlib.server_version(b.url),
        }


def _cpu_seconds(pid: int) -> float:
    """User and system CPU of a running process so far (Linux's /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lag(db: str, count: int, interval: float) -> dict[str, Any]:
    with bench(db, "deliverylag") as b:
        b.subscribe("t1", "lag")
        b.worker()
        b.worker()
        b.ready()
        time.sleep(1.5)
        committed: dict[int, float] = {}
        next_at = time.monotonic()
        for i in range(count):
            committed[i] = b.commit([event("t1", i)])
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        ids = {r["id"]: r["i"] for r in _event_numbers(b)}
        deadline = time.monotonic() + 30
        while True:
            got = [(t, w) for t, p, w in b.requests() if p == "/lag"]
            first: dict[int, float] = {}
            for t, w in got:
                i = ids.get(int(w.removeprefix("evt_")))
                if i is not None and i in committed:
                    first[i] = min(t, first.get(i, t))
            if len(first) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        lags = [first[i] - committed[i] for i in first]
        made = {
            ids[r["event_id"]]: float(r["created_at"])
            for r in _fanned_out(b)
            if r["event_id"] in ids
        }
        fanned = [made[i] - committed[i] for i in first if i in made]
        sent = [first[i] - made[i] for i in first if i in made]
        return {
            "events": count,
            "arrived": len(first),
            "lag_ms": benchlib.summary(benchlib.ms(lags), 1),
            # the delivery row's created_at: when fan-out made it (its transaction's clock)
            "commit_to_fan_out_ms": benchlib.summary(benchlib.ms(fanned), 1),
            "fan_out_to_arrival_ms": benchlib.summary(benchlib.ms(sent), 1),
        }


def _fanned_out(b: Bench) -> list[dict[str, Any]]:
    return b.query("SELECT event_id, created_at FROM deliveries")


def _event_numbers(b: Bench) -> list[dict[str, Any]]:
    """Event id -> the number `i` in its payload."""
    import json

    rows = b.query("SELECT id, payload FROM events WHERE type = 'run.succeeded'")
    out = []
    for r in rows:
        payload = r["payload"] if isinstance(r["payload"], dict) else json.loads(r["payload"])
        if "i" in payload and str(payload.get("run_id", "")).startswith("bench-"):
            out.append({"id": r["id"], "i": payload["i"]})
    return out


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument("--events", type=int, default=5000, help="events for the throughput rounds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lag-events", type=int, default=200)
    p.add_argument("--interval", type=float, default=0.05, help="seconds between lag events")
    p.add_argument("--timeout", type=float, default=120.0, help="give up a round after this")
    p.add_argument("--only", choices=["throughput", "lag"], default=None)
    p.add_argument(
        "--per-tenant", type=int, default=2, help="throughput: subscriptions in each of 2 tenants"
    )
    p.add_argument(
        "--max-in-flight", type=int, default=None, help="throughput: the subscriptions' limit"
    )
    args = p.parse_args()
    benchlib.quiet_logs()
    result: dict[str, Any] = {
        "benchmark": "deliveries",
        "backend": benchlib.backend_name(args.db),
        "machine": benchlib.machine(),
        "load_before": os.getloadavg()[0],
    }
    if args.only in (None, "throughput"):
        rounds = [
            throughput(args.db, args.events, args.timeout, args.per_tenant, args.max_in_flight)
            for _ in range(args.rounds)
        ]
        result["server"] = rounds[0].pop("server")
        for r in rounds[1:]:
            r.pop("server")
        result["throughput"] = {
            "events": args.events,
            "subscriptions": 2 * args.per_tenant,
            "max_in_flight": args.max_in_flight or "default (10)",
            "receiver_per_s": statistics.median(r["receiver_per_s"] or 0 for r in rounds),
            "from_spawn_per_s": statistics.median(r["from_spawn_per_s"] or 0 for r in rounds),
            "worker_cpu_ms_per_request": statistics.median(
                r["worker_cpu_ms_per_request"] or 0 for r in rounds
            ),
            "rounds": rounds,
        }
    if args.only in (None, "lag"):
        rounds = [lag(args.db, args.lag_events, args.interval) for _ in range(args.rounds)]
        result["lag"] = {
            "p50_ms": statistics.median(r["lag_ms"]["p50"] for r in rounds),
            "p99_ms": statistics.median(r["lag_ms"]["p99"] for r in rounds),
            "rounds": rounds,
        }
    result["load_after"] = os.getloadavg()[0]
    benchlib.emit(result)


if __name__ == "__main__":
    main()
