"""Serving the API with uvicorn: `greenroom api` (one process or N) and `greenroom up` (the API
and a worker in one event loop).

The socket is bound before serving, so the command can say where it listens (port 0 included)
and N processes share it. Signals are ours, not uvicorn's: SIGINT or SIGTERM stops the server
(and the worker) gracefully and the process exits 0; a second signal is not caught.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from greenroom.errors import ConfigError
from greenroom.settings import Settings

if TYPE_CHECKING:
    from greenroom.worker import Worker

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
BACKLOG = 2048


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket, inheritable by worker processes; port 0 picks a free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections of a TCP-protocol socket,
    # and without it a response waits out the client's delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _options(settings: Settings, access_log: bool) -> dict[str, Any]:
    return {
        "log_config": None,  # greenroom.logs configured logging, uvicorn's loggers included
        "log_level": "info" if access_log else "warning",
        "access_log": access_log,
        "lifespan": "off",
        "backlog": BACKLOG,
        # In-flight requests get the same grace as in-flight runs.
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
    }


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling, which re-raises the signal after a
    graceful stop and so ends the process as killed rather than with exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server(api: Any, settings: Settings, *, access_log: bool = False) -> uvicorn.Server:
    return _Server(uvicorn.Config(api, **_options(settings, access_log)))


async def serve(
    api_server: uvicorn.Server, sock: socket.socket, *, worker: Worker | None = None
) -> None:
    """Serve (beside `worker`, if given) until SIGINT or SIGTERM, or until either stops; then
    stop both gracefully: requests finish, runs get the worker's grace period."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for sig in STOP_SIGNALS:  # a second signal gets its default action
            loop.remove_signal_handler(sig)
        api_server.should_exit = True
        if worker is not None:
            worker.stop()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
    tasks = [asyncio.create_task(api_server.serve([sock]), name="api")]
    if worker is not None:
        tasks.append(asyncio.create_task(worker.run(), name="worker"))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def serve_processes(
    factory: str, sock: socket.socket, settings: Settings, *, workers: int, access_log: bool
) -> None:
    """Serve with `workers` uvicorn processes, each building its API by calling `factory`
    (a module:function import string); returns once SIGINT or SIGTERM has stopped them.

    The processes get the socket itself, not its file descriptor: uvicorn takes a descriptor
    for a Unix socket, so its connections would lose TCP_NODELAY and wait out delayed ACKs."""
    config = uvicorn.Config(
        factory, factory=True, workers=workers, **_options(settings, access_log)
    )
    Multiprocess(config, sockets=[sock]).run()
