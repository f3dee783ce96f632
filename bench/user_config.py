"""The engine as users run it: `greenroom worker --app worker_app:app --db URL` as its own process,
default settings and default logging (its stdout and stderr go to a file), runs enqueued by other
processes. Prints start-up, drain, enqueue→start latency and recovery, one JSON object.

- startup: a `bench.stamp` run is enqueued, then the worker is spawned; spawn → its claim
  (`runs.started_at`) and spawn → the workflow's start (its own `time.time()`). Fresh process per
  trial, median over trials.
- drain_prefilled: N no-op one-step runs enqueued first (batches of 500), then the worker is
  spawned; timed from the first run's claim to the last run's end (`min(started_at)` to
  `max(finished_at)`, both stamped by the worker in the transaction that commits them), so the
  worker's start-up is left out (`runs_per_s_from_spawn` counts it). Fresh database per trial.
- drain_live: the worker is up and idle; another process enqueues N runs one by one
  (`App.enqueue_sync` in a loop, as fast as it can) while the worker drains; timed from the first
  enqueue call to the last run's end. It cannot exceed the enqueuer's own rate, reported beside it.
- latency: the worker is up and idle; another process enqueues at 30 runs/s for 10 s
  (`latency.py`'s enqueuer); latency = workflow start - the moment `enqueue_sync` was called.
- recovery: worker A runs a step that sleeps for an hour and is SIGKILLed; *standby*: worker B
  was started before and is idle (as `recovery.py`); *replacement*: B is spawned right after the
  kill, as a supervisor restarting the worker would. Kill → B's workflow start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import benchlib
import worker_app

from greenroom import RunRequest

HERE = Path(__file__).resolve().parent
GREENROOM = Path(sys.executable).with_name("greenroom")
PARTS = ("startup", "drain_prefilled", "drain_live", "latency", "recovery")
WARM_BYTECODE = Path(tempfile.mkdtemp(prefix="greenroom-bench-pycache-"))


class Bench:
    """One database, its marks file and the worker processes started on it."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url = url
        self.tmp = tmp
        #: Where the workers' compiled bytecode is kept (PYTHONPYCACHEPREFIX), written as they
        #: import, so that they start as from an installed package; shared by the whole run.
        self.warm_bytecode = WARM_BYTECODE
        self.marks = tmp / "marks.jsonl"
        self.marks.touch()
        self.app = worker_app.build(url)
        self.app.store.runs.count_by_state()  # migrate before any worker starts
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = 0

    def worker(
        self, role: str = "", bytecode: Path | None = None, extra: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """`greenroom worker` with default settings, and `extra` variables; its output goes to
        a log file. Its bytecode comes from `bytecode` (default: the warm cache); a new
        directory means none at all."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GREENROOM_", "OTEL_"))}
        env.update(extra or {})
        path = [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]  # e.g. another tree
        env.update(PYTHONPATH=os.pathsep.join(path), BENCH_MARKS=str(self.marks), BENCH_ROLE=role)
        env["PYTHONPYCACHEPREFIX"] = str(bytecode or self.warm_bytecode)
        if bytecode is None or bytecode == self.warm_bytecode:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        else:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        self.logs += 1
        with (self.tmp / f"worker-{self.logs}.log").open("wb") as log:
            proc = subprocess.Popen(
                [str(GREENROOM), "worker", "--app", "worker_app:app", "--db", self.url],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.tmp,
            )
        self.procs.append(proc)
        return proc

    def worker_and_stop(self, bytecode: Path) -> None:
        """Start a worker, wait until it ran a run, stop it: its imports are compiled."""
        proc = self.worker(bytecode=bytecode)
        self.ready(proc, -2, settle=0)
        self.stop(proc)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        self.app.close()

    def wait_mark(self, kind: str, i: int, timeout: float, role: str = "") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.marks.read_text().splitlines():
                mark = json.loads(line)
                if mark["kind"] == kind and mark["i"] == i and mark.get("role", "") == role:
                    return dict(mark)
            time.sleep(0.002)
        raise SystemExit(f"no {kind} mark {i} {role} within {timeout} s (see {self.tmp})")

    def marks_of(self, kind: str) -> list[dict[str, Any]]:
        lines = self.marks.read_text().splitlines()
        return [m for m in map(json.loads, lines) if m["kind"] == kind]

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.app.store.backend.transaction(write=False) as tx:
            return tx.execute(sql, params)

    def finished(self) -> int:
        sql = "SELECT count(*) AS n FROM runs WHERE state IN ('succeeded', 'failed', 'cancelled')"
        return int(self.query(sql)[0]["n"])

    def wait_finished(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.finished() >= count:
                return True
            time.sleep(0.05)
        return False

    def span(self, workflow: str) -> tuple[float, float, int]:
        """First claim, last end and runs finished of a workflow's runs."""
        row = self.query(
            "SELECT min(started_at) AS first, max(finished_at) AS last, count(finished_at) AS n"
            " FROM runs WHERE workflow = :wf",
            {"wf": workflow},
        )[0]
        return float(row["first"]), float(row["last"]), int(row["n"])

    def ready(self, proc: subprocess.Popen[bytes], i: int, settle: float = 0.5) -> None:
        """Wait until the worker runs: a stamp run it executed, so it is up and idle."""
        self.app.enqueue_sync("bench.stamp", {"t": time.time(), "i": i})
        self.wait_mark("stamp", i, 30)
        time.sleep(settle)


#: Start-up conditions: bytecode compiled (as pip installs packages, or `uv sync` with this
#: project's `compile-bytecode`), or none (`PYTHONDONTWRITEBYTECODE=1` and nothing compiled: every
#: module compiled from source at every start).
BYTECODE: dict[str, Callable[[Bench], Path]] = {
    "bytecode": lambda b: b.warm_bytecode,
    "no_bytecode": lambda b: Path(tempfile.mkdtemp(dir=b.tmp, prefix="nopyc-")),
}


@contextlib.contextmanager
def bench(db: str, label: str) -> Iterator[Bench]:
    with benchlib.fresh_database(db, label) as url, tempfile.TemporaryDirectory() as tmp:
        b = Bench(url, Path(tmp))
        try:
            yield b
        finally:
            b.close()


def startup(db: str, trials: int) -> dict[str, Any]:
    """Spawn → claim and spawn → first run, with and without compiled bytecode, in turns."""
    times: dict[str, dict[str, list[float]]] = {
        cache: {"claim": [], "run": []} for cache in BYTECODE
    }
    with bench(db, "startup") as b:
        i = 0
        for _ in range(trials):
            for cache, prefix in BYTECODE.items():
                i += 1
                run = b.app.enqueue_sync("bench.stamp", {"t": 0.0, "i": i})
                spawned = time.time()
                proc = b.worker(bytecode=prefix(b))
                mark = b.wait_mark("stamp", i, 30)
                claimed = b.query("SELECT started_at FROM runs WHERE id = :id", {"id": run.id})
                times[cache]["claim"].append(float(claimed[0]["started_at"]) - spawned)
                times[cache]["run"].append(float(mark["t"]) - spawned)
                b.stop(proc)
    return {
        "trials": trials,
        **{
            cache: {
                "spawn_to_claim_s": _median_of(t["claim"]),
                "spawn_to_first_run_s": _median_of(t["run"]),
            }
            for cache, t in times.items()
        },
    }


def prefill(b: Bench, runs: int) -> None:
    """Enqueue `runs` no-op runs, in batches of 500."""
    for start in range(0, runs, 500):
        n = min(500, runs - start)
        b.app.enqueue_many_sync(
            [RunRequest(workflow="bench.one_step", input={"i": start + i}) for i in range(n)]
        )


def drain_prefilled(db: str, runs: int, trials: int) -> dict[str, Any]:
    out = []
    for _ in range(trials):
        with bench(db, "drainp") as b:
            prefill(b, runs)
            spawned = time.time()
            proc = b.worker()
            done = b.wait_finished(runs, 120)
            first, last, finished = b.span("bench.one_step")
            b.stop(proc)
            out.append(
                {
                    "runs_per_s": round(finished / (last - first)),
                    "finished": finished,
                    "seconds": round(last - first, 3),
                    # Counting the worker's start-up too, as a drain timed from `greenroom
                    # worker` being started would.
                    "runs_per_s_from_spawn": round(finished / (last - spawned)),
                    "timed_out": not done,
                }
            )
    return _drain_summary(out, runs)


def drain_live(db: str, runs: int, trials: int) -> dict[str, Any]:
    out = []
    for _ in range(trials):
        with bench(db, "drainl") as b:
            proc = b.worker()
            b.ready(proc, 0)
            child = subprocess.run(
                [sys.executable, __file__, "--db", b.url, "--enqueue-child", str(runs)],
                capture_output=True,
                text=True,
            )
            if child.returncode != 0:
                raise SystemExit(f"the enqueuing process failed:\n{child.stderr[-2000:]}")
            report = json.loads(child.stdout)
            done = b.wait_finished(runs + 1, 120)
            _, last, finished = b.span("bench.one_step")
            b.stop(proc)
            seconds = last - report["began"]
            out.append(
                {
                    "runs_per_s": round(finished / seconds),
                    "finished": finished,
                    "seconds": round(seconds, 3),
                    "enqueue_runs_per_s": round(runs / report["seconds"]),
                    "timed_out": not done,
                }
            )
    result = _drain_summary(out, runs)
    result["enqueue_runs_per_s"] = round(statistics.median(t["enqueue_runs_per_s"] for t in out))
    return result


def enqueue_child(url: str, runs: int) -> None:
    """Another process enqueuing one by one, as fast as it can."""
    benchlib.quiet_logs()
    app = worker_app.build(url)
    app.store.runs.count_by_state()
    began = time.time()
    for i in range(runs):
        app.enqueue_sync("bench.one_step", {"i": i})
    seconds = time.time() - began
    app.close()
    print(json.dumps({"began": began, "seconds": seconds}))


def latency(db: str, rate: float, seconds: float) -> dict[str, Any]:
    with bench(db, "latency") as b:
        proc = b.worker()
        b.ready(proc, -1)
        child = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "latency.py"),
                "--db",
                b.url,
                "--enqueuer",
                str(rate),
                str(seconds),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit("enqueuer failed to start")
        child.stdin.write("go\n")
        child.stdin.flush()
        report = json.loads(child.stdout.readline())
        child.wait(timeout=30)
        expected = int(rate * seconds)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            starts = [m for m in b.marks_of("stamp") if m["i"] >= 0]
            if len(starts) >= expected:
                break
            time.sleep(0.05)
        b.stop(proc)
    calls: list[float] = report["calls"]
    latencies = [m["t"] - m["enqueued"] for m in starts]
    after_commit = [m["t"] - m["enqueued"] - calls[m["i"]] for m in starts]
    return {
        "rate_per_s": rate,
        "started": len(starts),
        "latency_ms": benchlib.summary(benchlib.ms(latencies)),
        "latency_after_commit_ms": benchlib.summary(benchlib.ms(after_commit)),
        "enqueue_call_ms": benchlib.summary(benchlib.ms(calls)),
    }


def recovery(db: str, trials: int) -> dict[str, Any]:
    out: dict[str, list[float]] = {"standby": [], "replacement": []}
    with bench(db, "recovery") as b:
        for n in range(trials):
            for how in ("standby", "replacement"):
                trial = n * 2 + (how == "replacement")
                a = b.worker("A")
                b.app.enqueue_sync("bench.long", {"trial": trial})
                b.wait_mark("long", trial, 30, role="A")
                standby = b.worker("B") if how == "standby" else None
                if standby is not None:
                    b.ready(standby, 1000 + trial)  # B is up and idle
                time.sleep(random.uniform(0.5, 1.0))
                a.send_signal(signal.SIGKILL)
                killed = time.time()
                replacement = standby or b.worker("B")
                a.wait()
                started = b.wait_mark("long", trial, 30, role="B")
                out[how].append(float(started["t"]) - killed)
                b.stop(replacement)
    return {how: _median_of(times) for how, times in out.items()}


def _median_of(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "all": [round(v, 3) for v in values],
    }


def _drain_summary(trials: list[dict[str, Any]], runs: int) -> dict[str, Any]:
    spawn = [t["runs_per_s_from_spawn"] for t in trials if "runs_per_s_from_spawn" in t]
    return {
        "runs_per_trial": runs,
        "runs_per_s": round(statistics.median(t["runs_per_s"] for t in trials)),
        **({"runs_per_s_from_spawn": round(statistics.median(spawn))} if spawn else {}),
        "stranded_runs": sum(runs - t["finished"] for t in trials),
        "trials": trials,
    }


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument("--only", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    p.add_argument("--runs", type=int, default=5000, help="runs per drain trial")
    p.add_argument("--trials", type=int, default=2, help="drain trials")
    p.add_argument("--startup-trials", type=int, default=5)
    p.add_argument("--recovery-trials", type=int, default=3)
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--enqueue-child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    benchlib.quiet_logs()
    if args.enqueue_child:
        enqueue_child(args.db, args.enqueue_child)
        return
    parts = [x for x in args.only.split(",") if x]
    with bench(args.db, "warm") as b:  # compile the workers' imports once, untimed
        b.worker_and_stop(b.warm_bytecode)
    result: dict[str, Any] = {"benchmark": "user_config", "backend": benchlib.backend_name(args.db)}
    for part in parts:
        load = os.getloadavg()[0]
        if part == "startup":
            result[part] = startup(args.db, args.startup_trials)
        elif part == "drain_prefilled":
            result[part] = drain_prefilled(args.db, args.runs, args.trials)
        elif part == "drain_live":
            result[part] = drain_live(args.db, args.runs, args.trials)
        elif part == "latency":
            result[part] = latency(args.db, args.rate, args.seconds)
        elif part == "recovery":
            result[part] = recovery(args.db, args.recovery_trials)
        else:
            raise SystemExit(f"unknown part {part!r}")
        result[part]["load_average_1m"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    benchlib.emit(result)


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(WARM_BYTECODE, ignore_errors=True)
