"""How a run opens its integration's credentials, in a worker or in an isolated run's process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from greenroom import integrations
from greenroom.app import App
from greenroom.browser.runtime import BrowserRuntime
from greenroom.connectors import secret_values
from greenroom.context import RunContext
from greenroom.storage import DbCall, RunStore


def credentials_source(
    ctx: RunContext, app: App, store: RunStore, runtime: BrowserRuntime, db: DbCall
) -> Callable[[], Awaitable[BaseModel]]:
    """Opens the credentials of the run's integration; their secrets join the run's redactor."""

    async def open_credentials() -> BaseModel:
        connector = app.connector_of(ctx.run.workflow)
        creds: BaseModel = await db(
            integrations.open_for_run, store, runtime.keyring, connector, ctx.run
        )
        if ctx.browser is not None:
            for value in secret_values(creds):
                ctx.browser.add_secret(value)
        return creds

    return open_credentials
