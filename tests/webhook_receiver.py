"""A real webhook receiver on 127.0.0.1 for delivery tests: it records every request and
answers as the test tells it (`answer` picks a status per request, or a misbehaviour: hang
past the sender's timeout, close without an answer, reset the connection)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    #: False when the connection ended before the whole body came (the sender was killed or
    #: gave up): no receiver would act on it.
    complete: bool = True

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Hang:
    """Answer 200, but only after this many seconds (past the sender's timeout)."""

    seconds: float


#: Close the connection without answering.
CLOSE = "close"
#: Reset the connection (RST) without answering.
RESET = "reset"

Answer = int | Hang | str


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        #: The requests answered 200 at once: the ones the sender can have seen succeed.
        self.accepted: list[Request] = []
        self.lock = threading.Lock()
        #: What to answer a request with (200 unless a test says otherwise).
        self.answer: Callable[[Request], Answer] = lambda request: 200
        self.url = ""

    def received(self, path: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    def ids(self, path: str | None = None) -> list[str]:
        return [r.headers["webhook-id"] for r in self.received(path)]

    def accepted_ids(self, path: str | None = None) -> list[str]:
        with self.lock:
            found = [r for r in self.accepted if path is None or r.path == path]
        return [r.headers["webhook-id"] for r in found]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # workers open many connections at once


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = Request(self.path, headers, body, complete=len(body) == length)
            with receiver.lock:
                receiver.requests.append(request)
            if not request.complete:
                self.close_connection = True
                return
            answer = receiver.answer(request)
            if answer == CLOSE:
                self.close_connection = True
                return
            if answer == RESET:
                self.close_connection = True
                linger = struct.pack("ii", 1, 0)  # close() then sends RST
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                return
            if isinstance(answer, Hang):
                time.sleep(answer.seconds)
                answer = 200
                self.close_connection = True
            elif answer == 200:
                with receiver.lock:
                    receiver.accepted.append(request)
            assert isinstance(answer, int)
            try:
                self.send_response(answer)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:  # the sender gave up waiting (a hang)
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
