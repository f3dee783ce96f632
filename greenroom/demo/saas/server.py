"""Running the console: in a background thread for tests and the demo, or in the foreground.

with running_demo_saas(orgs=5, latency_ms=50) as saas:
    saas.login_url("acme"), saas.credentials("acme"), saas.stats()
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any, TypedDict, Unpack

import httpx
import uvicorn
from uvicorn.config import LOGGING_CONFIG

from greenroom.demo.saas.app import create_app
from greenroom.demo.saas.config import Faults, SaasConfig
from greenroom.demo.saas.data import DATA_DATE, DEFAULT_SECRET, Credentials, admin_credentials

HOST = "127.0.0.1"


@dataclass(frozen=True)
class DemoSaaS:
    """A running console: its URL, its credentials, and its test hooks over HTTP."""

    url: str
    config: SaasConfig

    def login_url(self, org: str) -> str:
        return f"{self.url}/orgs/{org}/login"

    def users_url(self, org: str, page: int = 1) -> str:
        return f"{self.url}/orgs/{org}/users?page={page}"

    def credentials(self, org: str) -> Credentials:
        return admin_credentials(org, self.config.secret)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per org: logins, failed_logins, page_views, errors, actions, active_sessions."""
        result: dict[str, dict[str, int]] = self._call("GET", "/_admin/stats")
        return result

    def logins(self, org: str) -> int:
        return self.stats().get(org, {}).get("logins", 0)

    def reset_stats(self) -> None:
        self._call("POST", "/_admin/stats/reset")

    def set_faults(self, **changes: Any) -> Faults:
        """Change faults at run time (latency_ms, error_rate, session_seconds, ...)."""
        return Faults(**self._call("POST", "/_admin/faults", json=changes))

    def expire_sessions(self, org: str | None = None) -> int:
        params = {"org": org} if org else {}
        expired: int = self._call("POST", "/_admin/sessions/expire", params=params)["expired"]
        return expired

    def reset(self) -> None:
        """Counters, sessions, user changes and faults back to how the server started."""
        self._call("POST", "/_admin/reset")

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, self.url + path, timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()


class SaasOptions(TypedDict, total=False):
    orgs: int
    users_per_org: int | None
    page_size: int
    secret: str
    latency_ms: int
    error_rate: float
    session_seconds: float
    changed_layout: bool
    seed: int
    data_date: date


def make_config(
    *,
    orgs: int = 3,
    users_per_org: int | None = None,
    page_size: int = 25,
    secret: str = DEFAULT_SECRET,
    latency_ms: int = 0,
    error_rate: float = 0.0,
    session_seconds: float = 1800.0,
    changed_layout: bool = False,
    seed: int = 0,
    data_date: date = DATA_DATE,
) -> SaasConfig:
    faults = Faults(
        latency_ms=latency_ms,
        error_rate=error_rate,
        session_seconds=session_seconds,
        changed_layout=changed_layout,
        seed=seed,
    )
    return SaasConfig(
        orgs=orgs,
        users_per_org=users_per_org,
        page_size=page_size,
        secret=secret,
        faults=faults,
        data_date=data_date,
    )


def bind(port: int, host: str = HOST) -> socket.socket:
    """A listening socket; port 0 picks a free one. Binding first reports a busy port before
    anything is printed, and connections made before the server runs wait in the backlog.

    The protocol must be IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets
    only then, and without it every keep-alive response waits ~40 ms for a delayed ACK.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def make_server(config: SaasConfig, *, access_log: bool = False) -> uvicorn.Server:
    app = create_app(config)
    return uvicorn.Server(
        uvicorn.Config(
            app,
            lifespan="off",
            log_config=None if not access_log else LOGGING_CONFIG,
            log_level="info" if access_log else "warning",
            access_log=access_log,
            timeout_graceful_shutdown=2,
        )
    )


@contextmanager
def running_demo_saas(port: int = 0, **settings: Unpack[SaasOptions]) -> Iterator[DemoSaaS]:
    """Serve the console on 127.0.0.1 in a background thread until the block ends.

    settings are make_config's: orgs, users_per_org, page_size, secret, latency_ms,
    error_rate, session_seconds, changed_layout, seed, data_date.
    """
    config = make_config(**settings)
    sock = bind(port)
    server = make_server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="demo-saas", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the demo SaaS server did not start")
            time.sleep(0.01)
        yield DemoSaaS(url=f"http://{HOST}:{sock.getsockname()[1]}", config=config)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
