"""A real API server for tests: uvicorn on 127.0.0.1 in a thread, over a test app with two
tenants (acme, globex) holding a key of every role, and a platform key."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from pydantic import BaseModel, SecretStr

from greenroom import App, RunContext, SecretOrigin, step
from greenroom.api.app import create_api
from greenroom.api.keys import create_key
from greenroom.model import Role
from greenroom.reports.workflows import add_reports
from tests.helpers import fast_app

TENANTS = ("acme", "globex")
ROLES = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)


class CrmCredentials(BaseModel):
    username: str
    password: SecretStr


class CrmSettings(BaseModel):
    region: str = "eu"
    #: Where the CRM's pages are (its secrets may go there and nowhere else).
    console: SecretOrigin | None = None


def build_app(db_url: str, **settings: Any) -> App:
    """The test app: a `crm` connector whose workflows use its credentials."""
    values: dict[str, Any] = {
        "secret_key": base64.b64encode(os.urandom(32)).decode(),
        "api_rate_limit": 10_000,
        "api_rate_burst": 10_000,
    }
    values.update(settings)
    app = fast_app(db_url, **values)
    crm = app.connector("crm", credentials=CrmCredentials, settings=CrmSettings, title="Test CRM")

    @step(name="crm.sign_in")
    async def sign_in(ctx: RunContext) -> dict[str, str]:
        creds = await ctx.credentials(CrmCredentials)
        return {"user": creds.username, "password_length": str(len(creds.password))}

    @app.workflow(name="crm.sync", connector=crm)
    async def sync(ctx: RunContext, n: int = 1) -> dict[str, Any]:
        signed_in = await sign_in(ctx)
        return {"n": n, **signed_in}

    @app.workflow(name="crm.settings", connector=crm)
    async def settings(ctx: RunContext) -> dict[str, Any]:
        """What a run sees of its integration."""
        found = ctx.integration
        return {"id": found.id, "name": found.name, "settings": found.settings.model_dump()}

    @app.workflow(name="plain.echo")
    async def echo(ctx: RunContext, value: Any = None) -> Any:
        return value

    @app.workflow(name="plain.fail")
    async def fail(ctx: RunContext) -> None:
        raise RuntimeError("this workflow always fails")

    add_reports(app)
    return app


@contextlib.contextmanager
def serving(asgi: Any) -> Iterator[str]:
    """Serve an ASGI app on a free loopback port; its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(asgi, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test API server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class ApiSetup:
    url: str
    app: App
    platform_key: str
    #: keys[tenant][role] -> secret
    keys: dict[str, dict[Role, str]] = field(default_factory=dict)

    def client(self, key: str | None) -> httpx.Client:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def as_(self, tenant: str, role: Role = Role.ADMIN) -> httpx.Client:
        return self.client(self.keys[tenant][role])

    def platform(self) -> httpx.Client:
        return self.client(self.platform_key)


@contextlib.contextmanager
def api_setup(
    db_url: str, extend: Callable[[App], object] | None = None, **settings: Any
) -> Iterator[ApiSetup]:
    """The server over the test app; `extend` declares more of the app (connectors,
    workflows) before the API starts."""
    app = build_app(db_url, **settings)
    if extend is not None:
        extend(app)
    store = app.store
    _, platform = create_key(
        store.accounts, tenant=None, role=Role.PLATFORM, name="ops", actor="test"
    )
    keys: dict[str, dict[Role, str]] = {}
    for tenant in TENANTS:
        store.accounts.create_tenant(tenant, actor="test")
        keys[tenant] = {
            role: create_key(
                store.accounts, tenant=tenant, role=role, name=str(role), actor="test"
            )[1]
            for role in ROLES
        }
    try:
        with serving(create_api(app)) as url:
            yield ApiSetup(url=url, app=app, platform_key=platform, keys=keys)
    finally:
        app.close()
