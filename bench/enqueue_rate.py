"""Enqueue rate: App.enqueue_sync one by one, and App.enqueue_many_sync in batches of 100.

Each mode runs for a few rounds of a fixed size; the result is the median rate over rounds,
plus per-call latency percentiles.
"""

from __future__ import annotations

import statistics
import time

import benchlib

from greenroom import App, RunContext, RunRequest


def build_app(url: str) -> App:
    app = App(db=url)

    @app.workflow(name="bench.noop")
    async def noop(ctx: RunContext, i: int = 0) -> None:
        return None

    return app


def one_by_one(app: App, count: int) -> tuple[float, list[float]]:
    calls: list[float] = []
    start = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        app.enqueue_sync("bench.noop", {"i": i})
        calls.append(time.perf_counter() - t0)
    return count / (time.perf_counter() - start), calls


def batched(app: App, batches: int, size: int) -> tuple[float, list[float]]:
    calls: list[float] = []
    start = time.perf_counter()
    for b in range(batches):
        reqs = [RunRequest(workflow="bench.noop", input={"i": b * size + i}) for i in range(size)]
        t0 = time.perf_counter()
        app.enqueue_many_sync(reqs)
        calls.append(time.perf_counter() - t0)
    return batches * size / (time.perf_counter() - start), calls


def main() -> None:
    p = benchlib.parser(__doc__ or "")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--single", type=int, default=500, help="runs per one-by-one round")
    p.add_argument("--batches", type=int, default=20, help="batches per batched round")
    p.add_argument("--batch-size", type=int, default=100)
    args = p.parse_args()
    benchlib.quiet_logs()
    with benchlib.fresh_database(args.db, "enqueue") as url:
        app = build_app(url)
        try:
            app.enqueue_sync("bench.noop", {"i": -1})  # open the store, migrate, warm up
            single_rates, single_calls = [], []
            batch_rates, batch_calls = [], []
            for _ in range(args.rounds):
                rate, calls = one_by_one(app, args.single)
                single_rates.append(rate)
                single_calls += calls
                rate, calls = batched(app, args.batches, args.batch_size)
                batch_rates.append(rate)
                batch_calls += calls
            result = {
                "benchmark": "enqueue_rate",
                "backend": benchlib.backend_name(url),
                "server": benchlib.server_version(url),
                "one_by_one": {
                    "runs_per_s": round(statistics.median(single_rates)),
                    "rounds_runs_per_s": [round(r) for r in single_rates],
                    "runs_per_round": args.single,
                    "call_ms": benchlib.summary(benchlib.ms(single_calls)),
                },
                "batched": {
                    "batch_size": args.batch_size,
                    "runs_per_s": round(statistics.median(batch_rates)),
                    "rounds_runs_per_s": [round(r) for r in batch_rates],
                    "runs_per_round": args.batches * args.batch_size,
                    "batch_call_ms": benchlib.summary(benchlib.ms(batch_calls)),
                },
            }
        finally:
            app.close()
    benchlib.emit(result)


if __name__ == "__main__":
    main()
