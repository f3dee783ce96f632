"""HTTP API throughput under a mixed load: 80% reads (run details and lists), 20% run creates
(`--mix reads`: run details and lists only, half each).

Starts `greenroom api` (N uvicorn processes) on a fresh database, seeds runs to read, then runs wrk
(Debian package `wrk`) on loopback at increasing connection counts, each for --seconds. A level
counts if it had no errors and p99 <= --p99-ms; the result is the highest such request rate.
wrk is closed-loop: each connection sends its next request when the last one is answered, so
the rate at a level is what the server sustained while keeping that latency. wrk's percentiles
are corrected for coordinated omission (a stall counts once per request it held up, as if the
load were open-loop); `--client python` (bench/http_load.py) reports each request as measured.

    uv run python bench/api_load.py --db postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchlib
import httpx

from greenroom.api.keys import create_key
from greenroom.model import Role
from greenroom.storage import open_store

LUA = Path(__file__).with_name("api_load.lua")
HTTP_LOAD = Path(__file__).with_name("http_load.py")
SEED_RUNS = 2000
#: Share of run creates in each mix; the rest is half run details, half run lists.
MIXES = {"mixed": 0.2, "reads": 0.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bootstrap(url: str) -> str:
    """A tenant and an admin key without a practical rate limit."""
    store = open_store(url)
    try:
        store.accounts.create_tenant("acme", actor="bench")
        _, key = create_key(
            store, tenant="acme", role=Role.ADMIN, name="bench", actor="bench", rate_limit=10**6
        )
    finally:
        store.backend.close()
    return key


def seed(base: str, key: str, n: int) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"workflow": "demo.sync_users", "input": {"org": "acme"}}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
        return [c.post("/v1/runs", json=body).raise_for_status().json()["id"] for _ in range(n)]


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"greenroom api exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("greenroom api did not become ready")


def load(
    client: str, base: str, env: dict[str, str], connections: int, seconds: int
) -> dict[str, Any]:
    """One level: wrk (latencies corrected for coordinated omission) or http_load.py (each
    request's own latency)."""
    if client == "wrk":
        command = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s"]
        command += ["--timeout", "5s", "-s", str(LUA), base]
    else:
        port = base.rsplit(":", 1)[1]
        command = [sys.executable, str(HTTP_LOAD), port, str(seconds), str(connections)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    rate = stats["requests"] / (stats["duration_us"] / 1e6)
    return {
        "connections": connections,
        "requests_per_s": round(rate, 1),
        "p50_ms": stats["p50_us"] / 1000,
        "p90_ms": stats["p90_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "max_ms": stats["max_us"] / 1000,
        "errors": stats["non_2xx"] + stats["socket_errors"],
    }


def main() -> None:
    p = benchlib.parser(__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="uvicorn processes")
    p.add_argument("--seconds", type=int, default=60, help="length of each level")
    p.add_argument("--levels", default="2,4,8,16,32", help="wrk connection counts")
    p.add_argument("--p99-ms", type=float, default=50.0)
    p.add_argument("--mix", choices=sorted(MIXES), default="mixed")
    p.add_argument(
        "--client",
        choices=("wrk", "python"),
        default="wrk",
        help="wrk (percentiles corrected for coordinated omission) or bench/http_load.py "
        "(every request as measured)",
    )
    args = p.parse_args()
    if args.client == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("needs wrk: apt-get install wrk")
    with benchlib.fresh_database(args.db, "api") as url:
        key = bootstrap(url)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "greenroom.cli", "api", "--db", url, "--port", str(port)]
        # The server's banner goes to stderr: stdout carries the JSON result.
        proc = subprocess.Popen([*cmd, "--workers", str(args.workers)], stdout=sys.stderr)
        try:
            wait_ready(base, proc)
            ids = seed(base, key, SEED_RUNS)
            load_env = {
                **os.environ,
                "GREENROOM_BENCH_KEY": key,
                "GREENROOM_BENCH_RUNS": ",".join(ids),
                "GREENROOM_BENCH_CREATES": str(MIXES[args.mix]),
            }
            levels = []
            for connections in (int(c) for c in args.levels.split(",")):
                level = load(args.client, base, load_env, connections, args.seconds)
                print(json.dumps(level), file=sys.stderr)
                levels.append(level)
        finally:
            proc.terminate()
            proc.wait(30)
    passing = [lv for lv in levels if lv["errors"] == 0 and lv["p99_ms"] <= args.p99_ms]
    best = max(passing, key=lambda lv: lv["requests_per_s"]) if passing else None
    benchlib.emit(
        {
            "benchmark": "api_load",
            "backend": benchlib.backend_name(url),
            "api_processes": args.workers,
            "client": args.client,
            "seconds_per_level": args.seconds,
            "mix": {
                "mixed": "40% run detail, 40% run list (20 per page), 20% run create",
                "reads": "50% run detail, 50% run list (20 per page)",
            }[args.mix],
            "levels": levels,
            "sustained_requests_per_s": None if best is None else best["requests_per_s"],
            "at_p99_ms": None if best is None else best["p99_ms"],
            "goal_requests_per_s": 500,
            "machine": benchlib.machine(),
        }
    )


if __name__ == "__main__":
    main()
