"""Schedules at scale on PostgreSQL: N schedules (default 120,000 = 400 tenants x 300) every 15
minutes, their phases spread evenly over the 15 minutes (N / 900 firings/s: ~133/s), fired by 2
`greenroom worker --app worker_app:app` processes with default settings (as user_config.py starts
them). Prints one JSON object.

The schedules are inserted in bulk (COPY) in the shape `store.schedules.create` writes, waiting
(next_due NULL); once the workers are up and a quiet phase has been measured, one UPDATE gives
each its first slot at or after t0 (a few seconds ahead), so firing starts at once and goes on at
an even rate. Phases:

- quiet (`--quiet` s): the workers are up, no schedule is due; a stream of ordinary `bench.stamp`
  runs (`--stamps` per second, enqueued from this process) measures enqueue→start.
- firing (`--window` s from t0): the same stream, while the schedules fire.

Measured:
- lag: per slot in the window, the run's `created_at` (the `now` of the firing round, taken
  before its transaction) minus the slot; and `visible`: when a poller in this process (every
  `--poll` s) first saw the run committed, minus the slot (an upper bound by one poll interval).
- CPU seconds per minute, quiet and firing, of the worker processes, of the PostgreSQL backends
  connected to this run's database, and of the whole server (every `postgres` process: other
  databases' load included), from /proc/PID/stat; the 1-minute load average beside them.
- enqueue→start of the ordinary runs (workflow start minus the enqueue call), quiet vs firing.

`--same-slot`: every schedule shares one slot (as cron */15 would), fired at t0; reports the lag
of each (from `created_at` only: no poller) and how long until the last fired (bounded by how fast
the rounds enqueue).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib
import worker_app

from greenroom import RunRequest
from greenroom.demo.setup import register_tenant

HERE = Path(__file__).resolve().parent
GREENROOM = Path(sys.executable).with_name("greenroom")
PERIOD = 900.0
TICKS = os.sysconf("SC_CLK_TCK")

_COLUMNS = (
    "id, tenant, name, workflow, integration, cron, every_seconds, phase_seconds, timezone,"
    " start_at, end_at, jitter_seconds, input, labels, overlap, catchup_seconds, paused,"
    " next_slot, next_due, fired, skipped, missed, origin, created_at, updated_at"
)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def postgres_pids(database: str | None = None) -> list[int]:
    """Every postgres process, or only the backends connected to `database` (their title
    names it: "postgres: USER DATABASE HOST(PORT) STATE")."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() != "postgres":
                    continue
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if database is None or f" {database} " in title:
                pids.append(int(entry.name))
    return pids


class CpuMeter:
    """CPU seconds of the workers, of the backends connected to this run's database and of
    the whole PostgreSQL server (its background processes, and other databases' backends:
    on a shared machine, others' load). Backends come and go: each sample adds the ones alive
    to those seen before, a process gone counted by its last sample."""

    def __init__(self, workers: list[int], database: str) -> None:
        self.workers = workers
        self.database = database
        self.seen: dict[int, float] = {}
        self.ours: set[int] = set()

    def sample(self) -> dict[str, float]:
        self.ours.update(postgres_pids(self.database))
        for pid in postgres_pids():
            self.seen[pid] = max(self.seen.get(pid, 0.0), cpu_seconds(pid))
        return {
            "workers": sum(cpu_seconds(p) for p in self.workers),
            "postgres_db": sum(v for p, v in self.seen.items() if p in self.ours),
            "postgres": sum(self.seen.values()),
            "load": os.getloadavg()[0],
            "t": time.monotonic(),
        }


def per_minute(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    minutes = (b["t"] - a["t"]) / 60
    return {
        "minutes": round(minutes, 2),
        "worker_cpu_s_per_min": round((b["workers"] - a["workers"]) / minutes, 2),
        "postgres_db_backends_cpu_s_per_min": round(
            (b["postgres_db"] - a["postgres_db"]) / minutes, 2
        ),
        "postgres_server_cpu_s_per_min": round((b["postgres"] - a["postgres"]) / minutes, 2),
        "load_1m_at_end": round(b["load"], 2),
    }


def insert_schedules(url: str, tenants: int, per_tenant: int, same_slot: bool) -> list[str]:
    """Tenants registered, schedules inserted (waiting: next_due NULL); their ids."""
    import psycopg

    app = worker_app.build(url)
    app.store.runs.count_by_state()  # migrate
    names = [f"t{i:03d}" for i in range(tenants)]
    for name in names:
        register_tenant(app.store, name)
    app.close()
    total = tenants * per_tenant
    now = time.time()
    ids = []
    buf = io.StringIO()
    for i in range(total):
        sid = str(uuid.uuid4())
        ids.append(sid)
        tenant = names[i % tenants]
        phase = 0.0 if same_slot else (i * PERIOD / total)
        row = [
            sid, tenant, f"s{i}", "bench.one_step", r"\N", r"\N", str(PERIOD), repr(phase),
            "UTC", r"\N", r"\N", "0", "{}", "{}", "skip", "3600", "f", r"\N", r"\N", "0", "0",
            "0", "api", repr(now), repr(now),
        ]  # fmt: skip
        buf.write("\t".join(row) + "\n")
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.cursor().copy(f"COPY schedules ({_COLUMNS}) FROM STDIN") as copy:
            copy.write(buf.getvalue())
        conn.execute("ANALYZE schedules")
    return ids


def start_slots(url: str, t0: float, same_slot: bool) -> None:
    """Each schedule's first slot at or after t0 (same_slot: t0 itself, for all)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if same_slot:
            conn.execute(
                "UPDATE schedules SET phase_seconds = %(p)s, next_slot = %(t0)s, next_due = %(t0)s",
                {"t0": t0, "p": t0 % PERIOD},
            )
        else:
            conn.execute(
                "UPDATE schedules SET next_slot = phase_seconds + %(per)s"
                " * ceil((%(t0)s - phase_seconds) / %(per)s), next_due = phase_seconds"
                " + %(per)s * ceil((%(t0)s - phase_seconds) / %(per)s)",
                {"t0": t0, "per": PERIOD},
            )


class Visibility(threading.Thread):
    """Polls for schedule runs created since a moment; the time each was first seen."""

    def __init__(self, url: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.interval = interval
        self.seen: dict[str, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            since = time.time() - 5
            while not self.stopping.wait(self.interval):
                rows = conn.execute(
                    "SELECT idempotency_key FROM runs WHERE created_at >= %s"
                    " AND idempotency_key LIKE 'schedule:%%'",
                    (since,),
                ).fetchall()
                t = time.time()
                for (key,) in rows:
                    self.seen.setdefault(key, t)
                # A round's `now` is taken before its transaction: keep a margin for slow ones.
                since = t - 5


class Stamps(threading.Thread):
    """Ordinary runs enqueued at a steady rate; (i, enqueue call time)."""

    def __init__(self, url: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.app = worker_app.build(url)
        self.rate = rate
        self.calls: list[tuple[int, float, str]] = []
        self.phase = "warm"
        self.stopping = threading.Event()

    def run(self) -> None:
        i = 0
        begin = time.perf_counter()
        while not self.stopping.is_set():
            due = begin + i / self.rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            t = time.time()
            self.app.enqueue_sync("bench.stamp", {"t": t, "i": i})
            self.calls.append((i, t, self.phase))
            i += 1
        self.app.close()


class Control(threading.Thread):
    """`--control`: the same stream of runs the schedules would make (`rate` per second of
    `bench.one_step`, one tenant per batch in turn), enqueued through the app, no schedule."""

    def __init__(self, url: str, rate: float, tenants: int) -> None:
        super().__init__(daemon=True)
        self.app = worker_app.build(url)
        self.rate = rate
        self.tenants = tenants
        self.enqueued = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        tick = 0.25
        begin = time.perf_counter()
        n = 0
        while not self.stopping.is_set():
            n += 1
            pause = begin + n * tick - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            due = int(self.rate * n * tick) - self.enqueued
            tenant = f"t{n % self.tenants:03d}"
            reqs = [
                RunRequest(workflow="bench.one_step", input={"i": self.enqueued + k}, tenant=tenant)
                for k in range(due)
            ]
            self.app.enqueue_many_sync(reqs)
            self.enqueued += due
        self.app.close()


def spawn(url: str, tmp: Path, marks: Path, n: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    env.update(PYTHONPATH=str(HERE), BENCH_MARKS=str(marks))
    with (tmp / f"worker-{n}.log").open("wb") as log:
        return subprocess.Popen(
            [str(GREENROOM), "worker", "--app", "worker_app:app", "--db", url],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp,
        )


def query(url: str, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


@dataclass
class Phases:
    """What the measured phases left: CPU samples, the stamp stream, the visibility poller."""

    t0: float
    quiet: tuple[dict[str, float], dict[str, float]]
    firing: tuple[dict[str, float], dict[str, float]]
    stamps: Stamps
    visible: Visibility
    enqueued_by_control: int | None


def wait_all_fired(url: str, total: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(1)
        if query(url, "SELECT sum(fired) FROM schedules", {})[0][0] >= total:
            return


def phases(url: str, tmp: Path, marks: Path, args: argparse.Namespace, total: int) -> Phases:
    """Workers up, the quiet phase, then the firing window (or the control stream)."""
    workers = [spawn(url, tmp, marks, n) for n in range(args.workers)]
    stamps = Stamps(url, args.stamps)
    visible = Visibility(url, args.poll)
    control: Control | None = None
    try:
        stamps.start()
        time.sleep(5)  # the workers start, run the first stamps
        meter = CpuMeter([w.pid for w in workers], url.rsplit("/", 1)[1])
        stamps.phase = "quiet"
        q0 = meter.sample()
        time.sleep(args.quiet)
        q1 = meter.sample()
        stamps.phase = "gap"
        t0 = time.time() + 3
        if args.control:
            control = Control(url, total / PERIOD, args.tenants)
        else:
            start_slots(url, t0, args.same_slot)
            if not args.same_slot:  # 120,000 runs in a minute or two: polling them is a load
                visible.start()
        time.sleep(max(0.0, t0 - time.time()))
        stamps.phase = "firing"
        if control is not None:
            control.start()
        f0 = meter.sample()
        if args.same_slot:
            wait_all_fired(url, total, args.window)
        else:
            time.sleep(args.window)
        f1 = meter.sample()
        stamps.phase = "done"
        time.sleep(2)
    finally:
        for thread in (stamps, visible, control):
            if thread is not None:
                thread.stopping.set()
        for w in workers:
            w.terminate()
        for w in workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        for thread in (stamps, visible, control):
            if thread is not None and thread.ident is not None:  # started
                thread.join(10)
    enqueued = None if control is None else control.enqueued
    return Phases(t0, (q0, q1), (f0, f1), stamps, visible, enqueued)


def results(url: str, marks: Path, p: Phases) -> dict[str, Any]:
    out: dict[str, Any] = {}
    f0, f1 = p.firing
    window_end = p.t0 + (f1["t"] - f0["t"])
    rows = query(
        url,
        "SELECT idempotency_key, created_at FROM runs WHERE idempotency_key LIKE 'schedule:%%'",
        {},
    )
    lags, seen_lags, last = [], [], p.t0
    for key, created in rows:
        slot = float(key.rsplit(":", 1)[1])
        if p.t0 - 0.0005 <= slot < window_end:  # the key has the slot to the millisecond
            lags.append(created - slot)
            last = max(last, created)
            if key in p.visible.seen:
                seen_lags.append(p.visible.seen[key] - slot)
    late = query(
        url, "SELECT count(*) FROM schedules WHERE next_slot < %(end)s", {"end": window_end}
    )
    out["window_s"] = round(window_end - p.t0, 1)
    out["fired_in_window"] = len(lags)
    out["last_fired_after_s"] = round(last - p.t0, 2)
    out["slots_in_window_not_fired"] = late[0][0]
    if p.enqueued_by_control is not None:
        out["control_runs_enqueued"] = p.enqueued_by_control
    out["lag_created_ms"] = benchlib.summary(benchlib.ms(lags), 1)
    out["lag_visible_ms"] = benchlib.summary(benchlib.ms(seen_lags), 1)
    out["cpu_quiet"] = per_minute(*p.quiet)
    out["cpu_firing"] = per_minute(*p.firing)
    starts = {m["i"]: m["t"] for m in map(json.loads, marks.read_text().splitlines())}
    for phase in ("quiet", "firing"):
        calls = [(i, t) for i, t, ph in p.stamps.calls if ph == phase]
        lat = [starts[i] - t for i, t in calls if i in starts]
        out[f"stamp_enqueue_to_start_ms_{phase}"] = benchlib.summary(benchlib.ms(lat), 2)
        # Runs not started before the workers stopped have no latency: their count.
        out[f"stamps_not_started_{phase}"] = len(calls) - len(lat)
    firings = query(url, "SELECT outcome, count(*) FROM schedule_firings GROUP BY outcome", {})
    out["firings_by_outcome"] = dict(firings)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    per_tenant = max(1, args.schedules // args.tenants)
    total = args.tenants * per_tenant
    out: dict[str, Any] = {
        "benchmark": "schedules",
        "schedules": total,
        "tenants": args.tenants,
        "same_slot": args.same_slot,
        "control": args.control,
        "firings_per_s_expected": round(total / PERIOD, 1),
        "visibility_poll_s": args.poll,
    }
    with benchlib.fresh_database(args.db, "sched") as url, tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        marks = tmp / "marks.jsonl"
        marks.touch()
        began = time.perf_counter()
        insert_schedules(url, args.tenants, per_tenant, args.same_slot)
        out["insert_seconds"] = round(time.perf_counter() - began, 1)
        out["server"] = benchlib.server_version(url)
        out.update(results(url, marks, phases(url, tmp, marks, args, total)))
    return out


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.set_defaults(db=benchlib.DEFAULT_PG)
    p.add_argument("--schedules", type=int, default=120_000)
    p.add_argument("--tenants", type=int, default=400)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quiet", type=float, default=30.0, help="seconds measured before firing")
    p.add_argument("--window", type=float, default=150.0, help="seconds measured while firing")
    p.add_argument("--stamps", type=float, default=10.0, help="ordinary runs per second")
    p.add_argument("--poll", type=float, default=0.1, help="visibility poll interval")
    p.add_argument("--same-slot", action="store_true", help="every schedule at one slot")
    p.add_argument(
        "--control",
        action="store_true",
        help="no schedule fires: the same run stream is enqueued through the app instead",
    )
    args = p.parse_args()
    if benchlib.backend_name(args.db) != "postgresql":
        raise SystemExit("this benchmark is for PostgreSQL (--db postgresql://...)")
    benchlib.quiet_logs()
    benchlib.emit(run(args))


if __name__ == "__main__":
    main()
