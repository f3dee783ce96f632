"""Workflows whose runs' events the delivery proof delivers: `greenroom worker --app
tests.apps.delivery_app:app` serves them (the database comes from --db or GREENROOM_DB)."""

from __future__ import annotations

from greenroom import App, RetryPolicy, RunContext

OK = "proof.ok"
FAIL = "proof.fail"


def register(app: App) -> App:
    """The workflows, on `app` (the test enqueues through its own App)."""

    @app.workflow(name=OK)
    async def ok(ctx: RunContext, i: int = 0) -> int:
        return i

    @app.workflow(name=FAIL, retry=RetryPolicy(max_attempts=1))
    async def fail(ctx: RunContext, i: int = 0) -> int:
        raise ValueError(f"run {i} fails on purpose")

    return app


app = register(App())
