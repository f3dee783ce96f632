"""A fast webhook receiver for bench/deliveries.py, run as its own process:

    python bench/delivery_receiver.py OUT_FILE

It prints the port it listens on (127.0.0.1), answers every POST `200 ok` at once on keep-alive
HTTP/1.1 connections (asyncio protocol on uvloop, no framework), and appends one line per request
to OUT_FILE: `<time.time() when the request was whole> <path> <webhook-id>`, written every 20 ms
and at SIGTERM. Far cheaper per request than the sender, so it is not what the benchmark measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from typing import cast

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
RECORDS: list[str] = []


class Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            length, webhook_id = 0, "-"
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "webhook-id":
                    webhook_id = value.strip()
            whole = end + 4 + length
            if len(self.buffer) < whole:
                return
            del self.buffer[:whole]
            path = lines[0].split(" ")[1] if " " in lines[0] else "-"
            RECORDS.append(f"{time.time():.6f} {path} {webhook_id}\n")
            assert self.transport is not None
            self.transport.write(RESPONSE)


async def serve(out: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await loop.create_server(Connection, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)

    def flush() -> None:
        if RECORDS:
            lines = "".join(RECORDS)
            RECORDS.clear()
            with open(out, "a") as f:
                f.write(lines)

    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.02)
        flush()
    server.close()
    flush()


def main() -> None:
    try:
        import uvloop
    except ImportError:  # plain asyncio is fast enough too
        asyncio.run(serve(sys.argv[1]))
    else:
        uvloop.run(serve(sys.argv[1]))


if __name__ == "__main__":
    main()
