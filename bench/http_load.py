"""A closed-loop HTTP/1.1 load client for `api_load.py --client python`: N keep-alive connections
on one uvloop event loop, the same request mix as api_load.lua, every request's own latency.

wrk corrects its latency histogram for coordinated omission: at the end it adds, for each request
slower than twice the mean interval between a connection's requests, one made-up sample per
interval it "held up". Its percentiles are therefore those an open-loop client would have seen,
and one stall of 1 s at 1,000 requests/s over 4 connections adds about 250 samples. This client
reports the requests as they were, so the two together tell stalls from a slow common case.

    python bench/http_load.py PORT SECONDS CONNECTIONS   (key, run ids, creates: as for wrk)

Prints one JSON object with the fields api_load.lua's done() prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time

import uvloop

CREATE = json.dumps(
    {"workflow": "demo.sync_users", "input": {"org": "acme", "base_url": "http://127.0.0.1:9"}}
)


class Load:
    def __init__(self, port: int, key: str, ids: list[str], creates: float) -> None:
        self.port = port
        self.key = key
        self.ids = ids
        self.creates = creates
        self.latencies: list[float] = []
        self.non_2xx = 0
        self.socket_errors = 0

    def request(self, rnd: random.Random) -> bytes:
        auth = f"Authorization: Bearer {self.key}\r\n"
        r = rnd.random()
        if r < self.creates:
            body = CREATE.encode()
            head = (
                f"POST /v1/runs HTTP/1.1\r\nHost: bench\r\n{auth}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            return head.encode() + body
        if r < self.creates + (1 - self.creates) / 2:
            path = f"/v1/runs/{rnd.choice(self.ids)}"
        else:
            path = "/v1/runs?limit=20"
        return f"GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n".encode()

    async def connection(self, n: int, stop: float) -> None:
        rnd = random.Random(n * 7919)
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                writer.write(self.request(rnd))
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                self.latencies.append(time.perf_counter() - started)
                if not 200 <= status < 400:
                    self.non_2xx += 1
        except (OSError, asyncio.IncompleteReadError):
            self.socket_errors += 1
        finally:
            writer.close()


def percentile_us(ordered: list[float], q: float) -> int:
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))] * 1e6)


async def run(load: Load, seconds: float, connections: int) -> dict[str, int]:
    began = time.perf_counter()
    stop = began + seconds
    await asyncio.gather(*(load.connection(n, stop) for n in range(connections)))
    duration = time.perf_counter() - began
    ordered = sorted(load.latencies)
    return {
        "requests": len(ordered),
        "duration_us": round(duration * 1e6),
        "p50_us": percentile_us(ordered, 50),
        "p90_us": percentile_us(ordered, 90),
        "p99_us": percentile_us(ordered, 99),
        "max_us": round(ordered[-1] * 1e6),
        "non_2xx": load.non_2xx,
        "socket_errors": load.socket_errors,
    }


def main() -> None:
    port, seconds, connections = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    load = Load(
        port,
        os.environ["GREENROOM_BENCH_KEY"],
        os.environ["GREENROOM_BENCH_RUNS"].split(","),
        float(os.environ.get("GREENROOM_BENCH_CREATES", "0.2")),
    )
    print(json.dumps(uvloop.run(run(load, seconds, connections))))


if __name__ == "__main__":
    main()
