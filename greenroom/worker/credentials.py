"""How a run gets its integration, in a worker or in an isolated run's process: its settings
before the workflow starts, its credentials when the workflow asks for them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from greenroom import integrations
from greenroom.app import App
from greenroom.browser.runtime import BrowserRuntime
from greenroom.connectors import secret_values
from greenroom.context import RunContext
from greenroom.storage import DbCall, RunStore


async def bind_integration(ctx: RunContext, app: App, store: RunStore, db: DbCall) -> None:
    """Give the run its integration's settings (ctx.integration) and the browser the origins
    its secrets may go to. A run of a connector's workflow whose input names a setting, or
    whose integration's settings no longer validate, fails here (PermanentError)."""
    wf = app.get_workflow(ctx.run.workflow)
    if wf.connector is None:
        return
    found = await db(integrations.for_run, store.accounts, app.connectors[wf.connector], ctx.run)
    if found is not None:
        ctx.bind_integration(found)


def credentials_source(
    ctx: RunContext, app: App, store: RunStore, runtime: BrowserRuntime, db: DbCall
) -> Callable[[], Awaitable[BaseModel]]:
    """Opens the credentials of the run's integration; their secrets join the run's redactor
    (and, as the run has an integration, its secret guard)."""

    async def open_credentials() -> BaseModel:
        connector = app.connector_of(ctx.run.workflow)
        creds: BaseModel = await db(
            integrations.open_for_run, store.accounts, runtime.keyring, connector, ctx.run
        )
        if ctx.browser is not None:
            for value in secret_values(creds):
                ctx.browser.add_secret(value)
        return creds

    return open_credentials
